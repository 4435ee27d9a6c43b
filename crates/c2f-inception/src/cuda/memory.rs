//! The CUDA backend's device buffers, and the checked device ranges its ops hand the launchers.

use std::marker::PhantomData;
use std::sync::Arc;

use c2f_kernels::layout::Layout;
use c2f_kernels::{Element, Error, Result};
use cudarc::driver::{
    sys::CUdeviceptr, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice,
    SyncOnDrop, ValidAsZeroBits,
};
use half::bf16;

use crate::backend::{check_operands, IndexTensor, Tensor};
use crate::precision::Storage;

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
    /// A zero-filled buffer of `len` elements.
    pub(super) fn zeroed(stream: &Arc<CudaStream>, len: usize) -> Result<DeviceBuf<T>> {
        Ok(DeviceBuf {
            data: stream.alloc_zeros::<T>(len.max(1))?,
            len,
        })
    }
}

/// A value buffer in its storage type.
pub(super) enum Stored {
    F32(DeviceBuf<f32>),
    Bf16(DeviceBuf<bf16>),
}

impl Stored {
    pub(super) fn len(&self) -> usize {
        match self {
            Stored::F32(b) => b.len,
            Stored::Bf16(b) => b.len,
        }
    }

    pub(super) fn storage(&self) -> Storage {
        match self {
            Stored::F32(_) => Storage::F32,
            Stored::Bf16(_) => Storage::Bf16,
        }
    }
}

/// A storage type of value buffers, for ranges typed by what an op's kernel takes.
pub(super) trait StoredAs: Element {
    const STORAGE: Storage;
    fn of(buf: &Stored) -> Option<&DeviceBuf<Self>>;
}

impl StoredAs for f32 {
    const STORAGE: Storage = Storage::F32;
    fn of(buf: &Stored) -> Option<&DeviceBuf<f32>> {
        match buf {
            Stored::F32(b) => Some(b),
            Stored::Bf16(_) => None,
        }
    }
}

impl StoredAs for bf16 {
    const STORAGE: Storage = Storage::Bf16;
    fn of(buf: &Stored) -> Option<&DeviceBuf<bf16>> {
        match buf {
            Stored::Bf16(b) => Some(b),
            Stored::F32(_) => None,
        }
    }
}

/// The backend's buffers and stream.
pub(super) struct Memory {
    pub(super) stream: Arc<CudaStream>,
    pub(super) bufs: Vec<Stored>,
    /// The memory order of each value buffer's activations, by buffer: what the layout-aware
    /// ops (convolutions, batch norm, pooling, channel copies) read to pick their kernels, and
    /// what every other op refuses when it is channels-last.
    pub(super) layouts: Vec<Layout>,
    pub(super) index_bufs: Vec<DeviceBuf<i32>>,
}

/// The operands of one op, checked together ([`Memory::operands`]): each hands out its device
/// range in the type its kernel takes.
pub(super) struct Operands<'a> {
    mem: &'a Memory,
}

impl<'a> Operands<'a> {
    /// The range of value operand `t` as `T`, or [`Error::Shape`] when its buffer stores
    /// another type.
    pub(super) fn values<T: StoredAs>(&self, t: Tensor) -> Result<DevRange<'a, T>> {
        let buf = &self.mem.bufs[t.buf];
        let typed = T::of(buf).ok_or_else(|| {
            Error::Shape(format!(
                "the {t} is stored in {}, where the op takes {}",
                buf.storage(),
                T::STORAGE
            ))
        })?;
        Ok(self.mem.range(typed, t.offset, t.len))
    }

    /// The ranges of value operands `ts`, each stored as `T`.
    pub(super) fn all_values<T: StoredAs, const N: usize>(
        &self,
        ts: [Tensor; N],
    ) -> Result<[DevRange<'a, T>; N]> {
        let ranges: Vec<DevRange<'a, T>> = ts
            .into_iter()
            .map(|t| self.values(t))
            .collect::<Result<_>>()?;
        ranges
            .try_into()
            .map_err(|_| Error::Shape(format!("{N} operands mapped to another count")))
    }

    /// The range of index operand `t`.
    pub(super) fn indices(&self, t: IndexTensor) -> DevRange<'a, i32> {
        self.mem.range(&self.mem.index_bufs[t.buf], t.offset, t.len)
    }
}

