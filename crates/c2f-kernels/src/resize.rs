//! Bilinear resize `[N, C, h, w] → [N, C, H, W]`, NCHW contiguous, for the fine branch's
//! up-sampled map: PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` with a given
//! size. Per axis, `scale = in/out`, output row `o` reads `src = max(scale·(o + ½) − ½, 0)`, rows
//! `i0 = ⌊src⌋` and `i0 + 1` (just `i0` on the last input row) with weights `1 − λ`,
//! `λ = src − i0`, all computed in f32 without FMA (as PyTorch's forward does for float and
//! bfloat16) for every storage and CPU type alike. The CPU backward scatters in output row-major
//! order (as PyTorch's CPU kernel); the GPU backward gathers per input pixel, no atomics.
//! (PyTorch's CPU backward rounds `src` with an FMA, so at a few output rows its weights differ
//! from its own forward's by one ulp of `src`.)
//!
//! The gradient is assigned. Every result is the same bits on every run. Kernels:
//! `kernels/resize.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use rayon::prelude::*;

use crate::device::{plane_groups, Gpu, KernelPair};
use crate::element::Element;
use crate::error::{check_dims, check_len, Result};
use crate::launch;
use crate::Real;

/// A bilinear resize `[N, C, in_height, in_width] → [N, C, out_height, out_width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResizeShape {
    pub batch: usize,
    pub channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl ResizeShape {
    /// N·C, the number of planes.
    pub fn planes(&self) -> usize {
        self.batch * self.channels
    }
    pub fn in_len(&self) -> usize {
        self.planes() * self.in_height * self.in_width
    }
    pub fn out_len(&self) -> usize {
        self.planes() * self.out_height * self.out_width
    }

    fn validate(&self) -> Result<()> {
        let p = self.planes();
        check_dims(
            "bilinear resize",
            self,
            &[self.batch, self.channels, self.in_height, self.in_width],
        )?;
        check_dims(
            "bilinear resize",
            self,
            &[p, self.out_height, self.out_width],
        )
    }

    fn check(&self, input: usize, output: usize, names: [&str; 2]) -> Result<()> {
        self.validate()?;
        check_len(names[0], input, self.in_len())?;
        check_len(names[1], output, self.out_len())
    }

    fn device(&self) -> ResizeGeom {
        // Each fits an i32: `validate` bounds the products.
        let i = |v: usize| v as i32;
        ResizeGeom {
            planes: i(self.planes()),
            in_height: i(self.in_height),
            in_width: i(self.in_width),
            out_height: i(self.out_height),
            out_width: i(self.out_width),
            scale_h: self.in_height as f32 / self.out_height as f32,
            scale_w: self.in_width as f32 / self.out_width as f32,
        }
    }
}

/// `ResizeGeom` in `kernels/resize.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ResizeGeom {
    planes: i32,
    in_height: i32,
    in_width: i32,
    out_height: i32,
    out_width: i32,
    scale_h: f32,
    scale_w: f32,
}

// SAFETY: a `#[repr(C)]` struct of five `i32` and two `f32`, the layout of `ResizeGeom` in the
// kernel file.
unsafe impl DeviceRepr for ResizeGeom {}

/// One output row's (or column's) source: rows `i0` and `i0 + step` with weights `l0` and `l1`.
#[derive(Debug, Clone, Copy)]
struct Source<R> {
    i0: usize,
    step: usize,
    l0: R,
    l1: R,
}

/// Every output row's source along one axis, as PyTorch's `area_pixel_compute_source_index`
/// with `align_corners=False`. The positions and weights are computed in f32 whatever `R` is, as
/// PyTorch does for float and bfloat16 tensors and as the kernel's `Source` does (the same bits):
/// the f64 reference then interpolates exactly where the kernels do. (In f64 the positions would
/// move by up to ~1e-5 relative at 272 → 299, more than the f32 kernels' error bound.)
fn sources<R: Real>(n_in: usize, n_out: usize) -> Vec<Source<R>> {
    // Sizes fit an i32 (checked), so `o as f32` is exact below 2^24 and the division is the
    // host's `scale_h`/`scale_w`.
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let src = scale * (o as f32 + 0.5) - 0.5;
            let src = if src < 0.0 { 0.0 } else { src };
            let i0 = src as usize;
            let l1 = src - i0 as f32;
            Source {
                i0,
                step: usize::from(i0 + 1 < n_in),
                l0: R::from_f64(f64::from(1.0 - l1)),
                l1: R::from_f64(f64::from(l1)),
            }
        })
        .collect()
}

