//! The center loss and its moving-average center update, under one of two rules:
//!
//! - [`CenterRule::MovingAverage`], the paper's (Eq. 2 and 3), the default: the loss is taken
//!   against the raw center, `loss = (λ/B) Σ_i ‖f_i − c_{y_i}‖²`, `df_i = (2λ/B)(f_i − c_{y_i})`
//!   (assigned, centers before the update), then every sample in batch order moves its class's
//!   center, `c_y ← (1 − β)c_y + β·f_i`: a class seen `n` times in the batch moves `n` times,
//!   `c ← (1 − β)ⁿc + β Σ_j (1 − β)^(n−j) f_j`.
//! - [`CenterRule::Normalized`], the WS-DAN reimplementations' (`--center-rule normalized`): the
//!   loss is taken against `ĉ_k = c_k / max(‖c_k‖, 1e-12)` (a zero center stays zero), and every
//!   class `k` in the batch moves by `c_k ← c_k + β·Σ_{i: y_i=k} (f_i − ĉ_k)`, `ĉ` taken before
//!   the update (repeated labels accumulate, as in the official TensorFlow code). With unit-norm
//!   features and centers from zero this makes each center the last feature seen of its class
//!   (docs/method.md).
//!
//! `f [B, D]` is the normalised BAP output (`D = M·N`), `y [B]` the labels, `c [C, D]` the centers:
//! non-trainable state that starts at zero. The centers are always f32 on the GPU, even when the
//! features are bf16: an accumulator of many small steps must not be rounded to bf16.
//!
//! A label outside `[0, C)` is an [`Error::Label`] (the first such sample is named) and leaves the
//! centers untouched; the GPU kernels never access memory through a bad label.
//! Kernels: `kernels/center_loss.cu`, deterministic (no float atomics).
//!
//! λ warms up over the epochs, so the GPU kernels read it as the two scales
//! [`CenterLossParams::scales`], `[2λ/B, λ/B]`, from a slot in device memory that the host writes
//! before the step: a step captured into a CUDA graph then replays with each step's λ.
//! [`CenterUpdate`] is what stays fixed for a run.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{grid, grid_with_shared, read_loss_status, stats_addr, Gpu};
use crate::element::Element;
use crate::error::{check_labels, check_len, check_shape, Error, Result};
use crate::launch;
use crate::Real;

/// Floor of a center's norm, as in `F.normalize`.
pub const NORM_EPS: f64 = 1e-12;
/// WS-DAN's center update rate.
pub const DEFAULT_BETA: f64 = 0.05;
/// Largest batch the kernels take (its labels are staged in shared memory).
pub const MAX_BATCH: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CenterLossShape {
    pub batch: usize,
    /// Feature length D = M·N.
    pub dim: usize,
    pub classes: usize,
}

impl CenterLossShape {
    pub fn features_len(&self) -> usize {
        self.batch * self.dim
    }
    pub fn centers_len(&self) -> usize {
        self.classes * self.dim
    }

    #[doc(hidden)] // for c2f-baselines
    pub fn validate(&self) -> Result<()> {
        if self.batch > MAX_BATCH {
            return Err(Error::Shape(format!(
                "center loss batch {} is above the supported {MAX_BATCH}",
                self.batch
            )));
        }
        check_shape(
            "center loss shape",
            self,
            &[self.batch, self.dim, self.classes],
            &[
                &[self.dim],
                &[self.classes],
                &[self.batch, self.dim.div_ceil(CHUNK)],
            ],
        )
    }

    /// Checks the lengths of `features`, `labels`, `centers` and `d_features` against the shape.
    #[doc(hidden)] // for c2f-baselines
    pub fn check_buffers(
        &self,
        features: usize,
        labels: usize,
        centers: usize,
        d_features: usize,
    ) -> Result<()> {
        check_len("center loss features", features, self.features_len())?;
        check_len("center loss labels", labels, self.batch)?;
        check_len("center loss centers", centers, self.centers_len())?;
        check_len("center loss d_features", d_features, self.features_len())
    }
}

/// How the centers enter the loss and move (the module docs give both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CenterRule {
    /// The paper's Eq. 2 and 3: raw centers, `c ← (1 − β)c + βf` once per sample.
    #[default]
    MovingAverage,
    /// The WS-DAN reimplementations': normalised centers, `c += β Σ (f − ĉ)`.
    Normalized,
}

/// The loss weight λ, the center update rate β and the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CenterLossParams {
    pub lambda: f64,
    pub beta: f64,
    pub rule: CenterRule,
}

/// What of [`CenterLossParams`] is fixed for a run: the update rate β and the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CenterUpdate {
    pub beta: f64,
    pub rule: CenterRule,
}