impl Memory {
    pub(super) fn new(stream: Arc<CudaStream>) -> Memory {
        Memory {
            stream,
            bufs: Vec::new(),
            layouts: Vec::new(),
            index_bufs: Vec::new(),
        }
    }

    /// How `t`'s buffer lays out its activations.
    pub(super) fn layout(&self, t: Tensor) -> Result<Layout> {
        self.layouts
            .get(t.buf)
            .copied()
            .ok_or_else(|| Error::Shape(format!("the {t} is in no buffer of this backend")))
    }

    /// The one layout of the activations `ts` an op reads and writes, or an error naming `op`
    /// and the first operand laid out otherwise than the first.
    pub(super) fn common_layout(&self, op: &str, ts: &[Tensor]) -> Result<Layout> {
        let Some(&first) = ts.first() else {
            return Ok(Layout::Nchw);
        };
        let layout = self.layout(first)?;
        for &t in &ts[1..] {
            let other = self.layout(t)?;
            if other != layout {
                return Err(Error::Shape(format!(
                    "{op}: the {first} is {layout:?} and the {t} {other:?}; the op takes one \
                     layout"
                )));
            }
        }
        Ok(layout)
    }

    /// Refuses a channels-last operand of `op`, which takes NCHW (or has no spatial layout).
    pub(super) fn refuse_channels_last(&self, op: &str, ts: &[Tensor]) -> Result<()> {
        for &t in ts {
            if self.layout(t)? == Layout::Nhwc {
                return Err(Error::Shape(format!(
                    "{op} takes NCHW operands; the {t} is channels-last (NHWC)"
                )));
            }
        }
        Ok(())
    }

    /// How `t`'s buffer stores its values.
    pub(super) fn storage(&self, t: Tensor) -> Result<Storage> {
        self.bufs
            .get(t.buf)
            .map(Stored::storage)
            .ok_or_else(|| Error::Shape(format!("the {t} is in no buffer of this backend")))
    }

    /// Checks the operands of one op together ([`check_operands`]) and hands them out.
    ///
    /// Handing out one range per operand is sound because the checks refuse an output that
    /// overlaps another operand of the call; each operand must be taken once.
    pub(super) fn operands(
        &self,
        inputs: &[Tensor],
        outputs: &[Tensor],
        index: &[IndexTensor],
    ) -> Result<Operands<'_>> {
        self.check(inputs, outputs, index)?;
        Ok(Operands { mem: self })
    }

    /// [`Self::run_as`] for an op whose value operands are all f32.
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
        self.run_as::<f32, T, I, O, X>(inputs, outputs, index, op)
    }

    /// [`Self::operands`] for an op whose value operands are all stored as `A`: `op` gets the
    /// inputs (read only), the outputs and the index operands, each in the order given.
    pub(super) fn run_as<A: StoredAs, T, const I: usize, const O: usize, const X: usize>(
        &self,
        inputs: [Tensor; I],
        outputs: [Tensor; O],
        index: [IndexTensor; X],
        op: impl FnOnce([DevRange<'_, A>; I], [DevRange<'_, A>; O], [DevRange<'_, i32>; X]) -> Result<T>,
    ) -> Result<T> {
        let operands = self.operands(&inputs, &outputs, &index)?;
        let (inputs, outputs) = (operands.all_values(inputs)?, operands.all_values(outputs)?);
        op(inputs, outputs, index.map(|t| operands.indices(t)))
    }

    /// The device range of f32 input `t`, checked to lie inside its buffer.
    pub(super) fn input(&self, t: Tensor) -> Result<DevRange<'_, f32>> {
        self.operands(&[t], &[], &[])?.values::<f32>(t)
    }

    fn check(&self, inputs: &[Tensor], outputs: &[Tensor], index: &[IndexTensor]) -> Result<()> {
        check_operands(
            |b| self.bufs.get(b).map(Stored::len),
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
