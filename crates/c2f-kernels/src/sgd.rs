//! The SGD update on the flat f32 parameter buffer, `torch.optim.SGD` with dampening 0 and no
//! Nesterov, plus a per-call gradient multiplier:
//!
//! - `d = grad_scale·g + weight_decay·p`
//! - `buf = momentum·buf + d`, `p −= lr·buf` (momentum > 0; `buf` starts at zero, which equals
//!   PyTorch's first-step `buf = d.clone()`)
//! - momentum = 0: `p −= lr·d`, and `buf` is not touched (PyTorch keeps no buffer then).
//!
//! `grad_scale` (1 by default) scales the gradient before anything else, e.g. `1/GPUs` to average
//! gradients summed across devices. Parameters, gradients and momentum buffers are always f32 on
//! the GPU. [`SgdGpu::step_range_with_copy`] also writes the bf16 working copy of the new
//! weights in the same pass, for the bf16 step. The update is element-wise, so the same bits on
//! every run; the GPU fuses the multiply-adds, so it may differ from the CPU in the last bit.
//! Kernel: `kernels/sgd.cu`.
//!
//! The learning rate is not among the call's values: it changes every step (warm-up, schedule)
//! and is read from a one-value slot in device memory (one per parameter group), which the host
//! writes before the step, so that a step captured into a CUDA graph replays at each step's
//! rate. [`SgdParams`] holds what is fixed for a run.

use std::ops::Range;

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;
use rayon::prelude::*;

use crate::device::{blocks_for, device_addr, device_addr_mut, grid, CudaStream, Gpu, Kernel};
use crate::error::{check_len, Error, Result};
use crate::launch;
use crate::Real;

/// The SGD hyper-parameters fixed for a run (the learning rate is read from a slot: see the
/// module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Multiplies the gradient first; 1 for plain SGD.
    pub grad_scale: f64,
}

impl SgdParams {
    /// `grad_scale = 1`.
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        SgdParams {
            momentum,
            weight_decay,
            grad_scale: 1.0,
        }
    }

    /// PyTorch's checks (momentum and weight decay not negative), and every value finite.
    #[doc(hidden)] // for c2f-baselines
    pub fn validate(&self) -> Result<()> {
        for (what, v, min) in [
            ("momentum", self.momentum, 0.0),
            ("weight decay", self.weight_decay, 0.0),
            ("grad scale", self.grad_scale, f64::NEG_INFINITY),
        ] {
            if !v.is_finite() || v < min {
                return Err(Error::Shape(format!("invalid SGD {what}: {v}")));
            }
        }
        Ok(())
    }
}

/// PyTorch's check of a learning rate (not negative), and finite: what the host checks before
/// writing a rate slot, and the CPU backend on the rate it reads.
pub fn check_learning_rate(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::Shape(format!("invalid SGD learning rate: {lr}")))
    }
}

#[doc(hidden)] // for c2f-baselines
pub fn check_buffers(weights: usize, grads: usize, momentum_buf: usize) -> Result<()> {
    check_len("SGD gradients", grads, weights)?;
    check_len("SGD momentum buffer", momentum_buf, weights)
}

/// Elements per rayon task of the CPU update.
const CPU_CHUNK: usize = 1 << 14;

/// CPU reference (and the CPU backend's op, with the rate its slot holds): one SGD step at rate
/// `lr` on `weights` and `momentum_buf` in place, all three buffers of the same length.
pub fn step_cpu<R: Real>(
    params: &SgdParams,
    lr: R,
    weights: &mut [R],
    grads: &[R],
    momentum_buf: &mut [R],
) -> Result<()> {
    params.validate()?;
    check_learning_rate(lr.to_f64())?;
    check_buffers(weights.len(), grads.len(), momentum_buf.len())?;
    let momentum = R::from_f64(params.momentum);
    let weight_decay = R::from_f64(params.weight_decay);
    let grad_scale = R::from_f64(params.grad_scale);
    let use_momentum = params.momentum != 0.0;
    weights
        .par_chunks_mut(CPU_CHUNK)
        .zip(momentum_buf.par_chunks_mut(CPU_CHUNK))
        .zip(grads.par_chunks(CPU_CHUNK))
        .for_each(|((w, buf), g)| {
            for ((p, b), &g) in w.iter_mut().zip(buf).zip(g) {
                let d = grad_scale * g + weight_decay * *p;
                if use_momentum {
                    *b = momentum * *b + d;
                    *p = *p - lr * *b;
                } else {
                    *p = *p - lr * d;
                }
            }
        });
    Ok(())
}

const THREADS: u32 = 256;
/// The grid-stride kernel launches at most this many blocks.
const MAX_BLOCKS: u32 = 4096;

/// The SGD kernels; they work on any length.
pub struct SgdGpu {
    kernel: Kernel,
    /// The same step that also writes the bf16 working copy of the new weights.
    with_copy: Kernel,
}

