//! One error type for everything below the runtime: opening a GPU, loading kernels, bad shapes
//! and bad labels. Messages name the value that was wrong.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// `libcuda.so` could not be loaded: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver loaded but the requested device does not exist.
    NoDevice { ordinal: usize, count: usize },
    /// A CUDA driver call failed.
    Driver(cudarc::driver::DriverError),
    /// The kernel was embedded as source (no nvcc at build time) and NVRTC is unavailable.
    NoNvrtc { kernel: &'static str },
    /// NVRTC rejected a kernel source.
    Compile { kernel: &'static str, log: String },
    /// A CUDA library (cuBLAS, cuDNN, NCCL) is missing or one of its calls failed.
    Library {
        library: &'static str,
        message: String,
    },
    /// A file that cannot be read or written, or whose contents are wrong (weights, checkpoints).
    File { path: String, message: String },
    /// Buffers or parameters that do not fit the op's shape.
    Shape(String),
    /// A class label outside `[0, classes)`.
    Label {
        index: usize,
        label: i64,
        classes: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDriver => write!(f, "no CUDA driver: libcuda.so could not be loaded"),
            Error::NoDevice { ordinal, count } => {
                write!(
                    f,
                    "no CUDA device {ordinal}: the driver reports {count} device(s)"
                )
            }
            Error::Driver(e) => write!(f, "CUDA driver error: {e:?}"),
            Error::NoNvrtc { kernel } => write!(
                f,
                "kernel `{kernel}` was built without nvcc and NVRTC (libnvrtc.so) is not loadable; \
                 rebuild with NVCC set or put libnvrtc on LD_LIBRARY_PATH"
            ),
            Error::Compile { kernel, log } => {
                write!(f, "NVRTC failed on kernel `{kernel}`:\n{log}")
            }
            Error::Library { library, message } => write!(f, "{library}: {message}"),
            Error::File { path, message } => write!(f, "{path}: {message}"),
            Error::Shape(msg) => write!(f, "shape error: {msg}"),
            Error::Label {
                index,
                label,
                classes,
            } => write!(
                f,
                "label {label} of sample {index} is outside [0, {classes})"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Driver(e)
    }
}

/// Fails with a [`Error::Shape`] naming `what` unless `len == expected`.
pub fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "{what} has {len} elements, expected {expected}"
        )))
    }
}

/// Fails with [`Error::Label`] naming the first label outside `[0, classes)`.
pub fn check_labels(labels: &[i32], classes: usize) -> Result<()> {
    match labels.iter().position(|&y| y < 0 || y as usize >= classes) {
        Some(index) => Err(Error::Label {
            index,
            label: labels[index] as i64,
            classes,
        }),
        None => Ok(()),
    }
}
