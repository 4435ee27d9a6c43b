//! cuDNN's batch norm followed by its ReLU, f32: the library baseline of the benches, which a
//! test also holds to the CPU reference.
//!
//! cuDNN has no fused BN + ReLU for NCHW f32 (its fused `Ex` path wants NHWC half), so this is
//! what a framework runs: `cudnnBatchNormalizationForwardTraining` (spatial mode) then an in-place
//! `cudnnActivationForward`, and backward `cudnnActivationBackward` into a scratch gradient then
//! `cudnnBatchNormalizationBackward`. cudarc's safe API binds neither, so this works on raw
//! handles ([`crate::cudnn`]).

use cudarc::cudnn::sys::{self, cudnnBatchNormMode_t};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::cudnn::{check, scalar, Activation, Handle, Tensor4d, ONE, ZERO};
use c2f_kernels::batch_norm::{lens, BatchNormParams, BatchNormShape};
use c2f_kernels::device::Gpu;
use c2f_kernels::error::Result;

const SPATIAL: cudnnBatchNormMode_t = cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// The same op as [`c2f_kernels::batch_norm::BatchNormGpu`]`<f32>` in training mode, through cuDNN.
pub struct BatchNormCudnn {
    shape: BatchNormShape,
    params: BatchNormParams,
    handle: Handle,
    /// `[N, C, H, W]`, for x, y and their gradients.
    activations: Tensor4d,
    /// `[1, C, 1, 1]`, for gamma, beta and the statistics.
    per_channel: Tensor4d,
    relu: Activation,
    /// The gradient at the ReLU's input, between the two backward calls.
    relu_grad: CudaSlice<f32>,
}

impl BatchNormCudnn {
    pub fn new(gpu: &Gpu, shape: BatchNormShape, params: BatchNormParams) -> Result<Self> {
        params.validate()?;
        shape.validate()?;
        shape.check_training()?;
        let s = shape;
        Ok(BatchNormCudnn {
            shape,
            params,
            handle: Handle::new(gpu)?,
            activations: Tensor4d::new([s.batch, s.channels, s.height, s.width])?,
            per_channel: Tensor4d::new([1, s.channels, 1, 1])?,
            relu: Activation::relu()?,
            relu_grad: gpu.alloc_zeros(if params.relu { s.len() } else { 1 })?,
        })
    }

    /// As [`c2f_kernels::batch_norm::BatchNormGpu::forward_train`].
    pub fn forward_train(
        &mut self,
        x: &impl DevicePtr<f32>,
        affine: [&impl DevicePtr<f32>; 2],
        running: [&mut impl DevicePtrMut<f32>; 2],
        y: &mut impl DevicePtrMut<f32>,
        saved: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        let pairs = [lens(&affine), lens(&running)];
        self.shape
            .check_forward([x.len(), y.len()], pairs, Some(lens(&saved)))?;
        let ([gamma, beta], [running_mean, running_var]) = (affine, running);
        let [save_mean, save_invstd] = saved;
        let (h, a) = (&self.handle, self.activations.0);
        let y = h.output(y);
        // SAFETY: every buffer has the length its descriptor gives (checked above), and
        // cuDNN's ReLU may run in place.
        unsafe {
            check(sys::cudnnBatchNormalizationForwardTraining(
                h.raw,
                SPATIAL,
                scalar(&ONE),
                scalar(&ZERO),
                a,
                h.input(x),
                a,
                y,
                self.per_channel.0,
                h.input(gamma),
                h.input(beta),
                self.params.momentum,
                h.output(running_mean),
                h.output(running_var),
                self.params.eps,
                h.output(save_mean),
                h.output(save_invstd),
            ))?;
            if self.params.relu {
                self.relu.forward(h, a, y, y)?;
            }
        }
        Ok(())
    }

    /// As [`c2f_kernels::batch_norm::BatchNormGpu::backward_train`]: assigns `dx`, accumulates
    /// `[dgamma, dbeta]`.
    pub fn backward_train(
        &mut self,
        [x, y, dy]: [&impl DevicePtr<f32>; 3],
        gamma: &impl DevicePtr<f32>,
        saved: [&impl DevicePtr<f32>; 2],
        dx: &mut impl DevicePtrMut<f32>,
        grads: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        let lengths = [x.len(), y.len(), dy.len(), dx.len()];
        let pairs = [lens(&saved), lens(&grads)];
        self.shape
            .check_backward(true, lengths, gamma.len(), pairs)?;
        let ([save_mean, save_invstd], [dgamma, dbeta]) = (saved, grads);
        let (h, a) = (&self.handle, self.activations.0);
        let (y, mut grad) = (h.input(y), h.input(dy));
        // SAFETY: as in `forward_train`; the scratch gradient has the activations' length.
        unsafe {
            if self.params.relu {
                let relu_grad = h.output(&mut self.relu_grad);
                // The ReLU's input is positive exactly where its output is, so the output
                // stands in for the input, which training does not keep.
                self.relu.backward(h, a, [y, grad, y], relu_grad)?;
                grad = relu_grad;
            }
            check(sys::cudnnBatchNormalizationBackward(
                h.raw,
                SPATIAL,
                scalar(&ONE),
                scalar(&ZERO),
                scalar(&ONE),
                scalar(&ONE),
                a,
                h.input(x),
                a,
                grad,
                a,
                h.output(dx),
                self.per_channel.0,
                h.input(gamma),
                h.output(dgamma),
                h.output(dbeta),
                self.params.eps,
                h.input(save_mean),
                h.input(save_invstd),
            ))
        }
    }
}
