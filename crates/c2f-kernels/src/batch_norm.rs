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

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use rayon::prelude::*;

use crate::device::{device_addr, device_addr_mut, Gpu};
use crate::element::Element;
use crate::error::{check_len, check_shape, Error, Result};
use crate::Real;

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

/// Offsets of channel `c`'s rows of `H·W` values, one per sample.
fn channel_rows(shape: &BatchNormShape, c: usize) -> impl Iterator<Item = usize> {
    let (channels, hw) = (shape.channels, shape.hw());
    (0..shape.batch).map(move |b| (b * channels + c) * hw)
}

/// `Σ f(i)` for `i` in `0..len`, for `M` sums at once, with eight running sums each: it
/// vectorises, and rounds less than a single running sum.
fn lane_sums<R: Real, const M: usize>(len: usize, f: impl Fn(usize) -> [R; M]) -> [R; M] {
    const LANES: usize = 8;
    let mut acc = [[R::zero(); M]; LANES];
    let full = len / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for (lane, a) in acc.iter_mut().enumerate() {
            let v = f(base + lane);
            for (s, v) in a.iter_mut().zip(v) {
                *s = *s + v;
            }
        }
    }
    let mut total = [R::zero(); M];
    for a in &acc {
        for (t, &s) in total.iter_mut().zip(a) {
            *t = *t + s;
        }
    }
    for i in full..len {
        for (t, v) in total.iter_mut().zip(f(i)) {
            *t = *t + v;
        }
    }
    total
}

/// Channel `c`'s `M` sums of `f(offset)` over its `n` values, `offset` indexing the full tensor.
fn channel_sums<R: Real, const M: usize>(
    shape: &BatchNormShape,
    c: usize,
    f: impl Fn(usize) -> [R; M],
) -> [R; M] {
    let hw = shape.hw();
    let mut total = [R::zero(); M];
    for row in channel_rows(shape, c) {
        for (t, v) in total.iter_mut().zip(lane_sums(hw, |i| f(row + i))) {
            *t = *t + v;
        }
    }
    total
}

fn act<R: Real>(v: R, relu: bool) -> R {
    // NaN passes through, as in PyTorch.
    if relu && v <= R::zero() {
        R::zero()
    } else {
        v
    }
}

/// `dy` masked by the saved output, as `threshold_backward`.
fn masked<R: Real>(dy: R, y: R, relu: bool) -> R {
    if relu && y <= R::zero() {
        R::zero()
    } else {
        dy
    }
}

/// Writes `out` row by row (parallel): `out[i] = f(c, i)` over each row of channel `c`.
fn write_rows<R: Real>(
    shape: &BatchNormShape,
    out: &mut [R],
    f: impl Fn(usize, usize) -> R + Sync,
) {
    let (channels, hw) = (shape.channels, shape.hw());
    out.par_chunks_mut(hw).enumerate().for_each(|(r, row)| {
        let c = r % channels;
        for (i, o) in row.iter_mut().enumerate() {
            *o = f(c, r * hw + i);
        }
    });
}

/// CPU forward, training mode (and the CPU backend's op): writes `y`, `save_mean`, `save_invstd`
/// and updates `running_mean`, `running_var` in place.
#[allow(clippy::too_many_arguments)]
pub fn forward_train_cpu<R: Real>(
    shape: &BatchNormShape,
    params: &BatchNormParams,
    x: &[R],
    gamma: &[R],
    beta: &[R],
    running_mean: &mut [R],
    running_var: &mut [R],
    y: &mut [R],
    save_mean: &mut [R],
    save_invstd: &mut [R],
) -> Result<()> {
    shape.check_forward_train(
        [x.len(), y.len()],
        [
            gamma.len(),
            beta.len(),
            running_mean.len(),
            running_var.len(),
            save_mean.len(),
            save_invstd.len(),
        ],
    )?;
    params.validate()?;
    shape.check_training()?;
    let n = shape.per_channel();
    let inv_n = R::from_f64(1.0 / n as f64);
    let eps = R::from_f64(params.eps);
    let momentum = R::from_f64(params.momentum);
    let keep = R::from_f64(1.0 - params.momentum);
    // Corrected two-pass algorithm (Chan, Golub, LeVeque): a first mean, then the deviations from
    // it, whose sum corrects the mean and the sum of squares.
    let stats: Vec<(R, R)> = (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let [sum] = channel_sums(shape, c, |i| [x[i]]);
            let mean0 = sum * inv_n;
            let [dev, sq] = channel_sums(shape, c, |i| {
                let d = x[i] - mean0;
                [d, d * d]
            });
            (mean0 + dev * inv_n, (sq - dev * dev * inv_n).max(R::zero()))
        })
        .collect();
    let n_unbiased = R::from_f64((n - 1) as f64);
    for (c, &(mean, m2)) in stats.iter().enumerate() {
        let invstd = (m2 * inv_n + eps).sqrt().recip();
        save_mean[c] = mean;
        save_invstd[c] = invstd;
        running_mean[c] = momentum * mean + keep * running_mean[c];
        running_var[c] = momentum * (m2 / n_unbiased) + keep * running_var[c];
    }
    let (save_mean, save_invstd) = (&*save_mean, &*save_invstd);
    write_rows(shape, y, |c, i| {
        act(
            (x[i] - save_mean[c]) * (gamma[c] * save_invstd[c]) + beta[c],
            params.relu,
        )
    });
    Ok(())
}

