//! Convolution on the CPU (the CPU backend's op, and what the cuDNN path is tested against):
//! im2col + GEMM (ndarray's GEMM, matrixmultiply underneath, one thread each), images in
//! parallel with rayon (threading inside the GEMM as well oversubscribes the cores).
//! 1×1 convolutions with stride 1 and no padding skip im2col.
//!
//! Contracts: forward assigns `y`; backward-data assigns `dx`, or adds into it when
//! `accumulate` (a tensor read by several ops sums their gradients); backward-filter adds into
//! `dw` (parameter gradients accumulate). Backward-filter sums per-group partials in a fixed
//! order, so it gives the same bits on every run with the same thread count.

use c2f_kernels::error::check_len;
use c2f_kernels::{Error, Real, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl std::fmt::Display for Conv2dShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conv2d of batch {}, {} input channels of {}x{}, {} output channels, kernel {}x{}, \
             stride {}x{}, padding {}x{}",
            self.batch,
            self.in_channels,
            self.height,
            self.width,
            self.out_channels,
            self.kernel.0,
            self.kernel.1,
            self.stride.0,
            self.stride.1,
            self.padding.0,
            self.padding.1
        )
    }
}

impl Conv2dShape {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding.0 - self.kernel.0) / self.stride.0 + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding.1 - self.kernel.1) / self.stride.1 + 1
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }
    /// Rows of the im2col matrix: `C·kh·kw`.
    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }
    fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }
    fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == (1, 1) && self.padding == (0, 0)
    }

    pub fn validate(&self) -> Result<()> {
        let dims = [
            self.batch,
            self.in_channels,
            self.height,
            self.width,
            self.out_channels,
            self.kernel.0,
            self.kernel.1,
            self.stride.0,
            self.stride.1,
        ];
        if dims.contains(&0) {
            return Err(Error::Shape(format!("{self} has a zero dimension")));
        }
        if self.height + 2 * self.padding.0 < self.kernel.0
            || self.width + 2 * self.padding.1 < self.kernel.1
        {
            return Err(Error::Shape(format!(
                "conv2d kernel {}x{} is larger than the padded input {}x{} (padding {}x{})",
                self.kernel.0,
                self.kernel.1,
                self.height,
                self.width,
                self.padding.0,
                self.padding.1
            )));
        }
        Ok(())
    }
}

/// The output columns `ox` whose input column `ox·stride + kx − pad` lies inside `0..width`.
fn valid_columns(s: &Conv2dShape, kx: usize, ow: usize) -> std::ops::Range<usize> {
    let (stride, pad) = (s.stride.1, s.padding.1);
    // First ox with ox·stride + kx ≥ pad; first ox with ox·stride + kx ≥ width + pad.
    let first = |bound: usize| bound.saturating_sub(kx).div_ceil(stride).min(ow);
    first(pad)..first(s.width + pad)
}

