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
    /// The kernel is to be compiled by NVRTC (no nvcc at build time, or `C2F_FORCE_NVRTC=1`) and
    /// NVRTC is unavailable.
    NoNvrtc,
    /// NVRTC rejected a kernel source.
    Compile { kernel: &'static str, log: String },
    /// A CUDA library (cuBLAS, cuDNN, NCCL) is missing or one of its calls failed.
    Library {
        library: &'static str,
        message: String,
    },
    /// A file that cannot be read or written, or whose contents are wrong (weights, checkpoints).
    File { path: String, message: String },
    /// Buffers or parameters that do not fit the op's shape. Only for tensor shapes.
    Shape(String),
    /// An op asked for element types it has no kernel for: `op` names it, `types` the types
    /// (`f64 to f32`).
    ElementTypes { op: &'static str, types: String },
    /// A command-line flag or configuration value that is out of range or conflicts with
    /// another: `key` is the flag (`--batch`) or config key, `value` what was given.
    Config {
        key: String,
        value: String,
        message: String,
    },
    /// Outside data that cannot be used: a dataset's annotation file (at `line`, where it has
    /// lines), an image, a directory layout.
    Data {
        path: String,
        line: Option<usize>,
        message: String,
    },
    /// A loss term or a gradient became NaN or infinite at `step`.
    Divergence {
        step: usize,
        term: String,
        value: f64,
    },
    /// An operating-system I/O failure on `path`.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A class label outside `[0, classes)`.
    Label {
        index: usize,
        label: i64,
        classes: usize,
    },
    /// Work that a CUDA graph cannot hold, asked for while a stream was being captured into one
    /// (`op` names it: a host read or write, an allocation, a synchronisation), or a capture
    /// that failed or cannot be replayed.
    Capture { op: String, reason: String },
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
            Error::NoNvrtc => write!(
                f,
                "the kernels are compiled at run time by NVRTC (a build without nvcc, or \
                 C2F_FORCE_NVRTC=1), but libnvrtc.so could not be loaded; put libnvrtc on \
                 LD_LIBRARY_PATH (tools/cuda-libs.sh) or rebuild with NVCC set"
            ),
            Error::Compile { kernel, log } => {
                write!(f, "NVRTC failed on kernel `{kernel}`:\n{log}")
            }
            Error::Library { library, message } => write!(f, "{library}: {message}"),
            Error::File { path, message } => write!(f, "{path}: {message}"),
            Error::Shape(msg) => write!(f, "shape error: {msg}"),
            Error::ElementTypes { op, types } => write!(f, "{op} has no kernel for {types}"),
            Error::Config {
                key,
                value,
                message,
            } => write!(f, "{key} {value}: {message}"),
            Error::Data {
                path,
                line: Some(line),
                message,
            } => write!(f, "{path}:{line}: {message}"),
            Error::Data {
                path,
                line: None,
                message,
            } => write!(f, "{path}: {message}"),
            Error::Divergence { step, term, value } => {
                write!(f, "training diverged at step {step}: {term} is {value}")
            }
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Label {
                index,
                label,
                classes,
            } => write!(
                f,
                "label {label} of sample {index} is outside [0, {classes})"
            ),
            Error::Capture { op, reason } => write!(f, "CUDA graph capture: {op}: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// A [`Error::Config`] for flag or key `key` given `value`.
    pub fn config(key: &str, value: impl fmt::Display, message: impl Into<String>) -> Error {
        Error::Config {
            key: key.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Driver(e)
    }
}

/// Fails unless every dimension is non-zero and their product fits an `i32` (the kernels' index).
pub(crate) fn check_dims(what: &str, shape: &impl std::fmt::Debug, dims: &[usize]) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::Shape(format!(
            "{what} shape has a zero dimension: {shape:?}"
        )));
    }
    match dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= i32::MAX as usize => Ok(()),
        _ => Err(Error::Shape(format!(
            "{what} shape too large for 32-bit indexing: {shape:?}"
        ))),
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

/// Refuses a shape with a zero dimension among `dims`, or with an index space (each of
/// `extents` is one, as the product of its factors) beyond the kernels' 32-bit indices.
/// `what` names the shape in the message, e.g. `BAP shape`.
pub fn check_shape(
    what: &str,
    shape: &dyn fmt::Debug,
    dims: &[usize],
    extents: &[&[usize]],
) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::Shape(format!(
            "{what} has a zero dimension: {shape:?}"
        )));
    }
    let fits = |factors: &&[usize]| {
        factors
            .iter()
            .try_fold(1usize, |n, &f| n.checked_mul(f))
            .is_some_and(|n| n <= i32::MAX as usize)
    };
    if !extents.iter().all(fits) {
        return Err(Error::Shape(format!(
            "{what} too large for 32-bit indexing: {shape:?}"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::check_shape;

    #[test]
    fn check_shape_refuses_zero_dimensions_and_index_spaces_beyond_i32() {
        let max = i32::MAX as usize;
        let msg = |dims: &[usize], extents: &[&[usize]]| {
            check_shape("test shape", &dims, dims, extents)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(msg(&[3, 4], &[&[3, 4]]), None);
        assert_eq!(msg(&[max, 1], &[&[max, 1]]), None);
        let zero = msg(&[3, 0], &[&[3, 0]]).unwrap();
        assert!(
            zero.contains("test shape has a zero dimension: [3, 0]"),
            "{zero}"
        );
        for extents in [
            &[&[max + 1][..]][..],
            &[&[2, max / 2 + 1]],
            &[&[usize::MAX, 2]],
        ] {
            let big = msg(&[1], extents).unwrap();
            assert!(
                big.contains("test shape too large for 32-bit indexing"),
                "{big}"
            );
        }
    }
}
