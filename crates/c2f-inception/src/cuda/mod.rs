//! The CUDA backend: device buffers owned by the backend ([`memory`]), convolutions through
//! cuDNN ([`conv`]), the `fc` through cuBLAS ([`linear`]), every other op through `c2f-kernels`'
//! GPU launchers, each made on first use of its shape and kept ([`launch`]); the ops themselves
//! are in [`ops`], one impl per trait of the backend interface ([`crate::backend`]).
//!
//! Ops address their operands as ranges of the backend's buffers ([`DevRange`]): the checks of
//! [`crate::backend::check_operands`] (in bounds, no output overlapping another operand of the
//! same call) are what make handing the launchers one raw range per operand sound, even when
//! several operands live in the same buffer (parameters and their gradients are flat buffers).
//! Everything runs on the [`Gpu`]'s one stream, in order; [`Buffers::read`] waits for it. A
//! sequence of ops can be captured into a CUDA graph once and replayed ([`graph`]).
//!
//! Precision ([`CudaBackend::set_precision`]): [`Precision::F32`] (the default) keeps TF32 off
//! in cuDNN and cuBLAS, [`Precision::Tf32`] lets their convolutions and GEMMs use TF32 tensor
//! cores; both store f32. [`Precision::Bf16`] stores activations and their gradients in bf16
//! (each buffer knows its storage type, [`memory`]), with f32 accumulation in every kernel. Determinism: every op
//! gives the same bits on every run on the same GPU (see [`conv`] for the algorithm choice; the
//! kernels and the GEMMs are deterministic).

pub mod conv;
mod convert;
pub mod graph;
mod launch;
pub mod linear;
mod memory;
mod ops;
mod staging;
pub mod testing;

use c2f_kernels::device::{refuse_in_capture, ALLOCATES, WAITS_FOR_CAPTURED_WORK};
use c2f_kernels::error::check_len;
use c2f_kernels::layout::Layout;
use c2f_kernels::{Error, Gpu, Result};
use half::bf16;

use crate::backend::{Buffers, IndexTensor, Staged, Tensor};
use crate::cpu::conv::Conv2dShape;
use crate::precision::{Precision, Storage};
use conv::ConvEngine;
pub use conv::{AlgorithmChoice, ConvAlgorithms};
pub use graph::CapturedOps;
use launch::Launchers;
use linear::LinearEngine;
pub use memory::DevRange;
use memory::{DeviceBuf, Memory, Stored};
use staging::{Part, Staging};

/// f32 buffers on one GPU; see the module documentation.
pub struct CudaBackend {
    gpu: Gpu,
    mem: Memory,
    conv: ConvEngine,
    linear: LinearEngine,
    launchers: Launchers,
    /// Tells this backend's captured graphs from another's ([`graph`]).
    id: u64,
    precision: Precision,
    /// The layout of the networks made next ([`Buffers::activation_layout`]).
    layout: Layout,
    /// Batches on their way to the device ([`Buffers::stage`]); made at the first.
    staging: Option<Staging>,
    /// The bf16 step's casts and scratch ([`convert`]).
    conversions: convert::Conversions,
}

impl CudaBackend {
    /// A backend on `gpu`, or [`Error::Library`] when cuDNN or cuBLAS cannot be loaded.
    pub fn new(gpu: Gpu) -> Result<CudaBackend> {
        let stream = gpu.stream().clone();
        Ok(CudaBackend {
            conv: ConvEngine::new(&stream)?,
            linear: LinearEngine::new(&stream)?,
            mem: Memory::new(stream),
            launchers: Launchers::default(),
            gpu,
            id: graph::next_backend_id(),
            precision: Precision::F32,
            layout: Layout::Nchw,
            staging: None,
            conversions: convert::Conversions::default(),
        })
    }

