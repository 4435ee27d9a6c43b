//! The fine branch's mask and apply, NCHW contiguous, the up-sampled map `U [B, 1, H, W]` and
//! the image `X [B, C, H, W]`: per sample `u_max = max U[b]` at `j_b`, its first position (a NaN
//! counts as the largest, so it spreads); the mask is `Mk = max(U, 0)/u_max` when `u_max > 0`
//! and all ones when `u_max ≤ 0` (an all-zero or all-negative map: no division by zero); a
//! negative `U` masks its pixel out when the map has a positive maximum. `X_f = Mk ⊙ X`, the
//! mask broadcast over the channels. The forward saves `u_max` and `j_b` for the backward.
//!
//! The backward is the exact gradient of that function, the max included. With
//! `g[p] = Σ_c dX_f[c, p]·X[c, p]` and `u_max > 0`: `dU[p] = g[p]·[U[p] > 0]/u_max` for `p ≠ j`,
//! and at the argmax, where `Mk = 1` whatever `U[j]` is, `dU[j] = (g[j] − Σ_p g[p]·Mk[p])/u_max`,
//! the term `−Σ_{p≠j} g[p]·Mk[p]/u_max` through the normaliser. With the ones mask `dU = 0`.
//! `dX = dX_f ⊙ Mk` is optional (the image rarely needs a gradient). The gradients are assigned.
//!
//! Every result is the same bits on every run (fixed-order sums, no float atomics). Kernels:
//! `kernels/mask.cu`.
//!
//! Layout ([`Layout`]): `X`, `X_f` and their gradients are NCHW or channels-last NHWC
//! `[B, H, W, C]` ([`MaskGpu::with_layout`]; the CPU references take `(Layout, MaskShape)`); `U`
//! has one channel, so it is the same in both. The kernels read the same values in the same order
//! in both layouts, so NHWC gives NCHW's bits; the NHWC CPU reference is the NCHW one on the
//! converted image. bf16 rounding points: the inputs are bf16, `u_max` (an f32 output) is a bf16
//! value, the mask, `g`, the dot and every intermediate are f32, and `X_f`, `dU` and `dX` are
//! rounded to bf16 once, when stored: the f32 reference on the widened inputs, outputs rounded.

use std::borrow::Cow;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};
use rayon::prelude::*;

use crate::device::{device_addr_mut, elementwise, grid, Gpu};
use crate::element::Element;
use crate::error::{check_dims, check_len, Error, Result};
use crate::launch;
use crate::layout::{LaidOut, Layout};
use crate::Real;

const THREADS: u32 = 256;

/// The up-sampled map `U [B, 1, H, W]` and the image `X [B, C, H, W]` it masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskShape {
    pub batch: usize,
    /// Image channels C (3).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl MaskShape {
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Elements of `U`, B·H·W.
    pub fn map_len(&self) -> usize {
        self.batch * self.hw()
    }
    /// Elements of `X` and `X_f`, B·C·H·W.
    pub fn image_len(&self) -> usize {
        self.batch * self.channels * self.hw()
    }

    fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.channels, self.height, self.width];
        check_dims("mask", self, &dims)
    }

    fn check(&self, u: usize, images: [(&str, usize); 2], stats: [usize; 2]) -> Result<()> {
        self.validate()?;
        check_len("mask U", u, self.map_len())?;
        for (what, len) in images {
            check_len(what, len, self.image_len())?;
        }
        check_len("mask u_max", stats[0], self.batch)?;
        check_len("mask argmax", stats[1], self.batch)
    }

    fn device(&self, layout: Layout) -> MaskGeom {
        // Each fits an i32: `validate` bounds their product.
        let (channels, hw) = (self.channels as i32, self.hw() as i32);
        let (pixel_stride, channel_stride) = match layout {
            Layout::Nchw => (1, hw),
            Layout::Nhwc => (channels, 1),
        };
        MaskGeom {
            batch: self.batch as i32,
            channels,
            hw,
            pixel_stride,
            channel_stride,
        }
    }

    /// An image of this shape in `layout` as NCHW (borrowed when it already is).
    fn image_nchw<'a, R: Copy>(&self, layout: Layout, image: &'a [R]) -> Cow<'a, [R]> {
        match layout {
            Layout::Nchw => Cow::Borrowed(image),
            Layout::Nhwc => {
                Cow::Owned(layout.convert(Layout::Nchw, image, self.channels, self.hw()))
            }
        }
    }

    /// Runs `write` on an NCHW image and leaves what it wrote in `out`, in `layout`.
    fn write_image<R: Real>(
        &self,
        layout: Layout,
        out: &mut [R],
        write: impl FnOnce(&mut [R]) -> Result<()>,
    ) -> Result<()> {
        if layout == Layout::Nchw {
            return write(out);
        }
        let mut nchw = vec![R::zero(); out.len()];
        write(&mut nchw)?;
        out.copy_from_slice(&Layout::Nchw.convert(layout, &nchw, self.channels, self.hw()));
        Ok(())
    }
}

