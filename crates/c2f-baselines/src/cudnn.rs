//! Raw cuDNN objects for the benches' library baselines that cudarc's safe API does not bind
//! (batch norm, activations, backward pooling, softmax backward, tensor addition, tensor
//! transforms). Each wrapper owns one cuDNN object and destroys it when dropped; the calls
//! themselves stay with their baselines.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use cudarc::cudnn::sys::{
    cudnnActivationMode_t, cudnnDataType_t, cudnnNanPropagation_t, cudnnPoolingMode_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use c2f_kernels::cudnn_raw::{available, cudnn_error};
use c2f_kernels::device::{device_addr, device_addr_mut, Gpu};
use c2f_kernels::error::{check_len, Result};

/// A cuDNN status as a [`Result`].
pub fn check(status: sys::cudnnStatus_t) -> Result<()> {
    status.result().map_err(cudnn_error)
}

/// The `alpha`/`beta` scaling arguments of f32 calls.
pub const ONE: f32 = 1.0;
pub const ZERO: f32 = 0.0;

pub fn scalar(v: &'static f32) -> *const c_void {
    v as *const f32 as *const c_void
}

/// `y = x + beta·y` through `cudnnTransformTensor` on `handle`: a type conversion, a layout
/// change or both, as the descriptors say. Each buffer holds `len` elements of its descriptor's
/// type (the callers pair them); `what` names the baseline in length errors.
pub fn transform_tensor<X, Y>(
    handle: &Handle,
    what: &str,
    len: usize,
    beta: &'static f32,
    (x_desc, x): (&Tensor4d, &impl DevicePtr<X>),
    (y_desc, y): (&Tensor4d, &mut impl DevicePtrMut<Y>),
) -> Result<()> {
    check_len(&format!("cuDNN {what} x"), x.len(), len)?;
    check_len(&format!("cuDNN {what} y"), y.len(), len)?;
    let (x, y) = (handle.input(x), handle.output(y));
    // SAFETY: both buffers hold `len` elements of their descriptors' types (checked above, the
    // types paired by the callers); the scalars are host constants.
    check(unsafe {
        sys::cudnnTransformTensor(
            handle.raw,
            scalar(&ONE),
            x_desc.0,
            x,
            scalar(beta),
            y_desc.0,
            y,
        )
    })
}

/// A cuDNN handle that queues on the GPU's stream, which it keeps alive.
pub struct Handle {
    pub raw: sys::cudnnHandle_t,
    stream: Arc<CudaStream>,
}

impl Handle {
    pub fn new(gpu: &Gpu) -> Result<Handle> {
        if !available() {
            return Err(cudnn_error("libcudnn could not be loaded"));
        }
        let handle = Handle {
            raw: result::create_handle().map_err(cudnn_error)?,
            stream: gpu.stream().clone(),
        };
        // SAFETY: the handle is live and the stream outlives it (held beside it).
        unsafe { result::set_stream(handle.raw, gpu.stream().cu_stream() as sys::cudaStream_t) }
            .map_err(cudnn_error)?;
        Ok(handle)
    }

    /// `buf`'s device address, as a cuDNN call takes an input tensor's data.
    pub fn input<T>(&self, buf: &impl DevicePtr<T>) -> *const c_void {
        device_addr(buf, &self.stream) as *const c_void
    }

    /// `buf`'s device address, as a cuDNN call takes an output tensor's data.
    pub fn output<T>(&self, buf: &mut impl DevicePtrMut<T>) -> *mut c_void {
        device_addr_mut(buf, &self.stream) as *mut c_void
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; cuDNN finishes its queued work first.
        unsafe { sys::cudnnDestroy(self.raw) };
    }
}

/// A tensor descriptor: NCHW unless made by [`Tensor4d::with_format`], f32 unless made by
/// [`Tensor4d::of_type`] or it.
pub struct Tensor4d(pub sys::cudnnTensorDescriptor_t);

impl Tensor4d {
    pub fn new(dims: [usize; 4]) -> Result<Tensor4d> {
        Self::of_type(dims, cudnnDataType_t::CUDNN_DATA_FLOAT)
    }

    pub fn of_type(dims: [usize; 4], data_type: cudnnDataType_t) -> Result<Tensor4d> {
        Self::with_format(dims, data_type, cudnnTensorFormat_t::CUDNN_TENSOR_NCHW)
    }

    /// `dims` (`[N, C, H, W]`, whatever the format) stored in `format`: NCHW, or channels-last
    /// NHWC.
    pub fn with_format(
        dims: [usize; 4],
        data_type: cudnnDataType_t,
        format: cudnnTensorFormat_t,
    ) -> Result<Tensor4d> {
        let desc = Tensor4d(result::create_tensor_descriptor().map_err(cudnn_error)?);
        // SAFETY: the descriptor was just created.
        unsafe {
            result::set_tensor4d_descriptor(desc.0, format, data_type, dims.map(|d| d as c_int))
        }
        .map_err(cudnn_error)?;
        Ok(desc)
    }
}

