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

use crate::cudnn::{check, scalar, Activation, AddTensors, Handle, Tensor4d, ONE, ZERO};
use c2f_kernels::device::{device_addr, device_addr_mut, Gpu};
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
        let st = self.handle.stream();
        let x = device_addr(logits, st) as *const c_void;
        let t = device_addr(targets, st) as *const c_void;
        let dx = device_addr_mut(dlogits, st) as *mut c_void;
        let p = device_addr_mut(&mut self.probs, st) as *mut c_void;
        let desc = self.desc.0;
        // SAFETY: every buffer holds B·A f32 (checked above), as the descriptor says.
        check(unsafe {
            sys::cudnnActivationForward(
                self.handle.raw,
                self.sigmoid.0,
                scalar(&ONE),
                desc,
                x,
                scalar(&ZERO),
                desc,
                p,
            )
        })?;
        // SAFETY: as above; the scalars are host f32 that outlive the call.
        check(unsafe {
            sys::cudnnOpTensor(
                self.handle.raw,
                self.add.0,
                &coef as *const f32 as *const c_void,
                desc,
                p,
                &minus_coef as *const f32 as *const c_void,
                desc,
                t,
                scalar(&ZERO),
                desc,
                dx,
            )
        })
    }
}