/// CPU forward, inference mode (and the CPU backend's op): writes `y` from the running stats.
#[allow(clippy::too_many_arguments)]
pub fn forward_inference_cpu<R: Real>(
    shape: &BatchNormShape,
    params: &BatchNormParams,
    x: &[R],
    gamma: &[R],
    beta: &[R],
    running_mean: &[R],
    running_var: &[R],
    y: &mut [R],
) -> Result<()> {
    shape.check(
        &[("x", x.len()), ("y", y.len())],
        &[
            ("gamma", gamma.len()),
            ("beta", beta.len()),
            ("running_mean", running_mean.len()),
            ("running_var", running_var.len()),
        ],
    )?;
    params.validate()?;
    let eps = R::from_f64(params.eps);
    let scale: Vec<R> = (0..shape.channels)
        .map(|c| gamma[c] * (running_var[c] + eps).sqrt().recip())
        .collect();
    write_rows(shape, y, |c, i| {
        act((x[i] - running_mean[c]) * scale[c] + beta[c], params.relu)
    });
    Ok(())
}

/// Per channel `[Σg, Σg·(x − mean)]`, `g` the masked `dy`.
fn grad_sums<R: Real>(
    shape: &BatchNormShape,
    relu: bool,
    x: &[R],
    y: &[R],
    dy: &[R],
    mean: &[R],
) -> Vec<[R; 2]> {
    (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let m = mean[c];
            channel_sums(shape, c, |i| {
                let g = masked(dy[i], y[i], relu);
                [g, g * (x[i] - m)]
            })
        })
        .collect()
}

/// CPU backward, training mode (and the CPU backend's op), from the forward's `save_mean`,
/// `save_invstd` and output `y` (read only with ReLU): assigns `dx`, accumulates `dgamma += Σ(g·x̂)`
/// and `dbeta += Σg`.
#[allow(clippy::too_many_arguments)]
pub fn backward_train_cpu<R: Real>(
    shape: &BatchNormShape,
    params: &BatchNormParams,
    x: &[R],
    y: &[R],
    gamma: &[R],
    save_mean: &[R],
    save_invstd: &[R],
    dy: &[R],
    dx: &mut [R],
    dgamma: &mut [R],
    dbeta: &mut [R],
) -> Result<()> {
    shape.check_backward_train(
        [x.len(), y.len(), dy.len(), dx.len()],
        [
            gamma.len(),
            save_mean.len(),
            save_invstd.len(),
            dgamma.len(),
            dbeta.len(),
        ],
    )?;
    params.validate()?;
    let sums = grad_sums(shape, params.relu, x, y, dy, save_mean);
    let inv_n = R::from_f64(1.0 / shape.per_channel() as f64);
    // dx = (g − (x − mean)·proj − mean_g)·scale, as PyTorch's batch_norm_backward_elemt.
    let coef: Vec<[R; 3]> = sums
        .iter()
        .enumerate()
        .map(|(c, &[sum_g, dot])| {
            let invstd = save_invstd[c];
            dgamma[c] = dgamma[c] + dot * invstd;
            dbeta[c] = dbeta[c] + sum_g;
            [
                sum_g * inv_n,
                dot * inv_n * invstd * invstd,
                invstd * gamma[c],
            ]
        })
        .collect();
    write_rows(shape, dx, |c, i| {
        let [mean_g, proj, scale] = coef[c];
        let g = masked(dy[i], y[i], params.relu);
        (g - (x[i] - save_mean[c]) * proj - mean_g) * scale
    });
    Ok(())
}

