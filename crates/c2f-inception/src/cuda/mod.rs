//! The CUDA backend: device buffers owned by the backend, convolutions through cuDNN
//! ([`conv`]), the `fc` through cuBLAS ([`linear`]), every other op through `c2f-kernels`' GPU
//! launchers, each made on first use of its shape and kept.
//!
//! Ops address their operands as ranges of the backend's buffers ([`DevRange`]): the checks of
//! [`check_operands`] (in bounds, no output overlapping another operand of the same call) are
//! what make handing the launchers one raw range per operand sound, even when several operands
//! live in the same buffer (parameters and their gradients are flat buffers). Everything runs on
//! the [`Gpu`]'s one stream, in order; [`Backend::read`] waits for it.
//!
//! Precision: f32 throughout, TF32 off in cuDNN and cuBLAS. Determinism: every op gives the same
//! bits on every run on the same GPU (see [`conv`] for the algorithm choice; the kernels and the
//! GEMMs are deterministic).

pub mod conv;
pub mod linear;
pub mod testing;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use c2f_kernels::axpby::AxpbyGpu;
use c2f_kernels::bap::{BapGpu, BapShape};
use c2f_kernels::batch_norm::{BatchNormGpu, BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{CenterLossGpu, CenterLossParams, CenterLossShape};
use c2f_kernels::concat::{ChannelCopyGpu, ChannelSlice};
use c2f_kernels::conv_transpose::{ConvTransposeGpu, ConvTransposeParams};
use c2f_kernels::dropout::{DropoutGpu, DropoutParams};
use c2f_kernels::error::check_len;
use c2f_kernels::map_select::{MapSelectGpu, MapShape};
use c2f_kernels::mask::{MaskGpu, MaskShape};
use c2f_kernels::pool::{AvgPool2dGpu, GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams, PoolShape};
use c2f_kernels::relu::ReluGpu;
use c2f_kernels::resize::{ResizeBilinearGpu, ResizeShape};
use c2f_kernels::sgd::{SgdGpu, SgdParams};
use c2f_kernels::sigmoid_bce::{SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::softmax_ce::{SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::{Error, Gpu, Result};
use cudarc::driver::{
    sys::CUdeviceptr, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice,
    SyncOnDrop, ValidAsZeroBits,
};

use crate::backend::{
    check_operands, Backend, BnMode, BnParams, BnStats, IndexTensor, LinearShape, Tensor,
};
use crate::cpu::conv::Conv2dShape;
use conv::ConvEngine;
pub use conv::{AlgorithmChoice, ConvAlgorithms};
use linear::LinearEngine;

/// A range of one of the backend's device buffers, as the launchers take their operands
/// (`DevicePtr` for inputs, `DevicePtrMut` for outputs). Only [`Operands`] makes them, after
/// [`check_operands`]; they live no longer than the borrow of the buffers.
pub struct DevRange<'a, T> {
    ptr: CUdeviceptr,
    len: usize,
    stream: &'a Arc<CudaStream>,
    _buffer: PhantomData<&'a CudaSlice<T>>,
}

impl<T> DeviceSlice<T> for DevRange<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

// The backend's context has per-buffer event tracking off (`Gpu::open`) and uses one stream, so
// there is no event to wait on or record: the guard is empty.
impl<T> DevicePtr<T> for DevRange<'_, T> {
    fn device_ptr<'b>(&'b self, _stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

impl<T> DevicePtrMut<T> for DevRange<'_, T> {
    fn device_ptr_mut<'b>(&'b mut self, _stream: &'b CudaStream) -> (CUdeviceptr, SyncOnDrop<'b>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

/// One device buffer and its length (cuMemAlloc refuses zero bytes, so an empty buffer holds one
/// unused element).
struct DeviceBuf<T> {
    data: CudaSlice<T>,
    len: usize,
}

impl<T: DeviceRepr + ValidAsZeroBits> DeviceBuf<T> {
    fn zeroed(stream: &Arc<CudaStream>, len: usize) -> Result<Self> {
        Ok(DeviceBuf {
            data: stream.alloc_zeros::<T>(len.max(1))?,
            len,
        })
    }
}

/// The backend's buffers and stream.
struct Memory {
    stream: Arc<CudaStream>,
    bufs: Vec<DeviceBuf<f32>>,
    index_bufs: Vec<DeviceBuf<i32>>,
}

/// Checked operands of one op; see [`Memory::operands`].
struct Operands<'a> {
    mem: &'a Memory,
}

impl<'a> Operands<'a> {
    fn range<T>(&self, buf: &'a DeviceBuf<T>, offset: usize, len: usize) -> DevRange<'a, T> {
        assert!(offset + len <= buf.len, "checked by Memory::operands");
        let base = buf.data.device_ptr(&self.mem.stream).0;
        DevRange {
            ptr: base + (offset * std::mem::size_of::<T>()) as CUdeviceptr,
            len,
            stream: &self.mem.stream,
            _buffer: PhantomData,
        }
    }

    /// An input (read only by the op).
    fn input(&self, t: Tensor) -> DevRange<'a, f32> {
        self.range(&self.mem.bufs[t.buf], t.offset, t.len)
    }

    /// An output: it overlaps no other operand of the call (checked in `operands`), and each op
    /// below takes each output once.
    fn output(&self, t: Tensor) -> DevRange<'a, f32> {
        self.input(t)
    }

    fn index(&self, t: IndexTensor) -> DevRange<'a, i32> {
        self.range(&self.mem.index_bufs[t.buf], t.offset, t.len)
    }
}

