//! How a backend computes with its tensors: [`Precision`], the value of `c2f --precision`, which
//! runs record in their checkpoints and metrics.

use std::fmt;

use c2f_kernels::layout::Layout;
use serde::{Deserialize, Serialize};

/// The arithmetic of a backend's ops. Parameters, their gradients and momentum are f32 in every
/// precision (master weights), so a checkpoint written in one loads in any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 activations and activation gradients with f32 accumulation, on the CUDA backend
    /// (the InceptionV3 network's ops so far: `docs/architecture.md#precision`).
    Bf16,
    /// f32 tensors, with cuDNN's convolutions and cuBLAS's GEMMs allowed TF32 tensor-core math
    /// (inputs rounded to 10 mantissa bits, products summed in f32): PyTorch's default for
    /// convolutions. This project's own kernels compute in f32 as in [`Precision::F32`]. CUDA
    /// backend only.
    Tf32,
    /// f32 everywhere: cuDNN restricted to FMA kernels, cuBLAS in its default math (no TF32).
    F32,
    /// The CPU backend in f64, the reference the golden tests hold to PyTorch's float64 runs; no
    /// command takes it.
    F64,
}

impl Precision {
    /// The precisions a command takes, in the order its help lists them.
    pub const CHOICES: [Precision; 3] = [Precision::Bf16, Precision::Tf32, Precision::F32];

    /// The name a command line, a config file and a checkpoint use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::Tf32 => "tf32",
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    }

    /// The precision of [`Precision::CHOICES`] called `name`.
    pub fn from_name(name: &str) -> Option<Precision> {
        Precision::CHOICES.into_iter().find(|p| p.name() == name)
    }
}

/// How a buffer's values are stored on the device. Whatever the storage, a backend's host reads
/// and writes are in its scalar type (converted on the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    /// bfloat16: f32's range with 8 significant bits, rounded to nearest even when written.
    Bf16,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Bf16 => 2,
        }
    }
}

impl Precision {
    /// How activations and their gradients are stored in this precision: bf16 in bf16, else
    /// f32. Parameters, their gradients, momentum, batch-norm statistics, logits and losses
    /// are f32 in every precision.
    pub fn activation_storage(self) -> Storage {
        match self {
            Precision::Bf16 => Storage::Bf16,
            Precision::Tf32 | Precision::F32 | Precision::F64 => Storage::F32,
        }
    }

    /// The memory order a network keeps its activations in this precision: channels-last in
    /// bf16, where cuDNN's tensor-core convolutions read NHWC without transposing it; NCHW
    /// otherwise.
    pub fn activation_layout(self) -> Layout {
        match self {
            Precision::Bf16 => Layout::Nhwc,
            Precision::Tf32 | Precision::F32 | Precision::F64 => Layout::Nchw,
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
