//! WS-DAN's attention-guided augmentation (Hu et al. 2019), NCHW contiguous; nothing learns
//! through it, so there is no backward. Images `x [B, C, H, W]`, one attention map per sample
//! `maps [B, 1, h, w]`:
//!
//! - the map normalised by its own minimum and maximum, `Â = (a − min)/(max − min)` (min and max
//!   skip NaN), then up-sampled to `H×W` bilinearly with `align_corners=True` (torch's
//!   `F.upsample_bilinear`): output row `o` reads `src = scale·o`, `scale = (h − 1)/(H − 1)`
//!   (0 when `H = 1`), rows `i0 = ⌊src⌋` and `i0 + 1` (just `i0` on the last row) with weights
//!   `1 − λ` and `λ = src − i0`, the positions and weights in f32 whatever the storage or CPU
//!   type; the value `l0_r·(l0_c·v00 + l1_c·v01) + l1_r·(l0_c·v10 + l1_c·v11)`, no FMA. Where
//!   `max − min` is not positive (a constant or all-zero map; NaN) the map is *flat*;
//! - [`attention_boxes_cpu`]: the crop box `[y0, x0, y1, x1]` (half-open) around the rows and
//!   columns where `U ≥ θ_b`, padded by `⌊padding·H⌋` rows and `⌊padding·W⌋` columns and
//!   clamped to the image; a flat map, or no pixel at `θ_b` or above, gives `[0, 0, H, W]`;
//! - [`crop_resize_cpu`]: `y[b] = x[b, :, y0..y1, x0..x1]` resized to `H×W` with the same
//!   bilinear rule (a 1-pixel side repeats its pixel); a box outside the image or empty is
//!   clamped to it: `y0 ∈ [0, H)`, `y1 ∈ [y0 + 1, H]`, likewise `x`;
//! - [`drop_mask_cpu`]: `y[b] = x[b]` where `U < θ_b` (every channel), else 0; a flat map keeps
//!   the whole image;
//! - [`maps_by_mass_cpu`]: per sample one of `M` maps of `a [B, M, h, w]` with probability
//!   ∝ `sqrt(max(Σ_hw a[b, m], 0) + 1e-12)` (sums in pixel order; a NaN sum counts as 0), by
//!   inverse CDF on a draw in `[0, 1)`: the first map whose cumulative weight (in map order)
//!   exceeds `draw·total`, the last map if rounding leaves none.
//!
//! The kernels do the CPU's f32 arithmetic in the same order (products unfused), so the GPU's
//! boxes, indices, crops and drops are the CPU's f32 results bit for bit, on every run. Kernels:
//! `kernels/augment.cu`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use rayon::prelude::*;

use crate::device::{elementwise, grid, Gpu};
use crate::element::Element;
use crate::error::{check_len, check_shape, Error, Result};
use crate::launch;
use crate::map_select::MapShape;
use crate::Real;

/// Threads per block of the per-sample and per-band kernels (`AUGMENT_THREADS`).
const THREADS: u32 = 256;
/// Threads per block of `maps_by_mass` (`MASS_THREADS`).
const MASS_THREADS: u32 = 32;
/// Up-sampled rows per block of `attention_box_partials` (`BOX_ROWS`).
const BOX_ROWS: usize = 8;

/// Images `[batch, channels, height, width]` and one map per sample `[batch, 1, map_height,
/// map_width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AugmentShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub map_height: usize,
    pub map_width: usize,
}

impl AugmentShape {
    /// Pixels of one image plane, H·W.
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Pixels of one map, h·w.
    pub fn map_hw(&self) -> usize {
        self.map_height * self.map_width
    }
    /// Elements of the images, B·C·H·W.
    pub fn image_len(&self) -> usize {
        self.batch * self.channels * self.hw()
    }
    /// Elements of the maps, B·h·w.
    pub fn map_len(&self) -> usize {
        self.batch * self.map_hw()
    }

