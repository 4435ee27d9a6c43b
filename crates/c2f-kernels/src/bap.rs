//! Bilinear attention pooling, WS-DAN's definition (the paper's feature matrix):
//!
//! - `P[b,m,n] = (1/(H·W)) Σ_hw A[b,m,h,w]·F[b,n,h,w]`
//! - `S = sign(P)·sqrt(|P| + 1e-12)`
//! - `Z[b] = S[b] / max(‖S[b]‖, 1e-12)` over each sample's whole M·N vector.
//!
//! `Z` is what the center loss sees; the classifier sees `100·Z`. The forward also returns each
//! sample's norm `‖S[b]‖`, which the backward needs. Kernels: `kernels/bap.cu`.
//!
//! Layout ([`Layout`]): `A` and `F` (and their gradients) are NCHW, `[B, M, H, W]` and
//! `[B, N, H, W]`, or channels-last NHWC, `[B, H, W, M]` and `[B, H, W, N]`
//! ([`BapGpu::with_layout`]; the CPU references take `(Layout, BapShape)`); the parts `[B, M·N]`
//! and norms are the same in both. The NHWC CPU reference is the NCHW one on the converted data.
//! The NHWC kernels take at most 32 maps. They compute the same sums in another order (a pixel
//! slot per warp and a tree over the slots, not lanes over the pixels and a butterfly), so the
//! forward and `dA` agree with NCHW to f32 rounding; `dF` sums over the maps in the same order and
//! gives NCHW's bits from the same `Z` and norms.
//!
//! bf16 rounding points (both layouts): the inputs are bf16; `P`, the sums of squares, the norms
//! (f32 outputs), `G = dP/HW` and every sum of the backward are f32; `S` is rounded to bf16 when
//! stored, then `Z` is computed from that rounded `S` in f32 and rounded once more (the norm is
//! that of the unrounded `S`); `dA` and `dF` are rounded to bf16 once, when stored, and `G` is
//! computed from the bf16 `Z` and `dZ` the backward reads. [`forward_bf16_reference`] and the f32
//! [`backward_cpu`] on the widened bf16 values are the reference that rounds at those points.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::device::{elementwise, grid, Gpu, Kernel, LaunchConfig};
use crate::element::Element;
use crate::error::{check_len, check_shape, Error, Result};
use crate::launch;
use crate::layout::{LaidOut, Layout};
use crate::Real;

/// Added under the square root, as in WS-DAN.
pub const SQRT_EPS: f64 = 1e-12;
/// Floor of the per-sample norm, as in `F.normalize`.
pub const NORM_EPS: f64 = 1e-12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BapShape {
    pub batch: usize,
    /// Attention maps M.
    pub maps: usize,
    /// Feature channels N.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl BapShape {
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Length of one sample's part-feature vector, M·N.
    pub fn part_len(&self) -> usize {
        self.maps * self.channels
    }
    pub fn attention_len(&self) -> usize {
        self.batch * self.maps * self.hw()
    }
    pub fn features_len(&self) -> usize {
        self.batch * self.channels * self.hw()
    }
    pub fn parts_len(&self) -> usize {
        self.batch * self.part_len()
    }

    /// Checks the forward's buffer lengths (and the shape itself).
    pub fn check_forward(
        &self,
        attention: usize,
        features: usize,
        parts: usize,
        norms: usize,
    ) -> Result<()> {
        self.validate()?;
        check_len("BAP attention", attention, self.attention_len())?;
        check_len("BAP features", features, self.features_len())?;
        check_len("BAP parts", parts, self.parts_len())?;
        check_len("BAP norms", norms, self.batch)
    }

    /// Checks the backward's buffer lengths: the forward's four, then d_parts, d_attention,
    /// d_features.
    pub fn check_backward(&self, forward: [usize; 4], grads: [usize; 3]) -> Result<()> {
        let [a, f, p, n] = forward;
        self.check_forward(a, f, p, n)?;
        check_len("BAP d_parts", grads[0], self.parts_len())?;
        check_len("BAP d_attention", grads[1], self.attention_len())?;
        check_len("BAP d_features", grads[2], self.features_len())
    }

    /// `[attention, features]` in `layout` rewritten in NCHW (borrowed when already NCHW).
    fn inputs_nchw<'a, R: Copy>(
        &self,
        layout: Layout,
        [attention, features]: [&'a [R]; 2],
    ) -> [std::borrow::Cow<'a, [R]>; 2] {
        use std::borrow::Cow;
        match layout {
            Layout::Nchw => [Cow::Borrowed(attention), Cow::Borrowed(features)],
            Layout::Nhwc => [
                Cow::Owned(layout.convert(Layout::Nchw, attention, self.maps, self.hw())),
                Cow::Owned(layout.convert(Layout::Nchw, features, self.channels, self.hw())),
            ],
        }
    }

    #[doc(hidden)] // for c2f-baselines
    pub fn validate(&self) -> Result<()> {
        let (b, m, n, h, w) = (
            self.batch,
            self.maps,
            self.channels,
            self.height,
            self.width,
        );
        check_shape(
            "BAP shape",
            self,
            &[b, m, n, h, w],
            &[&[b, n, h, w], &[b, m, h, w]],
        )
    }
}

