//! ReLU after the fine branch's 1×1 attention conv, `A = ReLU(conv1x1(F))`, NCHW contiguous or any
//! length: `y = max(x, 0)` with a NaN passed through (`torch.relu`); backward
//! `dx = y ≤ 0 ? 0 : dy`, a select as PyTorch's `threshold_backward` (so a NaN `y` passes `dy`,
//! and a NaN `dy` under `y ≤ 0` gives 0). The gradient is assigned. Every result is the same bits
//! on every run. Kernels: `kernels/relu.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{elementwise, Gpu, KernelPair};
use crate::element::Element;
use crate::error::{check_len, Error, Result};
use crate::launch;
use crate::Real;

fn check_elementwise(n: usize) -> Result<()> {
    if n > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "relu: {n} elements is too many for 32-bit indexing"
        )));
    }
    Ok(())
}

/// CPU ReLU forward: `y = max(x, 0)`, NaN kept.
pub fn relu_forward_cpu<R: Real>(x: &[R], y: &mut [R]) -> Result<()> {
    check_len("relu y", y.len(), x.len())?;
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(y, &x)| *y = if x < R::zero() { R::zero() } else { x });
    Ok(())
}

/// CPU ReLU backward from the forward's output: `dx = y ≤ 0 ? 0 : dy` (assigned).
pub fn relu_backward_cpu<R: Real>(y: &[R], dy: &[R], dx: &mut [R]) -> Result<()> {
    check_len("relu dy", dy.len(), y.len())?;
    check_len("relu dx", dx.len(), y.len())?;
    dx.par_iter_mut()
        .zip(y.par_iter().zip(dy.par_iter()))
        .for_each(|(dx, (&y, &dy))| *dx = if y <= R::zero() { R::zero() } else { dy });
    Ok(())
}

/// ReLU on the GPU, any length.
pub struct ReluGpu<T: Element> {
    kernels: KernelPair<T>,
}

impl<T: Element> ReluGpu<T> {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(ReluGpu {
            kernels: KernelPair::new(gpu, &crate::sources::RELU, "relu_forward", "relu_backward")?,
        })
    }

    /// `y = max(x, 0)`, as [`relu_forward_cpu`].
    pub fn forward(&self, x: &impl DevicePtr<T>, y: &mut impl DevicePtrMut<T>) -> Result<()> {
        let n = x.len();
        check_len("relu y", y.len(), n)?;
        check_elementwise(n)?;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: both buffers hold n elements.
        unsafe { launch!(self.kernels.forward, elementwise(n), [in x, out y, &(n as i32)])? };
        Ok(())
    }

    /// `dx = y ≤ 0 ? 0 : dy` (assigned), as [`relu_backward_cpu`].
    pub fn backward(
        &self,
        y: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let n = y.len();
        check_len("relu dy", dy.len(), n)?;
        check_len("relu dx", dx.len(), n)?;
        check_elementwise(n)?;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: all three buffers hold n elements.
        unsafe {
            launch!(self.kernels.backward, elementwise(n), [in y, in dy, out dx, &(n as i32)])?
        };
        Ok(())
    }
}
