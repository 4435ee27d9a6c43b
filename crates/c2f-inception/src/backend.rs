//! The backend interface the InceptionV3 graph (and the Coarse2Fine model above it) is written
//! against once. A backend owns its memory; the graph holds plain [`Tensor`] handles (buffer,
//! offset, length) into it, so parameters can live in one flat buffer and be addressed piecewise
//! on any device, and no borrow of device memory crosses the interface.
//!
//! The interface is five traits, by who needs them, so that each says what it is for and a
//! backend's ops can be read (and implemented) one group at a time:
//!
//! - [`Buffers`]: the scalar type, allocation, reads, writes and fills. Every op trait builds
//!   on it.
//! - [`NetworkOps`]: what the InceptionV3 graph is made of: convolution, batch
//!   norm, pooling, concat/split and the `fc` layer.
//! - [`TrainingOps`]: what a training step adds around any model: dropout, the
//!   softmax and sigmoid cross-entropies, the SGD update and `axpby`.
//! - [`Coarse2FineOps`]: what the Coarse2Fine model adds to its backbone:
//!   BAP, the center loss, the transposed convolution, the attention map's choice, resize and
//!   ReLU, and the mask.
//! - [`AugmentOps`]: WS-DAN's attention-guided augmentation: the map choice by mass, the crop
//!   box, the crop and the drop (no gradients).
//!
//! [`Backend`] is all of them, implemented for every type that has them; generic code bounds on
//! it (`B: Backend<Scalar = f32>`). Calling an op on a concrete backend needs its trait in
//! scope: `use c2f_inception::backend::prelude::*` brings them all.
//!
//! The rule for gradients, for every op here: **parameter gradients accumulate (`+=`) and
//! activation gradients are assigned**, except where an op takes `accumulate` (a tensor read by
//! several ops: its first gradient contribution assigns, the others add).
//!
//! Every op checks its tensors' lengths against its shape and returns an error naming what is
//! off; outputs that overlap another operand of the same call are refused.

use std::fmt;

use c2f_kernels::augment::AugmentShape;
use c2f_kernels::bap::BapShape;
use c2f_kernels::batch_norm::{BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{CenterLossShape, CenterUpdate};
use c2f_kernels::concat::ChannelSlice;
use c2f_kernels::conv_transpose::ConvTransposeParams;
use c2f_kernels::dropout::DropoutParams;
use c2f_kernels::layout::Layout;
use c2f_kernels::map_select::MapShape;
use c2f_kernels::mask::MaskShape;
use c2f_kernels::pool::{Pool2dParams, PoolShape};
use c2f_kernels::resize::ResizeShape;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::sigmoid_bce::SigmoidBceShape;
use c2f_kernels::softmax_ce::SoftmaxCeShape;
use c2f_kernels::{Error, Real, Result};

use crate::cpu::conv::Conv2dShape;
use crate::cuda::CapturedOps;
use crate::precision::Precision;

/// The op traits, for calling ops on a concrete backend.
pub mod prelude {
    pub use super::{AugmentOps, Backend, Buffers, Coarse2FineOps, NetworkOps, TrainingOps};
}

/// A range of values in one of a backend's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    pub buf: usize,
    pub offset: usize,
    pub len: usize,
}

/// A range of i32 values (max-pool indices, labels) in one of a backend's index buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexTensor {
    pub buf: usize,
    pub offset: usize,
    pub len: usize,
}