impl CenterLossParams {
    /// The update rate and rule.
    pub fn update(&self) -> CenterUpdate {
        CenterUpdate {
            beta: self.beta,
            rule: self.rule,
        }
    }

    /// `[2λ/B, λ/B]` for a batch of `batch`: the gradient's and the loss's factors, what a
    /// scales slot holds.
    pub fn scales(&self, batch: usize) -> [f64; 2] {
        let b = batch as f64;
        [2.0 * self.lambda / b, self.lambda / b]
    }
}

impl Default for CenterLossParams {
    /// λ = 1 (the paper's), β = [`DEFAULT_BETA`], the paper's rule.
    fn default() -> Self {
        CenterLossParams {
            lambda: 1.0,
            beta: DEFAULT_BETA,
            rule: CenterRule::MovingAverage,
        }
    }
}

/// CPU reference: writes `d_features [B, D]`, updates `centers [C, D]` in place and returns the
/// loss. On a bad label it returns [`Error::Label`] and writes nothing.
pub fn forward_update_cpu<R: Real>(
    shape: &CenterLossShape,
    params: &CenterLossParams,
    features: &[R],
    labels: &[i32],
    centers: &mut [R],
    d_features: &mut [R],
) -> Result<R> {
    let scales = params.scales(shape.batch).map(R::from_f64);
    let (update, grads) = (params.update(), (centers, d_features));
    forward_update_scaled_cpu(shape, &update, scales, features, labels, grads)
}

/// [`forward_update_cpu`] with λ given as its `scales` (the CPU backend's op, which reads them
/// from its slot), `(centers, d_features)` written.
pub fn forward_update_scaled_cpu<R: Real>(
    shape: &CenterLossShape,
    update: &CenterUpdate,
    [grad_scale, loss_scale]: [R; 2],
    features: &[R],
    labels: &[i32],
    (centers, d_features): (&mut [R], &mut [R]),
) -> Result<R> {
    shape.validate()?;
    shape.check_buffers(
        features.len(),
        labels.len(),
        centers.len(),
        d_features.len(),
    )?;
    check_labels(labels, shape.classes)?;
    let d = shape.dim;
    let floor = R::from_f64(NORM_EPS);
    let beta = R::from_f64(update.beta);
    let normalized = update.rule == CenterRule::Normalized;

    // The center each sample's loss is taken against, for every class in the batch, before any
    // update: the raw center, or ĉ.
    let mut present = vec![false; shape.classes];
    labels.iter().for_each(|&y| present[y as usize] = true);
    let targets: Vec<Option<Vec<R>>> = centers
        .par_chunks(d)
        .zip(present.par_iter())
        .map(|(c, &here)| {
            here.then(|| {
                if !normalized {
                    return c.to_vec();
                }
                let inv = c
                    .iter()
                    .map(|&v| v * v)
                    .sum::<R>()
                    .sqrt()
                    .max(floor)
                    .recip();
                c.iter().map(|&v| v * inv).collect()
            })
        })
        .collect();
    let target = |i: usize| targets[labels[i] as usize].as_deref().unwrap();

    let sample_sq: Vec<R> = d_features
        .par_chunks_mut(d)
        .enumerate()
        .map(|(i, df)| {
            let f = &features[i * d..][..d];
            let mut sq = R::zero();
            for ((g, &fv), &cv) in df.iter_mut().zip(f).zip(target(i)) {
                let diff = fv - cv;
                *g = grad_scale * diff;
                sq = sq + diff * diff;
            }
            sq
        })
        .collect();
    let loss = sample_sq.into_iter().sum::<R>() * loss_scale;

    let keep = R::one() - beta;
    centers
        .par_chunks_mut(d)
        .zip(targets.par_iter())
        .enumerate()
        .for_each(|(k, (c, target_k))| {
            let Some(target_k) = target_k else { return };
            let samples = labels.iter().enumerate().filter(|(_, &y)| y as usize == k);
            if normalized {
                let mut acc = vec![R::zero(); d];
                for (i, _) in samples {
                    let f = &features[i * d..][..d];
                    for ((a, &fv), &cv) in acc.iter_mut().zip(f).zip(target_k) {
                        *a = *a + (fv - cv);
                    }
                }
                for (cv, a) in c.iter_mut().zip(acc) {
                    *cv = *cv + beta * a;
                }
            } else {
                for (i, _) in samples {
                    let f = &features[i * d..][..d];
                    for (cv, &fv) in c.iter_mut().zip(f) {
                        *cv = keep * *cv + beta * fv;
                    }
                }
            }
        });
    Ok(loss)
}