impl Memory {
    /// Checks the operands of one op ([`check_operands`]) and gives access to them.
    fn operands(
        &self,
        inputs: &[Tensor],
        outputs: &[Tensor],
        index: &[IndexTensor],
    ) -> Result<Operands<'_>> {
        check_operands(
            |b| self.bufs.get(b).map(|b| b.len),
            |b| self.index_bufs.get(b).map(|b| b.len),
            inputs,
            outputs,
            index,
        )?;
        Ok(Operands { mem: self })
    }
}

/// The launchers made so far, one per shape (and parameters).
#[derive(Default)]
struct Launchers {
    batch_norm: HashMap<BnKey, BatchNormGpu<f32>>,
    max_pool: HashMap<(PoolShape, Pool2dParams), MaxPool2dGpu<f32>>,
    avg_pool: HashMap<(PoolShape, Pool2dParams), AvgPool2dGpu<f32>>,
    global_pool: HashMap<PoolShape, GlobalAvgPoolGpu<f32>>,
    channel_copy: Option<ChannelCopyGpu<f32>>,
    softmax_ce: HashMap<SoftmaxCeShape, SoftmaxCeGpu<f32>>,
    sigmoid_bce: HashMap<SigmoidBceShape, SigmoidBceGpu<f32>>,
    dropout: Option<DropoutGpu<f32>>,
    sgd: Option<SgdGpu>,
    axpby: Option<AxpbyGpu<f32>>,
    bap: HashMap<BapShape, BapGpu<f32>>,
    center_loss: HashMap<CenterLossShape, CenterLossGpu<f32>>,
    conv_transpose: HashMap<ConvTransposeParams, ConvTransposeGpu<f32>>,
    relu: Option<ReluGpu<f32>>,
    map_select: HashMap<MapShape, MapSelectGpu<f32>>,
    resize: HashMap<ResizeShape, ResizeBilinearGpu<f32>>,
    mask: HashMap<MaskShape, MaskGpu<f32>>,
}

/// [`BatchNormParams`] holds floats, so it is keyed by their bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BnKey {
    shape: BatchNormShape,
    eps: u64,
    momentum: u64,
    relu: bool,
}

impl BnKey {
    fn new(shape: &BatchNormShape, p: &BatchNormParams) -> Self {
        BnKey {
            shape: *shape,
            eps: p.eps.to_bits(),
            momentum: p.momentum.to_bits(),
            relu: p.relu,
        }
    }
}

/// The value for `key`, made by `make` on first use.
fn cached<K: Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    make: impl FnOnce() -> Result<V>,
) -> Result<&mut V> {
    Ok(match map.entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(make()?),
    })
}

