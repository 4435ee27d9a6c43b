//! Sigmoid binary cross-entropy for multi-label heads (PyTorch
//! `F.binary_cross_entropy_with_logits`, mean reduction over every element), as CelebA's
//! attribute head uses it (the paper's Table 9).
//!
//! Logits `x [B, A]`, targets `t [B, A]` (0 or 1; soft targets in `[0, 1]` work the same):
//!
//! - `l[b,a] = max(x, 0) − x·t + ln(1 + e^(−|x|))`, finite for every finite `x`;
//! - `loss = (1/B) Σ_b (1/A) Σ_a l[b,a]`, each row's mean first, then the rows' in index order,
//!   as the GPU's finishing kernel sums them (the same bits on every run);
//! - `dx[b,a] = loss_scale·(σ(x[b,a]) − t[b,a])/(B·A)`, assigned (an activation gradient); the
//!   returned loss is not scaled;
//! - `predictions[b,a] = 1` when `x[b,a] > 0` (σ > ½), else 0 (NaN gives 0), so the trainer can
//!   count each attribute's right answers.
//!
//! Targets are not checked: they come from the dataset's ±1 attributes. Kernels:
//! `kernels/sigmoid_bce.cu`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{grid, stats_addr, Gpu};
use crate::element::Element;
use crate::error::{check_len, check_shape, Error, Result};
use crate::launch;
use crate::Real;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigmoidBceShape {
    pub batch: usize,
    /// Binary outputs per sample (attributes).
    pub outputs: usize,
}

impl SigmoidBceShape {
    pub fn len(&self) -> usize {
        self.batch * self.outputs
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[doc(hidden)] // for c2f-baselines
    pub fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.outputs];
        check_shape("sigmoid BCE shape", self, &dims, &[&dims])
    }

    /// Checks the shape and the buffer lengths.
    fn check(
        &self,
        logits: usize,
        targets: usize,
        predictions: usize,
        dlogits: usize,
    ) -> Result<()> {
        self.validate()?;
        for (what, len) in [
            ("logits", logits),
            ("targets", targets),
            ("predictions", predictions),
            ("dlogits", dlogits),
        ] {
            check_len(&format!("sigmoid BCE {what}"), len, self.len())?;
        }
        Ok(())
    }

    /// `dlogits = coef·(σ − t)` with `coef = loss_scale / (B·A)`, as the kernels take it.
    #[doc(hidden)] // for c2f-baselines
    pub fn grad_coef(&self, loss_scale: f64) -> Result<f64> {
        if loss_scale.is_finite() {
            Ok(loss_scale / self.len() as f64)
        } else {
            Err(Error::Shape(format!(
                "sigmoid BCE loss_scale {loss_scale} is not finite"
            )))
        }
    }
}

/// `σ(x)` without overflow for large `|x|`.
pub fn sigmoid<R: Real>(x: R) -> R {
    let e = (-x.abs()).exp();
    if x >= R::zero() {
        (R::one() + e).recip()
    } else {
        e / (R::one() + e)
    }
}

/// One row: writes its predictions and gradient; returns the row's mean loss.
fn bce_row<R: Real>(x: &[R], t: &[R], pred: &mut [i32], coef: R, dx: &mut [R]) -> R {
    let mut sum = R::zero();
    for (((&x, &t), p), d) in x.iter().zip(t).zip(pred.iter_mut()).zip(dx) {
        sum = sum + x.max(R::zero()) - x * t + (-x.abs()).exp().ln_1p();
        *p = (x > R::zero()) as i32;
        *d = coef * (sigmoid(x) - t);
    }
    sum / R::from_f64(x.len() as f64)
}

/// CPU reference (and the CPU backend's op): writes `predictions [B, A]` and `dlogits [B, A]`
/// (assigned, scaled by `loss_scale`) and returns the mean loss (not scaled).
pub fn forward_backward_cpu<R: Real>(
    shape: &SigmoidBceShape,
    logits: &[R],
    targets: &[R],
    loss_scale: f64,
    predictions: &mut [i32],
    dlogits: &mut [R],
) -> Result<R> {
    shape.check(
        logits.len(),
        targets.len(),
        predictions.len(),
        dlogits.len(),
    )?;
    let a = shape.outputs;
    let coef = R::from_f64(shape.grad_coef(loss_scale)?);
    let row_loss: Vec<R> = logits
        .par_chunks(a)
        .zip(targets.par_chunks(a))
        .zip(predictions.par_chunks_mut(a))
        .zip(dlogits.par_chunks_mut(a))
        .map(|(((x, t), p), dx)| bce_row(x, t, p, coef, dx))
        .collect();
    // Summed in index order, then divided, as the GPU's finishing kernel does.
    Ok(row_loss.into_iter().fold(R::zero(), |s, l| s + l) / R::from_f64(shape.batch as f64))
}

