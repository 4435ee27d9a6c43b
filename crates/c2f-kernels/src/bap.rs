//! Bilinear attention pooling, WS-DAN's definition (the paper's feature matrix):
//!
//! - `P[b,m,n] = (1/(H·W)) Σ_hw A[b,m,h,w]·F[b,n,h,w]`
//! - `S = sign(P)·sqrt(|P| + 1e-12)`
//! - `Z[b] = S[b] / max(‖S[b]‖, 1e-12)` over each sample's whole M·N vector.
//!
//! `Z` is what the center loss sees; the classifier sees `100·Z`. The forward also returns each
//! sample's norm `‖S[b]‖`, which the backward needs. Kernels: `kernels/bap.cu`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::device::{grid, Gpu, Kernel, LaunchConfig};
use crate::element::Element;
use crate::error::{check_len, check_shape, Result};
use crate::launch;
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
pub fn forward_cpu<R: Real>(
    shape: &BapShape,
    [attention, features]: [&[R]; 2],
    parts: &mut [R],
    norms: &mut [R],
) -> Result<()> {
    shape.check_forward(attention.len(), features.len(), parts.len(), norms.len())?;
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
            z.iter_mut().for_each(|zi| *zi = *zi * inv);
        });
    Ok(())
}

/// CPU reference backward: from `d_parts` writes `[d_attention, d_features]` (assigned).
pub fn backward_cpu<R: Real>(
    shape: &BapShape,
    [attention, features]: [&[R]; 2],
    (parts, norms): (&[R], &[R]),
    d_parts: &[R],
    [d_attention, d_features]: [&mut [R]; 2],
) -> Result<()> {
    shape.check_backward(
        [attention.len(), features.len(), parts.len(), norms.len()],
        [d_parts.len(), d_attention.len(), d_features.len()],
    )?;
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
    Ok(())
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

/// Blocks of `bap_pool` per sample, each leaving one partial sum of squares.
fn pool_tiles(shape: &BapShape) -> usize {
    shape.channels.div_ceil(POOL_CHANNELS)
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

/// The fused BAP kernels for one shape, with their scratch buffers allocated once.
pub struct BapGpu<T: Element> {
    shape: BapShape,
    k: BapKernels<T>,
    /// `bap_grad_inputs` holding 8 maps in registers (M ≤ 8) or 32 (more, 32 at a time).
    grad_inputs: Kernel,
    /// Sum of squares of S per (sample, forward block).
    tile_sumsq: CudaSlice<f32>,
    /// Partials of `Z·dZ` per (sample, chunk).
    dot_partials: CudaSlice<f32>,
    /// `G = dP/HW` channel-major, `[B, N, M]`, f32 whatever the storage type.
    grad_t: CudaSlice<f32>,
}

crate::kernel_set! {
    struct BapKernels: crate::sources::BAP;
    typed: bap_pool, bap_normalize, bap_grad_dot, bap_grad_pooled;
}

impl<T: Element> BapGpu<T> {
    pub fn new(gpu: &Gpu, shape: BapShape) -> Result<Self> {
        shape.validate()?;
        let grad_inputs = match shape.maps {
            ..=8 => "bap_grad_inputs8",
            _ => "bap_grad_inputs32",
        };
        Ok(BapGpu {
            shape,
            k: BapKernels::new(gpu)?,
            grad_inputs: Kernel::typed::<T>(gpu, &crate::sources::BAP, grad_inputs)?,
            tile_sumsq: gpu.alloc_zeros(shape.batch * pool_tiles(&shape))?,
            dot_partials: gpu.alloc_zeros(shape.batch * per_part_chunks(&shape))?,
            grad_t: gpu.alloc_zeros(shape.parts_len())?,
        })
    }

    pub fn shape(&self) -> &BapShape {
        &self.shape
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
        let pool_cfg = grid((pool_tiles(&s) as u32, s.batch as u32, 1), THREADS);
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe {
            launch!(self.k.bap_pool, pool_cfg, [
                in attention, in features, out parts, &mut self.tile_sumsq, &m, &n, &hw
            ])?;
        }
        let tiles = pool_tiles(&s);
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
        let inputs_cfg = grid((tiles(s.hw()), s.batch as u32, 1), THREADS);
        // SAFETY: buffer lengths checked above match the kernels' indexing; `grad_t` holds
        // B·M·N and `dot_partials` B·chunks.
        unsafe {
            launch!(self.k.bap_grad_pooled, pooled_cfg, [
                in parts, in d_parts, in norms, &self.dot_partials, &chunks, &mut self.grad_t, &m,
                &n, &hw
            ])?;
            launch!(self.grad_inputs, inputs_cfg, [
                in attention, in features, &self.grad_t, out d_attention, out d_features, &m, &n,
                &hw
            ])?;
        }
        Ok(())
    }
}
