//! The benchmark baseline for the attention ReLU: cuDNN's activation forward and backward
//! (`cudnnActivationForward`/`Backward`, NaN propagated), what PyTorch's `relu` runs on cuDNN.
//! The fine branch's other ops (map choice, bilinear resize, the normalised mask) have no cuDNN
//! or cuBLAS call; their peer is PyTorch on the same card (`tools/torch_ops_baseline.py`). A test
//! holds this baseline to the reference. f32 only.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::cudnn::{Activation, Handle, Tensor4d};
use c2f_kernels::device::Gpu;
use c2f_kernels::error::{check_len, Result};

pub struct ReluCudnn {
    handle: Handle,
    relu: Activation,
    /// `[n, 1, 1, 1]`: cuDNN's activations are element-wise.
    desc: Tensor4d,
    len: usize,
}

impl ReluCudnn {
    /// For tensors of `len` elements.
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self> {
        Ok(ReluCudnn {
            handle: Handle::new(gpu)?,
            relu: Activation::relu()?,
            desc: Tensor4d::new([len, 1, 1, 1])?,
            len,
        })
    }

    /// `y = max(x, 0)`.
    pub fn forward(&self, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<f32>) -> Result<()> {
        check_len("cuDNN relu x", x.len(), self.len)?;
        check_len("cuDNN relu y", y.len(), self.len)?;
        let h = &self.handle;
        // SAFETY: both buffers hold `len` f32, as the descriptor says.
        unsafe { self.relu.forward(h, self.desc.0, h.input(x), h.output(y)) }
    }

    /// `dx` (assigned) from the forward's `x` and `y` and the gradient `dy`.
    pub fn backward(
        &self,
        x: &impl DevicePtr<f32>,
        y: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        for (what, len) in [("x", x.len()), ("y", y.len()), ("dy", dy.len())] {
            check_len(&format!("cuDNN relu {what}"), len, self.len)?;
        }
        check_len("cuDNN relu dx", dx.len(), self.len)?;
        let h = &self.handle;
        let inputs = [h.input(y), h.input(dy), h.input(x)];
        // SAFETY: every buffer holds `len` f32, as the descriptor says.
        unsafe { self.relu.backward(h, self.desc.0, inputs, h.output(dx)) }
    }
}
