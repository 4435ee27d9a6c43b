//! Casts between f32 and bf16 for the bf16 training step, whose parameters keep f32 master
//! copies while cuDNN's bf16 convolutions take bf16 weights and write bf16 weight gradients:
//!
//! - [`CastGpu::to_bf16`]: `y = bf16(x)`, round to nearest even (`half::bf16::from_f32`'s rule:
//!   a NaN stays a NaN, quieted; ±inf stays; subnormals round like any value);
//! - [`CastGpu::to_f32`]: `y = f32(x)`, exact (the bits shifted up, a NaN's payload kept);
//! - [`CastGpu::accumulate`]: `y += f32(x)`, a bf16 weight gradient added into the f32 one.
//!
//! The GPU gives the CPU reference's bits (a NaN sum aside: the hardware picks its payload).
//! Kernel: `kernels/cast.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;
use rayon::prelude::*;

use crate::device::{blocks_for, grid, Gpu, Kernel};
use crate::error::{check_len, Result};
use crate::launch;

/// `bf16` widened exactly: its bits are the upper half of the f32's.
pub fn bf16_to_f32_exact(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

/// CPU reference of [`CastGpu::to_bf16`].
pub fn to_bf16_cpu(x: &[f32], y: &mut [bf16]) -> Result<()> {
    check_len("cast to bf16 output", y.len(), x.len())?;
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(y, &x)| *y = bf16::from_f32(x));
    Ok(())
}

/// CPU reference of [`CastGpu::to_f32`].
pub fn to_f32_cpu(x: &[bf16], y: &mut [f32]) -> Result<()> {
    check_len("cast to f32 output", y.len(), x.len())?;
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(y, &x)| *y = bf16_to_f32_exact(x));
    Ok(())
}

/// CPU reference of [`CastGpu::accumulate`].
pub fn accumulate_cpu(x: &[bf16], y: &mut [f32]) -> Result<()> {
    check_len("bf16 accumulation output", y.len(), x.len())?;
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(y, &x)| *y += bf16_to_f32_exact(x));
    Ok(())
}

const THREADS: u32 = 256;
/// Elements per thread and step of the kernels' vector path (`CAST_VEC`).
const VEC: usize = 8;
/// Grid-stride: at most this many blocks.
const MAX_BLOCKS: u32 = 4096;

/// The three cast kernels; they work on any length and alignment (16-byte aligned buffers take
/// the vector path).
pub struct CastGpu {
    to_bf16: Kernel,
    to_f32: Kernel,
    accumulate: Kernel,
}

impl CastGpu {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let source = &crate::sources::CAST;
        Ok(CastGpu {
            to_bf16: Kernel::new(gpu, source, "cast_f32_to_bf16")?,
            to_f32: Kernel::new(gpu, source, "cast_bf16_to_f32")?,
            accumulate: Kernel::new(gpu, source, "accumulate_bf16_into_f32")?,
        })
    }

    /// `y = bf16(x)`, round to nearest even.
    pub fn to_bf16(&self, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<bf16>) -> Result<()> {
        check_len("cast to bf16 output", y.len(), x.len())?;
        Self::run(&self.to_bf16, x, y)
    }

    /// `y = f32(x)`, exact.
    pub fn to_f32(&self, x: &impl DevicePtr<bf16>, y: &mut impl DevicePtrMut<f32>) -> Result<()> {
        check_len("cast to f32 output", y.len(), x.len())?;
        Self::run(&self.to_f32, x, y)
    }

    /// `y += f32(x)`.
    pub fn accumulate(
        &self,
        x: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        check_len("bf16 accumulation output", y.len(), x.len())?;
        Self::run(&self.accumulate, x, y)
    }

    /// Launches `kernel` over `x` and `y`, of the same length (checked by the caller).
    fn run<X, Y>(
        kernel: &Kernel,
        x: &impl DevicePtr<X>,
        y: &mut impl DevicePtrMut<Y>,
    ) -> Result<()> {
        let n = x.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let blocks = blocks_for(x.len().div_ceil(VEC), THREADS).min(MAX_BLOCKS);
        // SAFETY: `x` and `y` have `n` elements of the kernel's types (the public methods fix
        // them and check the lengths); the kernel is grid-stride over `n` and checks the
        // alignment of both before its vector path.
        unsafe { launch!(*kernel, grid((blocks, 1, 1), THREADS), [in x, out y, &n])? };
        Ok(())
    }
}
