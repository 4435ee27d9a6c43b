//! Softmax cross-entropy (PyTorch `F.cross_entropy`, mean reduction).
//!
//! Cross-entropy, logits `x [B, C]`, labels `y [B]`:
//!
//! - `loss = (1/B) Σ_b −log softmax(x_b)[y_b]`, computed stably: with `m_b = max_j x[b,j]` and
//!   `s_b = Σ_j exp(x[b,j] − m_b)`, `−log softmax(x_b)[y_b] = −((x[b,y_b] − m_b) − ln s_b)`.
//! - `dx[b,j] = loss_scale·(softmax(x_b)[j] − [j = y_b])/B`, assigned (an activation gradient).
//!   `loss_scale` lets the trainer weight several losses; the returned loss is not scaled by it.
//! - `predictions[b] = argmax_j x[b,j]`, ties to the first index and NaN above everything, as
//!   `torch.argmax`, so the trainer can count correct samples.
//!
//! A label outside `[0, C)` is an [`Error::Label`] naming the first such sample. The CPU version
//! then writes nothing; the GPU kernels never read or write through a bad label (the outputs are
//! then unspecified). The batch mean is summed in a fixed order: the same bits on every run.
//!
//! Kernels: `kernels/softmax_ce.cu`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{grid, read_loss_status, stats_addr, Gpu, LaunchConfig};
use crate::element::Element;
use crate::error::{check_labels, check_len, check_shape, Error, Result};
use crate::launch;
use crate::Real;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SoftmaxCeShape {
    pub batch: usize,
    pub classes: usize,
}

impl SoftmaxCeShape {
    pub fn logits_len(&self) -> usize {
        self.batch * self.classes
    }

    #[doc(hidden)] // for c2f-baselines
    pub fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.classes];
        check_shape(
            "softmax cross-entropy shape",
            self,
            &dims,
            &[&[self.batch], &[self.classes]],
        )
    }

    /// Checks the shape and the buffer lengths; `dlogits` only when there is a gradient.
    fn check(
        &self,
        logits: usize,
        labels: usize,
        predictions: usize,
        dlogits: Option<usize>,
    ) -> Result<()> {
        self.validate()?;
        check_len("softmax CE logits", logits, self.logits_len())?;
        check_len("softmax CE labels", labels, self.batch)?;
        check_len("softmax CE predictions", predictions, self.batch)?;
        match dlogits {
            Some(len) => check_len("softmax CE dlogits", len, self.logits_len()),
            None => Ok(()),
        }
    }
}

#[doc(hidden)] // for c2f-baselines
pub fn check_loss_scale(loss_scale: f64) -> Result<()> {
    if loss_scale.is_finite() {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "softmax CE loss_scale {loss_scale} is not finite"
        )))
    }
}

/// `dlogits = coef·(softmax − onehot)` with `coef = loss_scale / B`, as the kernels take it.
#[doc(hidden)] // for c2f-baselines
pub fn grad_coef(shape: &SoftmaxCeShape, loss_scale: f64) -> f64 {
    loss_scale / shape.batch as f64
}

/// True when `(a, ia)` comes before `(b, ib)` in `torch.argmax` order: NaN first, then the larger
/// value, ties to the lower index. The kernel's `ce_better` is the same.
fn argmax_better<R: Real>(a: R, ia: usize, b: R, ib: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a > b || (a == b && ia < ib),
        (a_nan, b_nan) => a_nan && (!b_nan || ia < ib),
    }
}

/// One row: writes its prediction and, with `grad = Some((coef, dx))`, its gradient; returns
/// `−log softmax(x)[label]`. `label` is valid.
fn ce_row<R: Real>(x: &[R], label: usize, pred: &mut i32, grad: Option<(R, &mut [R])>) -> R {
    let (mut best, mut best_i) = (x[0], 0);
    for (j, &v) in x.iter().enumerate().skip(1) {
        if argmax_better(v, j, best, best_i) {
            (best, best_i) = (v, j);
        }
    }
    *pred = best_i as i32;
    let mx = best;
    let sum: R = x.iter().map(|&v| (v - mx).exp()).sum();
    if let Some((coef, dx)) = grad {
        let inv = sum.recip();
        for (j, (d, &v)) in dx.iter_mut().zip(x).enumerate() {
            let p = (v - mx).exp() * inv;
            *d = coef * if j == label { p - R::one() } else { p };
        }
    }
    -((x[label] - mx) - sum.ln())
}

