//! The conversions the bf16 step makes around the libraries it calls in f32 or with bf16 weights
//! ([`crate::Precision::Bf16`]): cuDNN's bf16 convolutions take bf16 weights and write a bf16
//! weight gradient, while the parameters and their gradients are f32 master copies; the `fc`
//! runs in f32 on its (small) input; channels-last data takes KRSC filters, transposed from and
//! back into the KCRS master copies. Scratch buffers hold the converted copies: one buffer per
//! storage for a convolution's weights, then its weight gradient, and two f32 ones (the `fc`'s
//! input and input gradient), each grown to the largest need when first met, so a step run
//! eagerly before a capture makes them all.

use c2f_kernels::cast::CastGpu;
use c2f_kernels::device::{refuse_in_capture, ALLOCATES};
use c2f_kernels::layout::Layout;
use c2f_kernels::{Error, Result};
use half::bf16;

use super::CudaBackend;
use crate::backend::Tensor;
use crate::precision::Storage;

/// Which scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scratch {
    /// bf16: a convolution's weights or weight gradient.
    Bf16Weights,
    /// f32: a convolution's weights or weight gradient in KRSC, for channels-last f32 data.
    F32Weights,
    /// f32: the `fc`'s input.
    FcInput,
    /// f32: the `fc`'s input gradient.
    FcInputGrad,
}

impl Scratch {
    /// The weights' scratch for convolutions on data stored as `storage`.
    pub(super) fn weights(storage: Storage) -> Scratch {
        match storage {
            Storage::F32 => Scratch::F32Weights,
            Storage::Bf16 => Scratch::Bf16Weights,
        }
    }

    fn storage(self) -> Storage {
        match self {
            Scratch::Bf16Weights => Storage::Bf16,
            Scratch::F32Weights | Scratch::FcInput | Scratch::FcInputGrad => Storage::F32,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// The cast kernels and the scratch buffers, made on first use.
#[derive(Default)]
pub(super) struct Conversions {
    cast: Option<CastGpu>,
    scratch: [Option<Tensor>; 4],
    /// How many scratch buffers have been allocated: a graph captured before the last holds a
    /// buffer no longer used.
    pub(super) made: usize,
}

impl CudaBackend {
    /// `len` values of scratch buffer `which`, grown first when smaller.
    pub(super) fn scratch(&mut self, which: Scratch, len: usize) -> Result<Tensor> {
        match self.conversions.scratch[which.slot()] {
            Some(t) if t.len >= len => Ok(t.slice(0, len)),
            _ => {
                let t = self.alloc_stored(len, which.storage(), Layout::Nchw)?;
                self.conversions.scratch[which.slot()] = Some(t);
                self.conversions.made += 1;
                Ok(t)
            }
        }
    }

    /// `to = from` converted: f32 to bf16 (rounded to nearest even) or bf16 to f32 (exact).
    pub(super) fn convert(&mut self, from: Tensor, to: Tensor) -> Result<()> {
        self.cast_kernels()?;
        let cast = self.conversions.cast.as_ref().ok_or_else(missing)?;
        let ops = self.mem.operands(&[from], &[to], &[])?;
        match (self.mem.storage(from)?, self.mem.storage(to)?) {
            (Storage::F32, Storage::Bf16) => {
                cast.to_bf16(&ops.values::<f32>(from)?, &mut ops.values::<bf16>(to)?)
            }
            (Storage::Bf16, Storage::F32) => {
                cast.to_f32(&ops.values::<bf16>(from)?, &mut ops.values::<f32>(to)?)
            }
            (a, b) => Err(Error::Shape(format!(
                "converting the {from} ({a}) into the {to} ({b}): nothing to convert"
            ))),
        }
    }

    /// `to += from`, bf16 into f32.
    pub(super) fn accumulate_bf16(&mut self, from: Tensor, to: Tensor) -> Result<()> {
        self.cast_kernels()?;
        let cast = self.conversions.cast.as_ref().ok_or_else(missing)?;
        let ops = self.mem.operands(&[from], &[to], &[])?;
        cast.accumulate(&ops.values::<bf16>(from)?, &mut ops.values::<f32>(to)?)
    }

    fn cast_kernels(&mut self) -> Result<()> {
        if self.conversions.cast.is_none() {
            refuse_in_capture(self.gpu.stream(), "making the cast kernels", ALLOCATES)?;
            self.conversions.cast = Some(CastGpu::new(&self.gpu)?);
        }
        Ok(())
    }
}

fn missing() -> Error {
    Error::Shape("the cast kernels were not made".into())
}