/// `MaskGeom` in `kernels/mask.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MaskGeom {
    batch: i32,
    channels: i32,
    hw: i32,
    pixel_stride: i32,
    channel_stride: i32,
}

// SAFETY: a `#[repr(C)]` struct of five `i32`, the layout of `MaskGeom` in the kernel file.
unsafe impl DeviceRepr for MaskGeom {}

/// The mask value of a pixel `u` under its sample's maximum: ones unless `u_max > 0` (or NaN,
/// which then spreads), else `max(u, 0)/u_max`.
fn mask_value<R: Real>(u: R, u_max: R) -> R {
    if u_max <= R::zero() {
        R::one()
    } else {
        (if u < R::zero() { R::zero() } else { u }) / u_max
    }
}

/// The first maximum of `u` and its position, a NaN above everything (the first NaN).
fn first_max<R: Real>(u: &[R]) -> (R, usize) {
    let mut best = (u[0], 0);
    for (p, &v) in u.iter().enumerate().skip(1) {
        let better = if best.0.is_nan() {
            false
        } else {
            v.is_nan() || v > best.0
        };
        if better {
            best = (v, p);
        }
    }
    best
}

/// CPU mask forward: writes `xf = Mk ⊙ x` and, per sample, `u_max` and its position `argmax`
/// within the sample's `H·W` (what [`mask_backward_cpu`] needs). `shape` is a [`MaskShape`]
/// (NCHW) or `(Layout, MaskShape)`.
pub fn mask_forward_cpu<R: Real>(
    shape: &impl LaidOut<MaskShape>,
    u: &[R],
    x: &[R],
    xf: &mut [R],
    u_max: &mut [R],
    argmax: &mut [i32],
) -> Result<()> {
    let (layout, shape) = (shape.layout(), shape.shape());
    shape.check(
        u.len(),
        [("mask X", x.len()), ("mask X_f", xf.len())],
        [u_max.len(), argmax.len()],
    )?;
    let x = shape.image_nchw(layout, x);
    shape.write_image(layout, xf, |xf| {
        mask_forward_nchw(shape, u, &x, xf, (u_max, argmax));
        Ok(())
    })
}

fn mask_forward_nchw<R: Real>(
    shape: &MaskShape,
    u: &[R],
    x: &[R],
    xf: &mut [R],
    (u_max, argmax): (&mut [R], &mut [i32]),
) {
    let hw = shape.hw();
    let image = shape.channels * hw;
    xf.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(u.par_chunks(hw))
        .zip(u_max.par_iter_mut().zip(argmax.par_iter_mut()))
        .for_each(|(((xf, x), u), (um, am))| {
            let (best, at) = first_max(u);
            (*um, *am) = (best, at as i32);
            for (xf, x) in xf.chunks_mut(hw).zip(x.chunks(hw)) {
                for ((o, &v), &m) in xf.iter_mut().zip(x).zip(u) {
                    *o = mask_value(m, best) * v;
                }
            }
        });
}

/// CPU mask backward: `du` (assigned, see the module doc) from the forward's inputs, `dxf`, and
/// the forward's `u_max` and `argmax`; with `dx`, also `dx = dxf ⊙ Mk` (assigned), in `shape`'s
/// layout.
#[allow(clippy::too_many_arguments)]
pub fn mask_backward_cpu<R: Real>(
    shape: &impl LaidOut<MaskShape>,
    u: &[R],
    x: &[R],
    dxf: &[R],
    u_max: &[R],
    argmax: &[i32],
    du: &mut [R],
    dx: Option<&mut [R]>,
) -> Result<()> {
    let (layout, shape) = (shape.layout(), shape.shape());
    let (x, dxf) = (shape.image_nchw(layout, x), shape.image_nchw(layout, dxf));
    let saved = (u_max, argmax);
    match dx {
        None => mask_backward_nchw(shape, u, &x, &dxf, saved, du, None),
        Some(dx) => shape.write_image(layout, dx, |dx| {
            mask_backward_nchw(shape, u, &x, &dxf, saved, du, Some(dx))
        }),
    }
}

