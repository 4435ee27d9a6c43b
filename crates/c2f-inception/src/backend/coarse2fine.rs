//! The ops the Coarse2Fine model adds on top of its InceptionV3 backbone: bilinear attention
//! pooling, the center loss, the learnable up-sampler (transposed convolution), the attention
//! map's choice, resize and ReLU, and the fine branch's mask.

use c2f_kernels::bap::BapShape;
use c2f_kernels::center_loss::{CenterLossParams, CenterLossShape};
use c2f_kernels::conv_transpose::ConvTransposeParams;
use c2f_kernels::mask::{MapShape, MaskShape, ResizeShape};
use c2f_kernels::Result;

use super::{Buffers, IndexTensor, Tensor};

/// The Coarse2Fine model's ops (the attention, the fine branch and its losses).
pub trait Coarse2FineOps: Buffers {
    /// Bilinear attention pooling: `parts [B, M·N]` (normalised) and `norms [B]` from
    /// `attention [B, M, H, W]` and `features [B, N, H, W]`.
    fn bap_forward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
    ) -> Result<()>;
    /// Assigns `d_attention` and `d_features` from `d_parts`.
    #[allow(clippy::too_many_arguments)]
    fn bap_backward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
        d_parts: Tensor,
        d_attention: Tensor,
        d_features: Tensor,
    ) -> Result<()>;

    /// Center loss on `features [B, D]` with moving-average `centers [C, D]` (updated in place):
    /// assigns `d_features`, returns the loss. A label outside `[0, C)` is an error and leaves
    /// the centers untouched.
    fn center_loss(
        &mut self,
        s: &CenterLossShape,
        p: &CenterLossParams,
        features: Tensor,
        labels: IndexTensor,
        centers: Tensor,
        d_features: Tensor,
    ) -> Result<f64>;

    /// `ConvTranspose2d` with bias: `y` assigned.
    fn conv_transpose_forward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        y: Tensor,
    ) -> Result<()>;
    /// Assigns `dx`; `d_weight` and `d_bias` accumulate.
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose_backward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        dy: Tensor,
        dx: Tensor,
        d_weight: Tensor,
        d_bias: Tensor,
    ) -> Result<()>;

    /// `y = max(x, 0)` (NaN kept).
    fn relu_forward(&mut self, x: Tensor, y: Tensor) -> Result<()>;
    /// `dx = dy` where `y > 0`, else 0 (assigned).
    fn relu_backward(&mut self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()>;

    /// `out[b] = a[b, indices[b]]`: one attention map per sample. The indices must lie in
    /// `[0, maps)`; the CPU backend refuses others, the CUDA backend (which cannot see them
    /// without a host sync) makes NaN of them, never an out-of-bounds access.
    fn select_map_forward(
        &mut self,
        s: &MapShape,
        a: Tensor,
        indices: IndexTensor,
        out: Tensor,
    ) -> Result<()>;
    /// `da[b, indices[b]] = d_out[b]`: the other maps zero, or with `accumulate` untouched and
    /// the chosen map added to.
    fn select_map_backward(
        &mut self,
        s: &MapShape,
        indices: IndexTensor,
        d_out: Tensor,
        da: Tensor,
        accumulate: bool,
    ) -> Result<()>;
    /// `out[b] = mean_m a[b, m]`: the inference-time attention map.
    fn mean_maps_forward(&mut self, s: &MapShape, a: Tensor, out: Tensor) -> Result<()>;

    /// Bilinear resize as `F.interpolate(mode="bilinear", align_corners=False)`.
    fn resize_bilinear_forward(&mut self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()>;
    /// Its adjoint, `dx` assigned.
    fn resize_bilinear_backward(&mut self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()>;

    /// The fine branch's mask: per sample `Mk = max(U, 0)/max(U)` (all ones when `max(U) ≤ 0`),
    /// `xf = Mk ⊙ x`; saves `u_max` and `argmax` per sample for the backward.
    #[allow(clippy::too_many_arguments)]
    fn mask_forward(
        &mut self,
        s: &MaskShape,
        u: Tensor,
        x: Tensor,
        xf: Tensor,
        u_max: Tensor,
        argmax: IndexTensor,
    ) -> Result<()>;
    /// `du` (assigned) from `dxf`: the exact gradient, through the per-sample maximum too.
    #[allow(clippy::too_many_arguments)]
    fn mask_backward(
        &mut self,
        s: &MaskShape,
        u: Tensor,
        x: Tensor,
        dxf: Tensor,
        u_max: Tensor,
        argmax: IndexTensor,
        du: Tensor,
    ) -> Result<()>;
}