impl IndexTensor {
    /// Whether two index tensors share any element.
    pub fn overlaps(&self, other: &IndexTensor) -> bool {
        self.buf == other.buf
            && self.len > 0
            && other.len > 0
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

impl Tensor {
    /// `len` values starting `start` values into this tensor.
    pub fn slice(self, start: usize, len: usize) -> Tensor {
        assert!(
            start + len <= self.len,
            "slice {start}+{len} of a tensor of {}",
            self.len
        );
        Tensor {
            buf: self.buf,
            offset: self.offset + start,
            len,
        }
    }

    /// Whether two tensors share any element.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        self.buf == other.buf
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

/// The checks every backend makes on the operands of one op before touching memory: each tensor
/// lies inside its buffer (`buf_len(buf)` is that buffer's length, `None` for no such buffer;
/// `index_buf_len` likewise for index buffers), no non-empty output overlaps another operand
/// (an input, or another output) of the same call, and no two index operands overlap.
///
/// This is what lets a backend hand out a mutable view per output and shared views per input of
/// its buffers at once, whether host slices or raw device ranges.
pub fn check_operands(
    buf_len: impl Fn(usize) -> Option<usize>,
    index_buf_len: impl Fn(usize) -> Option<usize>,
    inputs: &[Tensor],
    outputs: &[Tensor],
    index: &[IndexTensor],
) -> Result<()> {
    let fits = |len: Option<usize>, offset: usize, n: usize| {
        len.zip(offset.checked_add(n))
            .is_some_and(|(len, end)| end <= len)
    };
    for t in inputs.iter().chain(outputs) {
        if !fits(buf_len(t.buf), t.offset, t.len) {
            return Err(Error::Shape(format!(
                "{t} is outside its buffer{}",
                buffer_size(buf_len(t.buf))
            )));
        }
    }
    for (i, t) in index.iter().enumerate() {
        if !fits(index_buf_len(t.buf), t.offset, t.len) {
            return Err(Error::Shape(format!(
                "{t} is outside its buffer{}",
                buffer_size(index_buf_len(t.buf))
            )));
        }
        if let Some(other) = index[i + 1..].iter().find(|o| o.overlaps(t)) {
            return Err(Error::Shape(format!(
                "{t} overlaps {other}, another index operand of the same op"
            )));
        }
    }
    for (i, out) in outputs.iter().enumerate() {
        let others = inputs.iter().chain(outputs[i + 1..].iter());
        if let Some(other) = others
            .filter(|o| out.len > 0 && o.len > 0)
            .find(|o| out.overlaps(o))
        {
            return Err(Error::Shape(format!(
                "output {out} overlaps {other}, another operand of the same op"
            )));
        }
    }
    Ok(())
}

/// How an out-of-buffer message ends: the buffer's length, or that there is no such buffer.
fn buffer_size(len: Option<usize>) -> String {
    match len {
        Some(len) => format!(" of {len} values"),
        None => " (no such buffer)".to_string(),
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tensor of {} values at {} in buffer {}",
            self.len, self.offset, self.buf
        )
    }
}

impl fmt::Display for IndexTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index tensor of {} values at {} in index buffer {}",
            self.len, self.offset, self.buf
        )
    }
}

/// A backend's memory: what every op trait builds on.
pub trait Buffers {
    /// The float type of the buffers: f32 for training; the CPU backend also runs in f64, which
    /// is what the golden test holds to PyTorch's float64 run.
    type Scalar: Real;

    /// What runs the ops, e.g. `cpu f32 (2 threads)` or the GPU's name.
    fn describe(&self) -> String;

    /// How the ops compute, as a run records it.
    fn precision(&self) -> Precision;

    /// A new zero-filled buffer, whole.
    fn alloc(&mut self, len: usize) -> Result<Tensor>;
    /// A new zero-filled buffer for activations or their gradients, whole: stored as the
    /// precision says ([`Precision::activation_storage`]; bf16 on the CUDA backend in bf16),
    /// read and written as [`Self::Scalar`] all the same. This default is [`Self::alloc`], for a
    /// backend that stores everything as its scalar.
    fn alloc_activation(&mut self, len: usize) -> Result<Tensor> {
        self.alloc(len)
    }
    /// The memory order the network keeps its activations in (its input and output stay
    /// NCHW): channels-last on the CUDA backend in bf16 ([`Precision::activation_layout`]).
    /// This default is NCHW, the CPU backend's only layout.
    fn activation_layout(&self) -> Layout {
        Layout::Nchw
    }
    /// [`Self::alloc_activation`] for activations laid out `layout`, which the layout-aware ops
    /// ([`NetworkOps`]) read from the buffer. This default refuses channels-last.
    fn alloc_activation_in(&mut self, len: usize, layout: Layout) -> Result<Tensor> {
        match layout {
            Layout::Nchw => self.alloc_activation(len),
            Layout::Nhwc => Err(Error::config(
                "layout",
                "NHWC",
                format!("{} keeps activations NCHW", self.describe()),
            )),
        }
    }
    /// A new zero-filled i32 buffer, whole.
    fn alloc_index(&mut self, len: usize) -> Result<IndexTensor>;
    /// Bytes allocated so far (buffers are never freed while the backend lives).
    fn allocated_bytes(&self) -> usize;

    fn write(&mut self, dst: Tensor, src: &[Self::Scalar]) -> Result<()>;
    fn read(&mut self, src: Tensor) -> Result<Vec<Self::Scalar>>;
    fn write_index(&mut self, dst: IndexTensor, src: &[i32]) -> Result<()>;
    fn read_index(&mut self, src: IndexTensor) -> Result<Vec<i32>>;
    fn fill(&mut self, dst: Tensor, value: Self::Scalar) -> Result<()>;

