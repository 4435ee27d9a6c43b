//! Batch norm over NCHW with an optional fused ReLU: PyTorch's `BatchNorm2d` followed by `ReLU`,
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
//! On the GPU the activations are `T` (f32, or bf16 with f32 arithmetic); `gamma`, `beta`, running
//! and saved stats and parameter gradients are always f32. Kernels: `kernels/batch_norm.cu`,
//! deterministic (per-block partials summed in a fixed order, no float atomics).
//!
//! The CPU references are in `reference.rs`, the CUDA launcher in `launch.rs`.

mod launch;
mod reference;

pub use launch::BatchNormGpu;
pub use reference::{
    backward_inference_cpu, backward_train_cpu, forward_inference_cpu, forward_train_cpu,
};

use crate::error::{check_len, check_shape, Error, Result};

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

    /// The training forward's lengths: `x`, `y`; gamma, beta, running mean and variance, saved
    /// mean and inverse std.
    #[doc(hidden)] // for c2f-baselines
    pub fn check_forward_train(&self, [x, y]: [usize; 2], per_channel: [usize; 6]) -> Result<()> {
        let [gamma, beta, running_mean, running_var, save_mean, save_invstd] = per_channel;
        self.check(
            &[("x", x), ("y", y)],
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("running_mean", running_mean),
                ("running_var", running_var),
                ("save_mean", save_mean),
                ("save_invstd", save_invstd),
            ],
        )
    }

    /// The training backward's lengths: `x`, `y`, `dy`, `dx`; gamma, saved mean and inverse
    /// std, dgamma, dbeta.
    #[doc(hidden)] // for c2f-baselines
    pub fn check_backward_train(
        &self,
        [x, y, dy, dx]: [usize; 4],
        per_channel: [usize; 5],
    ) -> Result<()> {
        let [gamma, save_mean, save_invstd, dgamma, dbeta] = per_channel;
        self.check(
            &[("x", x), ("y", y), ("dy", dy), ("dx", dx)],
            &[
                ("gamma", gamma),
                ("save_mean", save_mean),
                ("save_invstd", save_invstd),
                ("dgamma", dgamma),
                ("dbeta", dbeta),
            ],
        )
    }

    /// Checks the activation-sized buffers (named) and the per-channel ones (named).
    fn check(&self, activations: &[(&str, usize)], per_channel: &[(&str, usize)]) -> Result<()> {
        self.validate()?;
        for &(what, len) in activations {
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
