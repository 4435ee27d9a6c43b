//! How a backend computes with its tensors: [`Precision`], the value of `c2f --precision`, which
//! runs record in their checkpoints and metrics.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The arithmetic of a backend's ops. Parameters, their gradients and momentum are f32 in every
/// precision (master weights), so a checkpoint written in one loads in any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 activations with f32 accumulation (issue 20's plan, `docs/perf.md`): not built yet,
    /// so every backend refuses it.
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

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
