//! The CPU references (and the CPU backend's ops), each channel's sums in a fixed order: the
//! values `j = b·H·W + p` in order whatever the layout, so NHWC gives NCHW's results on the
//! same values, bit for bit.

use std::ops::Deref;

use rayon::prelude::*;

use crate::error::Result;
use crate::layout::Layout;
use crate::Real;

use super::{BatchNormParams, BatchNormShape, LaidOut};

/// `Σ f(i)` for `i` in `0..len`, for `M` sums at once, with eight running sums each: it
/// vectorises, and rounds less than a single running sum.
fn lane_sums<R: Real, const M: usize>(len: usize, f: impl Fn(usize) -> [R; M]) -> [R; M] {
    const LANES: usize = 8;
    let mut acc = [[R::zero(); M]; LANES];
    let full = len / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for (lane, a) in acc.iter_mut().enumerate() {
            let v = f(base + lane);
            for (s, v) in a.iter_mut().zip(v) {
                *s = *s + v;
            }
        }
    }
    let mut total = [R::zero(); M];
    for a in &acc {
        for (t, &s) in total.iter_mut().zip(a) {
            *t = *t + s;
        }
    }
    for i in full..len {
        for (t, v) in total.iter_mut().zip(f(i)) {
            *t = *t + v;
        }
    }
    total
}

/// Channel `c`'s `M` sums of `f(offset)` over its `n` values, `offset` indexing the full tensor
/// in `layout`: each sample's `H·W` values by [`lane_sums`], the samples in order.
fn channel_sums<R: Real, const M: usize>(
    shape: &BatchNormShape,
    layout: Layout,
    c: usize,
    f: impl Fn(usize) -> [R; M],
) -> [R; M] {
    let (channels, hw) = (shape.channels, shape.hw());
    let mut total = [R::zero(); M];
    for b in 0..shape.batch {
        let sums = lane_sums(hw, |p| f(layout.offset(channels, hw, b, c, p)));
        for (t, v) in total.iter_mut().zip(sums) {
            *t = *t + v;
        }
    }
    total
}

fn act<R: Real>(v: R, relu: bool) -> R {
    // NaN passes through, as in PyTorch.
    if relu && v <= R::zero() {
        R::zero()
    } else {
        v
    }
}

/// `dy` masked by the saved output, as `threshold_backward`.
fn masked<R: Real>(dy: R, y: R, relu: bool) -> R {
    if relu && y <= R::zero() {
        R::zero()
    } else {
        dy
    }
}

/// Writes `out` row by row (parallel): `out[i] = f(c, i)`, `c` the channel of offset `i` in
/// `layout`.
fn write_rows<R: Real>(
    shape: &BatchNormShape,
    layout: Layout,
    out: &mut [R],
    f: impl Fn(usize, usize) -> R + Sync,
) {
    let (channels, hw) = (shape.channels, shape.hw());
    match layout {
        Layout::Nchw => out.par_chunks_mut(hw).enumerate().for_each(|(r, row)| {
            let c = r % channels;
            for (i, o) in row.iter_mut().enumerate() {
                *o = f(c, r * hw + i);
            }
        }),
        Layout::Nhwc => out
            .par_chunks_mut(channels)
            .enumerate()
            .for_each(|(j, row)| {
                for (c, o) in row.iter_mut().enumerate() {
                    *o = f(c, j * channels + c);
                }
            }),
    }
}

/// The lengths of a pair of per-channel slices.
fn lens<R, S: Deref<Target = [R]>>(pair: &[S; 2]) -> [usize; 2] {
    [pair[0].len(), pair[1].len()]
}

/// CPU forward, training mode (and the CPU backend's op), activations in `laid_out`'s layout: writes `y` and the saved
/// `[mean, invstd]`, and updates the running `[mean, var]` in place.
pub fn forward_train_cpu<R: Real>(
    laid_out: &impl LaidOut<BatchNormShape>,
    params: &BatchNormParams,
    x: &[R],
    affine: [&[R]; 2],
    running: [&mut [R]; 2],
    y: &mut [R],
    saved: [&mut [R]; 2],
) -> Result<()> {
    let (layout, shape) = (laid_out.layout(), laid_out.shape());
    let pairs = [lens(&affine), lens(&running)];
    shape.check_forward([x.len(), y.len()], pairs, Some(lens(&saved)))?;
    params.validate()?;
    shape.check_training()?;
    let ([gamma, beta], [running_mean, running_var]) = (affine, running);
    let [save_mean, save_invstd] = saved;
    let n = shape.per_channel();
    let inv_n = R::from_f64(1.0 / n as f64);
    let eps = R::from_f64(params.eps);
    let momentum = R::from_f64(params.momentum);
    let keep = R::from_f64(1.0 - params.momentum);
    // Corrected two-pass algorithm (Chan, Golub, LeVeque): a first mean, then the deviations from
    // it, whose sum corrects the mean and the sum of squares.
    let stats: Vec<(R, R)> = (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let [sum] = channel_sums(shape, layout, c, |i| [x[i]]);
            let mean0 = sum * inv_n;
            let [dev, sq] = channel_sums(shape, layout, c, |i| {
                let d = x[i] - mean0;
                [d, d * d]
            });
            (mean0 + dev * inv_n, (sq - dev * dev * inv_n).max(R::zero()))
        })
        .collect();
    let n_unbiased = R::from_f64((n - 1) as f64);
    for (c, &(mean, m2)) in stats.iter().enumerate() {
        let invstd = (m2 * inv_n + eps).sqrt().recip();
        save_mean[c] = mean;
        save_invstd[c] = invstd;
        running_mean[c] = momentum * mean + keep * running_mean[c];
        running_var[c] = momentum * (m2 / n_unbiased) + keep * running_var[c];
    }
    let (save_mean, save_invstd) = (&*save_mean, &*save_invstd);
    write_rows(shape, layout, y, |c, i| {
        act(
            (x[i] - save_mean[c]) * (gamma[c] * save_invstd[c]) + beta[c],
            params.relu,
        )
    });
    Ok(())
}