fn ce_cpu<R: Real>(
    shape: &SoftmaxCeShape,
    logits: &[R],
    labels: &[i32],
    predictions: &mut [i32],
    grad: Option<(f64, &mut [R])>,
) -> Result<R> {
    shape.check(
        logits.len(),
        labels.len(),
        predictions.len(),
        grad.as_ref().map(|(_, d)| d.len()),
    )?;
    check_labels(labels, shape.classes)?;
    let c = shape.classes;
    let rows = logits.par_chunks(c).zip(labels).zip(predictions);
    let row_loss: Vec<R> = match grad {
        Some((loss_scale, dlogits)) => {
            check_loss_scale(loss_scale)?;
            let coef = R::from_f64(grad_coef(shape, loss_scale));
            rows.zip(dlogits.par_chunks_mut(c))
                .map(|(((x, &y), pred), dx)| ce_row(x, y as usize, pred, Some((coef, dx))))
                .collect()
        }
        None => rows
            .map(|((x, &y), pred)| ce_row(x, y as usize, pred, None))
            .collect(),
    };
    // Summed in index order, then divided, as the GPU's finishing kernel does.
    Ok(row_loss.into_iter().fold(R::zero(), |a, l| a + l) / R::from_f64(shape.batch as f64))
}

/// CPU reference (and the CPU backend's op), evaluation: writes `predictions [B]` and returns the
/// mean loss. On a bad label returns [`Error::Label`] and writes nothing.
pub fn forward_cpu<R: Real>(
    shape: &SoftmaxCeShape,
    logits: &[R],
    labels: &[i32],
    predictions: &mut [i32],
) -> Result<R> {
    ce_cpu(shape, logits, labels, predictions, None)
}

/// CPU reference (and the CPU backend's op), training: writes `predictions [B]` and
/// `dlogits [B, C]` (assigned, scaled by `loss_scale`) and returns the mean loss (not scaled).
/// On a bad label returns [`Error::Label`] and writes nothing.
pub fn forward_backward_cpu<R: Real>(
    shape: &SoftmaxCeShape,
    logits: &[R],
    labels: &[i32],
    loss_scale: f64,
    predictions: &mut [i32],
    dlogits: &mut [R],
) -> Result<R> {
    ce_cpu(
        shape,
        logits,
        labels,
        predictions,
        Some((loss_scale, dlogits)),
    )
}

const CE_THREADS: u32 = 256;
/// `state` layout, see the kernel file: status, then loss bits, status copy, bad label.
const STATE_LEN: usize = 4;
const RESULT: std::ops::Range<usize> = 1..4;

/// One block per sample.
fn rows_config(shape: &SoftmaxCeShape) -> LaunchConfig {
    grid((shape.batch as u32, 1, 1), CE_THREADS)
}

/// The softmax cross-entropy kernels for one shape, with their scratch buffers allocated once.
pub struct SoftmaxCeGpu<T: Element> {
    shape: SoftmaxCeShape,
    k: SoftmaxCeKernels<T>,
    /// `−log softmax[label]` per sample, summed in order by the finishing kernel.
    row_loss: CudaSlice<f32>,
    /// Whether each sample's prediction is its label (0 or 1), counted by the finishing kernel.
    row_correct: CudaSlice<i32>,
    /// Bad-label status and the result read back by [`Self::finish`].
    state: CudaSlice<i32>,
}

crate::kernel_set! {
    struct SoftmaxCeKernels: crate::sources::SOFTMAX_CE;
    typed: softmax_ce_forward, softmax_ce_forward_backward;
    plain: softmax_ce_finish;
}

