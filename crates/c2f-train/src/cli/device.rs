//! Which device a command runs on, and in which precision.

use c2f_inception::cuda::CudaBackend;
use c2f_inception::Precision;
use c2f_kernels::device::device_count;
use c2f_kernels::{Error, Result};

/// [`choose_device`]'s backend, computing in `precision` ([`set_precision`]).
pub(super) fn open_device(
    device: Option<&str>,
    precision: Option<Precision>,
) -> Result<Option<CudaBackend>> {
    let mut cuda = choose_device(device)?;
    set_precision(cuda.as_mut(), precision)?;
    Ok(cuda)
}

/// The GPU asked for, or the first one when none was named and one can be opened; `None` for
/// the CPU.
pub(super) fn choose_device(device: Option<&str>) -> Result<Option<CudaBackend>> {
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

/// `--precision` checked against the backend chosen (`cuda`, or the CPU where it is `None`) and
/// set on it: the CPU computes in f32 only; a GPU in bf16 (the default: bf16 activations, f32
/// master weights), tf32 or f32. A refusal names the flag.
pub(super) fn set_precision(
    cuda: Option<&mut CudaBackend>,
    precision: Option<Precision>,
) -> Result<()> {
    match (cuda, precision) {
        (None, None | Some(Precision::F32)) => Ok(()),
        (None, Some(p)) => Err(Error::config(
            "--precision",
            p,
            format!(
                "{p} needs a GPU: the CPU backend computes in f32 only (--precision f32, or leave \
                 it out)"
            ),
        )),
        (Some(b), p) => b
            .set_precision(p.unwrap_or(Precision::Bf16))
            .map_err(|e| match e {
                Error::Config { value, message, .. } => {
                    Error::config("--precision", value, message)
                }
                other => other,
            }),
    }
}
