//! `y = α·x + β·y`, element-wise: scaling a tensor (β = 0: `y` is assigned, never read) and
//! adding one gradient contribution into another (β = 1). Kernel: `kernels/axpby.cu`.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use rayon::prelude::*;

use crate::device::{blocks_for, device_addr, device_addr_mut, Gpu};
use crate::element::Element;
use crate::error::{check_len, Result};
use crate::Real;

/// CPU reference (and the CPU backend's op).
pub fn axpby_cpu<R: Real>(alpha: f64, x: &[R], beta: f64, y: &mut [R]) -> Result<()> {
    check_len("axpby y", y.len(), x.len())?;
    let (a, b) = (R::from_f64(alpha), R::from_f64(beta));
    y.par_iter_mut().zip(x.par_iter()).for_each(|(y, &x)| {
        *y = if beta == 0.0 { a * x } else { b * *y + a * x };
    });
    Ok(())
}

const THREADS: u32 = 256;
/// Grid-stride: at most this many blocks.
const MAX_BLOCKS: u32 = 4096;

pub struct AxpbyGpu<T: Element> {
    stream: Arc<CudaStream>,
    axpby: CudaFunction,
    _storage: PhantomData<T>,
}

impl<T: Element> AxpbyGpu<T> {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(AxpbyGpu {
            stream: gpu.stream().clone(),
            axpby: gpu.typed_function::<T>(&crate::sources::AXPBY, "axpby")?,
            _storage: PhantomData,
        })
    }

    /// `y = α·x + β·y` (β = 0 assigns `y`).
    pub fn run(
        &self,
        alpha: f64,
        x: &impl DevicePtr<T>,
        beta: f64,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        check_len("axpby y", y.len(), x.len())?;
        let n = x.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (
                blocks_for(x.len().div_ceil(4), THREADS).min(MAX_BLOCKS),
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (x, y) = (
            device_addr(x, &self.stream),
            device_addr_mut(y, &self.stream),
        );
        let (alpha, beta) = (alpha as f32, beta as f32);
        // SAFETY: `x` and `y` have `n` elements (checked above); the kernel is grid-stride.
        unsafe {
            self.stream
                .launch_builder(&self.axpby)
                .arg(&x)
                .arg(&y)
                .arg(&n)
                .arg(&alpha)
                .arg(&beta)
                .launch(cfg)?;
        }
        Ok(())
    }
}

/// The benchmark baseline: cuBLAS, `y = α·x + β·y` as `cublasSaxpy` alone when β = 1 (the
/// gradient-accumulation case, one library call), else `cublasSscal` then `cublasSaxpy`; for
/// β = 0 a memset replaces the scaling so that `y` is not read, as [`AxpbyGpu`] promises. f32
/// only, as cuBLAS's level-1 calls are.
pub mod baseline {
    use std::sync::Arc;

    use cudarc::cublas::CudaBlas;
    use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

    use crate::cublas_raw::{self, axpy, scal};
    use crate::device::{device_addr, device_addr_mut, Gpu};
    use crate::error::{check_len, Result};

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
}
