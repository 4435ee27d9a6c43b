//! Which device a command runs on.

use c2f_inception::cuda::CudaBackend;
use c2f_kernels::device::device_count;
use c2f_kernels::{Error, Result};

/// The GPU asked for, or the first one when none was named and one can be opened.
pub(super) fn open_device(device: Option<&str>) -> Result<Option<CudaBackend>> {
    match device {
        Some("cpu") => Ok(None),
        Some(d) => {
            let ordinal = d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    Error::config("--device", d, "unknown device: use `cpu` or `cuda:N`")
                })?;
            Ok(Some(CudaBackend::open(ordinal)?))
        }
        None => match CudaBackend::open(0) {
            Ok(b) => Ok(Some(b)),
            // No driver or no device is the CPU machine's normal case; a GPU that is there but
            // cannot be used (a missing cuDNN, cuBLAS or NVRTC) must not pass silently as one.
            Err(e) => {
                if device_count().unwrap_or(0) > 0 {
                    eprintln!(
                        "warning: CUDA device 0 is present but cannot be used, so this runs on \
                         the CPU: {e}\n  CUDA libraries from Python wheels (PyTorch's): \
                         eval \"$(tools/cuda-libs.sh)\"; --device cuda:0 makes this an error"
                    );
                }
                Ok(None)
            }
        },
    }
}
