//! Batch norm over NCHW or channels-last NHWC ([`Layout`](crate::Layout)) with an optional fused ReLU: PyTorch's `BatchNorm2d` followed by `ReLU`,
//! as in torchvision's InceptionV3 `BasicConv2d` (eps 0.001, momentum 0.1).
//!
//! Per channel, over its `n = N·H·W` values:
//!
//! - training forward: `mean`, biased `var`, `invstd = 1/sqrt(var + eps)`,
//!   `y = act((x − mean)·gamma·invstd + beta)`; saves `mean` and `invstd` for the backward and
//!   updates `running_mean = momentum·mean + (1 − momentum)·running_mean`,
//!   `running_var = momentum·var·n/(n − 1) + (1 − momentum)·running_var` (unbiased). `n = 1` is an
//!   error, as in PyTorch.
//! - inference forward: the same with the running stats, which stay untouched.
//! - backward: `g = dy`, zeroed where the saved output `y <= 0` when ReLU is fused (PyTorch's
//!   `threshold_backward`), `x̂ = (x − mean)·invstd`; training mode
//!   `dx = gamma·invstd/n·(n·g − Σg − x̂·Σ(g·x̂))`, inference mode `dx = g·gamma·invstd` with the
//!   running stats; both `dgamma += Σ(g·x̂)`, `dbeta += Σg`.
//!
//! Activation gradients (`dx`) are assigned; parameter gradients (`dgamma`, `dbeta`) accumulate.
//! The per-channel tensors go in pairs: `[gamma, beta]`, the running `[mean, var]`, the saved
//! `[mean, invstd]` and `[dgamma, dbeta]`; a backward reads the saved pair in training mode and
//! the running pair in inference mode, as its `stats`.
//! On the GPU the activations are `T` (f32, or bf16 with f32 arithmetic); `gamma`, `beta`, running
//! and saved stats and parameter gradients are always f32. Kernels: `kernels/batch_norm.cu`,
//! deterministic (per-block partials summed in a fixed order, no float atomics).
//!
//! The layout changes where values live, not what is computed: the CPU references sum each
//! channel's values in the same order in both (NHWC gives NCHW's bits), and the NHWC kernels
//! differ from the NCHW ones only in their reduction trees (the same results to f32 rounding).
//!
//! bf16 rounding points (the CUDA kernels in bf16, and the reference a bf16 test compares to):
//! the inputs `x`, `y`, `dy` are bf16 values; every statistic, sum and intermediate is f32; each
//! activation output (`y`, `dx`) is rounded to bf16 once, when stored. So the bf16 reference is
//! the f32 reference on the bf16 inputs widened exactly to f32, its `y` and `dx` rounded to bf16
//! (nearest even); the f32 outputs (stats, parameter gradients) are not rounded.
//!
//! The CPU references are in `reference.rs`, the CUDA launcher in `launch.rs`.

mod launch;
mod reference;

pub use launch::BatchNormGpu;
pub use reference::{
    backward_inference_cpu, backward_train_cpu, forward_inference_cpu, forward_train_cpu,
};

use std::ops::Deref;

use cudarc::driver::DeviceSlice;

use crate::error::{check_len, check_shape, Error, Result};
pub use crate::layout::LaidOut;

/// The names of the per-channel pairs, for errors.
const AFFINE: [&str; 2] = ["gamma", "beta"];
const RUNNING: [&str; 2] = ["running_mean", "running_var"];
const SAVED: [&str; 2] = ["save_mean", "save_invstd"];
const GRADS: [&str; 2] = ["dgamma", "dbeta"];

/// The lengths of a pair of per-channel device buffers.
#[doc(hidden)] // for c2f-baselines
pub fn lens<P: Deref<Target = B>, B: DeviceSlice<f32> + ?Sized>(pair: &[P; 2]) -> [usize; 2] {
    [pair[0].len(), pair[1].len()]
}

/// A pair's lengths beside its names.
fn named(names: [&'static str; 2], lens: [usize; 2]) -> [(&'static str, usize); 2] {
    [(names[0], lens[0]), (names[1], lens[1])]
}