const BCE_THREADS: u32 = 128;

/// The sigmoid BCE kernels for one shape, with their scratch buffers allocated once.
pub struct SigmoidBceGpu<T: Element> {
    shape: SigmoidBceShape,
    k: SigmoidBceKernels<T>,
    /// Each sample's mean loss, summed in order by the finishing kernel.
    row_loss: CudaSlice<f32>,
    /// Each sample's answers equal to their target, counted by the finishing kernel.
    row_correct: CudaSlice<f32>,
    /// The batch's mean loss.
    result: CudaSlice<f32>,
}

crate::kernel_set! {
    struct SigmoidBceKernels: crate::sources::SIGMOID_BCE;
    typed: sigmoid_bce_forward_backward;
    plain: sigmoid_bce_finish;
}

impl<T: Element> SigmoidBceGpu<T> {
    pub fn new(gpu: &Gpu, shape: SigmoidBceShape) -> Result<Self> {
        shape.validate()?;
        Ok(SigmoidBceGpu {
            shape,
            k: SigmoidBceKernels::new(gpu)?,
            row_loss: gpu.alloc_zeros(shape.batch)?,
            row_correct: gpu.alloc_zeros(shape.batch)?,
            result: gpu.alloc_zeros(1)?,
        })
    }

    pub fn shape(&self) -> &SigmoidBceShape {
        &self.shape
    }

    /// Launches both kernels, which write `predictions` and `dlogits` (assigned, scaled by
    /// `loss_scale`), without waiting; the mean loss (not scaled) stays on the device until
    /// [`Self::finish`]. With `stats` they also write `[mean loss, correct answers]` (f32) to
    /// that 2-value slot: the trainer's step statistics, read when it chooses, not by
    /// [`Self::finish`].
    pub fn enqueue_forward_backward(
        &mut self,
        logits: &impl DevicePtr<T>,
        targets: &impl DevicePtr<T>,
        loss_scale: f64,
        predictions: &mut impl DevicePtrMut<i32>,
        dlogits: &mut impl DevicePtrMut<T>,
        stats: Option<&mut impl DevicePtrMut<f32>>,
    ) -> Result<()> {
        let stats = stats_addr(stats, 2, &self.k.stream)?;
        let s = self.shape;
        s.check(
            logits.len(),
            targets.len(),
            predictions.len(),
            dlogits.len(),
        )?;
        let coef = s.grad_coef(loss_scale)? as f32;
        let (a, b) = (s.outputs as i32, s.batch as i32);
        // One block per sample, then one for the mean.
        let (rows, one) = (
            grid((b as u32, 1, 1), BCE_THREADS),
            grid((1, 1, 1), BCE_THREADS),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing (B blocks of A);
        // `row_loss` and `row_correct` hold B elements, `result` one, `stats` (when not null) 2,
        // checked by `stats_addr`.
        unsafe {
            launch!(self.k.sigmoid_bce_forward_backward, rows, [
                in logits, in targets, out dlogits, out predictions, &mut self.row_loss,
                &mut self.row_correct, &a, &coef
            ])?;
            launch!(
                self.k.sigmoid_bce_finish,
                one,
                [
                    &self.row_loss,
                    &self.row_correct,
                    &mut self.result,
                    &stats,
                    &b
                ]
            )?;
        }
        Ok(())
    }

    /// Waits for the last [`Self::enqueue_forward_backward`] and reads its mean loss (4 bytes):
    /// the one synchronisation.
    pub fn finish(&mut self) -> Result<f32> {
        let mut loss = [0.0f32];
        self.k.stream.memcpy_dtoh(&self.result, &mut loss)?;
        self.k.stream.synchronize()?;
        Ok(loss[0])
    }
}
