//! Coarse2Fine's custom CUDA kernels, each beside its CPU reference, and the device plumbing the
//! crates above share.
//!
//! - [`bap`]: fused bilinear attention pooling (WS-DAN definition), forward and backward.
//! - [`center_loss`]: center loss with moving-average, normalised centers, deterministic update.
//! - [`conv_transpose`]: `ConvTranspose2d` forward and backward for the up-sampler.
//! - the fine branch's ops, forward and backward: [`relu`] after the attention conv,
//!   [`map_select`] (the attention-map choice, and the mean at inference), [`resize`] (bilinear)
//!   and [`mask`] (the per-sample max-normalised mask applied to the image).
//! - WS-DAN's augmentation, no gradients: [`augment`] (the map choice by mass, the attention
//!   crop box, the crop resized to the image, and the attention drop).
//!
//! and the InceptionV3 runtime's own ops (cuDNN and cuBLAS do the convolutions and the `fc`):
//!
//! - [`batch_norm`]: batch norm in training and inference modes, with ReLU fused, forward and
//!   backward.
//! - [`pool`]: max and average pooling forward and backward; [`concat`]: channel concat and split.
//! - [`softmax_ce`]: softmax cross-entropy; [`dropout`].
//! - [`sigmoid_bce`]: sigmoid binary cross-entropy, for multi-label (attribute) heads.
//! - [`sgd`]: the SGD update with momentum and weight decay.
//! - [`axpby`]: `y = α·x + β·y`, for scaling and for summing gradient contributions.
//! - [`cast`]: f32 ↔ bf16 casts and a bf16 gradient added into an f32 one, for the bf16 step's
//!   f32 master weights.
//! - [`transpose`]: a batched 2-D transpose with an f32/bf16 conversion, for NCHW ↔ NHWC
//!   activations and KCRS ↔ KRSC weights.
//!
//! Also [`nvtx`]: the NVTX ranges that name layers, passes and phases on a profiler's timeline.
//!
//! Each op is one module and one kernel file, `kernels/<op>.cu`. The library baselines the
//! benches time them against live in the dev-only `c2f-baselines` crate.
//!
//! Every op runs in f32 and in bf16 storage with f32 accumulation ([`Element`]). The CPU
//! references are generic over `f32`/`f64`: f32 is the CPU backend, f64 is what tests compare to.

pub mod augment;
pub mod axpby;
pub mod bap;
pub mod batch_norm;
pub mod cast;
pub mod center_loss;
pub mod concat;
pub mod conv_transpose;
pub mod cublas_raw;
pub mod cudnn_raw;
pub mod device;
pub mod dropout;
pub mod element;
pub mod error;
pub mod layout;
pub mod map_select;
pub mod mask;
pub mod nvtx;
pub mod pool;
pub mod relu;
pub mod resize;
pub mod rng;
pub mod sgd;
pub mod sigmoid_bce;
pub mod softmax_ce;
pub mod testing;
pub mod transpose;

pub use device::{Gpu, KernelSource};
pub use element::Element;
pub use error::{Error, Result};
pub use layout::Layout;

/// The kernel files from `kernels/`, as `build.rs` embedded them.
pub mod sources {
    use crate::device::KernelSource;
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

    /// Every embedded kernel file, for checks that go over all of them.
    pub fn all() -> Vec<KernelSource> {
        ALL.to_vec()
    }
}

/// The float types the CPU references run in.
pub trait Real:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::iter::Sum
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}