/// `cols[(c·kh + ky)·kw + kx, oy·OW + ox] = x[c, oy·s − p + ky, ox·s − p + kx]` (0 outside).
fn im2col<R: Real>(s: &Conv2dShape, x: &[R], cols: &mut [R]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let (kh, kw) = s.kernel;
    for c in 0..s.in_channels {
        let plane = &x[c * s.height * s.width..][..s.height * s.width];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut cols[((c * kh + ky) * kw + kx) * oh * ow..][..oh * ow];
                let valid = valid_columns(s, kx, ow);
                for oy in 0..oh {
                    let iy = (oy * s.stride.0 + ky) as isize - s.padding.0 as isize;
                    let out = &mut row[oy * ow..][..ow];
                    if iy < 0 || iy >= s.height as isize || valid.is_empty() {
                        out.fill(R::zero());
                        continue;
                    }
                    let line = &plane[iy as usize * s.width..][..s.width];
                    out[..valid.start].fill(R::zero());
                    out[valid.end..].fill(R::zero());
                    let ix0 = valid.start * s.stride.1 + kx - s.padding.1;
                    let out = &mut out[valid.clone()];
                    if s.stride.1 == 1 {
                        out.copy_from_slice(&line[ix0..ix0 + out.len()]);
                    } else {
                        for (o, &v) in out.iter_mut().zip(line[ix0..].iter().step_by(s.stride.1)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds the columns back into the image: the adjoint of [`im2col`].
fn col2im_add<R: Real>(s: &Conv2dShape, cols: &[R], dx: &mut [R]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let (kh, kw) = s.kernel;
    for c in 0..s.in_channels {
        let plane = &mut dx[c * s.height * s.width..][..s.height * s.width];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &cols[((c * kh + ky) * kw + kx) * oh * ow..][..oh * ow];
                let valid = valid_columns(s, kx, ow);
                if valid.is_empty() {
                    continue;
                }
                let ix0 = valid.start * s.stride.1 + kx - s.padding.1;
                for oy in 0..oh {
                    let iy = (oy * s.stride.0 + ky) as isize - s.padding.0 as isize;
                    if iy < 0 || iy >= s.height as isize {
                        continue;
                    }
                    let line = &mut plane[iy as usize * s.width..][..s.width];
                    let src = &row[oy * ow..][valid.clone()];
                    for (d, &v) in line[ix0..].iter_mut().step_by(s.stride.1).zip(src) {
                        *d = *d + v;
                    }
                }
            }
        }
    }
}

fn check(s: &Conv2dShape, x: usize, w: usize, y: usize) -> Result<()> {
    s.validate()?;
    check_len("conv2d input", x, s.input_len())?;
    check_len("conv2d weight", w, s.weight_len())?;
    check_len("conv2d output", y, s.output_len())
}

/// `y = conv(x, w)`, assigned.
pub fn forward<R: Real>(s: &Conv2dShape, x: &[R], w: &[R], y: &mut [R]) -> Result<()> {
    check(s, x.len(), w.len(), y.len())?;
    let (k, p) = (s.out_channels, s.out_pixels());
    let w = ArrayView2::from_shape((k, s.patch_len()), w).unwrap();
    let image = s.in_channels * s.height * s.width;
    y.par_chunks_mut(k * p).enumerate().for_each_init(
        || {
            vec![
                R::zero();
                if s.is_pointwise() {
                    0
                } else {
                    s.patch_len() * p
                }
            ]
        },
        |cols, (n, y_n)| {
            let x_n = &x[n * image..][..image];
            let cols: &[R] = if s.is_pointwise() {
                x_n
            } else {
                im2col(s, x_n, cols);
                cols
            };
            let cols = ArrayView2::from_shape((s.patch_len(), p), cols).unwrap();
            let mut y_n = ArrayViewMut2::from_shape((k, p), y_n).unwrap();
            general_mat_mul(R::one(), &w, &cols, R::zero(), &mut y_n);
        },
    );
    Ok(())
}

/// `dx = convᵀ(dy, w)`: assigned, or added into `dx` when `accumulate`.
pub fn backward_data<R: Real>(
    s: &Conv2dShape,
    dy: &[R],
    w: &[R],
    dx: &mut [R],
    accumulate: bool,
) -> Result<()> {
    check(s, dx.len(), w.len(), dy.len())?;
    let (k, p) = (s.out_channels, s.out_pixels());
    let wt = ArrayView2::from_shape((k, s.patch_len()), w)
        .unwrap()
        .reversed_axes();
    let image = s.in_channels * s.height * s.width;
    dx.par_chunks_mut(image).enumerate().for_each_init(
        || {
            vec![
                R::zero();
                if s.is_pointwise() {
                    0
                } else {
                    s.patch_len() * p
                }
            ]
        },
        |dcols, (n, dx_n)| {
            let dy_n = ArrayView2::from_shape((k, p), &dy[n * k * p..][..k * p]).unwrap();
            if s.is_pointwise() {
                let beta = if accumulate { R::one() } else { R::zero() };
                let mut dx_n = ArrayViewMut2::from_shape((s.in_channels, p), dx_n).unwrap();
                general_mat_mul(R::one(), &wt, &dy_n, beta, &mut dx_n);
                return;
            }
            let mut cols = ArrayViewMut2::from_shape((s.patch_len(), p), &mut dcols[..]).unwrap();
            general_mat_mul(R::one(), &wt, &dy_n, R::zero(), &mut cols);
            if !accumulate {
                dx_n.fill(R::zero());
            }
            col2im_add(s, dcols, dx_n);
        },
    );
    Ok(())
}

/// `dw += Σ_n dy_n · cols(x_n)ᵀ`. Images are split into fixed contiguous groups, each summed in
/// order into its own partial, and the partials are added in group order.
pub fn backward_filter<R: Real>(s: &Conv2dShape, x: &[R], dy: &[R], dw: &mut [R]) -> Result<()> {
    check(s, x.len(), dw.len(), dy.len())?;
    let (k, p, patch) = (s.out_channels, s.out_pixels(), s.patch_len());
    let image = s.in_channels * s.height * s.width;
    let groups = rayon::current_num_threads().clamp(1, s.batch);
    let per_group = s.batch.div_ceil(groups);
    let partials: Vec<Vec<R>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut partial = vec![R::zero(); k * patch];
            let mut cols = vec![R::zero(); if s.is_pointwise() { 0 } else { patch * p }];
            for n in g * per_group..((g + 1) * per_group).min(s.batch) {
                let x_n = &x[n * image..][..image];
                let cols_n: &[R] = if s.is_pointwise() {
                    x_n
                } else {
                    im2col(s, x_n, &mut cols);
                    &cols
                };
                let cols_t = ArrayView2::from_shape((patch, p), cols_n)
                    .unwrap()
                    .reversed_axes();
                let dy_n = ArrayView2::from_shape((k, p), &dy[n * k * p..][..k * p]).unwrap();
                let mut acc = ArrayViewMut2::from_shape((k, patch), &mut partial[..]).unwrap();
                general_mat_mul(R::one(), &dy_n, &cols_t, R::one(), &mut acc);
            }
            partial
        })
        .collect();
    for partial in partials {
        for (d, v) in dw.iter_mut().zip(partial) {
            *d = *d + v;
        }
    }
    Ok(())
}