    /// Opens device `ordinal` ([`Gpu::open`]) and makes a backend on it.
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        CudaBackend::new(Gpu::open(ordinal)?)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Waits for every op queued so far.
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize()
    }

    /// The device memory of `t`, for a library that works on raw device ranges in the order of
    /// the backend's stream ([`Gpu::stream`]), such as NCCL's collectives; writing through it
    /// is sound only in that order. Fails when `t` lies outside its buffer.
    pub fn device_range(&self, t: Tensor) -> Result<DevRange<'_, f32>> {
        self.mem.input(t)
    }

    /// How cuDNN convolution algorithms are picked from now on ([`AlgorithmChoice`]; the
    /// heuristic unless set).
    pub fn set_conv_algorithm_choice(&mut self, choice: AlgorithmChoice) {
        self.conv.set_choice(choice);
    }

    /// Computes in `precision` from now on: [`Precision::F32`] (the default),
    /// [`Precision::Tf32`], or [`Precision::Bf16`], in which buffers allocated for activations
    /// from now on ([`Buffers::alloc_activation`]) are bf16 and the network's ops run their
    /// bf16 kernels and cuDNN's bf16 tensor-core convolutions (f32 accumulation; f32 master
    /// weights, converted for each convolution: `convert.rs`). f64 is refused (not a GPU
    /// precision), and nothing changes.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let tf32 = match precision {
            Precision::F32 => false,
            // bf16: what is not bf16 (the fc on its converted input) may use TF32 as well.
            Precision::Tf32 | Precision::Bf16 => true,
            Precision::F64 => {
                return Err(Error::config(
                    "precision",
                    precision,
                    "the CUDA backend computes in bf16, tf32 or f32",
                ))
            }
        };
        self.linear.set_tf32(tf32)?;
        self.conv.set_tf32(tf32);
        self.precision = precision;
        self.layout = precision.activation_layout();
        Ok(())
    }

    /// Sets the layout networks made after this call keep their activations in, which
    /// [`Self::set_precision`] sets to the precision's ([`Precision::activation_layout`]):
    /// channels-last f32 is what the tests compare with NCHW f32.
    pub fn set_activation_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// The cuDNN algorithms chosen so far, one entry per convolution shape.
    pub fn conv_algorithms(&self) -> Vec<(Conv2dShape, ConvAlgorithms)> {
        self.conv.algorithms()
    }

    /// cuDNN and cuBLAS calls do not bind the context themselves.
    fn bind(&self) -> Result<()> {
        Ok(self.gpu.context().bind_to_thread()?)
    }

    /// A new zero-filled value buffer stored as `storage`, whole.
    fn alloc_stored(&mut self, len: usize, storage: Storage, layout: Layout) -> Result<Tensor> {
        let what = format!("allocating a buffer of {len} {storage} values");
        self.refuse_in_capture(&what, ALLOCATES)?;
        let stream = &self.mem.stream;
        self.mem.bufs.push(match storage {
            Storage::F32 => Stored::F32(DeviceBuf::zeroed(stream, len)?),
            Storage::Bf16 => Stored::Bf16(DeviceBuf::zeroed(stream, len)?),
        });
        self.mem.layouts.push(layout);
        Ok(Tensor {
            buf: self.mem.bufs.len() - 1,
            offset: 0,
            len,
        })
    }

    /// [`refuse_in_capture`] on the backend's stream: `op` cannot run inside [`Self::capture`].
    fn refuse_in_capture(&self, op: &str, reason: &str) -> Result<()> {
        refuse_in_capture(self.gpu.stream(), op, reason)
    }
}

/// Why staging cannot run during a capture.
const STAGES_OUTSIDE: &str = "staging a batch fills page-locked memory on the host and orders \
     its copies by events recorded outside the graph; stage and take before replaying";

/// Why a host write cannot run during a capture.
const COPIES_FROM_HOST: &str = "a graph cannot hold a copy from pageable host memory; write \
     before capturing, or copy from a device buffer inside";

impl Buffers for CudaBackend {
    type Scalar = f32;