    /// Refuses a zero size (naming the field), and images or maps beyond 32-bit indexing.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("batch", self.batch),
            ("channels", self.channels),
            ("height", self.height),
            ("width", self.width),
            ("map_height", self.map_height),
            ("map_width", self.map_width),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Shape(format!(
                "augment shape has {name} 0: {self:?}"
            )));
        }
        let (image, maps) = (
            [self.batch, self.channels, self.height, self.width],
            [self.batch, self.map_height, self.map_width],
        );
        check_shape("augment shape", self, &[], &[&image, &maps])
    }

    fn check_maps(&self, maps: usize, thresholds: usize) -> Result<()> {
        self.validate()?;
        check_len("augment maps", maps, self.map_len())?;
        check_len("augment thresholds", thresholds, self.batch)
    }

    fn check_images(&self, x: usize, y: usize) -> Result<()> {
        check_len("augment x", x, self.image_len())?;
        check_len("augment y", y, self.image_len())
    }

    /// Bands of [`BOX_ROWS`] up-sampled rows per sample.
    fn bands(&self) -> usize {
        self.height.div_ceil(BOX_ROWS)
    }

    fn device(&self) -> AugmentGeom {
        // Each fits an i32: `validate` bounds the products.
        let i = |v: usize| v as i32;
        AugmentGeom {
            batch: i(self.batch),
            channels: i(self.channels),
            height: i(self.height),
            width: i(self.width),
            map_height: i(self.map_height),
            map_width: i(self.map_width),
        }
    }
}

/// `AugmentGeom` in `kernels/augment.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AugmentGeom {
    batch: i32,
    channels: i32,
    height: i32,
    width: i32,
    map_height: i32,
    map_width: i32,
}

// SAFETY: a `#[repr(C)]` struct of six `i32`, the layout of `AugmentGeom` in the kernel file.
unsafe impl DeviceRepr for AugmentGeom {}

/// The padding of a box side of `side` pixels, `⌊padding·side⌋` (at most `side`, which already
/// reaches both edges), or an error naming a padding that is negative or not finite.
fn box_padding(padding: f64, side: usize) -> Result<usize> {
    if !(padding.is_finite() && padding >= 0.0) {
        return Err(Error::config(
            "attention box padding",
            padding,
            "must be a finite fraction of the image side, at least 0",
        ));
    }
    Ok((padding * side as f64).floor().min(side as f64) as usize)
}

/// One output row's (or column's) source with `align_corners=True`: rows `i0` and `i1` with
/// weights `l0` and `l1`, in f32 as the kernel's `CornerSource`.
#[derive(Debug, Clone, Copy)]
struct CornerSource {
    i0: usize,
    i1: usize,
    l0: f32,
    l1: f32,
}

/// Every output row's source along an axis of `n_in` inputs and `n_out` outputs.
fn corner_sources(n_in: usize, n_out: usize) -> Vec<CornerSource> {
    // Sizes fit an i32 (checked), so the conversions to f32 are the kernel's (exact below 2^24).
    let scale = if n_out > 1 {
        (n_in - 1) as f32 / (n_out - 1) as f32
    } else {
        0.0
    };
    (0..n_out)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src as usize).min(n_in - 1);
            let l1 = src - i0 as f32;
            CornerSource {
                i0,
                i1: if i0 + 1 < n_in { i0 + 1 } else { i0 },
                l0: 1.0 - l1,
                l1,
            }
        })
        .collect()
}

/// `l0_r·(l0_c·v00 + l1_c·v01) + l1_r·(l0_c·v10 + l1_c·v11)` in `R`.
fn bilinear<R: Real>(v: [R; 4], r: &CornerSource, c: &CornerSource) -> R {
    let w = |l: f32| R::from_f64(f64::from(l));
    let (r0, r1, c0, c1) = (w(r.l0), w(r.l1), w(c.l0), w(c.l1));
    r0 * (c0 * v[0] + c1 * v[1]) + r1 * (c0 * v[2] + c1 * v[3])
}

/// The up-sampled value at image pixel (`r`, `c`) of the `width`-wide plane `p`.
fn sample<R: Real>(p: &[R], width: usize, r: &CornerSource, c: &CornerSource) -> R {
    let (row0, row1) = (&p[r.i0 * width..], &p[r.i1 * width..]);
    bilinear([row0[c.i0], row0[c.i1], row1[c.i0], row1[c.i1]], r, c)
}

/// The map normalised by its minimum and maximum (both skipping NaN), or `None` for a flat map
/// (`max − min` not positive).
fn normalised<R: Real>(map: &[R]) -> Option<Vec<R>> {
    let lo = map.iter().fold(R::nan(), |m, &v| m.min(v));
    let hi = map.iter().fold(R::nan(), |m, &v| m.max(v));
    let range = hi - lo;
    (range > R::zero()).then(|| map.iter().map(|&v| (v - lo) / range).collect())
}

