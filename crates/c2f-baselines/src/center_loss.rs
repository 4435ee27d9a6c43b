//! The benchmark baseline, nothing else uses it: the same computation as separate kernel
//! launches with f32 intermediates in global memory (segments, gather, center norms for the
//! normalised rule, diff, loss rows, loss, gradient scale, segmented update), as a framework
//! would run it. It assumes valid
//! labels: a bad label is skipped, never reported. A GPU test holds it to the fused kernels' answer.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use c2f_kernels::center_loss::{launch_params, CenterLossParams, CenterLossShape, THREADS};
use c2f_kernels::device::{blocks_for, grid, Gpu};
use c2f_kernels::element::Element;
use c2f_kernels::error::Result;
use c2f_kernels::launch;

pub struct CenterLossUnfused<T: Element> {
    shape: CenterLossShape,
    k: UnfusedKernels<T>,
    first: CudaSlice<i32>,
    next: CudaSlice<i32>,
    gathered: CudaSlice<f32>,
    center_sumsq: CudaSlice<f32>,
    diff: CudaSlice<f32>,
    row_loss: CudaSlice<f32>,
    loss: CudaSlice<f32>,
}

c2f_kernels::kernel_set! {
    struct UnfusedKernels: crate::sources::CENTER_LOSS_UNFUSED;
    typed: center_loss_baseline_diff, center_loss_baseline_scale;
    plain: center_loss_baseline_segments, center_loss_baseline_gather,
        center_loss_baseline_row_sumsq, center_loss_baseline_loss, center_loss_baseline_update;
}

impl<T: Element> CenterLossUnfused<T> {
    pub fn new(gpu: &Gpu, shape: CenterLossShape) -> Result<Self> {
        shape.validate()?;
        Ok(CenterLossUnfused {
            shape,
            k: UnfusedKernels::new(gpu)?,
            first: gpu.alloc_zeros(shape.batch)?,
            next: gpu.alloc_zeros(shape.batch)?,
            gathered: gpu.alloc_zeros(shape.features_len())?,
            center_sumsq: gpu.alloc_zeros(shape.batch)?,
            diff: gpu.alloc_zeros(shape.features_len())?,
            row_loss: gpu.alloc_zeros(shape.batch)?,
            loss: gpu.alloc_zeros(1)?,
        })
    }

    /// Waits for the last [`Self::enqueue`] and reads its loss back.
    pub fn finish(&mut self) -> Result<f32> {
        let mut loss = [0f32];
        self.k.stream.memcpy_dtoh(&self.loss, &mut loss)?;
        self.k.stream.synchronize()?;
        Ok(loss[0])
    }

    /// Launches the kernels without waiting; [`Self::finish`] reads the loss.
    pub fn enqueue(
        &mut self,
        params: &CenterLossParams,
        features: &impl DevicePtr<T>,
        labels: &impl DevicePtr<i32>,
        centers: &mut impl DevicePtrMut<f32>,
        d_features: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let s = self.shape;
        s.check_buffers(
            features.len(),
            labels.len(),
            centers.len(),
            d_features.len(),
        )?;
        let (b, d, c) = (s.batch as i32, s.dim as i32, s.classes as i32);
        let n = s.features_len() as i64;
        let (beta, normalized) = launch_params(&params.update());
        let [grad_scale, loss_scale] = params.scales(s.batch).map(|v| v as f32);
        let cfg = |blocks: u32| grid((blocks, 1, 1), THREADS);
        // Grid-stride loops: enough blocks to fill the card, a few elements per thread.
        let elementwise = cfg(blocks_for(s.features_len(), THREADS * 4).min(1 << 16));
        let per_row = cfg(s.batch as u32);
        let k = &self.k;
        // SAFETY: buffer lengths checked above match the kernels' indexing; the kernels skip
        // out-of-range labels.
        unsafe {
            launch!(k.center_loss_baseline_segments, cfg(blocks_for(s.batch, THREADS)), [
                in labels, &mut self.first, &mut self.next, &b, &c
            ])?;
            launch!(k.center_loss_baseline_gather, elementwise, [
                out centers, in labels, &mut self.gathered, &b, &d, &c
            ])?;
            if normalized != 0 {
                launch!(
                    k.center_loss_baseline_row_sumsq,
                    per_row,
                    [&self.gathered, &mut self.center_sumsq, &d]
                )?;
            }
            launch!(k.center_loss_baseline_diff, elementwise, [
                in features, &self.gathered, &self.center_sumsq, &mut self.diff, &b, &d,
                &normalized
            ])?;
            launch!(
                k.center_loss_baseline_row_sumsq,
                per_row,
                [&self.diff, &mut self.row_loss, &d]
            )?;
            launch!(
                k.center_loss_baseline_loss,
                cfg(1),
                [&self.row_loss, &mut self.loss, &b, &loss_scale]
            )?;
            launch!(k.center_loss_baseline_scale, elementwise, [
                &self.diff, out d_features, &n, &grad_scale
            ])?;
            launch!(k.center_loss_baseline_update, elementwise, [
                out centers, in labels, &self.first, &self.next, &self.diff, &self.gathered, &b,
                &d, &beta, &normalized
            ])?;
        }
        Ok(())
    }
}
