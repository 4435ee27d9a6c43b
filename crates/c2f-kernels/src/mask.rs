//! The Coarse2Fine fine branch, between the attention conv and the second backbone pass, NCHW
//! contiguous:
//!
//! - ReLU after the 1×1 attention conv, `A = ReLU(conv1x1(F))`: `y = max(x, 0)` with a NaN passed
//!   through (`torch.relu`); backward `dx = y ≤ 0 ? 0 : dy`, a select as PyTorch's
//!   `threshold_backward` (so a NaN `y` passes `dy`, and a NaN `dy` under `y ≤ 0` gives 0).
//! - Attention-map choice, `A [B, M, h, w] → S [B, 1, h, w]`: training takes one map per sample,
//!   `S[b] = A[b, k_b]` with `k_b` in `[0, M)`, an `i32`; its backward writes `dS` into map `k_b`
//!   of `dA`, either assigning (zeros in the other maps) or accumulating (`dA[b, k_b] += dS[b]`,
//!   the other maps untouched) for a caller that already holds a gradient of `A`. Inference takes
//!   the mean, `S[b] = (1/M) Σ_m A[b, m]` (summed in map order), backward `dA[b, m] = dS[b]/M`.
//! - Bilinear resize `[N, C, h, w] → [N, C, H, W]`, PyTorch's `F.interpolate(mode="bilinear",
//!   align_corners=False)` with a given size: per axis, `scale = in/out`, output row `o` reads
//!   `src = max(scale·(o + ½) − ½, 0)`, rows `i0 = ⌊src⌋` and `i0 + 1` (just `i0` on the last
//!   input row) with weights `1 − λ`, `λ = src − i0`, all computed in f32 without FMA (as
//!   PyTorch's forward does for float and bfloat16) for every storage and CPU type alike. The CPU
//!   backward scatters in output row-major order (as PyTorch's CPU kernel); the GPU backward
//!   gathers per input pixel, no atomics. (PyTorch's CPU backward rounds `src` with an FMA, so at
//!   a few output rows its weights differ from its own forward's by one ulp of `src`.)
//! - Mask and apply, the up-sampled map `U [B, 1, H, W]` and the image `X [B, C, H, W]`: per
//!   sample `u_max = max U[b]` at `j_b`, its first position (a NaN counts as the largest, so it
//!   spreads); the mask is `Mk = max(U, 0)/u_max` when `u_max > 0` and all ones when `u_max ≤ 0`
//!   (an all-zero or all-negative map: no division by zero); a negative `U` masks its pixel out
//!   when the map has a positive maximum. `X_f = Mk ⊙ X`, the mask broadcast over the channels.
//!   The forward saves `u_max` and `j_b` for the backward.
//!
//! The mask backward is the exact gradient of that function, the max included. With
//! `g[p] = Σ_c dX_f[c, p]·X[c, p]` and `u_max > 0`: `dU[p] = g[p]·[U[p] > 0]/u_max` for `p ≠ j`,
//! and at the argmax, where `Mk = 1` whatever `U[j]` is, `dU[j] = (g[j] − Σ_p g[p]·Mk[p])/u_max`,
//! the term `−Σ_{p≠j} g[p]·Mk[p]/u_max` through the normaliser. With the ones mask `dU = 0`.
//! `dX = dX_f ⊙ Mk` is optional (the image rarely needs a gradient).
//!
//! Every gradient here is an activation gradient and is assigned, except the accumulating map
//! choice. Every result is the same bits on every run (fixed-order sums, no float atomics).
//! Kernels: `kernels/mask.cu`.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use rayon::prelude::*;

use crate::device::{blocks_for, device_addr, device_addr_mut, plane_groups, Gpu};
use crate::element::Element;
use crate::error::{check_len, Error, Result};
use crate::Real;

/// Fails unless every dimension is non-zero and their product fits an `i32` (the kernels' index).
fn check_dims(what: &str, shape: &impl std::fmt::Debug, dims: &[usize]) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::Shape(format!(
            "{what} shape has a zero dimension: {shape:?}"
        )));
    }
    match dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= i32::MAX as usize => Ok(()),
        _ => Err(Error::Shape(format!(
            "{what} shape too large for 32-bit indexing: {shape:?}"
        ))),
    }
}

