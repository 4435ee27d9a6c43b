//! The CUDA launcher: the batch-norm kernels for one shape and layout over a (chunks, C) grid
//! (NCHW) or a (chunks, C / tile) grid (NHWC).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::device::{grid, Gpu, Kernel, LaunchConfig};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::launch;
use crate::layout::Layout;

use super::{lens, BatchNormParams, BatchNormShape};

const THREADS: u32 = 256;
/// Blocks to aim for over the whole grid: about 8 resident blocks on each of 132 SMs.
const TARGET_BLOCKS: usize = 1024;
/// Fewest values per block worth a block of its own (8 per thread).
const MIN_PER_BLOCK: usize = 2048;
/// Largest grid y dimension, where the channels (NCHW) or channel tiles (NHWC) go.
const MAX_GRID_Y: usize = 65535;

/// NHWC: channels per block, a power of two: 32 lanes of 16-byte vectors at most, so that a
/// warp reads 512 contiguous bytes of a row when C allows.
fn nhwc_tile<T: Element>(channels: usize) -> usize {
    channels
        .next_power_of_two()
        .min(32 * 16 / std::mem::size_of::<T>())
}

/// How the kernels split the work: each channel's (NCHW) or tile's (NHWC) `n = N·H·W` values
/// or rows go in `chunks` ranges of `chunk_len`, none empty; `groups` channels or tiles of
/// `group_width` channels.
#[derive(Debug, Clone, Copy)]
struct Plan {
    chunks: usize,
    chunk_len: usize,
    groups: usize,
    group_width: usize,
}

impl Plan {
    fn new<T: Element>(shape: &BatchNormShape, layout: Layout) -> Plan {
        let n = shape.per_channel();
        let group_width = match layout {
            Layout::Nchw => 1,
            Layout::Nhwc => nhwc_tile::<T>(shape.channels),
        };
        let groups = shape.channels.div_ceil(group_width);
        let min_rows = MIN_PER_BLOCK.div_ceil(group_width.min(shape.channels));
        let chunks = TARGET_BLOCKS
            .div_ceil(groups)
            .min(n.div_ceil(min_rows))
            .max(1);
        let chunk_len = n.div_ceil(chunks);
        Plan {
            chunks: n.div_ceil(chunk_len),
            chunk_len,
            groups,
            group_width,
        }
    }
}

/// The batch-norm kernels for one shape, layout and params, with the partial-sum buffers
/// allocated once.
pub struct BatchNormGpu<T: Element> {
    shape: BatchNormShape,
    params: BatchNormParams,
    layout: Layout,
    k: Stages,
    plan: Plan,
    /// Per (channel, chunk): mean in the forward, Σg in the backward.
    part_a: CudaSlice<f32>,
    /// Per (channel, chunk): M2 in the forward, Σg·(x − mean) in the backward.
    part_b: CudaSlice<f32>,
    _storage: std::marker::PhantomData<T>,
}

crate::kernel_set! {
    struct BatchNormKernels: crate::sources::BATCH_NORM;
    typed: bn_stats, bn_train_apply, bn_infer_apply, bn_train_grad_reduce, bn_train_grad_input,
        bn_infer_grad_reduce, bn_nhwc_stats, bn_nhwc_train_apply, bn_nhwc_infer_apply,
        bn_nhwc_train_grad_reduce, bn_nhwc_train_grad_input, bn_nhwc_infer_grad_reduce;
    plain: bn_param_grads;
}

/// One layout's entry points; both layouts' take the same arguments.
struct Stages {
    stats: Kernel,
    train_apply: Kernel,
    infer_apply: Kernel,
    train_grad_reduce: Kernel,
    train_grad_input: Kernel,
    infer_grad_reduce: Kernel,
    param_grads: Kernel,
}

