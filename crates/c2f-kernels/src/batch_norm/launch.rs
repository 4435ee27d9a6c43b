//! The CUDA launcher: the batch-norm kernels for one shape over a (chunks, C) grid.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use crate::device::{device_addr, device_addr_mut, Gpu};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::launch;

use super::{BatchNormParams, BatchNormShape};

const THREADS: u32 = 256;
/// Blocks to aim for over the whole (chunks, C) grid: about 8 resident blocks on each of 132 SMs.
const TARGET_BLOCKS: usize = 1024;
/// Fewest values per block worth a block of its own (8 per thread).
const MIN_PER_BLOCK: usize = 2048;
/// Largest grid y dimension, where the channels go.
const MAX_CHANNELS: usize = 65535;

/// How each channel's `n` values are split into blocks: `(chunks, chunk_len)`, none empty.
fn chunking(shape: &BatchNormShape) -> (usize, usize) {
    let n = shape.per_channel();
    let chunks = TARGET_BLOCKS
        .div_ceil(shape.channels)
        .min(n.div_ceil(MIN_PER_BLOCK))
        .max(1);
    let len = n.div_ceil(chunks);
    (n.div_ceil(len), len)
}

/// The batch-norm kernels for one shape and its params, with the partial-sum buffers allocated
/// once.
pub struct BatchNormGpu<T: Element> {
    shape: BatchNormShape,
    params: BatchNormParams,
    stream: Arc<CudaStream>,
    chunks: usize,
    chunk_len: usize,
    stats: CudaFunction,
    train_apply: CudaFunction,
    infer_apply: CudaFunction,
    train_grad_reduce: CudaFunction,
    train_grad_input: CudaFunction,
    infer_grad_reduce: CudaFunction,
    param_grads: CudaFunction,
    /// Per (channel, chunk): mean in the forward, Σg in the backward.
    part_a: CudaSlice<f32>,
    /// Per (channel, chunk): M2 in the forward, Σg·(x − mean) in the backward.
    part_b: CudaSlice<f32>,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> BatchNormGpu<T> {
    pub fn new(gpu: &Gpu, shape: BatchNormShape, params: BatchNormParams) -> Result<Self> {
        shape.validate()?;
        params.validate()?;
        if shape.channels > MAX_CHANNELS {
            return Err(Error::Shape(format!(
                "batch norm channels {} above the supported {MAX_CHANNELS}",
                shape.channels
            )));
        }
        let (chunks, chunk_len) = chunking(&shape);
        let src = &crate::sources::BATCH_NORM;
        Ok(BatchNormGpu {
            shape,
            params,
            stream: gpu.stream().clone(),
            chunks,
            chunk_len,
            stats: gpu.typed_function::<T>(src, "bn_stats")?,
            train_apply: gpu.typed_function::<T>(src, "bn_train_apply")?,
            infer_apply: gpu.typed_function::<T>(src, "bn_infer_apply")?,
            train_grad_reduce: gpu.typed_function::<T>(src, "bn_train_grad_reduce")?,
            train_grad_input: gpu.typed_function::<T>(src, "bn_train_grad_input")?,
            infer_grad_reduce: gpu.typed_function::<T>(src, "bn_infer_grad_reduce")?,
            param_grads: gpu.function(src, "bn_param_grads")?,
            part_a: gpu.alloc_zeros(shape.channels * chunks)?,
            part_b: gpu.alloc_zeros(shape.channels * chunks)?,
            _storage: std::marker::PhantomData,
        })
    }

    pub fn shape(&self) -> &BatchNormShape {
        &self.shape
    }

    pub fn params(&self) -> &BatchNormParams {
        &self.params
    }

    fn grid(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.chunks as u32, self.shape.channels as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `C, HW, n, chunk_len` as the kernels take them.
    fn dims(&self) -> [i32; 4] {
        let s = &self.shape;
        [
            s.channels as i32,
            s.hw() as i32,
            s.per_channel() as i32,
            self.chunk_len as i32,
        ]
    }

    /// Training mode: writes `y`, `save_mean`, `save_invstd` and updates `running_mean`,
    /// `running_var` in place, as [`forward_train_cpu`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &mut self,
        x: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        running_mean: &mut impl DevicePtrMut<f32>,
        running_var: &mut impl DevicePtrMut<f32>,
        y: &mut impl DevicePtrMut<T>,
        save_mean: &mut impl DevicePtrMut<f32>,
        save_invstd: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.shape.check_forward_train(
            [x.len(), y.len()],
            [
                gamma.len(),
                beta.len(),
                running_mean.len(),
                running_var.len(),
                save_mean.len(),
                save_invstd.len(),
            ],
        )?;
        self.shape.check_training()?;
        let [c, hw, n, chunk_len] = self.dims();
        let (eps, momentum) = (self.params.eps as f32, self.params.momentum as f32);
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let st = &self.stream;
        let (x, gamma, beta) = (
            device_addr(x, st),
            device_addr(gamma, st),
            device_addr(beta, st),
        );
        let running_mean = device_addr_mut(running_mean, st);
        let running_var = device_addr_mut(running_var, st);
        let y = device_addr_mut(y, st);
        let save_mean = device_addr_mut(save_mean, st);
        let save_invstd = device_addr_mut(save_invstd, st);
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            launch!(
                self.stream,
                &self.stats,
                cfg,
                [
                    &x,
                    &mut self.part_a,
                    &mut self.part_b,
                    &c,
                    &hw,
                    &n,
                    &chunk_len
                ]
            )?;
            launch!(
                self.stream,
                &self.train_apply,
                cfg,
                [
                    &x,
                    &self.part_a,
                    &self.part_b,
                    &gamma,
                    &beta,
                    &running_mean,
                    &running_var,
                    &save_mean,
                    &save_invstd,
                    &y,
                    &c,
                    &hw,
                    &n,
                    &chunk_len,
                    &eps,
                    &momentum,
                    &relu
                ]
            )?;
        }
        Ok(())
    }

