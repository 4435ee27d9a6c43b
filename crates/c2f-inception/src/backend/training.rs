//! The ops of a training step around any model: dropout, the classification losses, the SGD
//! update and `axpby` (gradient sums and scaling).

use c2f_kernels::sgd::SgdParams;
use c2f_kernels::sigmoid_bce::SigmoidBceShape;
use c2f_kernels::softmax_ce::{DropoutParams, SoftmaxCeShape};
use c2f_kernels::Result;

use super::{Buffers, IndexTensor, Tensor};

/// The losses, regularisation and optimiser of training, which no InceptionV3 forward needs.
pub trait TrainingOps: Buffers {
    /// Dropout in training mode: `y = x·mask/(1−p)`, the mask a pure function of `p`'s seed,
    /// step and the element index (the same on every backend).
    fn dropout_forward(&mut self, p: &DropoutParams, x: Tensor, y: Tensor) -> Result<()>;
    /// `dx = dy·mask/(1−p)`, assigned, with the forward's mask.
    fn dropout_backward(&mut self, p: &DropoutParams, dy: Tensor, dx: Tensor) -> Result<()>;

    /// Mean softmax cross-entropy of `logits [B, C]` against `labels [B]`: writes each row's
    /// argmax to `predictions` and `loss_scale·(softmax − onehot)/B` to `dlogits` (assigned), and
    /// returns the (unscaled) loss. A label outside `[0, C)` is an error naming it.
    fn softmax_cross_entropy(
        &mut self,
        s: &SoftmaxCeShape,
        logits: Tensor,
        labels: IndexTensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
    ) -> Result<f64>;

    /// Mean sigmoid binary cross-entropy of `logits [B, A]` against 0/1 `targets [B, A]` (a
    /// multi-label head): writes `logit > 0` per element to `predictions [B, A]` and
    /// `loss_scale·(σ − t)/(B·A)` to `dlogits` (assigned), and returns the (unscaled) loss.
    #[allow(clippy::too_many_arguments)]
    fn sigmoid_binary_cross_entropy(
        &mut self,
        s: &SigmoidBceShape,
        logits: Tensor,
        targets: Tensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
    ) -> Result<f64>;

    /// One SGD step (PyTorch's: momentum, weight decay, no dampening) over `weights`, with
    /// their `grads` and `momentum` buffer.
    fn sgd_step(
        &mut self,
        p: &SgdParams,
        weights: Tensor,
        grads: Tensor,
        momentum: Tensor,
    ) -> Result<()>;

    /// `y = α·x + β·y` (β = 0 assigns `y` without reading it).
    fn axpby(&mut self, alpha: f64, x: Tensor, beta: f64, y: Tensor) -> Result<()>;
}
