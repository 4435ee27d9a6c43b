//! cuDNN as every user of it here needs it (the CUDA backend's convolutions, the benches'
//! baselines in `c2f-baselines`): the library check and the error. The raw objects the
//! baselines call live in that crate.

use cudarc::cudnn::sys;

use crate::error::Error;

/// A cuDNN failure as this project's [`Error::Library`].
pub fn cudnn_error(e: impl std::fmt::Debug) -> Error {
    Error::Library {
        library: "cuDNN",
        message: format!("{e:?}"),
    }
}

/// Whether `libcudnn` can be loaded; without it cudarc would panic at the first call.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the cuDNN library.
    unsafe { sys::is_culib_present() }
}
