//! CPU interpolators with PyTorch's `F.interpolate(size=..., align_corners=False)` semantics, on
//! `[planes, h, w]` row-major f64 data; the up-sampler's pretraining targets.
//!
//! - [`Interpolation::Bilinear`]: the model's own bilinear resize
//!   ([`c2f_kernels::resize::resize_bilinear_forward_cpu`]), whose source positions and weights are
//!   computed in f32 as PyTorch does for float tensors (so against PyTorch's float64 run it agrees
//!   to ~1e-7 relative, not to the last bit).
//! - [`Interpolation::Bicubic`]: Keys' cubic convolution with `A = −0.75` (PyTorch's), source
//!   `scale·(o + ½) − ½` without clamping, the four taps `⌊src⌋ − 1 ..= ⌊src⌋ + 2` clamped to the
//!   edge; separable, along the width first then the height, as PyTorch's kernel.
//! - [`Interpolation::Nearest`]: PyTorch's legacy `"nearest"`: source `min(⌊o·scale⌋, in − 1)`
//!   with `scale = in/out` and the product in f32 (as PyTorch computes it), which is not the
//!   pixel-centre rule of `"nearest-exact"`.

use c2f_kernels::resize::{resize_bilinear_forward_cpu, ResizeShape};
use c2f_kernels::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interpolation {
    Bilinear,
    Bicubic,
    Nearest,
}

impl Interpolation {
    pub const ALL: [Interpolation; 3] = [
        Interpolation::Bilinear,
        Interpolation::Bicubic,
        Interpolation::Nearest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
            Interpolation::Nearest => "nearest",
        }
    }
}

/// PyTorch's bicubic coefficient.
pub const CUBIC_A: f64 = -0.75;

/// The four cubic-convolution weights for taps at distances `1 + t, t, 1 − t, 2 − t`.
pub fn cubic_weights(t: f64) -> [f64; 4] {
    let a = CUBIC_A;
    // |x| ≤ 1: ((A + 2)·x − (A + 3))·x² + 1;  1 < |x| < 2: ((A·x − 5A)·x + 8A)·x − 4A.
    let near = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Resizes `x [planes, in_h, in_w]` to `[planes, out_h, out_w]`.
pub fn resize(
    method: Interpolation,
    planes: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    x: &[f64],
) -> Result<Vec<f64>> {
    if [planes, in_h, in_w, out_h, out_w].contains(&0) {
        return Err(Error::Shape(format!(
            "{} resize: empty shape {planes}×{in_h}×{in_w} → {out_h}×{out_w}",
            method.name()
        )));
    }
    c2f_kernels::error::check_len("resize input", x.len(), planes * in_h * in_w)?;
    let mut y = vec![0.0; planes * out_h * out_w];
    match method {
        Interpolation::Bilinear => {
            let shape = ResizeShape {
                batch: planes,
                channels: 1,
                in_height: in_h,
                in_width: in_w,
                out_height: out_h,
                out_width: out_w,
            };
            resize_bilinear_forward_cpu(&shape, x, &mut y)?;
        }
        Interpolation::Nearest => {
            let rows = nearest_sources(in_h, out_h);
            let cols = nearest_sources(in_w, out_w);
            for (yp, xp) in y.chunks_mut(out_h * out_w).zip(x.chunks(in_h * in_w)) {
                for (yr, &r) in yp.chunks_mut(out_w).zip(&rows) {
                    for (v, &c) in yr.iter_mut().zip(&cols) {
                        *v = xp[r * in_w + c];
                    }
                }
            }
        }
        Interpolation::Bicubic => {
            let rows = cubic_sources(in_h, out_h);
            let cols = cubic_sources(in_w, out_w);
            let mut across = vec![0.0; in_h * out_w];
            for (yp, xp) in y.chunks_mut(out_h * out_w).zip(x.chunks(in_h * in_w)) {
                for (ar, xr) in across.chunks_mut(out_w).zip(xp.chunks(in_w)) {
                    for (v, (taps, w)) in ar.iter_mut().zip(&cols) {
                        *v = (0..4).map(|k| xr[taps[k]] * w[k]).sum();
                    }
                }
                for (yr, (taps, w)) in yp.chunks_mut(out_w).zip(&rows) {
                    for (o, v) in yr.iter_mut().enumerate() {
                        *v = (0..4).map(|k| across[taps[k] * out_w + o] * w[k]).sum();
                    }
                }
            }
        }
    }
    Ok(y)
}

/// Legacy nearest: `min(⌊o·scale⌋, n_in − 1)`, the product in f32 as PyTorch's kernel.
fn nearest_sources(n_in: usize, n_out: usize) -> Vec<usize> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| ((o as f32 * scale).floor() as usize).min(n_in - 1))
        .collect()
}

/// Per output index: the four clamped taps and their weights.
fn cubic_sources(n_in: usize, n_out: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = n_in as f64 / n_out as f64;
    let last = n_in as i64 - 1;
    (0..n_out)
        .map(|o| {
            let src = scale * (o as f64 + 0.5) - 0.5;
            let i0 = src.floor();
            let t = src - i0;
            let taps = std::array::from_fn(|k| (i0 as i64 - 1 + k as i64).clamp(0, last) as usize);
            (taps, cubic_weights(t))
        })
        .collect()
}