/// CPU reference forward: from `[attention, features]` writes `parts [B, M·N]` and `norms [B]`.
/// `shape` is a [`BapShape`] (NCHW) or `(Layout, BapShape)`.
pub fn forward_cpu<R: Real>(
    shape: &impl LaidOut<BapShape>,
    [attention, features]: [&[R]; 2],
    parts: &mut [R],
    norms: &mut [R],
) -> Result<()> {
    let s = shape.shape();
    s.check_forward(attention.len(), features.len(), parts.len(), norms.len())?;
    let [attention, features] = s.inputs_nchw(shape.layout(), [attention, features]);
    forward_nchw(s, [&attention, &features], parts, norms, |v| v);
    Ok(())
}

/// The bf16 reference of the forward (see the module doc): the f32 forward on the widened bf16
/// inputs, `S` rounded to bf16 before the division by the norm of the unrounded `S`, then `Z`
/// rounded; the norms stay f32.
pub fn forward_bf16_reference(
    shape: &impl LaidOut<BapShape>,
    [attention, features]: [&[half::bf16]; 2],
    parts: &mut [half::bf16],
    norms: &mut [f32],
) -> Result<()> {
    let s = shape.shape();
    s.check_forward(attention.len(), features.len(), parts.len(), norms.len())?;
    let widen = |v: &[half::bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
    let [attention, features] = [widen(attention), widen(features)];
    let [attention, features] = s.inputs_nchw(shape.layout(), [&attention, &features]);
    let mut z = vec![0.0f32; parts.len()];
    let round = |v: f32| half::bf16::from_f32(v).to_f32();
    forward_nchw(s, [&attention, &features], &mut z, norms, round);
    for (p, v) in parts.iter_mut().zip(z) {
        *p = half::bf16::from_f32(v);
    }
    Ok(())
}

/// The NCHW forward; `stored(S)` is `S` as the kernel stores it before normalising.
fn forward_nchw<R: Real>(
    shape: &BapShape,
    [attention, features]: [&[R]; 2],
    parts: &mut [R],
    norms: &mut [R],
    stored: impl Fn(R) -> R + Sync,
) {
    let (m, n, hw) = (shape.maps, shape.channels, shape.hw());
    let inv_hw = R::from_f64(1.0 / hw as f64);
    let eps = R::from_f64(SQRT_EPS);
    let floor = R::from_f64(NORM_EPS);
    parts
        .par_chunks_mut(m * n)
        .zip(norms.par_iter_mut())
        .enumerate()
        .for_each(|(b, (z, norm))| {
            let a = ArrayView2::from_shape((m, hw), &attention[b * m * hw..][..m * hw]).unwrap();
            let f = ArrayView2::from_shape((n, hw), &features[b * n * hw..][..n * hw]).unwrap();
            let pooled = a.dot(&f.t());
            for (zi, &p) in z.iter_mut().zip(pooled.iter()) {
                let p = p * inv_hw;
                *zi = signum0(p) * (p.abs() + eps).sqrt();
            }
            *norm = z.iter().map(|&s| s * s).sum::<R>().sqrt();
            let inv = norm.max(floor).recip();
            z.iter_mut().for_each(|zi| *zi = stored(*zi) * inv);
        });
}

/// CPU reference backward: from `d_parts` writes `[d_attention, d_features]` (assigned), in
/// `shape`'s layout.
pub fn backward_cpu<R: Real>(
    shape: &impl LaidOut<BapShape>,
    [attention, features]: [&[R]; 2],
    (parts, norms): (&[R], &[R]),
    d_parts: &[R],
    [d_attention, d_features]: [&mut [R]; 2],
) -> Result<()> {
    let s = shape.shape();
    s.check_backward(
        [attention.len(), features.len(), parts.len(), norms.len()],
        [d_parts.len(), d_attention.len(), d_features.len()],
    )?;
    let saved = (parts, norms);
    let layout = shape.layout();
    if layout == Layout::Nchw {
        backward_nchw(
            s,
            [attention, features],
            saved,
            d_parts,
            [d_attention, d_features],
        );
        return Ok(());
    }
    let [attention, features] = s.inputs_nchw(layout, [attention, features]);
    let mut da = vec![R::zero(); d_attention.len()];
    let mut df = vec![R::zero(); d_features.len()];
    backward_nchw(
        s,
        [&attention, &features],
        saved,
        d_parts,
        [&mut da, &mut df],
    );
    let hw = s.hw();
    d_attention.copy_from_slice(&Layout::Nchw.convert(layout, &da, s.maps, hw));
    d_features.copy_from_slice(&Layout::Nchw.convert(layout, &df, s.channels, hw));
    Ok(())
}

fn backward_nchw<R: Real>(
    shape: &BapShape,
    [attention, features]: [&[R]; 2],
    (parts, norms): (&[R], &[R]),
    d_parts: &[R],
    [d_attention, d_features]: [&mut [R]; 2],
) {
    let (m, n, hw) = (shape.maps, shape.channels, shape.hw());
    let inv_hw = R::from_f64(1.0 / hw as f64);
    let floor = R::from_f64(NORM_EPS);
    let half = R::from_f64(0.5);
    d_attention
        .par_chunks_mut(m * hw)
        .zip(d_features.par_chunks_mut(n * hw))
        .enumerate()
        .for_each(|(b, (da, df))| {
            let z = &parts[b * m * n..][..m * n];
            let dz = &d_parts[b * m * n..][..m * n];
            let r = norms[b];
            let r_eff = r.max(floor);
            // Below the floor the normalisation is a plain scale, so there is no projection.
            let dot = if r >= floor {
                z.iter().zip(dz).map(|(&a, &b)| a * b).sum::<R>()
            } else {
                R::zero()
            };
            let grad: Vec<R> = z
                .iter()
                .zip(dz)
                .map(|(&zi, &dzi)| {
                    let ds = (dzi - zi * dot) / r_eff;
                    let s_abs = zi.abs() * r_eff;
                    if s_abs > R::zero() {
                        ds * half / s_abs * inv_hw
                    } else {
                        R::zero()
                    }
                })
                .collect();
            let g = ArrayView2::from_shape((m, n), &grad).unwrap();
            let a = ArrayView2::from_shape((m, hw), &attention[b * m * hw..][..m * hw]).unwrap();
            let f = ArrayView2::from_shape((n, hw), &features[b * n * hw..][..n * hw]).unwrap();
            let mut da = ArrayViewMut2::from_shape((m, hw), da).unwrap();
            let mut df = ArrayViewMut2::from_shape((n, hw), df).unwrap();
            da.assign(&g.dot(&f));
            df.assign(&g.t().dot(&a));
        });
}

/// `sign` with `sign(0) = 0`, as `torch.sign`.
fn signum0<R: Real>(x: R) -> R {
    if x == R::zero() {
        R::zero()
    } else {
        x.signum()
    }
}

/// Channels per block of `bap_pool` (8 warps of 4 rows).
const POOL_CHANNELS: usize = 32;
/// HW positions per block of `bap_grad_inputs` (one per lane), and the side of
/// `bap_grad_pooled`'s transposing tile.
const GRAD_TILE: usize = 32;
#[doc(hidden)] // for c2f-baselines
pub const THREADS: u32 = 256;

/// Blocks of the forward's pool per sample, each leaving one partial sum of squares.
fn pool_tiles(shape: &BapShape, layout: Layout) -> usize {
    match layout {
        Layout::Nchw => shape.channels.div_ceil(POOL_CHANNELS),
        Layout::Nhwc => shape.channels.div_ceil(NHWC_POOL_CHANNELS),
    }
}

/// Grid of the element-wise passes over each sample's M·N vector: (chunks, B), with enough
/// chunks to fill the card at the benchmark shapes and a few elements per thread.
#[doc(hidden)] // for c2f-baselines
pub fn per_part_grid(shape: &BapShape) -> LaunchConfig {
    grid(
        (per_part_chunks(shape) as u32, shape.batch as u32, 1),
        THREADS,
    )
}

#[doc(hidden)] // for c2f-baselines
pub fn per_part_chunks(shape: &BapShape) -> usize {
    shape.part_len().div_ceil(THREADS as usize * 8)
}

/// Launches `bap_grad_dot`: partials of each sample's `Z·dZ`, one per chunk of [`per_part_grid`],
/// from `parts` and `d_parts`, buffers the caller checked against `shape`.
#[doc(hidden)] // for c2f-baselines
pub fn launch_grad_dot<T: Element>(
    grad_dot: &Kernel,
    shape: &BapShape,
    parts: &impl DevicePtr<T>,
    d_parts: &impl DevicePtr<T>,
    dot_partials: &mut CudaSlice<f32>,
) -> Result<()> {
    let mn = shape.part_len() as i32;
    // SAFETY: the caller checked the lengths against `shape`; `dot_partials` holds B·chunks.
    unsafe {
        launch!(grad_dot, per_part_grid(shape), [in parts, in d_parts, dot_partials, &mn])?;
    }
    Ok(())
}

/// Launches `bap_normalize`: divides each sample of `parts` by its norm, summed from `tiles`
/// partials, and writes the norms; `parts` and `norms` are buffers the caller checked against
/// `shape`.
#[doc(hidden)] // for c2f-baselines
pub fn launch_normalize<T: Element>(
    normalize: &Kernel,
    shape: &BapShape,
    parts: &mut impl DevicePtrMut<T>,
    sumsq: &CudaSlice<f32>,
    tiles: usize,
    norms: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let (tiles, mn) = (tiles as i32, shape.part_len() as i32);
    // SAFETY: the caller checked the lengths against `shape`; `sumsq` holds B·tiles.
    unsafe {
        launch!(normalize, per_part_grid(shape), [out parts, sumsq, out norms, &tiles, &mn])?;
    }
    Ok(())
}

/// The most maps the NHWC kernels hold in registers.
pub const NHWC_MAX_MAPS: usize = 32;
/// Channels per block of `bap_nhwc_pool` (32 lanes of 2) and of `bap_nhwc_grad_inputs` (4 warps
/// side by side), and pixels per block of the latter.
const NHWC_POOL_CHANNELS: usize = 64;
const NHWC_GRAD_CHANNELS: usize = 256;
const NHWC_GRAD_PIXELS: usize = 96;

/// The fused BAP kernels for one shape and layout, with their scratch buffers allocated once.
pub struct BapGpu<T: Element> {
    shape: BapShape,
    layout: Layout,
    k: BapKernels<T>,
    /// `bap_pool` (NCHW) or `bap_nhwc_pool8`/`32` (NHWC, by M).
    pool: Kernel,
    /// `bap_grad_inputs` holding 8 maps in registers (M ≤ 8) or 32 (more, 32 at a time); NHWC's
    /// likewise, without the passes.
    grad_inputs: Kernel,
    /// Sum of squares of S per (sample, forward block).
    tile_sumsq: CudaSlice<f32>,
    /// Partials of `Z·dZ` per (sample, chunk).
    dot_partials: CudaSlice<f32>,
    /// `G = dP/HW` channel-major, `[B, N, M]`, f32 whatever the storage type.
    grad_t: CudaSlice<f32>,
    /// NHWC only: `dA`'s partials per channel tile, `[B, tiles, HW, M]`, summed by
    /// `bap_nhwc_grad_att_finish`.
    d_att_partials: Option<CudaSlice<f32>>,
}

crate::kernel_set! {
    struct BapKernels: crate::sources::BAP;
    typed: bap_normalize, bap_grad_dot, bap_grad_pooled, bap_nhwc_grad_att_finish;
}

impl<T: Element> BapGpu<T> {
    /// NCHW `A` and `F`.
    pub fn new(gpu: &Gpu, shape: BapShape) -> Result<Self> {
        Self::with_layout(gpu, shape, Layout::Nchw)
    }

    /// `A` and `F` (and their gradients) in `layout`; NHWC takes at most [`NHWC_MAX_MAPS`] maps.
    pub fn with_layout(gpu: &Gpu, shape: BapShape, layout: Layout) -> Result<Self> {
        shape.validate()?;
        let maps_held = if shape.maps <= 8 { 8 } else { 32 };
        let (pool, grad_inputs, d_att_partials) = match layout {
            Layout::Nchw => (
                "bap_pool".to_string(),
                format!("bap_grad_inputs{maps_held}"),
                None,
            ),
            Layout::Nhwc => {
                if shape.maps > NHWC_MAX_MAPS {
                    return Err(Error::Shape(format!(
                        "BAP maps {} above the {NHWC_MAX_MAPS} the NHWC kernels hold (shape \
                         {shape:?})",
                        shape.maps
                    )));
                }
                let partials = shape.attention_len() * nhwc_grad_tiles(&shape);
                (
                    format!("bap_nhwc_pool{maps_held}"),
                    format!("bap_nhwc_grad_inputs{maps_held}"),
                    Some(gpu.alloc_zeros(partials)?),
                )
            }
        };
        let kernel = |name: &str| Kernel::typed::<T>(gpu, &crate::sources::BAP, name);
        Ok(BapGpu {
            shape,
            layout,
            k: BapKernels::new(gpu)?,
            pool: kernel(&pool)?,
            grad_inputs: kernel(&grad_inputs)?,
            tile_sumsq: gpu.alloc_zeros(shape.batch * pool_tiles(&shape, layout))?,
            dot_partials: gpu.alloc_zeros(shape.batch * per_part_chunks(&shape))?,
            grad_t: gpu.alloc_zeros(shape.parts_len())?,
            d_att_partials,
        })
    }

    pub fn shape(&self) -> &BapShape {
        &self.shape
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// From `[attention, features]` writes `parts [B, M·N]` (normalised) and `norms [B]` (‖S‖
    /// per sample).
    pub fn forward(
        &mut self,
        [attention, features]: [&impl DevicePtr<T>; 2],
        parts: &mut impl DevicePtrMut<T>,
        norms: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let s = self.shape;
        s.check_forward(attention.len(), features.len(), parts.len(), norms.len())?;
        let (m, n, hw) = (s.maps as i32, s.channels as i32, s.hw() as i32);
        let tiles = pool_tiles(&s, self.layout);
        let pool_cfg = match self.layout {
            Layout::Nchw => grid((tiles as u32, s.batch as u32, 1), THREADS),
            Layout::Nhwc => grid((s.batch as u32, tiles as u32, 1), THREADS),
        };
        // SAFETY: buffer lengths checked above match the kernel's indexing; `tile_sumsq` holds
        // B·tiles.
        unsafe {
            launch!(self.pool, pool_cfg, [
                in attention, in features, out parts, &mut self.tile_sumsq, &m, &n, &hw
            ])?;
        }
        launch_normalize(
            &self.k.bap_normalize,
            &s,
            parts,
            &self.tile_sumsq,
            tiles,
            norms,
        )
    }

    /// From `d_parts` and the forward's `[attention, features]` and `(parts, norms)` writes
    /// `[d_attention, d_features]` (assigned, not accumulated).
    pub fn backward(
        &mut self,
        [attention, features]: [&impl DevicePtr<T>; 2],
        (parts, norms): (&impl DevicePtr<T>, &impl DevicePtr<f32>),
        d_parts: &impl DevicePtr<T>,
        [d_attention, d_features]: [&mut impl DevicePtrMut<T>; 2],
    ) -> Result<()> {
        let s = self.shape;
        s.check_backward(
            [attention.len(), features.len(), parts.len(), norms.len()],
            [d_parts.len(), d_attention.len(), d_features.len()],
        )?;
        launch_grad_dot(
            &self.k.bap_grad_dot,
            &s,
            parts,
            d_parts,
            &mut self.dot_partials,
        )?;
        let (m, n, hw) = (s.maps as i32, s.channels as i32, s.hw() as i32);
        let chunks = per_part_chunks(&s) as i32;
        let tiles = |len: usize| len.div_ceil(GRAD_TILE) as u32;
        let pooled_cfg = grid((tiles(s.channels), tiles(s.maps), s.batch as u32), THREADS);
        // SAFETY: buffer lengths checked above match the kernels' indexing; `grad_t` holds
        // B·M·N and `dot_partials` B·chunks.
        unsafe {
            launch!(self.k.bap_grad_pooled, pooled_cfg, [
                in parts, in d_parts, in norms, &self.dot_partials, &chunks, &mut self.grad_t, &m,
                &n, &hw
            ])?;
        }
        let Some(partials) = &mut self.d_att_partials else {
            let inputs_cfg = grid((tiles(s.hw()), s.batch as u32, 1), THREADS);
            // SAFETY: as above.
            unsafe {
                launch!(self.grad_inputs, inputs_cfg, [
                    in attention, in features, &self.grad_t, out d_attention, out d_features, &m,
                    &n, &hw
                ])?;
            }
            return Ok(());
        };
        let channel_tiles = nhwc_grad_tiles(&s);
        let pixel_blocks = s.hw().div_ceil(NHWC_GRAD_PIXELS) as u32;
        let inputs_cfg = grid(
            (channel_tiles as u32, s.batch as u32, pixel_blocks),
            THREADS,
        );
        let (tiles_arg, batch, per_sample) = (channel_tiles as i32, s.batch as i32, m * hw);
        // SAFETY: as above; `partials` holds B·tiles·HW·M.
        unsafe {
            launch!(self.grad_inputs, inputs_cfg, [
                in attention, in features, &self.grad_t, &mut *partials, out d_features, &m, &n,
                &hw
            ])?;
            launch!(self.k.bap_nhwc_grad_att_finish, elementwise(s.attention_len()), [
                &*partials, out d_attention, &tiles_arg, &batch, &per_sample
            ])?;
        }
        Ok(())
    }
}

/// Channel tiles of `bap_nhwc_grad_inputs`, each leaving its own partial of `dA`.
fn nhwc_grad_tiles(shape: &BapShape) -> usize {
    shape.channels.div_ceil(NHWC_GRAD_CHANNELS)
}
