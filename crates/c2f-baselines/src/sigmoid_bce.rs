//! The benchmark baseline: cuDNN's sigmoid (`cudnnActivationForward`) then `dlogits = coef·σ −
//! coef·t` as one `cudnnOpTensor` addition, the shape of an unfused `sigmoid` + `sub` + `mul`. It
//! computes the gradient only (cuDNN has no log, so no loss value, and no predictions), which makes
//! it a lower bound on the library's time; a test holds its gradient to [`SigmoidBceGpu`]'s. f32
//! only.
//!
//! [`SigmoidBceGpu`]: c2f_kernels::sigmoid_bce::SigmoidBceGpu

use std::ffi::c_void;

use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::cudnn::{check, scalar, Activation, AddTensors, Handle, Tensor4d, ZERO};
use c2f_kernels::device::Gpu;
use c2f_kernels::error::{check_len, Result};
use c2f_kernels::sigmoid_bce::SigmoidBceShape;

pub struct SigmoidBceCudnn {
    shape: SigmoidBceShape,
    handle: Handle,
    sigmoid: Activation,
    add: AddTensors,
    desc: Tensor4d,
    probs: CudaSlice<f32>,
}

impl SigmoidBceCudnn {
    pub fn new(gpu: &Gpu, shape: SigmoidBceShape) -> Result<Self> {
        shape.validate()?;
        Ok(SigmoidBceCudnn {
            shape,
            handle: Handle::new(gpu)?,
            sigmoid: Activation::sigmoid()?,
            add: AddTensors::new()?,
            desc: Tensor4d::new([shape.batch, shape.outputs, 1, 1])?,
            probs: gpu.alloc_zeros(shape.len())?,
        })
    }

    /// `dlogits` (assigned), as [`c2f_kernels::sigmoid_bce::SigmoidBceGpu`] writes it.
    pub fn backward(
        &mut self,
        logits: &impl DevicePtr<f32>,
        targets: &impl DevicePtr<f32>,
        loss_scale: f64,
        dlogits: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let n = self.shape.len();
        check_len("cuDNN sigmoid BCE logits", logits.len(), n)?;
        check_len("cuDNN sigmoid BCE targets", targets.len(), n)?;
        check_len("cuDNN sigmoid BCE dlogits", dlogits.len(), n)?;
        let coef = self.shape.grad_coef(loss_scale)? as f32;
        let minus_coef = -coef;
        let (h, desc) = (&self.handle, self.desc.0);
        let p = h.output(&mut self.probs);
        // SAFETY: every buffer holds B·A f32 (checked above), as the descriptor says.
        unsafe { self.sigmoid.forward(h, desc, h.input(logits), p)? };
        // SAFETY: as above; the scalars are host f32 that outlive the call.
        check(unsafe {
            sys::cudnnOpTensor(
                h.raw,
                self.add.0,
                &coef as *const f32 as *const c_void,
                desc,
                p,
                &minus_coef as *const f32 as *const c_void,
                desc,
                h.input(targets),
                scalar(&ZERO),
                desc,
                h.output(dlogits),
            )
        })
    }
}