impl SgdGpu {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(SgdGpu {
            kernel: Kernel::new(gpu, &crate::sources::SGD, "sgd_step")?,
            with_copy: Kernel::new(gpu, &crate::sources::SGD, "sgd_step_bf16_copy")?,
        })
    }

    /// One SGD step over the whole buffers (all three of the same length) at the rate the
    /// one-value slot `lr` holds when the kernel runs.
    pub fn step(
        &self,
        params: &SgdParams,
        lr: &impl DevicePtr<f32>,
        weights: &mut impl DevicePtrMut<f32>,
        grads: &impl DevicePtr<f32>,
        momentum_buf: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.step_range(params, lr, 0..weights.len(), weights, grads, momentum_buf)
    }

    /// One SGD step over `range` of the flat buffers (all three of the same length), e.g. one
    /// parameter group with its own learning rate slot `lr`. Elements outside `range` are not
    /// touched. The rate is not checked here (the host checks it before writing the slot).
    pub fn step_range(
        &self,
        params: &SgdParams,
        lr: &impl DevicePtr<f32>,
        range: Range<usize>,
        weights: &mut impl DevicePtrMut<f32>,
        grads: &impl DevicePtr<f32>,
        momentum_buf: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let b = SgdBuffers::new(&self.kernel.stream, weights, grads, momentum_buf);
        self.launch(params, lr, range, b, None)
    }

    /// [`Self::step_range`] that also writes `copy[range] = bf16(new weights[range])` (round to
    /// nearest even) in the same pass: the bf16 working copy of the f32 master weights. `copy`
    /// has the weights' length and is not touched outside `range`; the f32 weights and momentum
    /// get the same bits as from [`Self::step_range`].
    pub fn step_range_with_copy(
        &self,
        params: &SgdParams,
        lr: &impl DevicePtr<f32>,
        range: Range<usize>,
        (weights, copy): (&mut impl DevicePtrMut<f32>, &mut impl DevicePtrMut<bf16>),
        grads: &impl DevicePtr<f32>,
        momentum_buf: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        check_len("SGD bf16 weight copy", copy.len(), weights.len())?;
        let st = &self.with_copy.stream;
        let copy = device_addr_mut(copy, st);
        let b = SgdBuffers::new(st, weights, grads, momentum_buf);
        self.launch(params, lr, range, b, Some(copy))
    }

    /// Checks the call and launches the step over `range`, with the bf16 copy at address `copy`
    /// (of the weights' length, checked by the caller) when there is one.
    fn launch(
        &self,
        params: &SgdParams,
        lr: &impl DevicePtr<f32>,
        range: Range<usize>,
        b: SgdBuffers,
        copy: Option<u64>,
    ) -> Result<()> {
        params.validate()?;
        check_len("SGD learning rate slot", lr.len(), 1)?;
        check_buffers(b.len, b.grads_len, b.momentum_len)?;
        if range.start > range.end || range.end > b.len {
            return Err(Error::Shape(format!(
                "SGD range {range:?} is not within the {} parameters",
                b.len
            )));
        }
        if range.is_empty() {
            return Ok(());
        }
        let n = range.len() as i64;
        let momentum = params.momentum as f32;
        let (weight_decay, grad_scale) = (params.weight_decay as f32, params.grad_scale as f32);
        let cfg = grid(
            (
                blocks_for(range.len().div_ceil(4), THREADS).min(MAX_BLOCKS),
                1,
                1,
            ),
            THREADS,
        );
        // The range's first element in each buffer.
        let at = (range.start * std::mem::size_of::<f32>()) as u64;
        let (w, g, m) = (b.weights + at, b.grads + at, b.momentum + at);
        // SAFETY: the range lies within the buffers (checked above; the copy has the weights'
        // length), so each address is followed by n elements; the kernels are grid-stride over
        // n and check the alignment of every buffer before using vector accesses; `lr` holds the
        // one value they read.
        unsafe {
            match copy {
                None => launch!(
                    self.kernel,
                    cfg,
                    [&w, &g, &m, &n, in lr, &momentum, &weight_decay, &grad_scale]
                )?,
                Some(copy) => {
                    let c = copy + (range.start * std::mem::size_of::<bf16>()) as u64;
                    launch!(
                        self.with_copy,
                        cfg,
                        [&w, &g, &m, &c, &n, in lr, &momentum, &weight_decay, &grad_scale]
                    )?
                }
            }
        }
        Ok(())
    }
}

/// The device addresses and lengths of a step's f32 buffers.
struct SgdBuffers {
    weights: u64,
    grads: u64,
    momentum: u64,
    len: usize,
    grads_len: usize,
    momentum_len: usize,
}

impl SgdBuffers {
    fn new(
        stream: &CudaStream,
        weights: &mut impl DevicePtrMut<f32>,
        grads: &impl DevicePtr<f32>,
        momentum_buf: &mut impl DevicePtrMut<f32>,
    ) -> Self {
        SgdBuffers {
            len: weights.len(),
            grads_len: grads.len(),
            momentum_len: momentum_buf.len(),
            weights: device_addr_mut(weights, stream),
            grads: device_addr(grads, stream),
            momentum: device_addr_mut(momentum_buf, stream),
        }
    }
}