    /// Inference mode: writes `y` from the running stats, as [`forward_inference_cpu`].
    pub fn forward_inference(
        &mut self,
        x: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        running_mean: &impl DevicePtr<f32>,
        running_var: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.shape.check(
            &[("x", x.len()), ("y", y.len())],
            &[
                ("gamma", gamma.len()),
                ("beta", beta.len()),
                ("running_mean", running_mean.len()),
                ("running_var", running_var.len()),
            ],
        )?;
        let [c, hw, n, chunk_len] = self.dims();
        let eps = self.params.eps as f32;
        let relu = self.params.relu as i32;
        let st = &self.stream;
        let (x, gamma, beta) = (
            device_addr(x, st),
            device_addr(gamma, st),
            device_addr(beta, st),
        );
        let running_mean = device_addr(running_mean, st);
        let running_var = device_addr(running_var, st);
        let y = device_addr_mut(y, st);
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            launch!(
                self.stream,
                &self.infer_apply,
                self.grid(),
                [
                    &x,
                    &gamma,
                    &beta,
                    &running_mean,
                    &running_var,
                    &y,
                    &c,
                    &hw,
                    &n,
                    &chunk_len,
                    &eps,
                    &relu
                ]
            )?;
        }
        Ok(())
    }

    /// Training-mode backward, as [`backward_train_cpu`]: assigns `dx`, accumulates `dgamma` and
    /// `dbeta` (`+=`). `y` is the forward's output, read only with ReLU.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_train(
        &mut self,
        x: &impl DevicePtr<T>,
        y: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        save_mean: &impl DevicePtr<f32>,
        save_invstd: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
        dgamma: &mut impl DevicePtrMut<f32>,
        dbeta: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.shape.check_backward_train(
            [x.len(), y.len(), dy.len(), dx.len()],
            [
                gamma.len(),
                save_mean.len(),
                save_invstd.len(),
                dgamma.len(),
                dbeta.len(),
            ],
        )?;
        let [c, hw, n, chunk_len] = self.dims();
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let st = &self.stream;
        let (x, y, dy) = (device_addr(x, st), device_addr(y, st), device_addr(dy, st));
        let gamma = device_addr(gamma, st);
        let (save_mean, save_invstd) = (device_addr(save_mean, st), device_addr(save_invstd, st));
        let dx = device_addr_mut(dx, st);
        let (dgamma, dbeta) = (device_addr_mut(dgamma, st), device_addr_mut(dbeta, st));
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            launch!(
                self.stream,
                &self.train_grad_reduce,
                cfg,
                [
                    &x,
                    &y,
                    &dy,
                    &save_mean,
                    &mut self.part_a,
                    &mut self.part_b,
                    &c,
                    &hw,
                    &n,
                    &chunk_len,
                    &relu
                ]
            )?;
            launch!(
                self.stream,
                &self.train_grad_input,
                cfg,
                [
                    &x,
                    &y,
                    &dy,
                    &save_mean,
                    &save_invstd,
                    &gamma,
                    &self.part_a,
                    &self.part_b,
                    &dx,
                    &dgamma,
                    &dbeta,
                    &c,
                    &hw,
                    &n,
                    &chunk_len,
                    &relu
                ]
            )?;
        }
        Ok(())
    }

    /// Inference-mode backward (frozen BN), as [`backward_inference_cpu`]: assigns `dx`,
    /// accumulates `dgamma` and `dbeta` (`+=`). `y` is the forward's output, read only with ReLU.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_inference(
        &mut self,
        x: &impl DevicePtr<T>,
        y: &impl DevicePtr<T>,
        gamma: &impl DevicePtr<f32>,
        running_mean: &impl DevicePtr<f32>,
        running_var: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
        dgamma: &mut impl DevicePtrMut<f32>,
        dbeta: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.shape.check(
            &[
                ("x", x.len()),
                ("y", y.len()),
                ("dy", dy.len()),
                ("dx", dx.len()),
            ],
            &[
                ("gamma", gamma.len()),
                ("running_mean", running_mean.len()),
                ("running_var", running_var.len()),
                ("dgamma", dgamma.len()),
                ("dbeta", dbeta.len()),
            ],
        )?;
        let [c, hw, n, chunk_len] = self.dims();
        let chunks = self.chunks as i32;
        let eps = self.params.eps as f32;
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let per_channel = LaunchConfig {
            grid_dim: (self.shape.channels as u32, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        let st = &self.stream;
        let (x, y, dy) = (device_addr(x, st), device_addr(y, st), device_addr(dy, st));
        let gamma = device_addr(gamma, st);
        let running_mean = device_addr(running_mean, st);
        let running_var = device_addr(running_var, st);
        let dx = device_addr_mut(dx, st);
        let (dgamma, dbeta) = (device_addr_mut(dgamma, st), device_addr_mut(dbeta, st));
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            launch!(
                self.stream,
                &self.infer_grad_reduce,
                cfg,
                [
                    &x,
                    &y,
                    &dy,
                    &running_mean,
                    &gamma,
                    &running_var,
                    &dx,
                    &mut self.part_a,
                    &mut self.part_b,
                    &c,
                    &hw,
                    &n,
                    &chunk_len,
                    &eps,
                    &relu
                ]
            )?;
            launch!(
                self.stream,
                &self.param_grads,
                per_channel,
                [
                    &self.part_a,
                    &self.part_b,
                    &chunks,
                    &running_var,
                    &eps,
                    &dgamma,
                    &dbeta
                ]
            )?;
        }
        Ok(())
    }
}