fn mask_backward_nchw<R: Real>(
    shape: &MaskShape,
    u: &[R],
    x: &[R],
    dxf: &[R],
    (u_max, argmax): (&[R], &[i32]),
    du: &mut [R],
    dx: Option<&mut [R]>,
) -> Result<()> {
    shape.check(
        u.len(),
        [("mask X", x.len()), ("mask dX_f", dxf.len())],
        [u_max.len(), argmax.len()],
    )?;
    check_len("mask dU", du.len(), shape.map_len())?;
    let hw = shape.hw();
    if let Some(b) = argmax.iter().position(|&j| j < 0 || j as usize >= hw) {
        return Err(Error::Shape(format!(
            "mask argmax {} of sample {b} is outside [0, {hw})",
            argmax[b]
        )));
    }
    let image = shape.channels * hw;
    du.par_chunks_mut(hw)
        .zip(u.par_chunks(hw))
        .zip(x.par_chunks(image).zip(dxf.par_chunks(image)))
        .zip(u_max.par_iter().zip(argmax.par_iter()))
        .for_each(|(((du, u), (x, dxf)), (&um, &j))| {
            if um <= R::zero() {
                du.fill(R::zero());
                return;
            }
            // g[p] = Σ_c dX_f·X, summed in channel order, kept in `du` until the end.
            du.fill(R::zero());
            for (x, dxf) in x.chunks(hw).zip(dxf.chunks(hw)) {
                for ((g, &v), &d) in du.iter_mut().zip(x).zip(dxf) {
                    *g = *g + d * v;
                }
            }
            let dot: R = du
                .iter()
                .zip(u)
                .map(|(&g, &uv)| g * mask_value(uv, um))
                .sum();
            let j = j as usize;
            for (p, (g, &uv)) in du.iter_mut().zip(u).enumerate() {
                *g = if p == j {
                    (*g - dot) / um
                } else if uv > R::zero() {
                    *g / um
                } else {
                    R::zero()
                };
            }
        });
    if let Some(dx) = dx {
        check_len("mask dX", dx.len(), shape.image_len())?;
        dx.par_chunks_mut(image)
            .zip(dxf.par_chunks(image))
            .zip(u.par_chunks(hw).zip(u_max.par_iter()))
            .for_each(|((dx, dxf), (u, &um))| {
                for (dx, dxf) in dx.chunks_mut(hw).zip(dxf.chunks(hw)) {
                    for ((o, &d), &m) in dx.iter_mut().zip(dxf).zip(u) {
                        *o = d * mask_value(m, um);
                    }
                }
            });
    }
    Ok(())
}

/// Mask and apply for one shape, with the per-sample reductions' scratch allocated once.
/// `u_max` (f32) and `argmax` (i32) are `[B]` buffers the forward fills and the backward reads.
pub struct MaskGpu<T: Element> {
    shape: MaskShape,
    layout: Layout,
    k: MaskKernels<T>,
    /// Each (sample, chunk)'s maximum and its position.
    part_max: CudaSlice<f32>,
    part_arg: CudaSlice<i32>,
    /// Each (sample, chunk)'s part of `Σ_p g[p]·Mk[p]`.
    dot_partials: CudaSlice<f32>,
    /// `Σ_p g[p]·Mk[p]` per sample.
    dot: CudaSlice<f32>,
}

crate::kernel_set! {
    struct MaskKernels: crate::sources::MASK;
    typed: mask_stats, mask_apply, mask_backward_reduce, mask_backward;
    plain: mask_stats_finish, mask_dot_finish;
}

/// Pixels per block of the per-sample reductions (`MASK_CHUNK` in `kernels/mask.cu`).
const MASK_CHUNK: usize = THREADS as usize * 4;

impl<T: Element> MaskGpu<T> {
    /// An NCHW image.
    pub fn new(gpu: &Gpu, shape: MaskShape) -> Result<Self> {
        Self::with_layout(gpu, shape, Layout::Nchw)
    }

    /// The image `X` (and `X_f`, `dX_f`, `dX`) in `layout`.
    pub fn with_layout(gpu: &Gpu, shape: MaskShape, layout: Layout) -> Result<Self> {
        shape.validate()?;
        let partials = shape.batch * shape.hw().div_ceil(MASK_CHUNK);
        Ok(MaskGpu {
            shape,
            layout,
            k: MaskKernels::new(gpu)?,
            part_max: gpu.alloc_zeros(partials)?,
            part_arg: gpu.alloc_zeros(partials)?,
            dot_partials: gpu.alloc_zeros(partials)?,
            dot: gpu.alloc_zeros(shape.batch)?,
        })
    }