fn check_elementwise(n: usize) -> Result<()> {
    if n > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "relu: {n} elements is too many for 32-bit indexing"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ReLU

/// CPU ReLU forward: `y = max(x, 0)`, NaN kept.
pub fn relu_forward_cpu<R: Real>(x: &[R], y: &mut [R]) -> Result<()> {
    check_len("relu y", y.len(), x.len())?;
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(y, &x)| *y = if x < R::zero() { R::zero() } else { x });
    Ok(())
}

/// CPU ReLU backward from the forward's output: `dx = y ≤ 0 ? 0 : dy` (assigned).
pub fn relu_backward_cpu<R: Real>(y: &[R], dy: &[R], dx: &mut [R]) -> Result<()> {
    check_len("relu dy", dy.len(), y.len())?;
    check_len("relu dx", dx.len(), y.len())?;
    dx.par_iter_mut()
        .zip(y.par_iter().zip(dy.par_iter()))
        .for_each(|(dx, (&y, &dy))| *dx = if y <= R::zero() { R::zero() } else { dy });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Attention-map choice

/// Attention maps `A [B, M, h, w]`; the chosen (or mean) map is `S [B, 1, h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapShape {
    pub batch: usize,
    pub maps: usize,
    pub height: usize,
    pub width: usize,
}

impl MapShape {
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Elements of `A`, B·M·h·w.
    pub fn maps_len(&self) -> usize {
        self.batch * self.maps * self.hw()
    }
    /// Elements of `S`, B·h·w.
    pub fn map_len(&self) -> usize {
        self.batch * self.hw()
    }

    fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.maps, self.height, self.width];
        check_dims("attention map", self, &dims)
    }

    fn device(&self) -> MapGeom {
        // Each fits an i32: `validate` bounds their product.
        MapGeom {
            batch: self.batch as i32,
            maps: self.maps as i32,
            hw: self.hw() as i32,
        }
    }
}

/// `MapGeom` in `kernels/mask.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MapGeom {
    batch: i32,
    maps: i32,
    hw: i32,
}

// SAFETY: a `#[repr(C)]` struct of three `i32`, the layout of `MapGeom` in the kernel file.
unsafe impl DeviceRepr for MapGeom {}

/// Fails with an [`Error::Shape`] naming the first sample whose map index is outside `[0, maps)`.
/// The CPU functions call it; check the indices with it before uploading them for the GPU, whose
/// kernels only guard against them (see [`MapSelectGpu`]).
pub fn check_map_indices(indices: &[i32], maps: usize) -> Result<()> {
    match indices.iter().position(|&k| k < 0 || k as usize >= maps) {
        Some(b) => Err(Error::Shape(format!(
            "attention map index {} of sample {b} is outside [0, {maps})",
            indices[b]
        ))),
        None => Ok(()),
    }
}

fn check_select(s: &MapShape, indices: usize, maps: usize, map: usize) -> Result<()> {
    s.validate()?;
    check_len("map choice indices", indices, s.batch)?;
    check_len("map choice A", maps, s.maps_len())?;
    check_len("map choice S", map, s.map_len())
}

/// CPU map choice forward: `S[b] = A[b, k_b]`.
pub fn select_map_forward_cpu<R: Real>(
    shape: &MapShape,
    a: &[R],
    indices: &[i32],
    s: &mut [R],
) -> Result<()> {
    check_select(shape, indices.len(), a.len(), s.len())?;
    check_map_indices(indices, shape.maps)?;
    let hw = shape.hw();
    s.par_chunks_mut(hw)
        .zip(a.par_chunks(shape.maps * hw))
        .zip(indices.par_iter())
        .for_each(|((s, a), &k)| s.copy_from_slice(&a[k as usize * hw..][..hw]));
    Ok(())
}

/// CPU map choice backward: `dA[b, k_b] = dS[b]` and zeros elsewhere, or with `accumulate`
/// `dA[b, k_b] += dS[b]` and the other maps untouched.
pub fn select_map_backward_cpu<R: Real>(
    shape: &MapShape,
    indices: &[i32],
    ds: &[R],
    da: &mut [R],
    accumulate: bool,
) -> Result<()> {
    check_select(shape, indices.len(), da.len(), ds.len())?;
    check_map_indices(indices, shape.maps)?;
    let hw = shape.hw();
    da.par_chunks_mut(shape.maps * hw)
        .zip(ds.par_chunks(hw))
        .zip(indices.par_iter())
        .for_each(|((da, ds), &k)| {
            if !accumulate {
                da.fill(R::zero());
            }
            for (d, &g) in da[k as usize * hw..][..hw].iter_mut().zip(ds) {
                *d = if accumulate { *d + g } else { g };
            }
        });
    Ok(())
}

