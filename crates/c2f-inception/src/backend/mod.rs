//! The backend interface the InceptionV3 graph (and the Coarse2Fine model above it) is written
//! against once. A backend owns its memory; the graph holds plain [`Tensor`] handles (buffer,
//! offset, length) into it, so parameters can live in one flat buffer and be addressed piecewise
//! on any device, and no borrow of device memory crosses the interface.
//!
//! The interface is four traits, by who needs them, so that each says what it is for and a
//! backend's ops can be read (and implemented) one group at a time:
//!
//! - [`Buffers`]: the scalar type, allocation, reads, writes and fills. Every op trait builds
//!   on it.
//! - [`NetworkOps`] ([`network`]): what the InceptionV3 graph is made of: convolution, batch
//!   norm, pooling, concat/split and the `fc` layer.
//! - [`TrainingOps`] ([`training`]): what a training step adds around any model: dropout, the
//!   softmax and sigmoid cross-entropies, the SGD update and `axpby`.
//! - [`Coarse2FineOps`] ([`coarse2fine`]): what the Coarse2Fine model adds to its backbone:
//!   BAP, the center loss, the transposed convolution, the attention map's choice, resize and
//!   ReLU, and the mask.
//!
//! [`Backend`] is all four, implemented for every type that has them; generic code bounds on
//! it (`B: Backend<Scalar = f32>`). Calling an op on a concrete backend needs its trait in
//! scope: `use c2f_inception::backend::prelude::*` brings all four.
//!
//! The rule for gradients, for every op here: **parameter gradients accumulate (`+=`) and
//! activation gradients are assigned**, except where an op takes `accumulate` (a tensor read by
//! several ops: its first gradient contribution assigns, the others add).
//!
//! Every op checks its tensors' lengths against its shape and returns an error naming what is
//! off; outputs that overlap another operand of the same call are refused.

pub mod coarse2fine;
pub mod network;
pub mod training;

use std::fmt;

use c2f_kernels::{Error, Real, Result};

pub use coarse2fine::Coarse2FineOps;
pub use network::{BnMode, BnParams, BnStats, LinearShape, NetworkOps};
pub use training::TrainingOps;

/// The four traits, for calling ops on a concrete backend.
pub mod prelude {
    pub use super::{Backend, Buffers, Coarse2FineOps, NetworkOps, TrainingOps};
}

/// A range of values in one of a backend's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    pub buf: usize,
    pub offset: usize,
    pub len: usize,
}

/// A range of i32 values (max-pool indices, labels) in one of a backend's index buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexTensor {
    pub buf: usize,
    pub offset: usize,
    pub len: usize,
}

impl IndexTensor {
    /// Whether two index tensors share any element.
    pub fn overlaps(&self, other: &IndexTensor) -> bool {
        self.buf == other.buf
            && self.len > 0
            && other.len > 0
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

impl Tensor {
    /// `len` values starting `start` values into this tensor.
    pub fn slice(self, start: usize, len: usize) -> Tensor {
        assert!(
            start + len <= self.len,
            "slice {start}+{len} of a tensor of {}",
            self.len
        );
        Tensor {
            buf: self.buf,
            offset: self.offset + start,
            len,
        }
    }

    /// Whether two tensors share any element.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        self.buf == other.buf
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

/// The checks every backend makes on the operands of one op before touching memory: each tensor
/// lies inside its buffer (`buf_len(buf)` is that buffer's length, `None` for no such buffer;
/// `index_buf_len` likewise for index buffers), no non-empty output overlaps another operand
/// (an input, or another output) of the same call, and no two index operands overlap.
///
/// This is what lets a backend hand out a mutable view per output and shared views per input of
/// its buffers at once, whether host slices or raw device ranges.
pub fn check_operands(
    buf_len: impl Fn(usize) -> Option<usize>,
    index_buf_len: impl Fn(usize) -> Option<usize>,
    inputs: &[Tensor],
    outputs: &[Tensor],
    index: &[IndexTensor],
) -> Result<()> {
    let fits = |len: Option<usize>, offset: usize, n: usize| {
        len.zip(offset.checked_add(n))
            .is_some_and(|(len, end)| end <= len)
    };
    for t in inputs.iter().chain(outputs) {
        if !fits(buf_len(t.buf), t.offset, t.len) {
            return Err(Error::Shape(format!(
                "{t} is outside its buffer{}",
                buffer_size(buf_len(t.buf))
            )));
        }
    }
    for (i, t) in index.iter().enumerate() {
        if !fits(index_buf_len(t.buf), t.offset, t.len) {
            return Err(Error::Shape(format!(
                "{t} is outside its buffer{}",
                buffer_size(index_buf_len(t.buf))
            )));
        }
        if let Some(other) = index[i + 1..].iter().find(|o| o.overlaps(t)) {
            return Err(Error::Shape(format!(
                "{t} overlaps {other}, another index operand of the same op"
            )));
        }
    }
    for (i, out) in outputs.iter().enumerate() {
        let others = inputs.iter().chain(outputs[i + 1..].iter());
        if let Some(other) = others
            .filter(|o| out.len > 0 && o.len > 0)
            .find(|o| out.overlaps(o))
        {
            return Err(Error::Shape(format!(
                "output {out} overlaps {other}, another operand of the same op"
            )));
        }
    }
    Ok(())
}

/// How an out-of-buffer message ends: the buffer's length, or that there is no such buffer.
fn buffer_size(len: Option<usize>) -> String {
    match len {
        Some(len) => format!(" of {len} values"),
        None => " (no such buffer)".to_string(),
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tensor of {} values at {} in buffer {}",
            self.len, self.offset, self.buf
        )
    }
}

impl fmt::Display for IndexTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index tensor of {} values at {} in index buffer {}",
            self.len, self.offset, self.buf
        )
    }
}

/// A backend's memory: what every op trait builds on.
pub trait Buffers {
    /// The float type of the buffers: f32 for training; the CPU backend also runs in f64, which
    /// is what the golden test holds to PyTorch's float64 run.
    type Scalar: Real;

    /// What runs the ops, e.g. `cpu f32 (2 threads)` or the GPU's name.
    fn describe(&self) -> String;

    /// A new zero-filled buffer, whole.
    fn alloc(&mut self, len: usize) -> Result<Tensor>;
    /// A new zero-filled i32 buffer, whole.
    fn alloc_index(&mut self, len: usize) -> Result<IndexTensor>;
    /// Bytes allocated so far (buffers are never freed while the backend lives).
    fn allocated_bytes(&self) -> usize;

    fn write(&mut self, dst: Tensor, src: &[Self::Scalar]) -> Result<()>;
    fn read(&mut self, src: Tensor) -> Result<Vec<Self::Scalar>>;
    fn write_index(&mut self, dst: IndexTensor, src: &[i32]) -> Result<()>;
    fn read_index(&mut self, src: IndexTensor) -> Result<Vec<i32>>;
    fn fill(&mut self, dst: Tensor, value: Self::Scalar) -> Result<()>;
}

/// Every op a backend has: what generic code (the network, the models, the trainer) bounds on.
pub trait Backend: NetworkOps + TrainingOps + Coarse2FineOps {}

impl<B: NetworkOps + TrainingOps + Coarse2FineOps> Backend for B {}