/// The up-sampling sources of a shape's maps: rows (h → H) and columns (w → W).
fn map_sources(s: &AugmentShape) -> [Vec<CornerSource>; 2] {
    [
        corner_sources(s.map_height, s.height),
        corner_sources(s.map_width, s.width),
    ]
}

/// CPU crop boxes: `boxes [B, 4]` = `[y0, x0, y1, x1]` per sample, as the module doc says.
/// A `padding` that is negative or not finite is an [`Error::Config`] naming it.
pub fn attention_boxes_cpu<R: Real>(
    s: &AugmentShape,
    padding: f64,
    maps: &[R],
    thresholds: &[R],
    boxes: &mut [i32],
) -> Result<()> {
    s.check_maps(maps.len(), thresholds.len())?;
    check_len("augment boxes", boxes.len(), 4 * s.batch)?;
    let (pad_h, pad_w) = (
        box_padding(padding, s.height)?,
        box_padding(padding, s.width)?,
    );
    let [rows, cols] = map_sources(s);
    boxes
        .par_chunks_mut(4)
        .zip(maps.par_chunks(s.map_hw()))
        .zip(thresholds.par_iter())
        .for_each(|((bx, map), &theta)| {
            let whole = [0, 0, s.height, s.width];
            // First and last row and column at or above the threshold.
            let mut hits: Option<[usize; 4]> = None;
            if let Some(norm) = normalised(map) {
                for (i, r) in rows.iter().enumerate() {
                    for (j, c) in cols.iter().enumerate() {
                        if sample(&norm, s.map_width, r, c) >= theta {
                            let [r0, c0, r1, c1] = hits.unwrap_or([i, j, i, j]);
                            hits = Some([r0.min(i), c0.min(j), r1.max(i), c1.max(j)]);
                        }
                    }
                }
            }
            let b = hits.map_or(whole, |[r0, c0, r1, c1]| {
                [
                    r0.saturating_sub(pad_h),
                    c0.saturating_sub(pad_w),
                    (r1 + 1 + pad_h).min(s.height),
                    (c1 + 1 + pad_w).min(s.width),
                ]
            });
            // Each is at most H or W, which fit an i32 (checked).
            for (o, v) in bx.iter_mut().zip(b) {
                *o = v as i32;
            }
        });
    Ok(())
}

/// A box `[y0, x0, y1, x1]` clamped to an image of `height × width`: `y0 ∈ [0, H)`,
/// `y1 ∈ [y0 + 1, H]`, likewise `x`.
fn clamp_box(b: &[i32], height: usize, width: usize) -> [usize; 4] {
    let (h, w) = (height as i64, width as i64);
    let y0 = i64::from(b[0]).clamp(0, h - 1);
    let x0 = i64::from(b[1]).clamp(0, w - 1);
    let y1 = i64::from(b[2]).clamp(y0 + 1, h);
    let x1 = i64::from(b[3]).clamp(x0 + 1, w);
    [y0, x0, y1, x1].map(|v| v as usize)
}

/// CPU crop and resize: `y[b]` is `x[b]`'s (clamped) box resized to `H×W`.
pub fn crop_resize_cpu<R: Real>(
    s: &AugmentShape,
    x: &[R],
    boxes: &[i32],
    y: &mut [R],
) -> Result<()> {
    s.validate()?;
    s.check_images(x.len(), y.len())?;
    check_len("augment boxes", boxes.len(), 4 * s.batch)?;
    let (hw, image) = (s.hw(), s.channels * s.hw());
    y.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(boxes.par_chunks(4))
        .for_each(|((yb, xb), bx)| {
            let [y0, x0, y1, x1] = clamp_box(bx, s.height, s.width);
            let rows = corner_sources(y1 - y0, s.height);
            let cols = corner_sources(x1 - x0, s.width);
            for (yp, xp) in yb.chunks_mut(hw).zip(xb.chunks(hw)) {
                let crop = &xp[y0 * s.width + x0..];
                for (yr, r) in yp.chunks_mut(s.width).zip(&rows) {
                    for (v, c) in yr.iter_mut().zip(&cols) {
                        *v = sample(crop, s.width, r, c);
                    }
                }
            }
        });
    Ok(())
}

