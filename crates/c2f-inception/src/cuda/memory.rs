//! The CUDA backend's device buffers, and the checked device ranges its ops hand the launchers.

use std::marker::PhantomData;
use std::sync::Arc;

use c2f_kernels::Result;
use cudarc::driver::{
    sys::CUdeviceptr, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice,
    SyncOnDrop, ValidAsZeroBits,
};

use crate::backend::{check_operands, IndexTensor, Tensor};

/// A range of one of the backend's device buffers, as the launchers take their operands
/// (`DevicePtr` for inputs, `DevicePtrMut` for outputs). Only [`Memory::run`] and
/// [`Memory::input`] make them, after [`check_operands`]; they live no longer than the borrow
/// of the buffers.
pub struct DevRange<'a, T> {
    pub(super) ptr: CUdeviceptr,
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
pub(super) struct DeviceBuf<T> {
    data: CudaSlice<T>,
    pub(super) len: usize,
}

impl<T: DeviceRepr + ValidAsZeroBits> DeviceBuf<T> {
    /// Appends a zero-filled buffer of `len` elements to `bufs`; returns its index.
    pub(super) fn push_zeroed(
        bufs: &mut Vec<DeviceBuf<T>>,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<usize> {
        bufs.push(DeviceBuf {
            data: stream.alloc_zeros::<T>(len.max(1))?,
            len,
        });
        Ok(bufs.len() - 1)
    }
}

/// The backend's buffers and stream.
pub(super) struct Memory {
    pub(super) stream: Arc<CudaStream>,
    pub(super) bufs: Vec<DeviceBuf<f32>>,
    pub(super) index_bufs: Vec<DeviceBuf<i32>>,
}

impl Memory {
    pub(super) fn new(stream: Arc<CudaStream>) -> Memory {
        Memory {
            stream,
            bufs: Vec::new(),
            index_bufs: Vec::new(),
        }
    }

    /// Checks the operands of one op ([`check_operands`]) and runs `op` on their device ranges:
    /// the inputs (read only), the outputs and the index operands, each in the order given.
    ///
    /// Handing out one range per operand is sound because the checks refuse an output that
    /// overlaps another operand of the call, and each operand is handed out once.
    pub(super) fn run<T, const I: usize, const O: usize, const X: usize>(
        &self,
        inputs: [Tensor; I],
        outputs: [Tensor; O],
        index: [IndexTensor; X],
        op: impl FnOnce(
            [DevRange<'_, f32>; I],
            [DevRange<'_, f32>; O],
            [DevRange<'_, i32>; X],
        ) -> Result<T>,
    ) -> Result<T> {
        self.check(&inputs, &outputs, &index)?;
        op(
            inputs.map(|t| self.range(&self.bufs[t.buf], t.offset, t.len)),
            outputs.map(|t| self.range(&self.bufs[t.buf], t.offset, t.len)),
            index.map(|t| self.range(&self.index_bufs[t.buf], t.offset, t.len)),
        )
    }

    /// The device range of input `t`, checked to lie inside its buffer.
    pub(super) fn input(&self, t: Tensor) -> Result<DevRange<'_, f32>> {
        self.check(&[t], &[], &[])?;
        Ok(self.range(&self.bufs[t.buf], t.offset, t.len))
    }

    fn check(&self, inputs: &[Tensor], outputs: &[Tensor], index: &[IndexTensor]) -> Result<()> {
        check_operands(
            |b| self.bufs.get(b).map(|b| b.len),
            |b| self.index_bufs.get(b).map(|b| b.len),
            inputs,
            outputs,
            index,
        )
    }

    /// `len` elements of `buf` from `offset`, which the caller has checked lie inside it.
    fn range<'a, T>(&'a self, buf: &'a DeviceBuf<T>, offset: usize, len: usize) -> DevRange<'a, T> {
        assert!(offset + len <= buf.len, "checked by check_operands");
        let base = buf.data.device_ptr(&self.stream).0;
        DevRange {
            ptr: base + (offset * std::mem::size_of::<T>()) as CUdeviceptr,
            len,
            stream: &self.stream,
            _buffer: PhantomData,
        }
    }
}