/// CPU forward, inference mode (and the CPU backend's op), activations in `laid_out`'s layout: writes `y` from the running
/// `[mean, var]`.
pub fn forward_inference_cpu<R: Real>(
    laid_out: &impl LaidOut<BatchNormShape>,
    params: &BatchNormParams,
    x: &[R],
    affine: [&[R]; 2],
    running: [&[R]; 2],
    y: &mut [R],
) -> Result<()> {
    let (layout, shape) = (laid_out.layout(), laid_out.shape());
    shape.check_forward([x.len(), y.len()], [lens(&affine), lens(&running)], None)?;
    params.validate()?;
    let ([gamma, beta], [running_mean, running_var]) = (affine, running);
    let eps = R::from_f64(params.eps);
    let scale: Vec<R> = (0..shape.channels)
        .map(|c| gamma[c] * (running_var[c] + eps).sqrt().recip())
        .collect();
    write_rows(shape, layout, y, |c, i| {
        act((x[i] - running_mean[c]) * scale[c] + beta[c], params.relu)
    });
    Ok(())
}

/// Per channel `[Σg, Σg·(x − mean)]`, `g` the masked `dy`.
fn grad_sums<R: Real>(
    shape: &BatchNormShape,
    layout: Layout,
    relu: bool,
    x: &[R],
    y: &[R],
    dy: &[R],
    mean: &[R],
) -> Vec<[R; 2]> {
    (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            let m = mean[c];
            channel_sums(shape, layout, c, |i| {
                let g = masked(dy[i], y[i], relu);
                [g, g * (x[i] - m)]
            })
        })
        .collect()
}

/// CPU backward, training mode (and the CPU backend's op), activations in `laid_out`'s layout, from the forward's input `x`, output
/// `y` (read only with ReLU) and saved `[mean, invstd]`, and `dy`: assigns `dx`, accumulates
/// `[dgamma, dbeta] += [Σ(g·x̂), Σg]`.
pub fn backward_train_cpu<R: Real>(
    laid_out: &impl LaidOut<BatchNormShape>,
    params: &BatchNormParams,
    [x, y, dy]: [&[R]; 3],
    gamma: &[R],
    saved: [&[R]; 2],
    dx: &mut [R],
    grads: [&mut [R]; 2],
) -> Result<()> {
    let (layout, shape) = (laid_out.layout(), laid_out.shape());
    let lengths = [x.len(), y.len(), dy.len(), dx.len()];
    shape.check_backward(true, lengths, gamma.len(), [lens(&saved), lens(&grads)])?;
    params.validate()?;
    let ([save_mean, save_invstd], [dgamma, dbeta]) = (saved, grads);
    let sums = grad_sums(shape, layout, params.relu, x, y, dy, save_mean);
    let inv_n = R::from_f64(1.0 / shape.per_channel() as f64);
    // dx = (g − (x − mean)·proj − mean_g)·scale, as PyTorch's batch_norm_backward_elemt.
    let coef: Vec<[R; 3]> = sums
        .iter()
        .enumerate()
        .map(|(c, &[sum_g, dot])| {
            let invstd = save_invstd[c];
            dgamma[c] = dgamma[c] + dot * invstd;
            dbeta[c] = dbeta[c] + sum_g;
            [
                sum_g * inv_n,
                dot * inv_n * invstd * invstd,
                invstd * gamma[c],
            ]
        })
        .collect();
    write_rows(shape, layout, dx, |c, i| {
        let [mean_g, proj, scale] = coef[c];
        let g = masked(dy[i], y[i], params.relu);
        (g - (x[i] - save_mean[c]) * proj - mean_g) * scale
    });
    Ok(())
}

/// CPU backward, inference mode (and the CPU backend's op; also frozen-BN training),
/// activations in `laid_out`'s layout, from the
/// forward's input `x` and output `y` (read only with ReLU), the running `[mean, var]` and `dy`:
/// assigns `dx = g·gamma·invstd`, accumulates `[dgamma, dbeta] += [Σ(g·x̂), Σg]`.
pub fn backward_inference_cpu<R: Real>(
    laid_out: &impl LaidOut<BatchNormShape>,
    params: &BatchNormParams,
    [x, y, dy]: [&[R]; 3],
    gamma: &[R],
    running: [&[R]; 2],
    dx: &mut [R],
    grads: [&mut [R]; 2],
) -> Result<()> {
    let (layout, shape) = (laid_out.layout(), laid_out.shape());
    let lengths = [x.len(), y.len(), dy.len(), dx.len()];
    shape.check_backward(false, lengths, gamma.len(), [lens(&running), lens(&grads)])?;
    params.validate()?;
    let ([running_mean, running_var], [dgamma, dbeta]) = (running, grads);
    let eps = R::from_f64(params.eps);
    let invstd: Vec<R> = running_var
        .iter()
        .map(|&v| (v + eps).sqrt().recip())
        .collect();
    let sums = grad_sums(shape, layout, params.relu, x, y, dy, running_mean);
    for (c, &[sum_g, dot]) in sums.iter().enumerate() {
        dgamma[c] = dgamma[c] + dot * invstd[c];
        dbeta[c] = dbeta[c] + sum_g;
    }
    write_rows(shape, layout, dx, |c, i| {
        masked(dy[i], y[i], params.relu) * (gamma[c] * invstd[c])
    });
    Ok(())
}