/// CPU attention drop: `y[b] = x[b]` where the up-sampled normalised map is below
/// `thresholds[b]`, else 0; a flat map keeps the whole image.
pub fn drop_mask_cpu<R: Real>(
    s: &AugmentShape,
    maps: &[R],
    thresholds: &[R],
    x: &[R],
    y: &mut [R],
) -> Result<()> {
    s.check_maps(maps.len(), thresholds.len())?;
    s.check_images(x.len(), y.len())?;
    let [rows, cols] = map_sources(s);
    let (hw, image) = (s.hw(), s.channels * s.hw());
    y.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(maps.par_chunks(s.map_hw()).zip(thresholds.par_iter()))
        .for_each(|((yb, xb), (map, &theta))| {
            let Some(norm) = normalised(map) else {
                yb.copy_from_slice(xb);
                return;
            };
            let keep: Vec<bool> = rows
                .iter()
                .flat_map(|r| cols.iter().map(move |c| (r, c)))
                .map(|(r, c)| sample(&norm, s.map_width, r, c) < theta)
                .collect();
            for (yp, xp) in yb.chunks_mut(hw).zip(xb.chunks(hw)) {
                for ((o, &v), &k) in yp.iter_mut().zip(xp).zip(&keep) {
                    *o = if k { v } else { R::zero() };
                }
            }
        });
    Ok(())
}

fn check_mass(s: &MapShape, a: usize, draws: usize, indices: usize) -> Result<()> {
    s.validate()?;
    check_len("maps_by_mass A", a, s.maps_len())?;
    check_len("maps_by_mass draws", draws, s.batch)?;
    check_len("maps_by_mass indices", indices, s.batch)
}

/// CPU map choice by mass: `indices[b]` drawn from `a [B, M, h, w]` with `draws[b]`, as the
/// module doc says.
pub fn maps_by_mass_cpu<R: Real>(
    s: &MapShape,
    a: &[R],
    draws: &[R],
    indices: &mut [i32],
) -> Result<()> {
    check_mass(s, a.len(), draws.len(), indices.len())?;
    // Rounded to f32 first, as the kernel's `1e-12f`.
    let eps = R::from_f64(f64::from(1e-12f32));
    indices
        .par_iter_mut()
        .zip(a.par_chunks(s.maps * s.hw()))
        .zip(draws.par_iter())
        .for_each(|((k, a), &draw)| {
            let weights: Vec<R> = a
                .chunks(s.hw())
                .map(|m| {
                    let sum = m.iter().fold(R::zero(), |acc, &v| acc + v);
                    (if sum > R::zero() { sum } else { R::zero() } + eps).sqrt()
                })
                .collect();
            let total = weights.iter().fold(R::zero(), |acc, &w| acc + w);
            let target = draw * total;
            let mut cumulative = R::zero();
            let pick = weights.iter().position(|&w| {
                cumulative = cumulative + w;
                cumulative > target
            });
            // M fits an i32 (checked).
            *k = pick.unwrap_or(s.maps - 1) as i32;
        });
    Ok(())
}

crate::kernel_set! {
    struct AugmentKernels: crate::sources::AUGMENT;
    typed: augment_normalise, attention_box_partials, drop_mask, crop_resize, maps_by_mass;
    plain: attention_box_finish;
}

/// Crop boxes, crops and drops for one [`AugmentShape`], with the scratch allocated once: the
/// normalised maps, each sample's flatness, and the boxes' per-band partials.
pub struct AugmentGpu<T: Element> {
    shape: AugmentShape,
    k: AugmentKernels<T>,
    /// `Â [B, h·w]` in f32 (unwritten for flat maps).
    norm: CudaSlice<f32>,
    /// 1 where a sample's map is flat.
    flat: CudaSlice<i32>,
    /// Each (sample, band)'s first row, −last row, first column and −last column at or above
    /// the threshold.
    partials: CudaSlice<i32>,
}

impl<T: Element> AugmentGpu<T> {
    pub fn new(gpu: &Gpu, shape: AugmentShape) -> Result<Self> {
        shape.validate()?;
        Ok(AugmentGpu {
            shape,
            k: AugmentKernels::new(gpu)?,
            norm: gpu.alloc_zeros(shape.map_len())?,
            flat: gpu.alloc_zeros(shape.batch)?,
            partials: gpu.alloc_zeros(4 * shape.batch * shape.bands())?,
        })
    }

    pub fn shape(&self) -> &AugmentShape {
        &self.shape
    }

