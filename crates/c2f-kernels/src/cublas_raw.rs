//! cuBLAS as every user of it here opens it (the CUDA backend's `fc`, the benches' baselines in
//! `c2f-baselines`): the library check, its error, and a handle that keeps f32 in f32 unless TF32
//! is asked for.

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
    set_tf32(&blas, false)?;
    Ok(blas)
}

/// Lets the f32 GEMMs of `blas` run on TF32 tensor cores (`CUBLAS_TF32_TENSOR_OP_MATH`), or
/// keeps them in f32 (`CUBLAS_DEFAULT_MATH`).
pub fn set_tf32(blas: &CudaBlas, tf32: bool) -> Result<()> {
    let mode = match tf32 {
        true => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        false => cublasMath_t::CUBLAS_DEFAULT_MATH,
    };
    // SAFETY: a valid handle and a valid mode.
    unsafe { sys::cublasSetMathMode(*blas.handle(), mode) }
        .result()
        .map_err(blas_error)
}