fn check_mean(s: &MapShape, maps: usize, map: usize) -> Result<()> {
    s.validate()?;
    check_len("map mean A", maps, s.maps_len())?;
    check_len("map mean S", map, s.map_len())
}

/// CPU map mean forward (inference): `S[b] = (Σ_m A[b, m])/M`, summed in map order.
pub fn mean_maps_forward_cpu<R: Real>(shape: &MapShape, a: &[R], s: &mut [R]) -> Result<()> {
    check_mean(shape, a.len(), s.len())?;
    let (hw, m) = (shape.hw(), R::from_f64(shape.maps as f64));
    s.par_chunks_mut(hw)
        .zip(a.par_chunks(shape.maps * hw))
        .for_each(|(s, a)| {
            s.fill(R::zero());
            for map in a.chunks(hw) {
                for (s, &v) in s.iter_mut().zip(map) {
                    *s = *s + v;
                }
            }
            s.iter_mut().for_each(|s| *s = *s / m);
        });
    Ok(())
}

/// CPU map mean backward: `dA[b, m] = dS[b]/M` (assigned).
pub fn mean_maps_backward_cpu<R: Real>(shape: &MapShape, ds: &[R], da: &mut [R]) -> Result<()> {
    check_mean(shape, da.len(), ds.len())?;
    let (hw, m) = (shape.hw(), R::from_f64(shape.maps as f64));
    da.par_chunks_mut(shape.maps * hw)
        .zip(ds.par_chunks(hw))
        .for_each(|(da, ds)| {
            for map in da.chunks_mut(hw) {
                for (d, &g) in map.iter_mut().zip(ds) {
                    *d = g / m;
                }
            }
        });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bilinear resize

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

/// `ResizeGeom` in `kernels/mask.cu`.
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

// ---------------------------------------------------------------------------------------------
// Mask and apply

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

    fn device(&self) -> MaskGeom {
        // Each fits an i32: `validate` bounds their product.
        MaskGeom {
            batch: self.batch as i32,
            channels: self.channels as i32,
            hw: self.hw() as i32,
        }
    }
}

/// `MaskGeom` in `kernels/mask.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MaskGeom {
    batch: i32,
    channels: i32,
    hw: i32,
}

// SAFETY: a `#[repr(C)]` struct of three `i32`, the layout of `MaskGeom` in the kernel file.
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
/// within the sample's `H·W` (what [`mask_backward_cpu`] needs).
pub fn mask_forward_cpu<R: Real>(
    shape: &MaskShape,
    u: &[R],
    x: &[R],
    xf: &mut [R],
    u_max: &mut [R],
    argmax: &mut [i32],
) -> Result<()> {
    shape.check(
        u.len(),
        [("mask X", x.len()), ("mask X_f", xf.len())],
        [u_max.len(), argmax.len()],
    )?;
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
    Ok(())
}