    /// The per-sample reductions' grid, (chunks, B), and its chunk count.
    fn per_chunk(&self) -> (LaunchConfig, i32) {
        let chunks = self.shape.hw().div_ceil(MASK_CHUNK);
        let cfg = grid((chunks as u32, self.shape.batch as u32, 1), THREADS);
        (cfg, chunks as i32)
    }

    pub fn shape(&self) -> &MaskShape {
        &self.shape
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Writes `xf = Mk ⊙ x`, `u_max` and `argmax`, as [`mask_forward_cpu`]: blocks over chunks
    /// of each sample find the maximum, then one thread per pixel applies the mask to every
    /// channel.
    pub fn forward(
        &mut self,
        u: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        xf: &mut impl DevicePtrMut<T>,
        u_max: &mut impl DevicePtrMut<f32>,
        argmax: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        let sh = &self.shape;
        sh.check(
            u.len(),
            [("mask X", x.len()), ("mask X_f", xf.len())],
            [u_max.len(), argmax.len()],
        )?;
        let g = sh.device(self.layout);
        let (chunks_cfg, chunks) = self.per_chunk();
        let (per_sample, per_pixel) = (elementwise(sh.batch), elementwise(sh.map_len()));
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // B·chunks entries.
        unsafe {
            launch!(self.k.mask_stats, chunks_cfg, [
                in u, &mut self.part_max, &mut self.part_arg, &g.hw
            ])?;
            launch!(self.k.mask_stats_finish, per_sample, [
                &self.part_max, &self.part_arg, &chunks, &g.batch, out u_max, out argmax
            ])?;
            launch!(self.k.mask_apply, per_pixel, [in u, in x, out u_max, out xf, &g])?;
        }
        Ok(())
    }

    /// Writes `du` (assigned), as [`mask_backward_cpu`] without `dx`. `u_max` and `argmax` are
    /// the forward's; an argmax outside the sample is not checked on the device (its `du` is then
    /// wrong but nothing is read or written out of bounds).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        u: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        dxf: &impl DevicePtr<T>,
        u_max: &impl DevicePtr<f32>,
        argmax: &impl DevicePtr<i32>,
        du: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let du_len = du.len();
        let du = device_addr_mut(du, &self.k.stream);
        self.launch_backward(u, x, dxf, u_max, argmax, (du, du_len), None)
    }

    /// [`Self::backward`], and also the image's gradient `dx = dxf ⊙ Mk` (assigned).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_dx(
        &mut self,
        u: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        dxf: &impl DevicePtr<T>,
        u_max: &impl DevicePtr<f32>,
        argmax: &impl DevicePtr<i32>,
        du: &mut impl DevicePtrMut<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let (du_len, dx_len) = (du.len(), dx.len());
        let du = device_addr_mut(du, &self.k.stream);
        let dx = device_addr_mut(dx, &self.k.stream);
        self.launch_backward(u, x, dxf, u_max, argmax, (du, du_len), Some((dx, dx_len)))
    }

    /// `du` and `dx` are (device address, length) of the outputs.
    #[allow(clippy::too_many_arguments)]
    fn launch_backward(
        &mut self,
        u: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        dxf: &impl DevicePtr<T>,
        u_max: &impl DevicePtr<f32>,
        argmax: &impl DevicePtr<i32>,
        du: (u64, usize),
        dx: Option<(u64, usize)>,
    ) -> Result<()> {
        let sh = self.shape;
        sh.check(
            u.len(),
            [("mask X", x.len()), ("mask dX_f", dxf.len())],
            [u_max.len(), argmax.len()],
        )?;
        check_len("mask dU", du.1, sh.map_len())?;
        if let Some((_, len)) = dx {
            check_len("mask dX", len, sh.image_len())?;
        }
        let g = sh.device(self.layout);
        let (du, dx) = (du.0, dx.map_or(0u64, |d| d.0));
        let (chunks_cfg, chunks) = self.per_chunk();
        let (per_sample, per_pixel) = (elementwise(sh.batch), elementwise(sh.map_len()));
        // SAFETY: buffer lengths checked above match the kernels' indexing; `dot` holds B floats
        // and `dot_partials` B·chunks; a null `dx` is never written.
        unsafe {
            launch!(self.k.mask_backward_reduce, chunks_cfg, [
                in u, in x, in dxf, in u_max, &mut self.dot_partials, &g
            ])?;
            launch!(
                self.k.mask_dot_finish,
                per_sample,
                [&self.dot_partials, &chunks, &g.batch, &mut self.dot]
            )?;
            launch!(self.k.mask_backward, per_pixel, [
                in u, in x, in dxf, in u_max, in argmax, &self.dot, &du, &dx, &g
            ])?;
        }
        Ok(())
    }
}