impl Stages {
    fn new<T: Element>(gpu: &Gpu, layout: Layout) -> Result<Stages> {
        let k = BatchNormKernels::<T>::new(gpu)?;
        Ok(match layout {
            Layout::Nchw => Stages {
                stats: k.bn_stats,
                train_apply: k.bn_train_apply,
                infer_apply: k.bn_infer_apply,
                train_grad_reduce: k.bn_train_grad_reduce,
                train_grad_input: k.bn_train_grad_input,
                infer_grad_reduce: k.bn_infer_grad_reduce,
                param_grads: k.bn_param_grads,
            },
            Layout::Nhwc => Stages {
                stats: k.bn_nhwc_stats,
                train_apply: k.bn_nhwc_train_apply,
                infer_apply: k.bn_nhwc_infer_apply,
                train_grad_reduce: k.bn_nhwc_train_grad_reduce,
                train_grad_input: k.bn_nhwc_train_grad_input,
                infer_grad_reduce: k.bn_nhwc_infer_grad_reduce,
                param_grads: k.bn_param_grads,
            },
        })
    }
}

impl<T: Element> BatchNormGpu<T> {
    /// NCHW activations.
    pub fn new(gpu: &Gpu, shape: BatchNormShape, params: BatchNormParams) -> Result<Self> {
        Self::with_layout(gpu, shape, params, Layout::Nchw)
    }

    /// Activations in `layout`; `gamma`, `beta` and every per-channel buffer are the same in
    /// both.
    pub fn with_layout(
        gpu: &Gpu,
        shape: BatchNormShape,
        params: BatchNormParams,
        layout: Layout,
    ) -> Result<Self> {
        shape.validate()?;
        params.validate()?;
        let plan = Plan::new::<T>(&shape, layout);
        if plan.groups > MAX_GRID_Y {
            return Err(Error::Shape(format!(
                "batch norm channels {} above the supported {} in {layout:?}",
                shape.channels,
                MAX_GRID_Y * plan.group_width
            )));
        }
        Ok(BatchNormGpu {
            shape,
            params,
            layout,
            k: Stages::new::<T>(gpu, layout)?,
            plan,
            part_a: gpu.alloc_zeros(shape.channels * plan.chunks)?,
            part_b: gpu.alloc_zeros(shape.channels * plan.chunks)?,
            _storage: std::marker::PhantomData,
        })
    }

    pub fn shape(&self) -> &BatchNormShape {
        &self.shape
    }

    pub fn params(&self) -> &BatchNormParams {
        &self.params
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The (chunks, channels or tiles) grid.
    fn grid(&self) -> LaunchConfig {
        grid(
            (self.plan.chunks as u32, self.plan.groups as u32, 1),
            THREADS,
        )
    }

    /// `C, HW (NCHW) or tile (NHWC), n, chunk_len` as the kernels take them.
    fn dims(&self) -> [i32; 4] {
        let s = &self.shape;
        let spread = match self.layout {
            Layout::Nchw => s.hw(),
            Layout::Nhwc => self.plan.group_width,
        };
        [
            s.channels as i32,
            spread as i32,
            s.per_channel() as i32,
            self.plan.chunk_len as i32,
        ]
    }

    /// Training mode: writes `y` and the saved `[mean, invstd]`, and updates the running
    /// `[mean, var]` in place, as [`forward_train_cpu`].
    pub fn forward_train(
        &mut self,
        x: &impl DevicePtr<T>,
        affine: [&impl DevicePtr<f32>; 2],
        running: [&mut impl DevicePtrMut<f32>; 2],
        y: &mut impl DevicePtrMut<T>,
        saved: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        let pairs = [lens(&affine), lens(&running)];
        self.shape
            .check_forward([x.len(), y.len()], pairs, Some(lens(&saved)))?;
        self.shape.check_training()?;
        let [c, hw, n, chunk_len] = self.dims();
        let (eps, momentum) = (self.params.eps as f32, self.params.momentum as f32);
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let ([gamma, beta], [running_mean, running_var]) = (affine, running);
        let [save_mean, save_invstd] = saved;
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            launch!(self.k.stats, cfg, [
                in x, &mut self.part_a, &mut self.part_b, &c, &hw, &n, &chunk_len
            ])?;
            launch!(self.k.train_apply, cfg, [
                in x, &self.part_a, &self.part_b, in gamma, in beta, out running_mean,
                out running_var, out save_mean, out save_invstd, out y, &c, &hw, &n, &chunk_len,
                &eps, &momentum, &relu
            ])?;
        }
        Ok(())
    }