    /// Starts moving a batch to its destinations ahead of its use (the next step's input while
    /// a step runs); they receive it at [`Self::take_staged`], and ops queued before that still
    /// see what they held. A batch staged and not taken is replaced by the next one staged.
    /// This default writes at once, which is the same for a backend that has run every op
    /// queued by the time the call returns (the CPU's); the CUDA backend copies the batch from
    /// page-locked memory on a stream of its own, two batches in flight
    /// ([`crate::cuda::CudaBackend`]'s staging).
    fn stage(&mut self, batch: &[Staged<'_, Self::Scalar>]) -> Result<()> {
        for part in batch {
            match *part {
                Staged::Values(dst, values) => self.write(dst, values)?,
                Staged::Indices(dst, values) => self.write_index(dst, values)?,
            }
        }
        Ok(())
    }

    /// Puts the last batch staged ([`Self::stage`]) into its destinations, before every op
    /// queued after this call; nothing when none waits.
    fn take_staged(&mut self) -> Result<()> {
        Ok(())
    }

    /// Records the ops `work` runs on this backend, without running them, for
    /// [`Self::replay_ops`] to run (a CUDA graph on the CUDA backend), or `Ok(None)` when the
    /// backend does not record: this default, for a backend that runs every op as it is called
    /// (the CPU's); nothing ran, so run `work` eagerly. Every value an op takes by value is
    /// fixed at the capture: what changes between replays must be in the backend's memory,
    /// written before each. `work` fails, and the capture with it, at an op that cannot be
    /// recorded ([`Error::Capture`], naming it).
    fn capture_ops(
        &mut self,
        _work: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<Option<CapturedOps>>
    where
        Self: Sized,
    {
        Ok(None)
    }

    /// Runs ops recorded by [`Self::capture_ops`] on what the buffers hold now; this default
    /// refuses them (it records none, so they were captured on another backend).
    fn replay_ops(&mut self, _ops: &CapturedOps) -> Result<()>
    where
        Self: Sized,
    {
        Err(Error::Capture {
            op: "replaying captured ops".into(),
            reason: "they were captured on another backend, whose buffers they address".into(),
        })
    }
}

/// One destination of a batch staged with [`Buffers::stage`], and the values it gets.
#[derive(Debug, Clone, Copy)]
pub enum Staged<'a, S> {
    Values(Tensor, &'a [S]),
    Indices(IndexTensor, &'a [i32]),
}

/// Every op a backend has: what generic code (the network, the models, the trainer) bounds on.
pub trait Backend: NetworkOps + TrainingOps + Coarse2FineOps + AugmentOps {}

impl<B: NetworkOps + TrainingOps + Coarse2FineOps + AugmentOps> Backend for B {}

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

    /// `y = x` rewritten in `y`'s layout ([`Buffers::alloc_activation_in`]): NCHW into
    /// channels-last or back, `[N, C, H, W]` as `s` gives it. This default, for a backend with
    /// only NCHW, refuses: nothing is laid out otherwise there.
    fn convert_layout(&mut self, _s: &PoolShape, _x: Tensor, _y: Tensor) -> Result<()> {
        Err(Error::config(
            "layout",
            "NHWC",
            format!("{} keeps activations NCHW", self.describe()),
        ))
    }

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

/// The losses, regularisation and optimiser of training, which no InceptionV3 forward needs.
pub trait TrainingOps: Buffers {
    /// Dropout in training mode: `y = x·mask/(1−p)`, the mask a pure function of `p`'s seed,
    /// the step and the element index (the same on every backend). The step is read from the
    /// two-word slot `step` (`c2f_kernels::dropout::step_words`), written before the step.
    fn dropout_forward(
        &mut self,
        p: &DropoutParams,
        step: IndexTensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()>;
    /// `dx = dy·mask/(1−p)`, assigned, with the forward's mask (the same `p` and `step`).
    fn dropout_backward(
        &mut self,
        p: &DropoutParams,
        step: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()>;

    /// Mean softmax cross-entropy of `logits [B, C]` against `labels [B]`: writes each row's
    /// argmax to `predictions`, `loss_scale·(softmax − onehot)/B` to `dlogits` (assigned), and
    /// `[loss (unscaled), predictions equal to their label]` to the 2-value `stats`, which stays
    /// in the backend's memory (no host read: a captured step can hold it). A label outside
    /// `[0, C)`: the CPU backend returns an error naming it; the CUDA backend, which cannot see
    /// it without a host sync, writes a NaN loss (never an out-of-bounds access). The trainer
    /// checks labels on the host first.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &mut self,
        s: &SoftmaxCeShape,
        logits: Tensor,
        labels: IndexTensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
        stats: Tensor,
    ) -> Result<()>;

    /// Mean sigmoid binary cross-entropy of `logits [B, A]` against 0/1 `targets [B, A]` (a
    /// multi-label head): writes `logit > 0` per element to `predictions [B, A]`,
    /// `loss_scale·(σ − t)/(B·A)` to `dlogits` (assigned), and `[loss (unscaled), answers equal
    /// to their target]` to the 2-value `stats`, which stays in the backend's memory.
    #[allow(clippy::too_many_arguments)]
    fn sigmoid_binary_cross_entropy(
        &mut self,
        s: &SigmoidBceShape,
        logits: Tensor,
        targets: Tensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
        stats: Tensor,
    ) -> Result<()>;

    /// One SGD step (PyTorch's: momentum, weight decay, no dampening) over `weights`, with
    /// their `grads` and `momentum` buffer, at the learning rate the 1-value slot `lr` holds
    /// (written before the step; `c2f_kernels::sgd::check_learning_rate` first).
    fn sgd_step(
        &mut self,
        p: &SgdParams,
        lr: Tensor,
        weights: Tensor,
        grads: Tensor,
        momentum: Tensor,
    ) -> Result<()>;

    /// `y = α·x + β·y` (β = 0 assigns `y` without reading it).
    fn axpby(&mut self, alpha: f64, x: Tensor, beta: f64, y: Tensor) -> Result<()>;
}

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
    /// assigns `d_features` and writes the loss to the 1-value `loss`, which stays in the
    /// backend's memory. λ is read from the 2-value slot `scales`
    /// (`c2f_kernels::center_loss::CenterLossParams::scales`), written before the step. A label
    /// outside `[0, C)` leaves the centers untouched: an error naming it on the CPU backend, a
    /// NaN loss on the CUDA backend (as the cross-entropy's).
    #[allow(clippy::too_many_arguments)]
    fn center_loss(
        &mut self,
        s: &CenterLossShape,
        update: &CenterUpdate,
        scales: Tensor,
        features: Tensor,
        labels: IndexTensor,
        centers: Tensor,
        d_features: Tensor,
        loss: Tensor,
    ) -> Result<()>;

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

/// WS-DAN's attention-guided augmentation (no gradients: nothing learns through it);
/// `c2f_kernels::augment` has the formulas. `thresholds` and `draws` hold one value per sample,
/// `boxes` four, `[y0, x0, y1, x1]`.
pub trait AugmentOps: Buffers {
    /// Per sample one of the `s.maps` maps of `a [B, M, h, w]`, drawn with probability
    /// ∝ sqrt(Σ_hw a[b,m] + 1e-12) by inverse CDF on `draws[b]` ∈ [0, 1): the first m whose
    /// cumulative weight exceeds draws[b]·total (the last map if rounding leaves none). Negative
    /// sums count as 0.
    fn maps_by_mass(
        &mut self,
        s: &MapShape,
        a: Tensor,
        draws: Tensor,
        indices: IndexTensor,
    ) -> Result<()>;
    /// Per sample the crop box [y0, x0, y1, x1] (half-open, ints) of `maps [B, 1, h, w]`:
    /// normalised by its min and max, up-sampled to H×W (bilinear, align_corners=True), the
    /// rows/columns ≥ thresholds[b], padded by floor(padding·H) rows and floor(padding·W)
    /// columns and clamped to the image. max == min, or no pixel ≥ the threshold: the whole
    /// image [0, 0, H, W].
    fn attention_boxes(
        &mut self,
        s: &AugmentShape,
        padding: f64,
        maps: Tensor,
        thresholds: Tensor,
        boxes: IndexTensor,
    ) -> Result<()>;
    /// y[b] = x[b, :, y0..y1, x0..x1] resized to H×W, bilinear with align_corners=True (a
    /// 1-pixel-wide side repeats that pixel). Boxes outside the image or empty are clamped to
    /// it, never an error.
    fn crop_resize(
        &mut self,
        s: &AugmentShape,
        x: Tensor,
        boxes: IndexTensor,
        y: Tensor,
    ) -> Result<()>;
    /// y[b] = x[b] where the normalised up-sampled map (as in attention_boxes) < thresholds[b],
    /// else 0, every channel; max == min keeps the whole image.
    fn drop_mask(
        &mut self,
        s: &AugmentShape,
        maps: Tensor,
        thresholds: Tensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()>;
}
