//! cuDNN's pooling, f32: the library baseline of the pooling benches, which a test also holds to
//! the CPU reference. Max pooling is `CUDNN_POOLING_MAX` (cuDNN's fastest; its backward finds
//! each window's maximum again from `x` and `y` instead of reading indices); average pooling
//! counts or skips the padding as the parameters say. cudarc's safe API has no backward pooling,
//! so this works on raw handles ([`crate::cudnn`]).

use cudarc::cudnn::sys::{self, cudnnPoolingMode_t};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::cudnn::{check, scalar, Handle, Pooling, Tensor4d, ONE, ZERO};
use c2f_kernels::device::Gpu;
use c2f_kernels::error::{check_len, Result};
use c2f_kernels::pool::{Pool2dParams, PoolShape};

/// One pooling op for one input shape.
pub struct Pool2dCudnn {
    handle: Handle,
    pooling: Pooling,
    input: Tensor4d,
    output: Tensor4d,
    lens: (usize, usize),
}

impl Pool2dCudnn {
    /// Max pooling with `params` (its `count_include_pad` is ignored).
    pub fn max(gpu: &Gpu, shape: PoolShape, params: Pool2dParams) -> Result<Self> {
        Self::new(gpu, shape, params, cudnnPoolingMode_t::CUDNN_POOLING_MAX)
    }

    /// Average pooling with `params`.
    pub fn average(gpu: &Gpu, shape: PoolShape, params: Pool2dParams) -> Result<Self> {
        let mode = if params.count_include_pad {
            cudnnPoolingMode_t::CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
        } else {
            cudnnPoolingMode_t::CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING
        };
        Self::new(gpu, shape, params, mode)
    }

    fn new(
        gpu: &Gpu,
        shape: PoolShape,
        params: Pool2dParams,
        mode: cudnnPoolingMode_t,
    ) -> Result<Self> {
        let out = params.output_shape(&shape)?;
        let dims = |s: &PoolShape| [s.batch, s.channels, s.height, s.width];
        Ok(Pool2dCudnn {
            handle: Handle::new(gpu)?,
            pooling: Pooling::new(mode, params.kernel, params.padding, params.stride)?,
            input: Tensor4d::new(dims(&shape))?,
            output: Tensor4d::new(dims(&out))?,
            lens: (shape.numel(), out.numel()),
        })
    }

    /// `y = pool(x)`.
    pub fn forward(&self, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<f32>) -> Result<()> {
        check_len("cuDNN pool x", x.len(), self.lens.0)?;
        check_len("cuDNN pool y", y.len(), self.lens.1)?;
        let h = &self.handle;
        // SAFETY: the lengths match the descriptors (checked above).
        check(unsafe {
            sys::cudnnPoolingForward(
                h.raw,
                self.pooling.0,
                scalar(&ONE),
                self.input.0,
                h.input(x),
                scalar(&ZERO),
                self.output.0,
                h.output(y),
            )
        })
    }

    /// `dx` (assigned) from the forward's `x` and `y` and the gradient `dy`.
    pub fn backward(
        &self,
        x: &impl DevicePtr<f32>,
        y: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        check_len("cuDNN pool x", x.len(), self.lens.0)?;
        check_len("cuDNN pool y", y.len(), self.lens.1)?;
        check_len("cuDNN pool dy", dy.len(), self.lens.1)?;
        check_len("cuDNN pool dx", dx.len(), self.lens.0)?;
        let (h, input, output) = (&self.handle, self.input.0, self.output.0);
        // SAFETY: as in `forward`.
        check(unsafe {
            sys::cudnnPoolingBackward(
                h.raw,
                self.pooling.0,
                scalar(&ONE),
                output,
                h.input(y),
                output,
                h.input(dy),
                input,
                h.input(x),
                scalar(&ZERO),
                input,
                h.output(dx),
            )
        })
    }
}