/// CPU bilinear resize forward: writes `y [N, C, H, W]`.
pub fn resize_bilinear_forward_cpu<R: Real>(
    shape: &ResizeShape,
    x: &[R],
    y: &mut [R],
) -> Result<()> {
    shape.check(x.len(), y.len(), ["bilinear resize x", "bilinear resize y"])?;
    let (iw, ow) = (shape.in_width, shape.out_width);
    let rows = sources::<R>(shape.in_height, shape.out_height);
    let cols = sources::<R>(iw, ow);
    y.par_chunks_mut(shape.out_height * ow)
        .zip(x.par_chunks(shape.in_height * iw))
        .for_each(|(yp, xp)| {
            for (yr, r) in yp.chunks_mut(ow).zip(&rows) {
                let x0 = &xp[r.i0 * iw..];
                let x1 = &xp[(r.i0 + r.step) * iw..];
                for (v, c) in yr.iter_mut().zip(&cols) {
                    let (j0, j1) = (c.i0, c.i0 + c.step);
                    *v = r.l0 * (c.l0 * x0[j0] + c.l1 * x0[j1])
                        + r.l1 * (c.l0 * x1[j0] + c.l1 * x1[j1]);
                }
            }
        });
    Ok(())
}

/// CPU bilinear resize backward: `dx [N, C, h, w]` (assigned), each output's four weighted
/// shares added in output row-major order.
pub fn resize_bilinear_backward_cpu<R: Real>(
    shape: &ResizeShape,
    dy: &[R],
    dx: &mut [R],
) -> Result<()> {
    shape.check(
        dx.len(),
        dy.len(),
        ["bilinear resize dx", "bilinear resize dy"],
    )?;
    let (iw, ow) = (shape.in_width, shape.out_width);
    let rows = sources::<R>(shape.in_height, shape.out_height);
    let cols = sources::<R>(iw, ow);
    dx.par_chunks_mut(shape.in_height * iw)
        .zip(dy.par_chunks(shape.out_height * ow))
        .for_each(|(dxp, dyp)| {
            dxp.fill(R::zero());
            for (dyr, r) in dyp.chunks(ow).zip(&rows) {
                let (r0, r1) = (r.i0 * iw, (r.i0 + r.step) * iw);
                for (&d, c) in dyr.iter().zip(&cols) {
                    let (j0, j1) = (c.i0, c.i0 + c.step);
                    for (at, w) in [
                        (r0 + j0, r.l0 * c.l0),
                        (r0 + j1, r.l0 * c.l1),
                        (r1 + j0, r.l1 * c.l0),
                        (r1 + j1, r.l1 * c.l1),
                    ] {
                        dxp[at] = dxp[at] + w * d;
                    }
                }
            }
        });
    Ok(())
}

/// The bilinear resize for one shape.
pub struct ResizeBilinearGpu<T: Element> {
    shape: ResizeShape,
    kernels: KernelPair<T>,
}

impl<T: Element> ResizeBilinearGpu<T> {
    pub fn new(gpu: &Gpu, shape: ResizeShape) -> Result<Self> {
        shape.validate()?;
        Ok(ResizeBilinearGpu {
            shape,
            kernels: KernelPair::new(
                gpu,
                &crate::sources::RESIZE,
                "resize_bilinear_forward",
                "resize_bilinear_backward",
            )?,
        })
    }

    pub fn shape(&self) -> &ResizeShape {
        &self.shape
    }

    /// Writes `y [N, C, H, W]`, as [`resize_bilinear_forward_cpu`].
    pub fn forward(&self, x: &impl DevicePtr<T>, y: &mut impl DevicePtrMut<T>) -> Result<()> {
        let sh = &self.shape;
        sh.check(x.len(), y.len(), ["bilinear resize x", "bilinear resize y"])?;
        let cfg = plane_groups(sh.out_height * sh.out_width, sh.planes());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(self.kernels.forward, cfg, [in x, out y, &sh.device()])? };
        Ok(())
    }

    /// Writes `dx [N, C, h, w]` (assigned), each input pixel gathering from the outputs that read
    /// it.
    pub fn backward(&self, dy: &impl DevicePtr<T>, dx: &mut impl DevicePtrMut<T>) -> Result<()> {
        let sh = &self.shape;
        sh.check(
            dx.len(),
            dy.len(),
            ["bilinear resize dx", "bilinear resize dy"],
        )?;
        let cfg = plane_groups(sh.in_height * sh.in_width, sh.planes());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(self.kernels.backward, cfg, [in dy, out dx, &sh.device()])? };
        Ok(())
    }
}
