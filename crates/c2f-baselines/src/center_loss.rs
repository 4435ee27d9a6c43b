//! The benchmark baseline, nothing else uses it: the same computation as separate kernel
//! launches with f32 intermediates in global memory (segments, gather, center norms for the
//! normalised rule, diff, loss rows, loss, gradient scale, segmented update), as a framework
//! would run it. It assumes valid
//! labels: a bad label is skipped, never reported. A GPU test holds it to the fused kernels' answer.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use c2f_kernels::center_loss::{
    check_buffers, launch_params, CenterLossParams, CenterLossShape, THREADS,
};
use c2f_kernels::device::{blocks_for, device_addr, device_addr_mut, Gpu};
use c2f_kernels::element::Element;
use c2f_kernels::error::Result;

pub struct CenterLossUnfused<T: Element> {
    shape: CenterLossShape,
    stream: Arc<CudaStream>,
    segments: CudaFunction,
    gather: CudaFunction,
    row_sumsq: CudaFunction,
    diff_fn: CudaFunction,
    loss_fn: CudaFunction,
    scale: CudaFunction,
    update: CudaFunction,
    first: CudaSlice<i32>,
    next: CudaSlice<i32>,
    gathered: CudaSlice<f32>,
    center_sumsq: CudaSlice<f32>,
    diff: CudaSlice<f32>,
    row_loss: CudaSlice<f32>,
    loss: CudaSlice<f32>,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> CenterLossUnfused<T> {
    pub fn new(gpu: &Gpu, shape: CenterLossShape) -> Result<Self> {
        shape.validate()?;
        let src = &crate::sources::CENTER_LOSS_UNFUSED;
        Ok(CenterLossUnfused {
            shape,
            stream: gpu.stream().clone(),
            segments: gpu.function(src, "center_loss_baseline_segments")?,
            gather: gpu.function(src, "center_loss_baseline_gather")?,
            row_sumsq: gpu.function(src, "center_loss_baseline_row_sumsq")?,
            diff_fn: gpu.typed_function::<T>(src, "center_loss_baseline_diff")?,
            loss_fn: gpu.function(src, "center_loss_baseline_loss")?,
            scale: gpu.typed_function::<T>(src, "center_loss_baseline_scale")?,
            update: gpu.function(src, "center_loss_baseline_update")?,
            first: gpu.alloc_zeros(shape.batch)?,
            next: gpu.alloc_zeros(shape.batch)?,
            gathered: gpu.alloc_zeros(shape.features_len())?,
            center_sumsq: gpu.alloc_zeros(shape.batch)?,
            diff: gpu.alloc_zeros(shape.features_len())?,
            row_loss: gpu.alloc_zeros(shape.batch)?,
            loss: gpu.alloc_zeros(1)?,
            _storage: std::marker::PhantomData,
        })
    }

    /// [`Self::enqueue`], then reads the loss back (synchronises).
    pub fn forward_update(
        &mut self,
        params: &CenterLossParams,
        features: &impl DevicePtr<T>,
        labels: &impl DevicePtr<i32>,
        centers: &mut impl DevicePtrMut<f32>,
        d_features: &mut impl DevicePtrMut<T>,
    ) -> Result<f32> {
        self.enqueue(params, features, labels, centers, d_features)?;
        let mut loss = [0f32];
        self.stream.memcpy_dtoh(&self.loss, &mut loss)?;
        self.stream.synchronize()?;
        Ok(loss[0])
    }

    /// Launches the kernels without waiting.
    pub fn enqueue(
        &mut self,
        params: &CenterLossParams,
        features: &impl DevicePtr<T>,
        labels: &impl DevicePtr<i32>,
        centers: &mut impl DevicePtrMut<f32>,
        d_features: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let s = self.shape;
        check_buffers(&s, features, labels, centers, d_features)?;
        let (b, d, c) = (s.batch as i32, s.dim as i32, s.classes as i32);
        let n = s.features_len() as i64;
        let (grad_scale, loss_scale, beta, normalized) = launch_params(&s, params);
        let cfg = |blocks: u32| LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // Grid-stride loops: enough blocks to fill the card, a few elements per thread.
        let elementwise = cfg(blocks_for(s.features_len(), THREADS * 4).min(1 << 16));
        let per_row = cfg(s.batch as u32);
        let st = &self.stream;
        let (features, labels) = (device_addr(features, st), device_addr(labels, st));
        let centers = device_addr_mut(centers, st);
        let d_features = device_addr_mut(d_features, st);
        // SAFETY: buffer lengths checked above match the kernels' indexing; the kernels skip
        // out-of-range labels.
        unsafe {
            self.stream
                .launch_builder(&self.segments)
                .arg(&labels)
                .arg(&mut self.first)
                .arg(&mut self.next)
                .arg(&b)
                .arg(&c)
                .launch(cfg(blocks_for(s.batch, THREADS)))?;
            self.stream
                .launch_builder(&self.gather)
                .arg(&centers)
                .arg(&labels)
                .arg(&mut self.gathered)
                .arg(&b)
                .arg(&d)
                .arg(&c)
                .launch(elementwise)?;
            if normalized != 0 {
                self.stream
                    .launch_builder(&self.row_sumsq)
                    .arg(&self.gathered)
                    .arg(&mut self.center_sumsq)
                    .arg(&d)
                    .launch(per_row)?;
            }
            self.stream
                .launch_builder(&self.diff_fn)
                .arg(&features)
                .arg(&self.gathered)
                .arg(&self.center_sumsq)
                .arg(&mut self.diff)
                .arg(&b)
                .arg(&d)
                .arg(&normalized)
                .launch(elementwise)?;
            self.stream
                .launch_builder(&self.row_sumsq)
                .arg(&self.diff)
                .arg(&mut self.row_loss)
                .arg(&d)
                .launch(per_row)?;
            self.stream
                .launch_builder(&self.loss_fn)
                .arg(&self.row_loss)
                .arg(&mut self.loss)
                .arg(&b)
                .arg(&loss_scale)
                .launch(cfg(1))?;
            self.stream
                .launch_builder(&self.scale)
                .arg(&self.diff)
                .arg(&d_features)
                .arg(&n)
                .arg(&grad_scale)
                .launch(elementwise)?;
            self.stream
                .launch_builder(&self.update)
                .arg(&centers)
                .arg(&labels)
                .arg(&self.first)
                .arg(&self.next)
                .arg(&self.diff)
                .arg(&self.gathered)
                .arg(&b)
                .arg(&d)
                .arg(&beta)
                .arg(&normalized)
                .launch(elementwise)?;
        }
        Ok(())
    }
}