    /// Fills `norm` and `flat` from `maps`: a block per sample.
    fn normalise(&mut self, maps: &impl DevicePtr<T>, g: &AugmentGeom) -> Result<()> {
        let cfg = grid((self.shape.batch as u32, 1, 1), THREADS);
        // SAFETY: `maps` holds B·h·w elements (checked by the callers), `norm` B·h·w and `flat` B.
        unsafe {
            launch!(self.k.augment_normalise, cfg, [
                in maps, &mut self.norm, &mut self.flat, g
            ])?
        };
        Ok(())
    }

    /// Writes `boxes [B, 4]`, as [`attention_boxes_cpu`].
    pub fn attention_boxes(
        &mut self,
        padding: f64,
        maps: &impl DevicePtr<T>,
        thresholds: &impl DevicePtr<T>,
        boxes: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        let sh = self.shape;
        sh.check_maps(maps.len(), thresholds.len())?;
        check_len("augment boxes", boxes.len(), 4 * sh.batch)?;
        let pads = [
            box_padding(padding, sh.height)?,
            box_padding(padding, sh.width)?,
        ];
        let [pad_h, pad_w] = pads.map(|p| p as i32);
        let (g, bands) = (sh.device(), sh.bands() as i32);
        self.normalise(maps, &g)?;
        let band_cfg = grid(((sh.batch * sh.bands()) as u32, 1, 1), THREADS);
        // SAFETY: lengths checked above; `partials` holds B·bands·4 entries.
        unsafe {
            launch!(self.k.attention_box_partials, band_cfg, [
                &self.norm, &self.flat, in thresholds, &mut self.partials, &g, &bands
            ])?;
            launch!(self.k.attention_box_finish, elementwise(sh.batch), [
                &self.partials, &self.flat, out boxes, &g, &bands, &pad_h, &pad_w
            ])?;
        }
        Ok(())
    }

    /// Writes `y`, `x`'s boxes resized to `H×W`, as [`crop_resize_cpu`] (the boxes are clamped
    /// on the device).
    pub fn crop_resize(
        &self,
        x: &impl DevicePtr<T>,
        boxes: &impl DevicePtr<i32>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let sh = &self.shape;
        sh.check_images(x.len(), y.len())?;
        check_len("augment boxes", boxes.len(), 4 * sh.batch)?;
        let cfg = elementwise(sh.batch * sh.hw());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(self.k.crop_resize, cfg, [in x, in boxes, out y, &sh.device()])? };
        Ok(())
    }

    /// Writes `y`, `x` with the pixels at or above each sample's threshold dropped, as
    /// [`drop_mask_cpu`].
    pub fn drop_mask(
        &mut self,
        maps: &impl DevicePtr<T>,
        thresholds: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let sh = self.shape;
        sh.check_maps(maps.len(), thresholds.len())?;
        sh.check_images(x.len(), y.len())?;
        let g = sh.device();
        self.normalise(maps, &g)?;
        let cfg = elementwise(sh.batch * sh.hw());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            launch!(self.k.drop_mask, cfg, [
                &self.norm, &self.flat, in thresholds, in x, out y, &g
            ])?
        };
        Ok(())
    }
}

/// The map choice by mass for one [`MapShape`], with each sample's map weights as scratch.
pub struct MapsByMassGpu<T: Element> {
    shape: MapShape,
    k: AugmentKernels<T>,
    weights: CudaSlice<f32>,
}

impl<T: Element> MapsByMassGpu<T> {
    pub fn new(gpu: &Gpu, shape: MapShape) -> Result<Self> {
        shape.validate()?;
        Ok(MapsByMassGpu {
            shape,
            k: AugmentKernels::new(gpu)?,
            weights: gpu.alloc_zeros(shape.batch * shape.maps)?,
        })
    }

    pub fn shape(&self) -> &MapShape {
        &self.shape
    }

    /// Writes `indices [B]`, as [`maps_by_mass_cpu`]: a warp per sample.
    pub fn pick(
        &mut self,
        a: &impl DevicePtr<T>,
        draws: &impl DevicePtr<T>,
        indices: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        let sh = self.shape;
        check_mass(&sh, a.len(), draws.len(), indices.len())?;
        let (maps, hw) = (sh.maps as i32, sh.hw() as i32);
        let cfg = grid((sh.batch as u32, 1, 1), MASS_THREADS);
        // SAFETY: lengths checked above; `weights` holds B·M floats.
        unsafe {
            launch!(self.k.maps_by_mass, cfg, [
                in a, in draws, &mut self.weights, out indices, &maps, &hw
            ])?
        };
        Ok(())
    }
}