/// f32 buffers on one GPU; see the module documentation.
pub struct CudaBackend {
    gpu: Gpu,
    mem: Memory,
    conv: ConvEngine,
    linear: LinearEngine,
    launchers: Launchers,
}

impl CudaBackend {
    /// A backend on `gpu`, or [`Error::Library`] when cuDNN or cuBLAS cannot be loaded.
    pub fn new(gpu: Gpu) -> Result<CudaBackend> {
        let stream = gpu.stream().clone();
        Ok(CudaBackend {
            conv: ConvEngine::new(&stream)?,
            linear: LinearEngine::new(&stream)?,
            mem: Memory {
                stream,
                bufs: Vec::new(),
                index_bufs: Vec::new(),
            },
            launchers: Launchers::default(),
            gpu,
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
        Ok(self.mem.operands(&[t], &[], &[])?.input(t))
    }

    /// How cuDNN convolution algorithms are picked from now on ([`AlgorithmChoice`]; the
    /// heuristic unless set).
    pub fn set_conv_algorithm_choice(&mut self, choice: AlgorithmChoice) {
        self.conv.set_choice(choice);
    }

    /// The cuDNN algorithms chosen so far, one entry per convolution shape.
    pub fn conv_algorithms(&self) -> Vec<(Conv2dShape, ConvAlgorithms)> {
        self.conv.algorithms()
    }

    /// cuDNN and cuBLAS calls do not bind the context themselves.
    fn bind(&self) -> Result<()> {
        Ok(self.gpu.context().bind_to_thread()?)
    }
}

impl Backend for CudaBackend {
    type Scalar = f32;

    fn describe(&self) -> String {
        let device = match self.gpu.describe() {
            Ok(name) => format!("cuda f32 ({name})"),
            Err(e) => format!("cuda f32 (device not described: {e})"),
        };
        match self.conv.choice() {
            AlgorithmChoice::Heuristic => device,
            AlgorithmChoice::Timed => format!("{device}, cuDNN algorithms by timing"),
        }
    }

    fn alloc(&mut self, len: usize) -> Result<Tensor> {
        self.mem
            .bufs
            .push(DeviceBuf::zeroed(&self.mem.stream, len)?);
        Ok(Tensor {
            buf: self.mem.bufs.len() - 1,
            offset: 0,
            len,
        })
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexTensor> {
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
        4 * self.mem.bufs.iter().map(|b| b.len).sum::<usize>()
            + 4 * self.mem.index_bufs.iter().map(|b| b.len).sum::<usize>()
    }

    fn write(&mut self, dst: Tensor, src: &[f32]) -> Result<()> {
        check_len("write source", src.len(), dst.len)?;
        let m = self.mem.operands(&[], &[dst], &[])?;
        if !src.is_empty() {
            self.mem.stream.memcpy_htod(src, &mut m.output(dst))?;
        }
        Ok(())
    }

    fn read(&mut self, src: Tensor) -> Result<Vec<f32>> {
        let m = self.mem.operands(&[src], &[], &[])?;
        let mut host = vec![0.0f32; src.len];
        if !host.is_empty() {
            self.mem.stream.memcpy_dtoh(&m.input(src), &mut host)?;
        }
        self.mem.stream.synchronize()?;
        Ok(host)
    }

    fn read_index(&mut self, src: IndexTensor) -> Result<Vec<i32>> {
        let m = self.mem.operands(&[], &[], &[src])?;
        let mut host = vec![0i32; src.len];
        if !host.is_empty() {
            self.mem.stream.memcpy_dtoh(&m.index(src), &mut host)?;
        }
        self.mem.stream.synchronize()?;
        Ok(host)
    }

    fn write_index(&mut self, dst: IndexTensor, src: &[i32]) -> Result<()> {
        check_len("index write source", src.len(), dst.len)?;
        let m = self.mem.operands(&[], &[], &[dst])?;
        if !src.is_empty() {
            self.mem.stream.memcpy_htod(src, &mut m.index(dst))?;
        }
        Ok(())
    }

    fn fill(&mut self, dst: Tensor, value: f32) -> Result<()> {
        let m = self.mem.operands(&[], &[dst], &[])?;
        if dst.len == 0 {
            return Ok(());
        }
        self.bind()?;
        let out = m.output(dst);
        // SAFETY: `out` is `dst.len` f32 (4-byte) elements of a live buffer, 4-byte aligned;
        // the memset is ordered on the backend's stream like every other op.
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
    }

    fn conv2d_forward(&mut self, s: &Conv2dShape, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
        self.bind()?;
        let m = self.mem.operands(&[x, w], &[y], &[])?;
        self.conv
            .forward(s, &m.input(x), &m.input(w), &mut m.output(y))
    }

    fn conv2d_backward_data(
        &mut self,
        s: &Conv2dShape,
        dy: Tensor,
        w: Tensor,
        dx: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        self.bind()?;
        let m = self.mem.operands(&[dy, w], &[dx], &[])?;
        self.conv
            .backward_data(s, &m.input(dy), &m.input(w), &mut m.output(dx), accumulate)
    }

    fn conv2d_backward_filter(
        &mut self,
        s: &Conv2dShape,
        x: Tensor,
        dy: Tensor,
        dw: Tensor,
    ) -> Result<()> {
        self.bind()?;
        let m = self.mem.operands(&[x, dy], &[dw], &[])?;
        self.conv
            .backward_filter(s, &m.input(x), &m.input(dy), &mut m.output(dw))
    }

    fn batch_norm_forward(
        &mut self,
        s: &BatchNormShape,
        p: &BatchNormParams,
        mode: BnMode,
        bn: &BnParams,
        x: Tensor,
        y: Tensor,
        saved: &BnStats,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.batch_norm, BnKey::new(s, p), || {
            BatchNormGpu::new(gpu, *s, *p)
        })?;
        match mode {
            BnMode::Train => {
                let m = self.mem.operands(
                    &[x, bn.gamma, bn.beta],
                    &[bn.running_mean, bn.running_var, y, saved.mean, saved.invstd],
                    &[],
                )?;
                op.forward_train(
                    &m.input(x),
                    &m.input(bn.gamma),
                    &m.input(bn.beta),
                    &mut m.output(bn.running_mean),
                    &mut m.output(bn.running_var),
                    &mut m.output(y),
                    &mut m.output(saved.mean),
                    &mut m.output(saved.invstd),
                )
            }
            BnMode::Inference => {
                let m = self.mem.operands(
                    &[x, bn.gamma, bn.beta, bn.running_mean, bn.running_var],
                    &[y],
                    &[],
                )?;
                op.forward_inference(
                    &m.input(x),
                    &m.input(bn.gamma),
                    &m.input(bn.beta),
                    &m.input(bn.running_mean),
                    &m.input(bn.running_var),
                    &mut m.output(y),
                )
            }
        }
    }

    fn batch_norm_backward(
        &mut self,
        s: &BatchNormShape,
        p: &BatchNormParams,
        mode: BnMode,
        bn: &BnParams,
        saved: &BnStats,
        x: Tensor,
        y: Tensor,
        dy: Tensor,
        dx: Tensor,
        dgamma: Tensor,
        dbeta: Tensor,
    ) -> Result<()> {
        let (mean, invstd) = match mode {
            BnMode::Train => (saved.mean, saved.invstd),
            BnMode::Inference => (bn.running_mean, bn.running_var),
        };
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.batch_norm, BnKey::new(s, p), || {
            BatchNormGpu::new(gpu, *s, *p)
        })?;
        let m = self.mem.operands(
            &[x, y, bn.gamma, mean, invstd, dy],
            &[dx, dgamma, dbeta],
            &[],
        )?;
        let (x, y, gamma, dy) = (m.input(x), m.input(y), m.input(bn.gamma), m.input(dy));
        let (mean, invstd) = (m.input(mean), m.input(invstd));
        let (mut dx, mut dgamma, mut dbeta) = (m.output(dx), m.output(dgamma), m.output(dbeta));
        match mode {
            BnMode::Train => op.backward_train(
                &x,
                &y,
                &gamma,
                &mean,
                &invstd,
                &dy,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            ),
            BnMode::Inference => op.backward_inference(
                &x,
                &y,
                &gamma,
                &mean,
                &invstd,
                &dy,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            ),
        }
    }

    fn max_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.max_pool, (*s, *p), || {
            MaxPool2dGpu::new(gpu, *s, *p)
        })?;
        let m = self.mem.operands(&[x], &[y], &[indices])?;
        op.forward(&m.input(x), &mut m.output(y), &mut m.index(indices))
    }

    fn max_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        indices: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.max_pool, (*s, *p), || {
            MaxPool2dGpu::new(gpu, *s, *p)
        })?;
        let m = self.mem.operands(&[dy], &[dx], &[indices])?;
        op.backward(&m.index(indices), &m.input(dy), &mut m.output(dx))
    }

    fn avg_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.avg_pool, (*s, *p), || {
            AvgPool2dGpu::new(gpu, *s, *p)
        })?;
        let m = self.mem.operands(&[x], &[y], &[])?;
        op.forward(&m.input(x), &mut m.output(y))
    }

    fn avg_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.avg_pool, (*s, *p), || {
            AvgPool2dGpu::new(gpu, *s, *p)
        })?;
        let m = self.mem.operands(&[dy], &[dx], &[])?;
        op.backward(&m.input(dy), &mut m.output(dx))
    }

    fn global_avg_pool_forward(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.global_pool, *s, || {
            GlobalAvgPoolGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[x], &[y], &[])?;
        op.forward(&m.input(x), &mut m.output(y))
    }

    fn global_avg_pool_backward(&mut self, s: &PoolShape, dy: Tensor, dx: Tensor) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.global_pool, *s, || {
            GlobalAvgPoolGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[dy], &[dx], &[])?;
        op.backward(&m.input(dy), &mut m.output(dx))
    }

    fn copy_channels(&mut self, s: &ChannelSlice, part: Tensor, whole: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.channel_copy, || {
            ChannelCopyGpu::new(&self.gpu)
        })?;
        let m = self.mem.operands(&[part], &[whole], &[])?;
        op.copy_channels(s, &m.input(part), &mut m.output(whole))
    }

    fn slice_channels(&mut self, s: &ChannelSlice, whole: Tensor, part: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.channel_copy, || {
            ChannelCopyGpu::new(&self.gpu)
        })?;
        let m = self.mem.operands(&[whole], &[part], &[])?;
        op.slice_channels(s, &m.input(whole), &mut m.output(part))
    }

    fn linear_forward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        y: Tensor,
    ) -> Result<()> {
        s.check(x, w, b, y)?;
        check_linear_dims(s)?;
        self.bind()?;
        let m = self.mem.operands(&[x, w, b], &[y], &[])?;
        self.linear
            .forward(s, &m.input(x), &m.input(w), &m.input(b), &mut m.output(y))
    }

    fn linear_backward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Tensor,
        dw: Tensor,
        db: Tensor,
    ) -> Result<()> {
        s.check(x, w, db, dy)?;
        check_len("linear dx", dx.len, s.batch * s.inputs)?;
        check_len("linear dw", dw.len, s.outputs * s.inputs)?;
        check_linear_dims(s)?;
        self.bind()?;
        let m = self.mem.operands(&[x, w, dy], &[dx, dw, db], &[])?;
        self.linear.backward(
            s,
            &m.input(x),
            &m.input(w),
            &m.input(dy),
            &mut m.output(dx),
            &mut m.output(dw),
            &mut m.output(db),
        )
    }

    fn dropout_forward(&mut self, p: &DropoutParams, x: Tensor, y: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.dropout, || DropoutGpu::new(&self.gpu))?;
        let m = self.mem.operands(&[x], &[y], &[])?;
        op.forward(p, &m.input(x), &mut m.output(y))
    }

    fn dropout_backward(&mut self, p: &DropoutParams, dy: Tensor, dx: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.dropout, || DropoutGpu::new(&self.gpu))?;
        let m = self.mem.operands(&[dy], &[dx], &[])?;
        op.backward(p, &m.input(dy), &mut m.output(dx))
    }

    fn softmax_cross_entropy(
        &mut self,
        s: &SoftmaxCeShape,
        logits: Tensor,
        labels: IndexTensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
    ) -> Result<f64> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.softmax_ce, *s, || {
            SoftmaxCeGpu::new(gpu, *s)
        })?;
        let m = self
            .mem
            .operands(&[logits], &[dlogits], &[labels, predictions])?;
        let loss = op.forward_backward(
            &m.input(logits),
            &m.index(labels),
            loss_scale,
            &mut m.index(predictions),
            &mut m.output(dlogits),
        )?;
        Ok(loss as f64)
    }

    fn sigmoid_binary_cross_entropy(
        &mut self,
        s: &SigmoidBceShape,
        logits: Tensor,
        targets: Tensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
    ) -> Result<f64> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.sigmoid_bce, *s, || {
            SigmoidBceGpu::new(gpu, *s)
        })?;
        let m = self
            .mem
            .operands(&[logits, targets], &[dlogits], &[predictions])?;
        let loss = op.forward_backward(
            &m.input(logits),
            &m.input(targets),
            loss_scale,
            &mut m.index(predictions),
            &mut m.output(dlogits),
        )?;
        Ok(loss as f64)
    }

    fn sgd_step(
        &mut self,
        p: &SgdParams,
        weights: Tensor,
        grads: Tensor,
        momentum: Tensor,
    ) -> Result<()> {
        let op = made_once(&mut self.launchers.sgd, || SgdGpu::new(&self.gpu))?;
        let m = self.mem.operands(&[grads], &[weights, momentum], &[])?;
        op.step(
            p,
            &mut m.output(weights),
            &m.input(grads),
            &mut m.output(momentum),
        )
    }

    fn axpby(&mut self, alpha: f64, x: Tensor, beta: f64, y: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.axpby, || AxpbyGpu::new(&self.gpu))?;
        let m = self.mem.operands(&[x], &[y], &[])?;
        op.run(alpha, &m.input(x), beta, &mut m.output(y))
    }

    fn bap_forward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.bap, *s, || BapGpu::new(gpu, *s))?;
        let m = self
            .mem
            .operands(&[attention, features], &[parts, norms], &[])?;
        op.forward(
            &m.input(attention),
            &m.input(features),
            &mut m.output(parts),
            &mut m.output(norms),
        )
    }

    fn bap_backward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
        d_parts: Tensor,
        d_attention: Tensor,
        d_features: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.bap, *s, || BapGpu::new(gpu, *s))?;
        let m = self.mem.operands(
            &[attention, features, parts, norms, d_parts],
            &[d_attention, d_features],
            &[],
        )?;
        op.backward(
            &m.input(attention),
            &m.input(features),
            &m.input(parts),
            &m.input(norms),
            &m.input(d_parts),
            &mut m.output(d_attention),
            &mut m.output(d_features),
        )
    }

    fn center_loss(
        &mut self,
        s: &CenterLossShape,
        p: &CenterLossParams,
        features: Tensor,
        labels: IndexTensor,
        centers: Tensor,
        d_features: Tensor,
    ) -> Result<f64> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.center_loss, *s, || {
            CenterLossGpu::new(gpu, *s)
        })?;
        let m = self
            .mem
            .operands(&[features], &[centers, d_features], &[labels])?;
        let loss = op.forward_update(
            p,
            &m.input(features),
            &m.index(labels),
            &mut m.output(centers),
            &mut m.output(d_features),
        )?;
        Ok(loss as f64)
    }

    fn conv_transpose_forward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        y: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.conv_transpose, *p, || {
            ConvTransposeGpu::new(gpu, *p)
        })?;
        let m = self.mem.operands(&[x, weight, bias], &[y], &[])?;
        op.forward(
            &m.input(x),
            &m.input(weight),
            &m.input(bias),
            &mut m.output(y),
        )
    }

    fn conv_transpose_backward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        dy: Tensor,
        dx: Tensor,
        d_weight: Tensor,
        d_bias: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.conv_transpose, *p, || {
            ConvTransposeGpu::new(gpu, *p)
        })?;
        let m = self
            .mem
            .operands(&[x, weight, dy], &[dx, d_weight, d_bias], &[])?;
        op.backward(
            &m.input(x),
            &m.input(weight),
            &m.input(dy),
            &mut m.output(dx),
            &mut m.output(d_weight),
            &mut m.output(d_bias),
        )
    }

    fn relu_forward(&mut self, x: Tensor, y: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.relu, || ReluGpu::new(&self.gpu))?;
        let m = self.mem.operands(&[x], &[y], &[])?;
        op.forward(&m.input(x), &mut m.output(y))
    }

    fn relu_backward(&mut self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        let op = made_once(&mut self.launchers.relu, || ReluGpu::new(&self.gpu))?;
        let m = self.mem.operands(&[y, dy], &[dx], &[])?;
        op.backward(&m.input(y), &m.input(dy), &mut m.output(dx))
    }

    fn select_map_forward(
        &mut self,
        s: &MapShape,
        a: Tensor,
        indices: IndexTensor,
        out: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.map_select, *s, || {
            MapSelectGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[a], &[out], &[indices])?;
        op.select_forward(&m.input(a), &m.index(indices), &mut m.output(out))
    }

    fn select_map_backward(
        &mut self,
        s: &MapShape,
        indices: IndexTensor,
        d_out: Tensor,
        da: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.map_select, *s, || {
            MapSelectGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[d_out], &[da], &[indices])?;
        op.select_backward(
            &m.index(indices),
            &m.input(d_out),
            &mut m.output(da),
            accumulate,
        )
    }

    fn mean_maps_forward(&mut self, s: &MapShape, a: Tensor, out: Tensor) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.map_select, *s, || {
            MapSelectGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[a], &[out], &[])?;
        op.mean_forward(&m.input(a), &mut m.output(out))
    }

    fn resize_bilinear_forward(&mut self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.resize, *s, || {
            ResizeBilinearGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[x], &[y], &[])?;
        op.forward(&m.input(x), &mut m.output(y))
    }

    fn resize_bilinear_backward(&mut self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.resize, *s, || {
            ResizeBilinearGpu::new(gpu, *s)
        })?;
        let m = self.mem.operands(&[dy], &[dx], &[])?;
        op.backward(&m.input(dy), &mut m.output(dx))
    }

    fn mask_forward(
        &mut self,
        s: &MaskShape,
        u: Tensor,
        x: Tensor,
        xf: Tensor,
        u_max: Tensor,
        argmax: IndexTensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.mask, *s, || MaskGpu::new(gpu, *s))?;
        let m = self.mem.operands(&[u, x], &[xf, u_max], &[argmax])?;
        op.forward(
            &m.input(u),
            &m.input(x),
            &mut m.output(xf),
            &mut m.output(u_max),
            &mut m.index(argmax),
        )
    }

    fn mask_backward(
        &mut self,
        s: &MaskShape,
        u: Tensor,
        x: Tensor,
        dxf: Tensor,
        u_max: Tensor,
        argmax: IndexTensor,
        du: Tensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let op = cached(&mut self.launchers.mask, *s, || MaskGpu::new(gpu, *s))?;
        let m = self.mem.operands(&[u, x, dxf, u_max], &[du], &[argmax])?;
        op.backward(
            &m.input(u),
            &m.input(x),
            &m.input(dxf),
            &m.input(u_max),
            &m.index(argmax),
            &mut m.output(du),
        )
    }
}

/// A launcher that serves every shape (channel copy, dropout, SGD), made on first use.
fn made_once<V>(slot: &mut Option<V>, make: impl FnOnce() -> Result<V>) -> Result<&V> {
    if slot.is_none() {
        *slot = Some(make()?);
    }
    Ok(slot.as_ref().expect("made above"))
}

/// cuBLAS takes no empty matrices (leading dimensions must be at least 1).
fn check_linear_dims(s: &LinearShape) -> Result<()> {
    if s.batch == 0 || s.inputs == 0 || s.outputs == 0 {
        return Err(Error::Shape(format!(
            "linear shape has a zero dimension: {s:?}"
        )));
    }
    Ok(())
}
