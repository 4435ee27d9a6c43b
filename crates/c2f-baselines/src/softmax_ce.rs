//! The benchmark baseline for the cross-entropy: cuDNN's log-softmax forward and backward
//! (`cudnnSoftmaxForward`/`Backward`, `CUDNN_SOFTMAX_LOG`, per sample), the shape of PyTorch's
//! unfused `log_softmax` + `nll_loss`. cuDNN has no gather, so the loss's gradient with respect to
//! the log-probabilities comes in ready-made ([`nll_gradient`]) and the baseline computes no loss
//! value and no argmax: it does less than [`SoftmaxCeGpu`], which makes it a lower bound on the
//! library's time. The log-softmax backward gives `dx = dy − softmax·Σdy`, which for that `dy` is
//! [`SoftmaxCeGpu`]'s `dlogits`; a test holds the two to the same answer. f32 only.
//!
//! [`SoftmaxCeGpu`]: c2f_kernels::softmax_ce::SoftmaxCeGpu

use cudarc::cudnn::sys::{self, cudnnSoftmaxAlgorithm_t, cudnnSoftmaxMode_t};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::cudnn::{check, scalar, Handle, Tensor4d, ONE, ZERO};
use c2f_kernels::device::Gpu;
use c2f_kernels::error::{check_labels, check_len, Result};
use c2f_kernels::softmax_ce::{check_loss_scale, grad_coef, SoftmaxCeShape};

/// The gradient of `loss_scale ·` (the mean negative log-likelihood) with respect to the
/// log-probabilities: `−loss_scale/B` at each sample's label, 0 elsewhere.
pub fn nll_gradient(shape: &SoftmaxCeShape, labels: &[i32], loss_scale: f64) -> Result<Vec<f32>> {
    shape.validate()?;
    check_len("NLL gradient labels", labels.len(), shape.batch)?;
    check_labels(labels, shape.classes)?;
    check_loss_scale(loss_scale)?;
    let mut dy = vec![0.0f32; shape.logits_len()];
    for (row, &label) in dy.chunks_mut(shape.classes).zip(labels) {
        row[label as usize] = -grad_coef(shape, loss_scale) as f32;
    }
    Ok(dy)
}

pub struct LogSoftmaxCudnn {
    shape: SoftmaxCeShape,
    handle: Handle,
    /// `[B, C, 1, 1]`: cuDNN's instance mode normalises over C·1·1 per sample.
    logits: Tensor4d,
    log_probs: CudaSlice<f32>,
}

const ALGORITHM: cudnnSoftmaxAlgorithm_t = cudnnSoftmaxAlgorithm_t::CUDNN_SOFTMAX_LOG;
const MODE: cudnnSoftmaxMode_t = cudnnSoftmaxMode_t::CUDNN_SOFTMAX_MODE_INSTANCE;

impl LogSoftmaxCudnn {
    pub fn new(gpu: &Gpu, shape: SoftmaxCeShape) -> Result<Self> {
        shape.validate()?;
        Ok(LogSoftmaxCudnn {
            shape,
            handle: Handle::new(gpu)?,
            logits: Tensor4d::new([shape.batch, shape.classes, 1, 1])?,
            log_probs: gpu.alloc_zeros(shape.logits_len())?,
        })
    }

    /// The last forward's log-probabilities.
    pub fn log_probs(&self) -> &CudaSlice<f32> {
        &self.log_probs
    }

    /// `log_probs = log_softmax(logits)`, then `dlogits` (assigned) from `dlog_probs`.
    pub fn forward_backward(
        &mut self,
        logits: &impl DevicePtr<f32>,
        dlog_probs: &impl DevicePtr<f32>,
        dlogits: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let n = self.shape.logits_len();
        check_len("cuDNN softmax logits", logits.len(), n)?;
        check_len("cuDNN softmax dlog_probs", dlog_probs.len(), n)?;
        check_len("cuDNN softmax dlogits", dlogits.len(), n)?;
        let (h, desc) = (&self.handle, self.logits.0);
        let y = h.output(&mut self.log_probs);
        // SAFETY: every buffer holds B·C f32 (checked above), as the descriptor says.
        check(unsafe {
            sys::cudnnSoftmaxForward(
                h.raw,
                ALGORITHM,
                MODE,
                scalar(&ONE),
                desc,
                h.input(logits),
                scalar(&ZERO),
                desc,
                y,
            )
        })?;
        // SAFETY: as above.
        check(unsafe {
            sys::cudnnSoftmaxBackward(
                h.raw,
                ALGORITHM,
                MODE,
                scalar(&ONE),
                desc,
                y,
                desc,
                h.input(dlog_probs),
                scalar(&ZERO),
                desc,
                h.output(dlogits),
            )
        })
    }
}