/// CPU backward, inference mode (and the CPU backend's op; also frozen-BN training), from the
/// running stats and the forward's output `y` (read only with ReLU): assigns
/// `dx = g·gamma·invstd`, accumulates `dgamma += Σ(g·x̂)` and `dbeta += Σg`.
#[allow(clippy::too_many_arguments)]
pub fn backward_inference_cpu<R: Real>(
    shape: &BatchNormShape,
    params: &BatchNormParams,
    x: &[R],
    y: &[R],
    gamma: &[R],
    running_mean: &[R],
    running_var: &[R],
    dy: &[R],
    dx: &mut [R],
    dgamma: &mut [R],
    dbeta: &mut [R],
) -> Result<()> {
    shape.check(
        &[
            ("x", x.len()),
            ("y", y.len()),
            ("dy", dy.len()),
            ("dx", dx.len()),
        ],
        &[
            ("gamma", gamma.len()),
            ("running_mean", running_mean.len()),
            ("running_var", running_var.len()),
            ("dgamma", dgamma.len()),
            ("dbeta", dbeta.len()),
        ],
    )?;
    params.validate()?;
    let eps = R::from_f64(params.eps);
    let invstd: Vec<R> = running_var
        .iter()
        .map(|&v| (v + eps).sqrt().recip())
        .collect();
    let sums = grad_sums(shape, params.relu, x, y, dy, running_mean);
    for (c, &[sum_g, dot]) in sums.iter().enumerate() {
        dgamma[c] = dgamma[c] + dot * invstd[c];
        dbeta[c] = dbeta[c] + sum_g;
    }
    write_rows(shape, dx, |c, i| {
        masked(dy[i], y[i], params.relu) * (gamma[c] * invstd[c])
    });
    Ok(())
}

const THREADS: u32 = 256;
/// Blocks to aim for over the whole (chunks, C) grid: about 8 resident blocks on each of 132 SMs.
const TARGET_BLOCKS: usize = 1024;
/// Fewest values per block worth a block of its own (8 per thread).
const MIN_PER_BLOCK: usize = 2048;
/// Largest grid y dimension, where the channels go.
const MAX_CHANNELS: usize = 65535;

/// How each channel's `n` values are split into blocks: `(chunks, chunk_len)`, none empty.
fn chunking(shape: &BatchNormShape) -> (usize, usize) {
    let n = shape.per_channel();
    let chunks = TARGET_BLOCKS
        .div_ceil(shape.channels)
        .min(n.div_ceil(MIN_PER_BLOCK))
        .max(1);
    let len = n.div_ceil(chunks);
    (n.div_ceil(len), len)
}

