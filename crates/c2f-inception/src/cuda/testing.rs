//! For tests and benches: the CUDA backend on GPU 0, or a printed `skipped: …` line where there
//! is none (see [`c2f_kernels::testing::gpu_or_skip`]).

use c2f_kernels::testing::{gpu_or_skip, library_or_skip};

use super::CudaBackend;

/// The CUDA backend on GPU 0, or `None` after printing why `test` is skipped: no device, or a
/// missing cuDNN/cuBLAS library. With `C2F_REQUIRE_GPU=1` both are failures instead.
pub fn cuda_or_skip(test: &str) -> Option<CudaBackend> {
    let gpu = gpu_or_skip(test)?;
    library_or_skip(test, CudaBackend::new(gpu))
}