impl Drop for Tensor4d {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { sys::cudnnDestroyTensorDescriptor(self.0) };
    }
}

/// An activation descriptor (NaN propagated, as PyTorch's activations do).
pub struct Activation(pub sys::cudnnActivationDescriptor_t);

impl Activation {
    pub fn relu() -> Result<Activation> {
        Self::new(cudnnActivationMode_t::CUDNN_ACTIVATION_RELU)
    }

    pub fn sigmoid() -> Result<Activation> {
        Self::new(cudnnActivationMode_t::CUDNN_ACTIVATION_SIGMOID)
    }

    fn new(mode: cudnnActivationMode_t) -> Result<Activation> {
        let desc = Activation(result::create_activation_descriptor().map_err(cudnn_error)?);
        // SAFETY: the descriptor was just created.
        unsafe {
            result::set_activation_descriptor(
                desc.0,
                mode,
                cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                0.0,
            )
        }
        .map_err(cudnn_error)?;
        Ok(desc)
    }
}

impl Activation {
    /// `y = f(x)` (`cudnnActivationForward`) over tensors of the descriptor `desc`; `x` may be
    /// `y`.
    ///
    /// # Safety
    /// `x` and `y` are device addresses of tensors as `desc` describes them, live until the call
    /// has run on `handle`'s stream.
    pub unsafe fn forward(
        &self,
        handle: &Handle,
        desc: sys::cudnnTensorDescriptor_t,
        x: *const c_void,
        y: *mut c_void,
    ) -> Result<()> {
        // SAFETY: the caller's contract; the scalars are host constants.
        check(unsafe {
            sys::cudnnActivationForward(
                handle.raw,
                self.0,
                scalar(&ONE),
                desc,
                x,
                scalar(&ZERO),
                desc,
                y,
            )
        })
    }

    /// `dx = f'(x)·dy` (`cudnnActivationBackward`, assigned) from the forward's `y` and `x`, all
    /// of the descriptor `desc`.
    ///
    /// # Safety
    /// As [`Self::forward`], for all four tensors.
    pub unsafe fn backward(
        &self,
        handle: &Handle,
        desc: sys::cudnnTensorDescriptor_t,
        [y, dy, x]: [*const c_void; 3],
        dx: *mut c_void,
    ) -> Result<()> {
        // SAFETY: the caller's contract; the scalars are host constants.
        check(unsafe {
            sys::cudnnActivationBackward(
                handle.raw,
                self.0,
                scalar(&ONE),
                desc,
                y,
                desc,
                dy,
                desc,
                x,
                scalar(&ZERO),
                desc,
                dx,
            )
        })
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { sys::cudnnDestroyActivationDescriptor(self.0) };
    }
}

/// An f32 element-wise addition descriptor for `cudnnOpTensor`: `C = α₁A + α₂B + βC`.
pub struct AddTensors(pub sys::cudnnOpTensorDescriptor_t);

impl AddTensors {
    pub fn new() -> Result<AddTensors> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: cuDNN writes the new descriptor into `raw`.
        check(unsafe { sys::cudnnCreateOpTensorDescriptor(&mut raw) })?;
        let desc = AddTensors(raw);
        // SAFETY: the descriptor was just created.
        check(unsafe {
            sys::cudnnSetOpTensorDescriptor(
                desc.0,
                sys::cudnnOpTensorOp_t::CUDNN_OP_TENSOR_ADD,
                cudnnDataType_t::CUDNN_DATA_FLOAT,
                cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
            )
        })?;
        Ok(desc)
    }
}

impl Drop for AddTensors {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { sys::cudnnDestroyOpTensorDescriptor(self.0) };
    }
}

/// A 2-D pooling descriptor: `mode`, window, padding and stride as `(height, width)`.
pub struct Pooling(pub sys::cudnnPoolingDescriptor_t);

impl Pooling {
    pub fn new(
        mode: cudnnPoolingMode_t,
        window: (usize, usize),
        padding: (usize, usize),
        stride: (usize, usize),
    ) -> Result<Pooling> {
        let desc = Pooling(result::create_pooling_descriptor().map_err(cudnn_error)?);
        let pair = |(h, w): (usize, usize)| [h as c_int, w as c_int];
        // SAFETY: the descriptor was just created; each array holds the two dimensions.
        unsafe {
            result::set_pooling_descriptor(
                desc.0,
                mode,
                cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                2,
                &pair(window),
                &pair(padding),
                &pair(stride),
            )
        }
        .map_err(cudnn_error)?;
        Ok(desc)
    }
}

impl Drop for Pooling {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}
