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
//! Precision ([`CudaBackend::set_precision`]): f32 tensors throughout; [`Precision::F32`] (the
//! default) keeps TF32 off in cuDNN and cuBLAS, [`Precision::Tf32`] lets their convolutions and
//! GEMMs use TF32 tensor cores. Our kernels compute in f32 either way. Determinism: every op
//! gives the same bits on every run on the same GPU (see [`conv`] for the algorithm choice; the
//! kernels and the GEMMs are deterministic).

pub mod conv;
pub mod graph;
mod launch;
pub mod linear;
mod memory;
mod ops;
mod staging;
pub mod testing;

use c2f_kernels::device::{refuse_in_capture, ALLOCATES, WAITS_FOR_CAPTURED_WORK};
use c2f_kernels::error::check_len;
use c2f_kernels::{Error, Gpu, Result};

use crate::backend::{Buffers, IndexTensor, Staged, Tensor};
use crate::cpu::conv::Conv2dShape;
use crate::precision::Precision;
use conv::ConvEngine;
pub use conv::{AlgorithmChoice, ConvAlgorithms};
pub use graph::CapturedOps;
use launch::Launchers;
use linear::LinearEngine;
pub use memory::DevRange;
use memory::{DeviceBuf, Memory};
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
    /// Batches on their way to the device ([`Buffers::stage`]); made at the first.
    staging: Option<Staging>,
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
            staging: None,
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

    /// Computes in `precision` from now on: [`Precision::F32`] (the default) or
    /// [`Precision::Tf32`]. bf16 is refused as not built yet, f64 as not a GPU precision; either
    /// way nothing changes.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let tf32 = match precision {
            Precision::F32 => false,
            Precision::Tf32 => true,
            Precision::Bf16 => {
                return Err(Error::config(
                    "precision",
                    precision,
                    "bf16 training is not built yet (issue 20's plan: \
                     docs/architecture.md#precision); use tf32 or f32",
                ))
            }
            Precision::F64 => {
                return Err(Error::config(
                    "precision",
                    precision,
                    "the CUDA backend computes in f32: use tf32 or f32",
                ))
            }
        };
        self.linear.set_tf32(tf32)?;
        self.conv.set_tf32(tf32);
        self.precision = precision;
        Ok(())
    }

    /// The cuDNN algorithms chosen so far, one entry per convolution shape.
    pub fn conv_algorithms(&self) -> Vec<(Conv2dShape, ConvAlgorithms)> {
        self.conv.algorithms()
    }

    /// cuDNN and cuBLAS calls do not bind the context themselves.
    fn bind(&self) -> Result<()> {
        Ok(self.gpu.context().bind_to_thread()?)
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
        self.refuse_in_capture(&format!("allocating a buffer of {len} values"), ALLOCATES)?;
        let buf = DeviceBuf::push_zeroed(&mut self.mem.bufs, &self.mem.stream, len)?;
        Ok(Tensor {
            buf,
            offset: 0,
            len,
        })
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexTensor> {
        self.refuse_in_capture(&format!("allocating an index buffer of {len}"), ALLOCATES)?;
        let buf = DeviceBuf::push_zeroed(&mut self.mem.index_bufs, &self.mem.stream, len)?;
        Ok(IndexTensor {
            buf,
            offset: 0,
            len,
        })
    }

    fn allocated_bytes(&self) -> usize {
        4 * self.mem.bufs.iter().map(|b| b.len).sum::<usize>()
            + 4 * self.mem.index_bufs.iter().map(|b| b.len).sum::<usize>()
    }

    fn write(&mut self, dst: Tensor, src: &[f32]) -> Result<()> {
        check_len("write source", src.len(), dst.len)?;
        self.refuse_in_capture(&format!("writing the {dst}"), COPIES_FROM_HOST)?;
        self.mem.run([], [dst], [], |[], [mut dst], []| {
            if !src.is_empty() {
                self.mem.stream.memcpy_htod(src, &mut dst)?;
            }
            Ok(())
        })
    }

    fn read(&mut self, src: Tensor) -> Result<Vec<f32>> {
        self.refuse_in_capture(&format!("reading the {src}"), WAITS_FOR_CAPTURED_WORK)?;
        let mut host = vec![0.0f32; src.len];
        self.mem.run([src], [], [], |[src], [], []| {
            if !host.is_empty() {
                self.mem.stream.memcpy_dtoh(&src, &mut host)?;
            }
            Ok(self.mem.stream.synchronize()?)
        })?;
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
        let mut parts = Vec::with_capacity(batch.len());
        for part in batch {
            let (dst, bytes) = match *part {
                Staged::Values(dst, values) => {
                    check_len("staged values", values.len(), dst.len)?;
                    let ptr = self.mem.run([], [dst], [], |[], [d], []| Ok(d.ptr))?;
                    (ptr, bytemuck::cast_slice::<f32, u8>(values))
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

    fn fill(&mut self, dst: Tensor, value: f32) -> Result<()> {
        self.mem.run([], [dst], [], |[], [out], []| {
            if dst.len == 0 {
                return Ok(());
            }
            self.bind()?;
            // SAFETY: `out` is `dst.len` f32 (4-byte) elements of a live buffer, 4-byte
            // aligned; the memset is ordered on the backend's stream like every other op.
            unsafe {
                cudarc::driver::sys::cuMemsetD32Async(
                    out.ptr,
                    value.to_bits(),
                    dst.len,
                    self.mem.stream.cu_stream(),
                )
            }
            .result()?;
            Ok(())
        })
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
