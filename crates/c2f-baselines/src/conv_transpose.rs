//! The cuDNN baseline of the benches, which a test also checks against our forward.

use cudarc::cudnn::{
    self, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::CudaSlice;

use c2f_kernels::conv_transpose::ConvTransposeParams;
use c2f_kernels::cudnn_raw::{available, cudnn_error};
use c2f_kernels::device::Gpu;
use c2f_kernels::element::Element;
use c2f_kernels::error::Result;

/// cuDNN computing the same transposed convolution, without bias.
///
/// The transposed convolution is the backward-data pass of the convolution that maps
/// `[B, Cout, Hout, Wout]` to `[B, Cin, H, W]` with the same weight viewed as a
/// `[Cin (conv outputs), Cout (conv inputs), k, k]` filter, stride and padding. So our
/// forward is cuDNN's backward-data, our `dx` its forward and our `d_weight` its
/// backward-filter. The weight is in `T` here: cuDNN wants every tensor in one type.
pub struct CudnnConvTranspose<T: Element + CudnnDataType> {
    params: ConvTransposeParams,
    conv: ConvDescriptor<f32>,
    /// `[B, Cout, Hout, Wout]`: our output, the convolution's input.
    big: TensorDescriptor<T>,
    /// `[B, Cin, H, W]`: our input, the convolution's output.
    small: TensorDescriptor<T>,
    filter: FilterDescriptor<T>,
    data_algo: cudnn::sys::cudnnConvolutionBwdDataAlgo_t,
    fwd_algo: cudnn::sys::cudnnConvolutionFwdAlgo_t,
    filter_algo: cudnn::sys::cudnnConvolutionBwdFilterAlgo_t,
    workspace: CudaSlice<u8>,
}

impl<T: Element + CudnnDataType> CudnnConvTranspose<T> {
    /// Sets up the three cuDNN operations for `params` and their shared workspace.
    /// `tensor_ops` lets cuDNN use tensor cores (TF32 for f32); off, it computes in plain
    /// FMA, the same arithmetic as our kernels.
    pub fn new(gpu: &Gpu, params: ConvTransposeParams, tensor_ops: bool) -> Result<Self> {
        params.validate()?;
        if !available() {
            return Err(cudnn_error("libcudnn could not be loaded"));
        }
        let p = params;
        let handle = Cudnn::new(gpu.stream().clone()).map_err(cudnn_error)?;
        let int = |d: usize| d as std::ffi::c_int;
        let nchw = cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (s, pad) = (int(p.stride), int(p.padding));
        let mut conv = handle
            .create_conv2d::<f32>(
                [pad, pad],
                [s, s],
                [1, 1],
                cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(cudnn_error)?;
        conv.set_math_type(if tensor_ops {
            cudnn::sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
        } else {
            cudnn::sys::cudnnMathType_t::CUDNN_FMA_MATH
        })
        .map_err(cudnn_error)?;
        let big = handle
            .create_4d_tensor::<T>(
                nchw,
                [p.batch, p.out_channels, p.out_height(), p.out_width()].map(int),
            )
            .map_err(cudnn_error)?;
        let small = handle
            .create_4d_tensor::<T>(nchw, [p.batch, p.in_channels, p.height, p.width].map(int))
            .map_err(cudnn_error)?;
        let filter = handle
            .create_4d_filter::<T>(
                nchw,
                [p.in_channels, p.out_channels, p.kernel_size, p.kernel_size].map(int),
            )
            .map_err(cudnn_error)?;
        let data = ConvBackwardData::<T, f32, T> {
            conv: &conv,
            dx: &big,
            w: &filter,
            dy: &small,
        };
        let fwd = ConvForward::<T, f32, T> {
            conv: &conv,
            x: &big,
            w: &filter,
            y: &small,
        };
        let filt = ConvBackwardFilter::<T, f32, T> {
            conv: &conv,
            x: &big,
            dw: &filter,
            dy: &small,
        };
        let data_algo = data.pick_algorithm().map_err(cudnn_error)?;
        let fwd_algo = fwd.pick_algorithm().map_err(cudnn_error)?;
        let filter_algo = filt.pick_algorithm().map_err(cudnn_error)?;
        let bytes = [
            data.get_workspace_size(data_algo),
            fwd.get_workspace_size(fwd_algo),
            filt.get_workspace_size(filter_algo),
        ]
        .into_iter()
        .try_fold(1, |m, b| b.map(|b| m.max(b)))
        .map_err(cudnn_error)?;
        let workspace = gpu.alloc_zeros::<u8>(bytes)?;
        Ok(CudnnConvTranspose {
            params,
            conv,
            big,
            small,
            filter,
            data_algo,
            fwd_algo,
            filter_algo,
            workspace,
        })
    }

    /// `y = conv_transpose(x, weight)` without bias, as cuDNN backward-data.
    pub fn forward(
        &mut self,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        let p = self.params;
        p.check_buffers(&[
            ("cuDNN x", x.len(), p.input_len()),
            ("cuDNN weight", weight.len(), p.weight_len()),
            ("cuDNN y", y.len(), p.output_len()),
        ])?;
        let op = ConvBackwardData::<T, f32, T> {
            conv: &self.conv,
            dx: &self.big,
            w: &self.filter,
            dy: &self.small,
        };
        let (one, zero) = (T::from_f32(1.0), T::from_f32(0.0));
        // SAFETY: the buffers have the descriptors' lengths and type.
        unsafe {
            op.launch(
                self.data_algo,
                Some(&mut self.workspace),
                (one, zero),
                y,
                weight,
                x,
            )
        }
        .map_err(cudnn_error)
    }

    /// `dx` (assigned) as cuDNN's convolution forward of `dy`.
    pub fn backward_input(
        &mut self,
        dy: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
    ) -> Result<()> {
        let p = self.params;
        p.check_buffers(&[
            ("cuDNN dy", dy.len(), p.output_len()),
            ("cuDNN weight", weight.len(), p.weight_len()),
            ("cuDNN dx", dx.len(), p.input_len()),
        ])?;
        let op = ConvForward::<T, f32, T> {
            conv: &self.conv,
            x: &self.big,
            w: &self.filter,
            y: &self.small,
        };
        let (one, zero) = (T::from_f32(1.0), T::from_f32(0.0));
        // SAFETY: the buffers have the descriptors' lengths and type.
        unsafe {
            op.launch(
                self.fwd_algo,
                Some(&mut self.workspace),
                (one, zero),
                dy,
                weight,
                dx,
            )
        }
        .map_err(cudnn_error)
    }

    /// `d_weight += …` (in `T`, beta = 1) as cuDNN's backward-filter.
    pub fn backward_weight(
        &mut self,
        x: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        d_weight: &mut CudaSlice<T>,
    ) -> Result<()> {
        let p = self.params;
        p.check_buffers(&[
            ("cuDNN x", x.len(), p.input_len()),
            ("cuDNN dy", dy.len(), p.output_len()),
            ("cuDNN d_weight", d_weight.len(), p.weight_len()),
        ])?;
        let op = ConvBackwardFilter::<T, f32, T> {
            conv: &self.conv,
            x: &self.big,
            dw: &self.filter,
            dy: &self.small,
        };
        let one = T::from_f32(1.0);
        // SAFETY: the buffers have the descriptors' lengths and type.
        unsafe {
            op.launch(
                self.filter_algo,
                Some(&mut self.workspace),
                (one, one),
                dy,
                d_weight,
                x,
            )
        }
        .map_err(cudnn_error)
    }
}