/// InceptionV3's `BatchNorm2d(eps=0.001)`.
pub const INCEPTION_EPS: f64 = 1e-3;
/// PyTorch's default momentum.
pub const DEFAULT_MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchNormShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl BatchNormShape {
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Values per channel, `n = N·H·W`.
    pub fn per_channel(&self) -> usize {
        self.batch * self.hw()
    }
    /// Length of `x`, `y`, `dy`, `dx`.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.hw()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[doc(hidden)] // for c2f-baselines
    pub fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.channels, self.height, self.width];
        check_shape("batch norm shape", self, &dims, &[&dims])
    }

    /// PyTorch refuses training-mode statistics over a single value.
    #[doc(hidden)] // for c2f-baselines
    pub fn check_training(&self) -> Result<()> {
        if self.per_channel() <= 1 {
            return Err(Error::Shape(format!(
                "batch norm: expected more than 1 value per channel when training, got input \
                 size [{}, {}, {}, {}]",
                self.batch, self.channels, self.height, self.width
            )));
        }
        Ok(())
    }

    /// The forward's lengths: `x` and `y`, and the pairs `[gamma, beta]`, running
    /// `[mean, var]` and, in training mode, saved `[mean, invstd]`.
    #[doc(hidden)] // for c2f-baselines
    pub fn check_forward(
        &self,
        [x, y]: [usize; 2],
        [affine, running]: [[usize; 2]; 2],
        saved: Option<[usize; 2]>,
    ) -> Result<()> {
        let mut per_channel = [named(AFFINE, affine), named(RUNNING, running)].concat();
        per_channel.extend(saved.map(|saved| named(SAVED, saved)).iter().flatten());
        self.check([("x", x), ("y", y)], &per_channel)
    }

    /// The backward's lengths: `x`, `y`, `dy` and `dx`, `gamma`, the `stats` pair (saved in
    /// training mode, running in inference mode) and `[dgamma, dbeta]`.
    #[doc(hidden)] // for c2f-baselines
    pub fn check_backward(
        &self,
        train: bool,
        [x, y, dy, dx]: [usize; 4],
        gamma: usize,
        [stats, grads]: [[usize; 2]; 2],
    ) -> Result<()> {
        let stats = named(if train { SAVED } else { RUNNING }, stats);
        let per_channel = [&[("gamma", gamma)][..], &stats, &named(GRADS, grads)].concat();
        self.check([("x", x), ("y", y), ("dy", dy), ("dx", dx)], &per_channel)
    }

    /// Checks the activation-sized buffers (named) and the per-channel ones (named).
    fn check<const A: usize>(
        &self,
        activations: [(&str, usize); A],
        per_channel: &[(&str, usize)],
    ) -> Result<()> {
        self.validate()?;
        for (what, len) in activations {
            check_len(&format!("batch norm {what}"), len, self.len())?;
        }
        for &(what, len) in per_channel {
            check_len(&format!("batch norm {what}"), len, self.channels)?;
        }
        Ok(())
    }
}

/// `eps` and `momentum` as in `BatchNorm2d`, and whether a ReLU follows (fused).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    pub eps: f64,
    pub momentum: f64,
    pub relu: bool,
}

impl Default for BatchNormParams {
    /// InceptionV3's `BasicConv2d`: eps [`INCEPTION_EPS`], momentum [`DEFAULT_MOMENTUM`], ReLU.
    fn default() -> Self {
        BatchNormParams {
            eps: INCEPTION_EPS,
            momentum: DEFAULT_MOMENTUM,
            relu: true,
        }
    }
}

impl BatchNormParams {
    /// `eps` must be positive and finite, `momentum` in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::Shape(format!(
                "batch norm eps {} must be positive and finite",
                self.eps
            )));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::Shape(format!(
                "batch norm momentum {} must be in [0, 1]",
                self.momentum
            )));
        }
        Ok(())
    }
}
