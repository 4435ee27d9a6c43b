//! `y = α·x + β·y`, element-wise: scaling a tensor (β = 0: `y` is assigned, never read) and
//! adding one gradient contribution into another (β = 1). Kernel: `kernels/axpby.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{blocks_for, grid};
use crate::element::Element;
use crate::error::{check_len, Result};
use crate::launch;
use crate::Real;

/// CPU reference (and the CPU backend's op).
pub fn axpby_cpu<R: Real>(alpha: f64, x: &[R], beta: f64, y: &mut [R]) -> Result<()> {
    check_len("axpby y", y.len(), x.len())?;
    let (a, b) = (R::from_f64(alpha), R::from_f64(beta));
    y.par_iter_mut().zip(x.par_iter()).for_each(|(y, &x)| {
        *y = if beta == 0.0 { a * x } else { b * *y + a * x };
    });
    Ok(())
}

const THREADS: u32 = 256;
/// Grid-stride: at most this many blocks.
const MAX_BLOCKS: u32 = 4096;

crate::kernel_set! {
    /// The axpby kernel for element type `T`; it works on any length.
    pub struct AxpbyGpu: crate::sources::AXPBY;
    typed: axpby;
}

impl<T: Element> AxpbyGpu<T> {
    /// `y = α·x + β·y` (β = 0 assigns `y`).
    pub fn run(
        &self,
        alpha: f64,
        x: &impl DevicePtr<T>,
        beta: f64,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        check_len("axpby y", y.len(), x.len())?;
        let n = x.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let blocks = blocks_for(x.len().div_ceil(4), THREADS).min(MAX_BLOCKS);
        let (alpha, beta) = (alpha as f32, beta as f32);
        // SAFETY: `x` and `y` have `n` elements (checked above); the kernel is grid-stride.
        unsafe {
            launch!(self.axpby, grid((blocks, 1, 1), THREADS), [in x, out y, &n, &alpha, &beta])?
        };
        Ok(())
    }
}
