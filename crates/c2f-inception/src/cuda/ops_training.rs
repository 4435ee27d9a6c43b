//! The CUDA backend's [`TrainingOps`], each through its kernel launcher.

use c2f_kernels::axpby::AxpbyGpu;
use c2f_kernels::sgd::{SgdGpu, SgdParams};
use c2f_kernels::sigmoid_bce::{SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::softmax_ce::{DropoutGpu, DropoutParams, SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::Result;

use super::CudaBackend;
use crate::backend::{IndexTensor, Tensor, TrainingOps};

impl TrainingOps for CudaBackend {
    fn dropout_forward(&mut self, p: &DropoutParams, x: Tensor, y: Tensor) -> Result<()> {
        self.launch(
            (),
            [x],
            [y],
            [],
            |op: &mut DropoutGpu<f32>, [x], [mut y], []| op.forward(p, &x, &mut y),
        )
    }

    fn dropout_backward(&mut self, p: &DropoutParams, dy: Tensor, dx: Tensor) -> Result<()> {
        self.launch(
            (),
            [dy],
            [dx],
            [],
            |op: &mut DropoutGpu<f32>, [dy], [mut dx], []| op.backward(p, &dy, &mut dx),
        )
    }

    fn softmax_cross_entropy(
        &mut self,
        s: &SoftmaxCeShape,
        logits: Tensor,
        labels: IndexTensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
    ) -> Result<f64> {
        let loss = self.launch(
            *s,
            [logits],
            [dlogits],
            [labels, predictions],
            |op: &mut SoftmaxCeGpu<f32>, [logits], [mut dlogits], [labels, mut predictions]| {
                op.forward_backward(&logits, &labels, loss_scale, &mut predictions, &mut dlogits)
            },
        )?;
        Ok(loss as f64)
    }

    fn sigmoid_binary_cross_entropy(
        &mut self,
        s: &SigmoidBceShape,
        logits: Tensor,
        targets: Tensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
    ) -> Result<f64> {
        let loss = self.launch(
            *s,
            [logits, targets],
            [dlogits],
            [predictions],
            |op: &mut SigmoidBceGpu<f32>, [logits, targets], [mut dlogits], [mut predictions]| {
                op.forward_backward(
                    &logits,
                    &targets,
                    loss_scale,
                    &mut predictions,
                    &mut dlogits,
                )
            },
        )?;
        Ok(loss as f64)
    }

    fn sgd_step(
        &mut self,
        p: &SgdParams,
        weights: Tensor,
        grads: Tensor,
        momentum: Tensor,
    ) -> Result<()> {
        self.launch(
            (),
            [grads],
            [weights, momentum],
            [],
            |op: &mut SgdGpu, [grads], [mut weights, mut momentum], []| {
                op.step(p, &mut weights, &grads, &mut momentum)
            },
        )
    }

    fn axpby(&mut self, alpha: f64, x: Tensor, beta: f64, y: Tensor) -> Result<()> {
        self.launch(
            (),
            [x],
            [y],
            [],
            |op: &mut AxpbyGpu<f32>, [x], [mut y], []| op.run(alpha, &x, beta, &mut y),
        )
    }
}