    fn describe(&self) -> String {
        let device = match self.gpu.describe() {
            Ok(name) => format!("cuda {} ({name})", self.precision),
            Err(e) => format!("cuda {} (device not described: {e})", self.precision),
        };
        match self.conv.choice() {
            AlgorithmChoice::Heuristic => device,
            AlgorithmChoice::Timed => format!("{device}, cuDNN algorithms by timing"),
        }
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn alloc(&mut self, len: usize) -> Result<Tensor> {
        self.alloc_stored(len, Storage::F32, Layout::Nchw)
    }

    fn alloc_activation(&mut self, len: usize) -> Result<Tensor> {
        self.alloc_activation_in(len, Layout::Nchw)
    }

    fn activation_layout(&self) -> Layout {
        self.layout
    }

    fn alloc_activation_in(&mut self, len: usize, layout: Layout) -> Result<Tensor> {
        self.alloc_stored(len, self.precision.activation_storage(), layout)
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexTensor> {
        self.refuse_in_capture(&format!("allocating an index buffer of {len}"), ALLOCATES)?;
        self.mem
            .index_bufs
            .push(DeviceBuf::zeroed(&self.mem.stream, len)?);
        Ok(IndexTensor {
            buf: self.mem.index_bufs.len() - 1,
            offset: 0,
            len,
        })
    }

    fn allocated_bytes(&self) -> usize {
        let values = self.mem.bufs.iter();
        values.map(|b| b.storage().bytes() * b.len()).sum::<usize>()
            + 4 * self.mem.index_bufs.iter().map(|b| b.len).sum::<usize>()
    }

    /// Into a bf16 buffer each value is rounded to nearest even on the host first.
    fn write(&mut self, dst: Tensor, src: &[f32]) -> Result<()> {
        check_len("write source", src.len(), dst.len)?;
        self.refuse_in_capture(&format!("writing the {dst}"), COPIES_FROM_HOST)?;
        if src.is_empty() {
            return Ok(());
        }
        let operands = self.mem.operands(&[], &[dst], &[])?;
        match self.mem.storage(dst)? {
            Storage::F32 => {
                let mut dst = operands.values::<f32>(dst)?;
                self.mem.stream.memcpy_htod(src, &mut dst)?;
            }
            Storage::Bf16 => {
                let mut dst = operands.values::<bf16>(dst)?;
                self.mem.stream.memcpy_htod(&to_bf16(src), &mut dst)?;
            }
        }
        Ok(())
    }

    /// A bf16 buffer's values come back exactly, as f32.
    fn read(&mut self, src: Tensor) -> Result<Vec<f32>> {
        self.refuse_in_capture(&format!("reading the {src}"), WAITS_FOR_CAPTURED_WORK)?;
        let operands = self.mem.operands(&[src], &[], &[])?;
        let host = match self.mem.storage(src)? {
            Storage::F32 => {
                let mut host = vec![0.0f32; src.len];
                if !host.is_empty() {
                    self.mem
                        .stream
                        .memcpy_dtoh(&operands.values::<f32>(src)?, &mut host)?;
                }
                host
            }
            Storage::Bf16 => {
                let mut host = vec![bf16::ZERO; src.len];
                if !host.is_empty() {
                    self.mem
                        .stream
                        .memcpy_dtoh(&operands.values::<bf16>(src)?, &mut host)?;
                }
                host.into_iter().map(f32::from).collect()
            }
        };
        self.mem.stream.synchronize()?;
        Ok(host)
    }

    fn read_index(&mut self, src: IndexTensor) -> Result<Vec<i32>> {
        self.refuse_in_capture(&format!("reading the {src}"), WAITS_FOR_CAPTURED_WORK)?;
        let mut host = vec![0i32; src.len];
        self.mem.run([], [], [src], |[], [], [src]| {
            if !host.is_empty() {
                self.mem.stream.memcpy_dtoh(&src, &mut host)?;
            }
            Ok(self.mem.stream.synchronize()?)
        })?;
        Ok(host)
    }

    fn write_index(&mut self, dst: IndexTensor, src: &[i32]) -> Result<()> {
        check_len("index write source", src.len(), dst.len)?;
        self.refuse_in_capture(&format!("writing the {dst}"), COPIES_FROM_HOST)?;
        self.mem.run([], [], [dst], |[], [], [mut dst]| {
            if !src.is_empty() {
                self.mem.stream.memcpy_htod(src, &mut dst)?;
            }
            Ok(())
        })
    }

    /// Page-locked buffers copied on a copy stream, two slots in turn, then device copies into
    /// the destinations on the backend's stream (`cuda/staging.rs`).
    fn stage(&mut self, batch: &[Staged<'_, f32>]) -> Result<()> {
        self.refuse_in_capture("staging a batch", STAGES_OUTSIDE)?;
        // Values bound for bf16 buffers, rounded on the host first.
        let rounded: Vec<Vec<bf16>> = batch
            .iter()
            .filter_map(|part| match *part {
                Staged::Values(dst, values) => match self.mem.storage(dst) {
                    Ok(Storage::Bf16) => Some(to_bf16(values)),
                    _ => None,
                },
                Staged::Indices(..) => None,
            })
            .collect();
        let mut rounded = rounded.iter();
        let mut parts = Vec::with_capacity(batch.len());
        for part in batch {
            let (dst, bytes) = match *part {
                Staged::Values(dst, values) => {
                    check_len("staged values", values.len(), dst.len)?;
                    let operands = self.mem.operands(&[], &[dst], &[])?;
                    match self.mem.storage(dst)? {
                        Storage::F32 => (
                            operands.values::<f32>(dst)?.ptr,
                            bytemuck::cast_slice::<f32, u8>(values),
                        ),
                        Storage::Bf16 => (
                            operands.values::<bf16>(dst)?.ptr,
                            bytemuck::cast_slice::<bf16, u8>(
                                rounded.next().map_or(&[], Vec::as_slice),
                            ),
                        ),
                    }
                }
                Staged::Indices(dst, values) => {
                    check_len("staged indices", values.len(), dst.len)?;
                    let ptr = self.mem.run([], [], [dst], |[], [], [d]| Ok(d.ptr))?;
                    (ptr, bytemuck::cast_slice::<i32, u8>(values))
                }
            };
            parts.push(Part { dst, bytes });
        }
        self.bind()?;
        if self.staging.is_none() {
            self.staging = Some(Staging::new(&self.mem.stream)?);
        }
        self.staging.as_mut().expect("made above").stage(&parts)
    }

    fn take_staged(&mut self) -> Result<()> {
        self.refuse_in_capture("taking a staged batch", STAGES_OUTSIDE)?;
        self.bind()?;
        match &mut self.staging {
            Some(staging) => staging.take(&self.mem.stream),
            None => Ok(()),
        }
    }

    /// A bf16 buffer gets `value` rounded to nearest even.
    fn fill(&mut self, dst: Tensor, value: f32) -> Result<()> {
        let operands = self.mem.operands(&[], &[dst], &[])?;
        if dst.len == 0 {
            return Ok(());
        }
        self.bind()?;
        let stream = self.mem.stream.cu_stream();
        // SAFETY: each range is `dst.len` elements of a live buffer of their size, aligned to
        // it; the memset is ordered on the backend's stream like every other op.
        match self.mem.storage(dst)? {
            Storage::F32 => unsafe {
                let out = operands.values::<f32>(dst)?;
                cudarc::driver::sys::cuMemsetD32Async(out.ptr, value.to_bits(), dst.len, stream)
            },
            Storage::Bf16 => unsafe {
                let out = operands.values::<bf16>(dst)?;
                let bits = bf16::from_f32(value).to_bits();
                cudarc::driver::sys::cuMemsetD16Async(out.ptr, bits, dst.len, stream)
            },
        }
        .result()?;
        Ok(())
    }

    /// A CUDA graph ([`Self::capture`]).
    fn capture_ops(
        &mut self,
        work: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<Option<CapturedOps>> {
        self.capture(work).map(Some)
    }

    fn replay_ops(&mut self, ops: &CapturedOps) -> Result<()> {
        self.replay(ops)
    }
}

/// `values` rounded to bf16, to nearest even.
fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&v| bf16::from_f32(v)).collect()
}
