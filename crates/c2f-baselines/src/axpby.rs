//! The benchmark baseline: cuBLAS, `y = α·x + β·y` as `cublasSaxpy` alone when β = 1 (the
//! gradient-accumulation case, one library call), else `cublasSscal` then `cublasSaxpy`; for β = 0
//! a memset replaces the scaling so that `y` is not read, as [`AxpbyGpu`] promises. f32 only, as
//! cuBLAS's level-1 calls are.
//!
//! [`AxpbyGpu`]: c2f_kernels::axpby::AxpbyGpu

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use crate::cublas::{axpy, scal};
use c2f_kernels::cublas_raw;
use c2f_kernels::device::{device_addr, device_addr_mut, Gpu};
use c2f_kernels::error::{check_len, Result};

pub struct AxpbyCublas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl AxpbyCublas {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(AxpbyCublas {
            blas: cublas_raw::open(gpu.stream())?,
            stream: gpu.stream().clone(),
        })
    }

    /// `y = α·x + β·y` (β = 0 assigns `y`).
    pub fn run(
        &self,
        alpha: f64,
        x: &impl DevicePtr<f32>,
        beta: f64,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        check_len("axpby y", y.len(), x.len())?;
        let n = x.len();
        if beta == 0.0 {
            self.stream.memset_zeros(y)?;
        }
        let (xa, ya) = (
            device_addr(x, &self.stream),
            device_addr_mut(y, &self.stream),
        );
        // SAFETY: x and y hold n f32 each (checked above) and outlive the calls, which queue
        // on the GPU's stream.
        unsafe {
            if beta != 0.0 && beta != 1.0 {
                scal(&self.blas, n, beta as f32, ya)?;
            }
            axpy(&self.blas, n, alpha as f32, xa, ya)
        }
    }
}