    /// Inference mode: writes `y` from the running `[mean, var]`, as [`forward_inference_cpu`].
    pub fn forward_inference(
        &mut self,
        x: &impl DevicePtr<T>,
        affine: [&impl DevicePtr<f32>; 2],
        running: [&impl DevicePtr<f32>; 2],
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let pairs = [lens(&affine), lens(&running)];
        self.shape.check_forward([x.len(), y.len()], pairs, None)?;
        let [c, hw, n, chunk_len] = self.dims();
        let (eps, relu) = (self.params.eps as f32, self.params.relu as i32);
        let ([gamma, beta], [running_mean, running_var]) = (affine, running);
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            launch!(self.k.infer_apply, self.grid(), [
                in x, in gamma, in beta, in running_mean, in running_var, out y, &c, &hw, &n,
                &chunk_len, &eps, &relu
            ])?;
        }
        Ok(())
    }

    /// Training-mode backward, as [`backward_train_cpu`]: from the forward's `[x, y]` (`y` read
    /// only with ReLU), `dy`, `gamma` and the saved `[mean, invstd]`, assigns `dx` and
    /// accumulates `[dgamma, dbeta]` (`+=`).
    pub fn backward_train(
        &mut self,
        [x, y, dy]: [&impl DevicePtr<T>; 3],
        gamma: &impl DevicePtr<f32>,
        saved: [&impl DevicePtr<f32>; 2],
        dx: &mut impl DevicePtrMut<T>,
        grads: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        let lengths = [x.len(), y.len(), dy.len(), dx.len()];
        let pairs = [lens(&saved), lens(&grads)];
        self.shape
            .check_backward(true, lengths, gamma.len(), pairs)?;
        let [c, hw, n, chunk_len] = self.dims();
        let relu = self.params.relu as i32;
        let cfg = self.grid();
        let ([save_mean, save_invstd], [dgamma, dbeta]) = (saved, grads);
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            launch!(self.k.train_grad_reduce, cfg, [
                in x, in y, in dy, in save_mean, &mut self.part_a, &mut self.part_b, &c, &hw, &n,
                &chunk_len, &relu
            ])?;
            launch!(self.k.train_grad_input, cfg, [
                in x, in y, in dy, in save_mean, in save_invstd, in gamma, &self.part_a,
                &self.part_b, out dx, out dgamma, out dbeta, &c, &hw, &n, &chunk_len, &relu
            ])?;
        }
        Ok(())
    }

    /// Inference-mode backward (frozen BN), as [`backward_inference_cpu`]: from the forward's
    /// `[x, y]` (`y` read only with ReLU), `dy`, `gamma` and the running `[mean, var]`, assigns
    /// `dx` and accumulates `[dgamma, dbeta]` (`+=`).
    pub fn backward_inference(
        &mut self,
        [x, y, dy]: [&impl DevicePtr<T>; 3],
        gamma: &impl DevicePtr<f32>,
        running: [&impl DevicePtr<f32>; 2],
        dx: &mut impl DevicePtrMut<T>,
        grads: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        let lengths = [x.len(), y.len(), dy.len(), dx.len()];
        let pairs = [lens(&running), lens(&grads)];
        self.shape
            .check_backward(false, lengths, gamma.len(), pairs)?;
        let [c, hw, n, chunk_len] = self.dims();
        let chunks = self.plan.chunks as i32;
        let (eps, relu) = (self.params.eps as f32, self.params.relu as i32);
        let ([running_mean, running_var], [dgamma, dbeta]) = (running, grads);
        // One warp per channel sums its chunks' partials.
        let (cfg, per_channel) = (self.grid(), grid((self.shape.channels as u32, 1, 1), 32));
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // C·chunks values, the grid's size.
        unsafe {
            launch!(self.k.infer_grad_reduce, cfg, [
                in x, in y, in dy, in running_mean, in gamma, in running_var, out dx,
                &mut self.part_a, &mut self.part_b, &c, &hw, &n, &chunk_len, &eps, &relu
            ])?;
            launch!(self.k.param_grads, per_channel, [
                &self.part_a, &self.part_b, &chunks, in running_var, &eps, out dgamma, out dbeta
            ])?;
        }
        Ok(())
    }
}
