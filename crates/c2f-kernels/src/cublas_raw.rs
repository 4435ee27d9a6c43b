//! cuBLAS as every user of it here opens it (the CUDA backend's `fc`, the benches' baselines):
//! the library check, its error, a handle that keeps f32 in f32, and the two level-1 calls the
//! element-wise baselines need (`axpy`, `scal`), which cudarc's safe API does not bind.

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::cublas::sys::{self, cublasMath_t};
use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaStream;

use crate::error::{Error, Result};

/// A cuBLAS failure as this project's [`Error::Library`].
pub fn blas_error(e: impl std::fmt::Debug) -> Error {
    Error::Library {
        library: "cuBLAS",
        message: format!("{e:?}"),
    }
}

/// A cuBLAS handle queued on `stream`, after checking that the library loads (cudarc would panic
/// at its first call otherwise). The math mode is set to the default explicitly, so f32 GEMMs
/// stay f32 (TF32 only with `CUBLAS_TF32_TENSOR_OP_MATH`) whatever the environment says.
pub fn open(stream: &Arc<CudaStream>) -> Result<CudaBlas> {
    // SAFETY: only tries to dlopen the cuBLAS library.
    if !unsafe { sys::is_culib_present() } {
        return Err(blas_error(
            "libcublas could not be loaded; put it on LD_LIBRARY_PATH (tools/cuda-libs.sh)",
        ));
    }
    let blas = CudaBlas::new(stream.clone()).map_err(blas_error)?;
    // SAFETY: a valid handle and a valid mode.
    unsafe { sys::cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_DEFAULT_MATH) }
        .result()
        .map_err(blas_error)?;
    Ok(blas)
}

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
