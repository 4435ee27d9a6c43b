//! The InceptionV3 graph's own ops: convolution, batch norm, pooling, concat and split, and the
//! `fc` layer, with the types they take.

use c2f_kernels::batch_norm::{BatchNormParams, BatchNormShape};
use c2f_kernels::pool::{ChannelSlice, Pool2dParams, PoolShape};
use c2f_kernels::Result;

use super::{Buffers, IndexTensor, Tensor};
use crate::cpu::conv::Conv2dShape;

/// Batch norm in training mode (batch statistics, running stats updated) or inference mode
/// (running statistics; also "frozen" BN while training).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Inference,
}

/// The batch statistics a train-mode forward saves for its backward (unused in inference mode,
/// whose backward reads the running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnStats {
    pub mean: Tensor,
    /// `1/sqrt(var + eps)`.
    pub invstd: Tensor,
}

/// The parameters of one batch norm: `gamma`, `beta`, and the running statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnParams {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

/// `y = x·Wᵀ + b` with `x [batch, inputs]`, `W [outputs, inputs]`, `b [outputs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl LinearShape {
    /// Checks `x [batch, inputs]`, `w [outputs, inputs]`, `b [outputs]` and `y [batch, outputs]`
    /// (or their gradients) against this shape.
    pub fn check(&self, x: Tensor, w: Tensor, b: Tensor, y: Tensor) -> Result<()> {
        use c2f_kernels::error::check_len;
        check_len("linear x", x.len, self.batch * self.inputs)?;
        check_len("linear weight", w.len, self.outputs * self.inputs)?;
        check_len("linear bias", b.len, self.outputs)?;
        check_len("linear y", y.len, self.batch * self.outputs)
    }
}

/// The ops the InceptionV3 graph ([`crate::network`]) is made of, forward and backward.
pub trait NetworkOps: Buffers {
    /// `y = conv(x, w)`, no bias.
    fn conv2d_forward(&mut self, s: &Conv2dShape, x: Tensor, w: Tensor, y: Tensor) -> Result<()>;
    /// `dx` from `dy`: assigned, or added when `accumulate`.
    fn conv2d_backward_data(
        &mut self,
        s: &Conv2dShape,
        dy: Tensor,
        w: Tensor,
        dx: Tensor,
        accumulate: bool,
    ) -> Result<()>;
    /// `dw += ∂/∂w`.
    fn conv2d_backward_filter(
        &mut self,
        s: &Conv2dShape,
        x: Tensor,
        dy: Tensor,
        dw: Tensor,
    ) -> Result<()>;

    /// Batch norm (with ReLU when `p.relu`). Train mode writes `saved` (batch mean and inverse
    /// std) and updates the running statistics; inference mode leaves `saved` alone.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_forward(
        &mut self,
        s: &BatchNormShape,
        p: &BatchNormParams,
        mode: BnMode,
        bn: &BnParams,
        x: Tensor,
        y: Tensor,
        saved: &BnStats,
    ) -> Result<()>;
    /// Assigns `dx`; `dgamma`, `dbeta` accumulate. `saved` is the forward's, in either mode.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &mut self,
        s: &BatchNormShape,
        p: &BatchNormParams,
        mode: BnMode,
        bn: &BnParams,
        saved: &BnStats,
        x: Tensor,
        y: Tensor,
        dy: Tensor,
        dx: Tensor,
        dgamma: Tensor,
        dbeta: Tensor,
    ) -> Result<()>;

    fn max_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
        indices: IndexTensor,
    ) -> Result<()>;
    fn max_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        indices: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()>;
    fn avg_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
    ) -> Result<()>;
    fn avg_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()>;
    /// `[N, C, H, W] → [N, C]`.
    fn global_avg_pool_forward(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()>;
    fn global_avg_pool_backward(&mut self, s: &PoolShape, dy: Tensor, dx: Tensor) -> Result<()>;

    /// Concat, one part: `part` into its channels of `whole`.
    fn copy_channels(&mut self, s: &ChannelSlice, part: Tensor, whole: Tensor) -> Result<()>;
    /// Split, one part: its channels of `whole` into `part` (assigned).
    fn slice_channels(&mut self, s: &ChannelSlice, whole: Tensor, part: Tensor) -> Result<()>;

    /// `y = x·Wᵀ + b`.
    fn linear_forward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        y: Tensor,
    ) -> Result<()>;
    /// `dx = dy·W` (assigned), `dw += dyᵀ·x`, `db += Σ dy`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Tensor,
        dw: Tensor,
        db: Tensor,
    ) -> Result<()>;
}
