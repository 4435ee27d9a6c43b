//! The benchmark baseline for the f32 ↔ bf16 casts: cuDNN's `cudnnTransformTensor`, `y = α·x +
//! β·y` between tensors of one shape, here of different data types: what a user of cuDNN calls to
//! convert a tensor (β = 0), or to add a bf16 gradient into an f32 one (β = 1). cuDNN's reference
//! does not list the data-type pairs it converts, so [`CastCudnn::new`] makes each of the three
//! calls once on one element and refuses with cuDNN's status if cuDNN does.

use cudarc::cudnn::sys::{self, cudnnDataType_t};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use crate::cudnn::{transform_tensor, Handle, Tensor4d, ONE, ZERO};
use c2f_kernels::cudnn_raw::cudnn_error;
use c2f_kernels::device::Gpu;
use c2f_kernels::error::{Error, Result};

pub struct CastCudnn {
    handle: Handle,
    /// `[len, 1, 1, 1]` of f32 and of bf16.
    f32_desc: Tensor4d,
    bf16_desc: Tensor4d,
    len: usize,
}

impl CastCudnn {
    /// For tensors of `len` elements; a library error if this cuDNN lacks the call or refuses
    /// one of the conversions.
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self> {
        let probe = Self::for_len(gpu, 1)?;
        // SAFETY: looks a symbol up in the cuDNN library that `Handle::new` loaded.
        if unsafe { sys::culib().get::<unsafe extern "C" fn()>(b"cudnnTransformTensor\0") }.is_err()
        {
            return Err(cudnn_error("this libcudnn has no cudnnTransformTensor"));
        }
        let mut wide = gpu.alloc_zeros::<f32>(1)?;
        let mut narrow = gpu.alloc_zeros::<bf16>(1)?;
        probe
            .to_bf16(&wide, &mut narrow)
            .map_err(Self::refused("f32 to bf16"))?;
        probe
            .to_f32(&narrow, &mut wide)
            .map_err(Self::refused("bf16 to f32"))?;
        probe
            .accumulate(&narrow, &mut wide)
            .map_err(Self::refused("bf16 added into f32"))?;
        Self::for_len(gpu, len)
    }

    /// The error of a probe call of [`Self::new`] that cuDNN refused.
    fn refused(call: &'static str) -> impl FnOnce(Error) -> Error {
        move |e| cudnn_error(format!("cudnnTransformTensor refuses {call}: {e}"))
    }

    fn for_len(gpu: &Gpu, len: usize) -> Result<Self> {
        let dims = [len, 1, 1, 1];
        Ok(CastCudnn {
            handle: Handle::new(gpu)?,
            f32_desc: Tensor4d::new(dims)?,
            bf16_desc: Tensor4d::of_type(dims, cudnnDataType_t::CUDNN_DATA_BFLOAT16)?,
            len,
        })
    }

    /// `y = bf16(x)`.
    pub fn to_bf16(&self, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<bf16>) -> Result<()> {
        self.transform(&ZERO, (&self.f32_desc, x), (&self.bf16_desc, y))
    }

    /// `y = f32(x)`.
    pub fn to_f32(&self, x: &impl DevicePtr<bf16>, y: &mut impl DevicePtrMut<f32>) -> Result<()> {
        self.transform(&ZERO, (&self.bf16_desc, x), (&self.f32_desc, y))
    }

    /// `y += f32(x)`.
    pub fn accumulate(
        &self,
        x: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.transform(&ONE, (&self.bf16_desc, x), (&self.f32_desc, y))
    }

    /// `y = x + beta·y`, each buffer of the element type its descriptor says (the public
    /// methods pair them).
    fn transform<X, Y>(
        &self,
        beta: &'static f32,
        x: (&Tensor4d, &impl DevicePtr<X>),
        y: (&Tensor4d, &mut impl DevicePtrMut<Y>),
    ) -> Result<()> {
        transform_tensor(&self.handle, "cast", self.len, beta, x, y)
    }
}