/// The batch-norm kernels for one shape and its params, with the partial-sum buffers allocated
/// once.
pub struct BatchNormGpu<T: Element> {
    shape: BatchNormShape,
    params: BatchNormParams,
    stream: Arc<CudaStream>,
    chunks: usize,
    chunk_len: usize,
    stats: CudaFunction,
    train_apply: CudaFunction,
    infer_apply: CudaFunction,
    train_grad_reduce: CudaFunction,
    train_grad_input: CudaFunction,
    infer_grad_reduce: CudaFunction,
    param_grads: CudaFunction,
    /// Per (channel, chunk): mean in the forward, Σg in the backward.
    part_a: CudaSlice<f32>,
    /// Per (channel, chunk): M2 in the forward, Σg·(x − mean) in the backward.
    part_b: CudaSlice<f32>,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> BatchNormGpu<T> {
    pub fn new(gpu: &Gpu, shape: BatchNormShape, params: BatchNormParams) -> Result<Self> {
        shape.validate()?;
        params.validate()?;
        if shape.channels > MAX_CHANNELS {
            return Err(Error::Shape(format!(
                "batch norm channels {} above the supported {MAX_CHANNELS}",
                shape.channels
            )));
        }
        let (chunks, chunk_len) = chunking(&shape);
        let src = &crate::sources::BATCH_NORM;
        Ok(BatchNormGpu {
            shape,
            params,
            stream: gpu.stream().clone(),
            chunks,
            chunk_len,
            stats: gpu.typed_function::<T>(src, "bn_stats")?,
            train_apply: gpu.typed_function::<T>(src, "bn_train_apply")?,
            infer_apply: gpu.typed_function::<T>(src, "bn_infer_apply")?,
            train_grad_reduce: gpu.typed_function::<T>(src, "bn_train_grad_reduce")?,
            train_grad_input: gpu.typed_function::<T>(src, "bn_train_grad_input")?,
            infer_grad_reduce: gpu.typed_function::<T>(src, "bn_infer_grad_reduce")?,
            param_grads: gpu.function(src, "bn_param_grads")?,
            part_a: gpu.alloc_zeros(shape.channels * chunks)?,
            part_b: gpu.alloc_zeros(shape.channels * chunks)?,
            _storage: std::marker::PhantomData,
        })
    }

    pub fn shape(&self) -> &BatchNormShape {
        &self.shape
    }

    pub fn params(&self) -> &BatchNormParams {
        &self.params
    }

    fn grid(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.chunks as u32, self.shape.channels as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `C, HW, n, chunk_len` as the kernels take them.
    fn dims(&self) -> [i32; 4] {
        let s = &self.shape;
        [
            s.channels as i32,
            s.hw() as i32,
            s.per_channel() as i32,
            self.chunk_len as i32,
        ]
    }

    /// Training mode: writes `y`, `save_mean`, `save_invstd` and updates `running_mean`,
    /// `running_var` in place, as [`forward_train_cpu`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &mut self,
        x: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        running_mean: &mut impl DevicePtrMut<f32>,
        running_var: &mut impl DevicePtrMut<f32>,
        y: &mut impl DevicePtrMut<T>,
        save_mean: &mut impl DevicePtrMut<f32>,
        save_invstd: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.shape.check_forward_train(
            [x.len(), y.len()],
            [
                gamma.len(),
                beta.len(),
                running_mean.len(),
                running_var.len(),
                save_mean.len(),
                save_invstd.len(),
            ],
        )?;
        self.shape.check_training()?;
        let [c, hw, n, chunk_len] = self.dims();
        let (eps, momentum) = (self.params.eps as f32, self.params.momentum as f32);
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let st = &self.stream;
        let (x, gamma, beta) = (
            device_addr(x, st),
            device_addr(gamma, st),
            device_addr(beta, st),
        );
        let running_mean = device_addr_mut(running_mean, st);
        let running_var = device_addr_mut(running_var, st);
        let y = device_addr_mut(y, st);
        let save_mean = device_addr_mut(save_mean, st);
        let save_invstd = device_addr_mut(save_invstd, st);
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            self.stream
                .launch_builder(&self.stats)
                .arg(&x)
                .arg(&mut self.part_a)
                .arg(&mut self.part_b)
                .arg(&c)
                .arg(&hw)
                .arg(&n)
                .arg(&chunk_len)
                .launch(cfg)?;
            self.stream
                .launch_builder(&self.train_apply)
                .arg(&x)
                .arg(&self.part_a)
                .arg(&self.part_b)
                .arg(&gamma)
                .arg(&beta)
                .arg(&running_mean)
                .arg(&running_var)
                .arg(&save_mean)
                .arg(&save_invstd)
                .arg(&y)
                .arg(&c)
                .arg(&hw)
                .arg(&n)
                .arg(&chunk_len)
                .arg(&eps)
                .arg(&momentum)
                .arg(&relu)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// Inference mode: writes `y` from the running stats, as [`forward_inference_cpu`].
    pub fn forward_inference(
        &mut self,
        x: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        running_mean: &impl DevicePtr<f32>,
        running_var: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.shape.check(
            &[("x", x.len()), ("y", y.len())],
            &[
                ("gamma", gamma.len()),
                ("beta", beta.len()),
                ("running_mean", running_mean.len()),
                ("running_var", running_var.len()),
            ],
        )?;
        let [c, hw, n, chunk_len] = self.dims();
        let eps = self.params.eps as f32;
        let relu = self.params.relu as i32;
        let st = &self.stream;
        let (x, gamma, beta) = (
            device_addr(x, st),
            device_addr(gamma, st),
            device_addr(beta, st),
        );
        let running_mean = device_addr(running_mean, st);
        let running_var = device_addr(running_var, st);
        let y = device_addr_mut(y, st);
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            self.stream
                .launch_builder(&self.infer_apply)
                .arg(&x)
                .arg(&gamma)
                .arg(&beta)
                .arg(&running_mean)
                .arg(&running_var)
                .arg(&y)
                .arg(&c)
                .arg(&hw)
                .arg(&n)
                .arg(&chunk_len)
                .arg(&eps)
                .arg(&relu)
                .launch(self.grid())?;
        }
        Ok(())
    }

    /// Training-mode backward, as [`backward_train_cpu`]: assigns `dx`, accumulates `dgamma` and
    /// `dbeta` (`+=`). `y` is the forward's output, read only with ReLU.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_train(
        &mut self,
        x: &impl DevicePtr<T>,
        y: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        save_mean: &impl DevicePtr<f32>,
        save_invstd: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
        dgamma: &mut impl DevicePtrMut<f32>,
        dbeta: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.shape.check_backward_train(
            [x.len(), y.len(), dy.len(), dx.len()],
            [
                gamma.len(),
                save_mean.len(),
                save_invstd.len(),
                dgamma.len(),
                dbeta.len(),
            ],
        )?;
        let [c, hw, n, chunk_len] = self.dims();
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let st = &self.stream;
        let (x, y, dy) = (device_addr(x, st), device_addr(y, st), device_addr(dy, st));
        let gamma = device_addr(gamma, st);
        let (save_mean, save_invstd) = (device_addr(save_mean, st), device_addr(save_invstd, st));
        let dx = device_addr_mut(dx, st);
        let (dgamma, dbeta) = (device_addr_mut(dgamma, st), device_addr_mut(dbeta, st));
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            self.stream
                .launch_builder(&self.train_grad_reduce)
                .arg(&x)
                .arg(&y)
                .arg(&dy)
                .arg(&save_mean)
                .arg(&mut self.part_a)
                .arg(&mut self.part_b)
                .arg(&c)
                .arg(&hw)
                .arg(&n)
                .arg(&chunk_len)
                .arg(&relu)
                .launch(cfg)?;
            self.stream
                .launch_builder(&self.train_grad_input)
                .arg(&x)
                .arg(&y)
                .arg(&dy)
                .arg(&save_mean)
                .arg(&save_invstd)
                .arg(&gamma)
                .arg(&self.part_a)
                .arg(&self.part_b)
                .arg(&dx)
                .arg(&dgamma)
                .arg(&dbeta)
                .arg(&c)
                .arg(&hw)
                .arg(&n)
                .arg(&chunk_len)
                .arg(&relu)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// Inference-mode backward (frozen BN), as [`backward_inference_cpu`]: assigns `dx`,
    /// accumulates `dgamma` and `dbeta` (`+=`). `y` is the forward's output, read only with ReLU.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_inference(
        &mut self,
        x: &impl DevicePtr<T>,
        y: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        running_mean: &impl DevicePtr<f32>,
        running_var: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
        dgamma: &mut impl DevicePtrMut<f32>,
        dbeta: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.shape.check(
            &[
                ("x", x.len()),
                ("y", y.len()),
                ("dy", dy.len()),
                ("dx", dx.len()),
            ],
            &[
                ("gamma", gamma.len()),
                ("running_mean", running_mean.len()),
                ("running_var", running_var.len()),
                ("dgamma", dgamma.len()),
                ("dbeta", dbeta.len()),
            ],
        )?;
        let [c, hw, n, chunk_len] = self.dims();
        let chunks = self.chunks as i32;
        let eps = self.params.eps as f32;
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let per_channel = LaunchConfig {
            grid_dim: (self.shape.channels as u32, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        let st = &self.stream;
        let (x, y, dy) = (device_addr(x, st), device_addr(y, st), device_addr(dy, st));
        let gamma = device_addr(gamma, st);
        let running_mean = device_addr(running_mean, st);
        let running_var = device_addr(running_var, st);
        let dx = device_addr_mut(dx, st);
        let (dgamma, dbeta) = (device_addr_mut(dgamma, st), device_addr_mut(dbeta, st));
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            self.stream
                .launch_builder(&self.infer_grad_reduce)
                .arg(&x)
                .arg(&y)
                .arg(&dy)
                .arg(&running_mean)
                .arg(&gamma)
                .arg(&running_var)
                .arg(&dx)
                .arg(&mut self.part_a)
                .arg(&mut self.part_b)
                .arg(&c)
                .arg(&hw)
                .arg(&n)
                .arg(&chunk_len)
                .arg(&eps)
                .arg(&relu)
                .launch(cfg)?;
            self.stream
                .launch_builder(&self.param_grads)
                .arg(&self.part_a)
                .arg(&self.part_b)
                .arg(&chunks)
                .arg(&running_var)
                .arg(&eps)
                .arg(&dgamma)
                .arg(&dbeta)
                .launch(per_channel)?;
        }
        Ok(())
    }
}
