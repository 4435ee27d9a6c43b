//! The benchmark baseline for the layout transpose: cuDNN's `cudnnTransformTensor` from an NCHW
//! descriptor to an NHWC one of the same dimensions, or back: what a user of cuDNN calls to
//! change a tensor's layout. A KCRS → KRSC weight transform is the same call with `K` as the
//! batch. The element types of the two sides may differ (f32 → bf16 for weights); cuDNN's
//! reference does not list the pairs it converts, so [`TransposeCudnn::new`] makes both calls
//! once on a small tensor and refuses with cuDNN's status if cuDNN does.

use std::any::TypeId;
use std::marker::PhantomData;

use cudarc::cudnn::sys::{self, cudnnDataType_t, cudnnTensorFormat_t};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use crate::cudnn::{transform_tensor, Handle, Tensor4d, ZERO};
use c2f_kernels::cudnn_raw::cudnn_error;
use c2f_kernels::device::Gpu;
use c2f_kernels::error::{Error, Result};
use c2f_kernels::Element;

/// `cudnnTransformTensor` between `[batch, channels, hw, 1]` in NCHW and in NHWC, from `I` to
/// `O` (f32 or bf16 each).
pub struct TransposeCudnn<I: Element, O: Element> {
    handle: Handle,
    /// The input's type in either layout, then the output's.
    x_nchw: Tensor4d,
    x_nhwc: Tensor4d,
    y_nchw: Tensor4d,
    y_nhwc: Tensor4d,
    len: usize,
    _types: PhantomData<(I, O)>,
}

/// cuDNN's name for `T`.
fn data_type<T: Element>() -> Result<cudnnDataType_t> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        Ok(cudnnDataType_t::CUDNN_DATA_FLOAT)
    } else if TypeId::of::<T>() == TypeId::of::<bf16>() {
        Ok(cudnnDataType_t::CUDNN_DATA_BFLOAT16)
    } else {
        Err(Error::ElementTypes {
            op: "cuDNN transpose",
            types: std::any::type_name::<T>().to_string(),
        })
    }
}

impl<I: Element, O: Element> TransposeCudnn<I, O> {
    /// For `batch` samples of `channels` planes of `hw` pixels; a library error if this cuDNN
    /// lacks the call or refuses the conversion.
    pub fn new(gpu: &Gpu, batch: usize, channels: usize, hw: usize) -> Result<Self> {
        let probe = Self::for_dims(gpu, [2, 3, 5, 1])?;
        // SAFETY: looks a symbol up in the cuDNN library that `Handle::new` loaded.
        if unsafe { sys::culib().get::<unsafe extern "C" fn()>(b"cudnnTransformTensor\0") }.is_err()
        {
            return Err(cudnn_error("this libcudnn has no cudnnTransformTensor"));
        }
        let x = gpu.alloc_zeros::<I>(probe.len)?;
        let mut y = gpu.alloc_zeros::<O>(probe.len)?;
        let refused = |call: &'static str| {
            move |e: Error| cudnn_error(format!("cudnnTransformTensor refuses {call}: {e}"))
        };
        probe
            .to_channels_last(&x, &mut y)
            .map_err(refused("NCHW to NHWC"))?;
        probe
            .to_channels_first(&x, &mut y)
            .map_err(refused("NHWC to NCHW"))?;
        Self::for_dims(gpu, [batch, channels, hw, 1])
    }

    fn for_dims(gpu: &Gpu, dims: [usize; 4]) -> Result<Self> {
        let (x_type, y_type) = (data_type::<I>()?, data_type::<O>()?);
        let (nchw, nhwc) = (
            cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        );
        Ok(TransposeCudnn {
            handle: Handle::new(gpu)?,
            x_nchw: Tensor4d::with_format(dims, x_type, nchw)?,
            x_nhwc: Tensor4d::with_format(dims, x_type, nhwc)?,
            y_nchw: Tensor4d::with_format(dims, y_type, nchw)?,
            y_nhwc: Tensor4d::with_format(dims, y_type, nhwc)?,
            len: dims.iter().product(),
            _types: PhantomData,
        })
    }

    /// `y = x`, `x` NCHW and `y` NHWC.
    pub fn to_channels_last(
        &self,
        x: &impl DevicePtr<I>,
        y: &mut impl DevicePtrMut<O>,
    ) -> Result<()> {
        self.transform((&self.x_nchw, x), (&self.y_nhwc, y))
    }

    /// `y = x`, `x` NHWC and `y` NCHW.
    pub fn to_channels_first(
        &self,
        x: &impl DevicePtr<I>,
        y: &mut impl DevicePtrMut<O>,
    ) -> Result<()> {
        self.transform((&self.x_nhwc, x), (&self.y_nchw, y))
    }

    fn transform(
        &self,
        x: (&Tensor4d, &impl DevicePtr<I>),
        y: (&Tensor4d, &mut impl DevicePtrMut<O>),
    ) -> Result<()> {
        transform_tensor(&self.handle, "transpose", self.len, &ZERO, x, y)
    }
}
