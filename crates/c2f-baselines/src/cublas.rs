//! The two level-1 cuBLAS calls the element-wise baselines need (`axpy`, `scal`), which
//! cudarc's safe API does not bind.

use std::ffi::c_int;

use cudarc::cublas::sys;
use cudarc::cublas::CudaBlas;

use c2f_kernels::cublas_raw::blas_error;
use c2f_kernels::error::{Error, Result};

/// A vector length as cuBLAS's `int`.
fn length(n: usize) -> Result<c_int> {
    c_int::try_from(n)
        .map_err(|_| Error::Shape(format!("cuBLAS vector length {n} does not fit an int")))
}

/// `y += alpha·x` over `n` f32 elements (`cublasSaxpy`).
///
/// # Safety
/// `x` and `y` are device addresses of at least `n` f32 each, live until the call has run on the
/// handle's stream.
pub unsafe fn axpy(blas: &CudaBlas, n: usize, alpha: f32, x: u64, y: u64) -> Result<()> {
    let n = length(n)?;
    // SAFETY: the caller's contract; alpha is a host scalar (the default pointer mode).
    unsafe {
        sys::cublasSaxpy_v2(
            *blas.handle(),
            n,
            &alpha,
            x as *const f32,
            1,
            y as *mut f32,
            1,
        )
    }
    .result()
    .map_err(blas_error)
}

/// `x *= alpha` over `n` f32 elements (`cublasSscal`).
///
/// # Safety
/// `x` is the device address of at least `n` f32, live until the call has run on the handle's
/// stream.
pub unsafe fn scal(blas: &CudaBlas, n: usize, alpha: f32, x: u64) -> Result<()> {
    let n = length(n)?;
    // SAFETY: the caller's contract; alpha is a host scalar.
    unsafe { sys::cublasSscal_v2(*blas.handle(), n, &alpha, x as *mut f32, 1) }
        .result()
        .map_err(blas_error)
}