/// CPU mask backward: `du` (assigned, see the module doc) from the forward's inputs, `dxf`, and
/// the forward's `u_max` and `argmax`; with `dx`, also `dx = dxf ⊙ Mk` (assigned).
#[allow(clippy::too_many_arguments)]
pub fn mask_backward_cpu<R: Real>(
    shape: &MaskShape,
    u: &[R],
    x: &[R],
    dxf: &[R],
    u_max: &[R],
    argmax: &[i32],
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

// ---------------------------------------------------------------------------------------------
// GPU

const THREADS: u32 = 256;

/// One thread per element of `n`.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_for(n, THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// ReLU on the GPU, any length.
pub struct ReluGpu<T: Element> {
    stream: Arc<CudaStream>,
    forward_fn: CudaFunction,
    backward_fn: CudaFunction,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> ReluGpu<T> {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = &crate::sources::MASK;
        Ok(ReluGpu {
            stream: gpu.stream().clone(),
            forward_fn: gpu.typed_function::<T>(src, "relu_forward")?,
            backward_fn: gpu.typed_function::<T>(src, "relu_backward")?,
            _storage: std::marker::PhantomData,
        })
    }

    /// `y = max(x, 0)`, as [`relu_forward_cpu`].
    pub fn forward(&self, x: &impl DevicePtr<T>, y: &mut impl DevicePtrMut<T>) -> Result<()> {
        let n = x.len();
        check_len("relu y", y.len(), n)?;
        check_elementwise(n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i32;
        let (x, y) = (
            device_addr(x, &self.stream),
            device_addr_mut(y, &self.stream),
        );
        // SAFETY: both buffers hold n elements.
        unsafe {
            self.stream
                .launch_builder(&self.forward_fn)
                .arg(&x)
                .arg(&y)
                .arg(&n_i)
                .launch(elementwise(n))?;
        }
        Ok(())
    }

    /// `dx = y ≤ 0 ? 0 : dy` (assigned), as [`relu_backward_cpu`].
    pub fn backward(
        &self,
        y: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let n = y.len();
        check_len("relu dy", dy.len(), n)?;
        check_len("relu dx", dx.len(), n)?;
        check_elementwise(n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i32;
        let st = &self.stream;
        let (y, dy, dx) = (
            device_addr(y, st),
            device_addr(dy, st),
            device_addr_mut(dx, st),
        );
        // SAFETY: all three buffers hold n elements.
        unsafe {
            self.stream
                .launch_builder(&self.backward_fn)
                .arg(&y)
                .arg(&dy)
                .arg(&dx)
                .arg(&n_i)
                .launch(elementwise(n))?;
        }
        Ok(())
    }
}

/// The attention-map choice (training) and mean (inference) for one shape.
///
/// The indices live on the device and are not checked there: check them on the host with
/// [`check_map_indices`] before uploading. A bad index never reads or writes out of bounds: it
/// gives NaN in its sample's `S`, NaN over its sample's `dA` when assigning, and no change when
/// accumulating.
pub struct MapSelectGpu<T: Element> {
    shape: MapShape,
    stream: Arc<CudaStream>,
    select_forward_fn: CudaFunction,
    select_backward_fn: CudaFunction,
    mean_forward_fn: CudaFunction,
    mean_backward_fn: CudaFunction,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> MapSelectGpu<T> {
    pub fn new(gpu: &Gpu, shape: MapShape) -> Result<Self> {
        shape.validate()?;
        let src = &crate::sources::MASK;
        Ok(MapSelectGpu {
            shape,
            stream: gpu.stream().clone(),
            select_forward_fn: gpu.typed_function::<T>(src, "select_map_forward")?,
            select_backward_fn: gpu.typed_function::<T>(src, "select_map_backward")?,
            mean_forward_fn: gpu.typed_function::<T>(src, "mean_maps_forward")?,
            mean_backward_fn: gpu.typed_function::<T>(src, "mean_maps_backward")?,
            _storage: std::marker::PhantomData,
        })
    }

    pub fn shape(&self) -> &MapShape {
        &self.shape
    }

    /// `S[b] = A[b, k_b]`, as [`select_map_forward_cpu`].
    pub fn select_forward(
        &self,
        a: &impl DevicePtr<T>,
        indices: &impl DevicePtr<i32>,
        s: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let sh = &self.shape;
        check_select(sh, indices.len(), a.len(), s.len())?;
        let g = sh.device();
        let st = &self.stream;
        let (a, indices, s) = (
            device_addr(a, st),
            device_addr(indices, st),
            device_addr_mut(s, st),
        );
        // SAFETY: buffer lengths checked above; an index is checked on the device before use.
        unsafe {
            self.stream
                .launch_builder(&self.select_forward_fn)
                .arg(&a)
                .arg(&indices)
                .arg(&s)
                .arg(&g)
                .launch(elementwise(sh.map_len()))?;
        }
        Ok(())
    }

    /// `dA[b, k_b] = dS[b]` with zeros elsewhere, or with `accumulate` `dA[b, k_b] += dS[b]`
    /// with the other maps untouched, as [`select_map_backward_cpu`].
    pub fn select_backward(
        &self,
        indices: &impl DevicePtr<i32>,
        ds: &impl DevicePtr<T>,
        da: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let sh = &self.shape;
        check_select(sh, indices.len(), da.len(), ds.len())?;
        let g = sh.device();
        let acc = i32::from(accumulate);
        let st = &self.stream;
        let (indices, ds, da) = (
            device_addr(indices, st),
            device_addr(ds, st),
            device_addr_mut(da, st),
        );
        // SAFETY: buffer lengths checked above; an index is checked on the device before use.
        unsafe {
            self.stream
                .launch_builder(&self.select_backward_fn)
                .arg(&indices)
                .arg(&ds)
                .arg(&da)
                .arg(&g)
                .arg(&acc)
                .launch(elementwise(sh.maps_len()))?;
        }
        Ok(())
    }

    /// `S[b] = (Σ_m A[b, m])/M`, as [`mean_maps_forward_cpu`].
    pub fn mean_forward(&self, a: &impl DevicePtr<T>, s: &mut impl DevicePtrMut<T>) -> Result<()> {
        let sh = &self.shape;
        check_mean(sh, a.len(), s.len())?;
        let g = sh.device();
        let (a, s) = (
            device_addr(a, &self.stream),
            device_addr_mut(s, &self.stream),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            self.stream
                .launch_builder(&self.mean_forward_fn)
                .arg(&a)
                .arg(&s)
                .arg(&g)
                .launch(elementwise(sh.map_len()))?;
        }
        Ok(())
    }

    /// `dA[b, m] = dS[b]/M` (assigned), as [`mean_maps_backward_cpu`].
    pub fn mean_backward(
        &self,
        ds: &impl DevicePtr<T>,
        da: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let sh = &self.shape;
        check_mean(sh, da.len(), ds.len())?;
        let g = sh.device();
        let (ds, da) = (
            device_addr(ds, &self.stream),
            device_addr_mut(da, &self.stream),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            self.stream
                .launch_builder(&self.mean_backward_fn)
                .arg(&ds)
                .arg(&da)
                .arg(&g)
                .launch(elementwise(sh.maps_len()))?;
        }
        Ok(())
    }
}

/// The bilinear resize for one shape.
pub struct ResizeBilinearGpu<T: Element> {
    shape: ResizeShape,
    stream: Arc<CudaStream>,
    forward_fn: CudaFunction,
    backward_fn: CudaFunction,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> ResizeBilinearGpu<T> {
    pub fn new(gpu: &Gpu, shape: ResizeShape) -> Result<Self> {
        shape.validate()?;
        let src = &crate::sources::MASK;
        Ok(ResizeBilinearGpu {
            shape,
            stream: gpu.stream().clone(),
            forward_fn: gpu.typed_function::<T>(src, "resize_bilinear_forward")?,
            backward_fn: gpu.typed_function::<T>(src, "resize_bilinear_backward")?,
            _storage: std::marker::PhantomData,
        })
    }

    pub fn shape(&self) -> &ResizeShape {
        &self.shape
    }

    /// Writes `y [N, C, H, W]`, as [`resize_bilinear_forward_cpu`].
    pub fn forward(&self, x: &impl DevicePtr<T>, y: &mut impl DevicePtrMut<T>) -> Result<()> {
        let sh = &self.shape;
        sh.check(x.len(), y.len(), ["bilinear resize x", "bilinear resize y"])?;
        let g = sh.device();
        let (x, y) = (
            device_addr(x, &self.stream),
            device_addr_mut(y, &self.stream),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            self.stream
                .launch_builder(&self.forward_fn)
                .arg(&x)
                .arg(&y)
                .arg(&g)
                .launch(plane_groups(sh.out_height * sh.out_width, sh.planes()))?;
        }
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
        let g = sh.device();
        let (dy, dx) = (
            device_addr(dy, &self.stream),
            device_addr_mut(dx, &self.stream),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            self.stream
                .launch_builder(&self.backward_fn)
                .arg(&dy)
                .arg(&dx)
                .arg(&g)
                .launch(plane_groups(sh.in_height * sh.in_width, sh.planes()))?;
        }
        Ok(())
    }
}

/// Mask and apply for one shape, with the per-sample reductions' scratch allocated once.
/// `u_max` (f32) and `argmax` (i32) are `[B]` buffers the forward fills and the backward reads.
pub struct MaskGpu<T: Element> {
    shape: MaskShape,
    stream: Arc<CudaStream>,
    stats_fn: CudaFunction,
    stats_finish_fn: CudaFunction,
    apply_fn: CudaFunction,
    reduce_fn: CudaFunction,
    dot_finish_fn: CudaFunction,
    backward_fn: CudaFunction,
    /// Each (sample, chunk)'s maximum and its position.
    part_max: CudaSlice<f32>,
    part_arg: CudaSlice<i32>,
    /// Each (sample, chunk)'s part of `Σ_p g[p]·Mk[p]`.
    dot_partials: CudaSlice<f32>,
    /// `Σ_p g[p]·Mk[p]` per sample.
    dot: CudaSlice<f32>,
    _storage: std::marker::PhantomData<T>,
}

/// Pixels per block of the per-sample reductions (`MASK_CHUNK` in `kernels/mask.cu`).
const MASK_CHUNK: usize = THREADS as usize * 4;

impl<T: Element> MaskGpu<T> {
    pub fn new(gpu: &Gpu, shape: MaskShape) -> Result<Self> {
        shape.validate()?;
        let src = &crate::sources::MASK;
        let partials = shape.batch * shape.hw().div_ceil(MASK_CHUNK);
        Ok(MaskGpu {
            shape,
            stream: gpu.stream().clone(),
            stats_fn: gpu.typed_function::<T>(src, "mask_stats")?,
            stats_finish_fn: gpu.function(src, "mask_stats_finish")?,
            apply_fn: gpu.typed_function::<T>(src, "mask_apply")?,
            reduce_fn: gpu.typed_function::<T>(src, "mask_backward_reduce")?,
            dot_finish_fn: gpu.function(src, "mask_dot_finish")?,
            backward_fn: gpu.typed_function::<T>(src, "mask_backward")?,
            part_max: gpu.alloc_zeros(partials)?,
            part_arg: gpu.alloc_zeros(partials)?,
            dot_partials: gpu.alloc_zeros(partials)?,
            dot: gpu.alloc_zeros(shape.batch)?,
            _storage: std::marker::PhantomData,
        })
    }

    /// The per-sample reductions' grid, (chunks, B), and its chunk count.
    fn per_chunk(&self) -> (LaunchConfig, i32) {
        let chunks = self.shape.hw().div_ceil(MASK_CHUNK);
        let cfg = LaunchConfig {
            grid_dim: (chunks as u32, self.shape.batch as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        (cfg, chunks as i32)
    }

    pub fn shape(&self) -> &MaskShape {
        &self.shape
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
        let g = sh.device();
        let hw = g.hw;
        let st = &self.stream;
        let (u, x, xf) = (
            device_addr(u, st),
            device_addr(x, st),
            device_addr_mut(xf, st),
        );
        let (u_max, argmax) = (device_addr_mut(u_max, st), device_addr_mut(argmax, st));
        let (chunks_cfg, chunks) = self.per_chunk();
        let batch = sh.batch as i32;
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials hold
        // B·chunks entries.
        unsafe {
            self.stream
                .launch_builder(&self.stats_fn)
                .arg(&u)
                .arg(&mut self.part_max)
                .arg(&mut self.part_arg)
                .arg(&hw)
                .launch(chunks_cfg)?;
            self.stream
                .launch_builder(&self.stats_finish_fn)
                .arg(&self.part_max)
                .arg(&self.part_arg)
                .arg(&chunks)
                .arg(&batch)
                .arg(&u_max)
                .arg(&argmax)
                .launch(elementwise(sh.batch))?;
            self.stream
                .launch_builder(&self.apply_fn)
                .arg(&u)
                .arg(&x)
                .arg(&u_max)
                .arg(&xf)
                .arg(&g)
                .launch(elementwise(sh.map_len()))?;
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
        let du = device_addr_mut(du, &self.stream);
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
        let du = device_addr_mut(du, &self.stream);
        let dx = device_addr_mut(dx, &self.stream);
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
        let g = sh.device();
        let st = &self.stream;
        let (u, x, dxf) = (device_addr(u, st), device_addr(x, st), device_addr(dxf, st));
        let (u_max, argmax) = (device_addr(u_max, st), device_addr(argmax, st));
        let (du, dx) = (du.0, dx.map_or(0u64, |d| d.0));
        let (chunks_cfg, chunks) = self.per_chunk();
        let batch = sh.batch as i32;
        // SAFETY: buffer lengths checked above match the kernels' indexing; `dot` holds B floats
        // and `dot_partials` B·chunks; a null `dx` is never written.
        unsafe {
            self.stream
                .launch_builder(&self.reduce_fn)
                .arg(&u)
                .arg(&x)
                .arg(&dxf)
                .arg(&u_max)
                .arg(&mut self.dot_partials)
                .arg(&g)
                .launch(chunks_cfg)?;
            self.stream
                .launch_builder(&self.dot_finish_fn)
                .arg(&self.dot_partials)
                .arg(&chunks)
                .arg(&batch)
                .arg(&mut self.dot)
                .launch(elementwise(sh.batch))?;
            self.stream
                .launch_builder(&self.backward_fn)
                .arg(&u)
                .arg(&x)
                .arg(&dxf)
                .arg(&u_max)
                .arg(&argmax)
                .arg(&self.dot)
                .arg(&du)
                .arg(&dx)
                .arg(&g)
                .launch(elementwise(sh.map_len()))?;
        }
        Ok(())
    }
}
