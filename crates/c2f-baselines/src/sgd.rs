//! The benchmark baseline: the same update as four cuBLAS level-1 passes, the shape of
//! `torch.optim.SGD`'s for-loop implementation (one element-wise kernel per term): `buf ·=
//! momentum`, `buf += grad_scale·g`, `buf += weight_decay·p`, `p += −lr·buf`. It reads and writes
//! the buffers 11 times per element where [`SgdGpu`] does it 5 times; a test holds the two to the
//! same answer.
//!
//! [`SgdGpu`]: c2f_kernels::sgd::SgdGpu

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use crate::cublas::{axpy, scal};
use c2f_kernels::cublas_raw;
use c2f_kernels::device::{device_addr, device_addr_mut, Gpu};
use c2f_kernels::error::{Error, Result};
use c2f_kernels::sgd::{check_buffers, check_learning_rate, SgdParams};

pub struct SgdCublas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl SgdCublas {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(SgdCublas {
            blas: cublas_raw::open(gpu.stream())?,
            stream: gpu.stream().clone(),
        })
    }

    /// One SGD step at rate `lr` with momentum (momentum 0 is refused: the four passes assume a
    /// buffer).
    pub fn step(
        &self,
        params: &SgdParams,
        lr: f64,
        weights: &mut impl DevicePtrMut<f32>,
        grads: &impl DevicePtr<f32>,
        momentum_buf: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        params.validate()?;
        check_learning_rate(lr)?;
        if params.momentum == 0.0 {
            return Err(Error::Shape(
                "the cuBLAS SGD baseline needs a momentum above 0".into(),
            ));
        }
        check_buffers(weights.len(), grads.len(), momentum_buf.len())?;
        let n = weights.len();
        let w = device_addr_mut(weights, &self.stream);
        let g = device_addr(grads, &self.stream);
        let b = device_addr_mut(momentum_buf, &self.stream);
        // SAFETY: the three buffers hold n f32 each (checked above) and outlive the calls,
        // which queue on the GPU's stream.
        unsafe {
            scal(&self.blas, n, params.momentum as f32, b)?;
            axpy(&self.blas, n, params.grad_scale as f32, g, b)?;
            axpy(&self.blas, n, params.weight_decay as f32, w, b)?;
            axpy(&self.blas, n, -lr as f32, b, w)
        }
    }
}