/// Elements of D per block; must match `CL_CHUNK` in the kernel file.
const CHUNK: usize = 1024;
#[doc(hidden)] // for c2f-baselines
pub const THREADS: u32 = 256;
/// `state` layout, see the kernel file: status, block counter, then loss bits, status, label.
const STATE_LEN: usize = 5;
const RESULT: std::ops::Range<usize> = 2..5;

/// The kernels' `beta` and `normalized` arguments.
#[doc(hidden)] // for c2f-baselines
pub fn launch_params(update: &CenterUpdate) -> (f32, i32) {
    (
        update.beta as f32,
        (update.rule == CenterRule::Normalized) as i32,
    )
}

/// The fused center-loss kernels for one shape, with their scratch buffers allocated once.
pub struct CenterLossGpu<T: Element> {
    shape: CenterLossShape,
    k: CenterLossKernels<T>,
    /// Partial ‖c_{y_i}‖² per (sample, chunk of D), for [`CenterRule::Normalized`].
    sumsq: CudaSlice<f32>,
    /// Partial loss per (sample, chunk of D).
    loss_parts: CudaSlice<f32>,
    /// Bad-label status, block counter and the result read back by [`Self::finish`].
    state: CudaSlice<i32>,
}

crate::kernel_set! {
    struct CenterLossKernels: crate::sources::CENTER_LOSS;
    typed: center_loss_update;
    plain: center_loss_center_sumsq;
}

impl<T: Element> CenterLossGpu<T> {
    pub fn new(gpu: &Gpu, shape: CenterLossShape) -> Result<Self> {
        shape.validate()?;
        let parts = shape.batch * shape.dim.div_ceil(CHUNK);
        Ok(CenterLossGpu {
            shape,
            k: CenterLossKernels::new(gpu)?,
            sumsq: gpu.alloc_zeros(parts)?,
            loss_parts: gpu.alloc_zeros(parts)?,
            state: gpu.alloc_zeros(STATE_LEN)?,
        })
    }

    pub fn shape(&self) -> &CenterLossShape {
        &self.shape
    }

    /// Launches the two kernels, which write `d_features` and update `centers`, without waiting,
    /// with λ as the 2-value slot `scales` ([`CenterLossParams::scales`]) holds when they run.
    /// The loss and any bad label stay on the device until [`Self::finish`]; call it before the
    /// next `enqueue` to see them. A bad label leaves the centers untouched (`d_features` is then
    /// unspecified). With `stats` they also write the loss (f32; NaN after a bad label) to that
    /// 1-value slot: the trainer's step statistics, read when it chooses, not by
    /// [`Self::finish`].
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &mut self,
        update: &CenterUpdate,
        scales: &impl DevicePtr<f32>,
        features: &impl DevicePtr<T>,
        labels: &impl DevicePtr<i32>,
        centers: &mut impl DevicePtrMut<f32>,
        d_features: &mut impl DevicePtrMut<T>,
        stats: Option<&mut impl DevicePtrMut<f32>>,
    ) -> Result<()> {
        let stats = stats_addr(stats, 1, &self.k.stream)?;
        check_len("center loss scales slot", scales.len(), 2)?;
        let s = self.shape;
        s.check_buffers(
            features.len(),
            labels.len(),
            centers.len(),
            d_features.len(),
        )?;
        let (b, d, c) = (s.batch as i32, s.dim as i32, s.classes as i32);
        let (beta, normalized) = launch_params(update);
        let chunks = (s.dim.div_ceil(CHUNK) as u32, s.batch as u32, 1);
        let labels_smem = (s.batch * std::mem::size_of::<i32>()) as u32;
        // SAFETY: buffer lengths checked above match the kernels' indexing (`stats`, when not
        // null, holds 1 value: `stats_addr`; `scales` 2); labels are checked on the device
        // before any center access.
        unsafe {
            launch!(self.k.center_loss_center_sumsq, grid(chunks, THREADS), [
                out centers, in labels, &mut self.sumsq, &mut self.state, &b, &d, &c, &normalized
            ])?;
            launch!(self.k.center_loss_update, grid_with_shared(chunks, THREADS, labels_smem), [
                in features, in labels, out centers, &self.sumsq, out d_features,
                &mut self.loss_parts, &mut self.state, &stats, &b, &d, in scales, &beta,
                &normalized
            ])?;
        }
        Ok(())
    }

    /// Waits for the last [`Self::enqueue`] and returns its loss, or its bad label as an error:
    /// the one synchronisation, a 12-byte device-to-host read.
    pub fn finish(&mut self) -> Result<f32> {
        read_loss_status(
            &self.k.stream,
            &self.state.slice(RESULT),
            self.shape.batch,
            self.shape.classes,
        )
    }
}