impl<T: Element> SoftmaxCeGpu<T> {
    pub fn new(gpu: &Gpu, shape: SoftmaxCeShape) -> Result<Self> {
        shape.validate()?;
        Ok(SoftmaxCeGpu {
            shape,
            k: SoftmaxCeKernels::new(gpu)?,
            row_loss: gpu.alloc_zeros(shape.batch)?,
            row_correct: gpu.alloc_zeros(shape.batch)?,
            state: gpu.alloc_zeros(STATE_LEN)?,
        })
    }

    pub fn shape(&self) -> &SoftmaxCeShape {
        &self.shape
    }

    /// Evaluation: launches the kernels that write `predictions`, without waiting;
    /// [`Self::finish`] then returns the mean loss, or [`Error::Label`].
    pub fn enqueue_forward(
        &mut self,
        logits: &impl DevicePtr<T>,
        labels: &impl DevicePtr<i32>,
        predictions: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        let s = self.shape;
        s.check(logits.len(), labels.len(), predictions.len(), None)?;
        let (b, c) = (s.batch as i32, s.classes as i32);
        // SAFETY: buffer lengths checked above match the kernel's indexing; a label is checked
        // on the device before it is used as an index.
        unsafe {
            launch!(self.k.softmax_ce_forward, rows_config(&s), [
                in logits, in labels, out predictions, &mut self.row_loss, &mut self.row_correct,
                &mut self.state, &b, &c
            ])?;
        }
        self.launch_finish(labels, 0)
    }

    /// Training: launches the kernels that write `predictions` and `dlogits` (assigned, scaled by
    /// `loss_scale`), without waiting. The mean loss (not scaled) and any bad label stay on the
    /// device until [`Self::finish`]; call it before the next `enqueue_*` to see them (after a
    /// bad label `predictions` and `dlogits` are unspecified). With `stats` they also write
    /// `[mean loss, correct predictions]` (f32; a NaN loss after a bad label) to that 2-value
    /// slot: the trainer's step statistics, read when it chooses, not by [`Self::finish`].
    pub fn enqueue_forward_backward(
        &mut self,
        logits: &impl DevicePtr<T>,
        labels: &impl DevicePtr<i32>,
        loss_scale: f64,
        predictions: &mut impl DevicePtrMut<i32>,
        dlogits: &mut impl DevicePtrMut<T>,
        stats: Option<&mut impl DevicePtrMut<f32>>,
    ) -> Result<()> {
        let stats = stats_addr(stats, 2, &self.k.stream)?;
        let s = self.shape;
        s.check(
            logits.len(),
            labels.len(),
            predictions.len(),
            Some(dlogits.len()),
        )?;
        check_loss_scale(loss_scale)?;
        let (b, c) = (s.batch as i32, s.classes as i32);
        let coef = grad_coef(&s, loss_scale) as f32;
        // SAFETY: buffer lengths checked above match the kernel's indexing; a label is checked
        // on the device before it is used as an index.
        unsafe {
            launch!(self.k.softmax_ce_forward_backward, rows_config(&s), [
                in logits, in labels, out dlogits, out predictions, &mut self.row_loss,
                &mut self.row_correct, &mut self.state, &b, &c, &coef
            ])?;
        }
        self.launch_finish(labels, stats)
    }

    /// `labels` are the checked labels; `stats` the address of a 2-value slot, or 0 (none).
    fn launch_finish(&mut self, labels: &impl DevicePtr<i32>, stats: u64) -> Result<()> {
        let (b, cfg) = (self.shape.batch as i32, grid((1, 1, 1), CE_THREADS));
        // SAFETY: `row_loss`, `row_correct` and `labels` hold B elements, `state` STATE_LEN,
        // `stats` (when not null) 2, checked by `stats_addr`.
        unsafe {
            launch!(self.k.softmax_ce_finish, cfg, [
                &self.row_loss, &self.row_correct, in labels, &mut self.state, &stats, &b
            ])?
        };
        Ok(())
    }

    /// Waits for the last `enqueue_*` and returns its mean loss, or its first bad label as an
    /// error: the one synchronisation, a 12-byte device-to-host read.
    pub fn finish(&mut self) -> Result<f32> {
        read_loss_status(
            &self.k.stream,
            &self.state.slice(RESULT),
            self.shape.batch,
            self.shape.classes,
        )
    }
}
