//! Dropout (`F.dropout`) in training, `y = x·f_i`, `dx = dy·f_i`, with `f_i = 1/(1−p)` for a kept element and
//! `0` for a dropped one (so, as in PyTorch, a dropped `inf` or NaN gives NaN). The mask is drawn
//! from splitmix64 as a counter-based generator, so the CPU and the GPU draw the same mask and the
//! backward regenerates it from `(seed, step)` instead of storing it:
//!
//! - `key = splitmix64_output(seed, step + 1)`, the `(step+1)`-th output of splitmix64 seeded
//!   with `seed`;
//! - `u_i = splitmix64_output(key, i + 1)`, the `(i+1)`-th output of splitmix64 seeded with `key`,
//!   `i` the element's index in the flat tensor;
//! - element `i` is kept iff `(u_i >> 40) / 2^24 ≥ p`, evaluated exactly as the integer test
//!   `(u_i >> 40) ≥ ceil(p·2^24)`, so a fraction `1 − p` is kept (up to 2^−24).
//!
//! where `splitmix64_output(s, k) = mix(s + k·0x9e3779b97f4a7c15)` (wrapping) and `mix` is
//! splitmix64's finaliser, the same as [`crate::testing::SplitMix64::next_u64`]. The trainer gives
//! each dropout layer its own seed and advances `step` every training step. `p = 0` is the
//! identity, `p = 1` gives `x·0`; `p` outside `[0, 1]` is an error. With `training == false`
//! dropout is the identity (a copy). Kernel: `kernels/dropout.cu`.
//!
//! The step is not among the call's values: the GPU kernel reads it from a two-word slot in
//! device memory ([`step_words`]), which the host writes before the training step, so that a
//! step captured into a CUDA graph replays with a new mask every step.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{blocks_for, grid};
use crate::element::Element;
use crate::error::{check_len, Error, Result};
use crate::launch;
use crate::rng::splitmix64_output;
use crate::Real;

/// Dropout's probability, its random stream and its mode (the step is read from a slot: see
/// the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutParams {
    /// Probability of dropping an element, in `[0, 1]`.
    pub p: f64,
    /// One per dropout layer.
    pub seed: u64,
    /// `false`: inference, the identity.
    pub training: bool,
}

/// The step as the two 32-bit words of its device slot, low word first.
pub fn step_words(step: u64) -> [i32; 2] {
    [step as u32 as i32, (step >> 32) as u32 as i32]
}

/// The step a slot's two words ([`step_words`]) hold.
pub fn step_from_words(words: [i32; 2]) -> u64 {
    words[0] as u32 as u64 | (words[1] as u32 as u64) << 32
}

impl DropoutParams {
    fn validate(&self) -> Result<()> {
        if (0.0..=1.0).contains(&self.p) {
            Ok(())
        } else {
            Err(Error::Shape(format!(
                "dropout probability {} is outside [0, 1]",
                self.p
            )))
        }
    }

    /// The key of `step`: the `(step+1)`-th output of splitmix64 seeded with `seed`.
    pub fn key(&self, step: u64) -> u64 {
        splitmix64_output(self.seed, step.wrapping_add(1))
    }

    /// `ceil(p·2^24)`: element `i` is kept iff `(u_i >> 40) ≥ threshold`.
    pub fn threshold(&self) -> u32 {
        (self.p * (1u64 << 24) as f64).ceil() as u32
    }

    /// `1/(1−p)`, and 0 for `p = 1` (where nothing is kept).
    pub fn scale(&self) -> f64 {
        if self.p < 1.0 {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        }
    }

    /// Whether element `index` of the flat tensor is kept at `step` (in training).
    pub fn keeps(&self, step: u64, index: u64) -> bool {
        (splitmix64_output(self.key(step), index.wrapping_add(1)) >> 40) as u32 >= self.threshold()
    }
}

/// Elements per rayon task of the CPU dropout.
const DROPOUT_CHUNK: usize = 1 << 14;

/// `out = input·f_i`, the forward and the backward alike.
fn dropout_apply_cpu<R: Real>(
    params: &DropoutParams,
    step: u64,
    input: &[R],
    out: &mut [R],
) -> Result<()> {
    params.validate()?;
    check_len("dropout output", out.len(), input.len())?;
    if !params.training {
        out.copy_from_slice(input);
        return Ok(());
    }
    let key = params.key(step);
    let threshold = params.threshold();
    let scale = R::from_f64(params.scale());
    out.par_chunks_mut(DROPOUT_CHUNK)
        .zip(input.par_chunks(DROPOUT_CHUNK))
        .enumerate()
        .for_each(|(chunk, (o, x))| {
            let base = (chunk * DROPOUT_CHUNK) as u64;
            for (i, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                let u = splitmix64_output(key, base + i as u64 + 1);
                let f = if (u >> 40) as u32 >= threshold {
                    scale
                } else {
                    R::zero()
                };
                *o = x * f;
            }
        });
    Ok(())
}

/// CPU reference (and the CPU backend's op): `y = x·mask/(1−p)` (training) or `y = x`, the mask
/// of `step`.
pub fn dropout_forward_cpu<R: Real>(
    params: &DropoutParams,
    step: u64,
    x: &[R],
    y: &mut [R],
) -> Result<()> {
    dropout_apply_cpu(params, step, x, y)
}

/// CPU reference (and the CPU backend's op): `dx = dy·mask/(1−p)` (assigned), the mask
/// regenerated from the same `params` and `step` as the forward.
pub fn dropout_backward_cpu<R: Real>(
    params: &DropoutParams,
    step: u64,
    dy: &[R],
    dx: &mut [R],
) -> Result<()> {
    dropout_apply_cpu(params, step, dy, dx)
}

const DROPOUT_THREADS: u32 = 256;
/// Grid-stride kernels launch at most this many blocks.
const MAX_BLOCKS: u32 = 8192;

crate::kernel_set! {
    /// The dropout kernel for element type `T`; it works on any length.
    pub struct DropoutGpu: crate::sources::DROPOUT;
    typed: dropout_apply;
}

impl<T: Element> DropoutGpu<T> {
    /// `out = input·mask/(1−p)` in training, `out = input` in inference (assigned): the forward
    /// (`y` from `x`) and, with the same `params` and step and so the same mask, the backward
    /// (`dx` from `dy`), as [`dropout_forward_cpu`] and [`dropout_backward_cpu`]. The mask is
    /// that of the step the two-word slot `step` ([`step_words`]) holds when the kernel runs.
    pub fn apply(
        &self,
        params: &DropoutParams,
        step: &impl DevicePtr<i32>,
        input: &impl DevicePtr<T>,
        out: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        params.validate()?;
        check_len("dropout step slot", step.len(), 2)?;
        check_len("dropout output", out.len(), input.len())?;
        if input.is_empty() {
            return Ok(());
        }
        if !params.training {
            self.stream.memcpy_dtod(input, out)?;
            return Ok(());
        }
        let n = input.len() as i64;
        let (seed, threshold, scale) = (params.seed, params.threshold(), params.scale() as f32);
        let blocks = blocks_for(input.len(), DROPOUT_THREADS).min(MAX_BLOCKS);
        let cfg = grid((blocks, 1, 1), DROPOUT_THREADS);
        // SAFETY: both buffers hold n elements; the kernel is grid-stride over n and reads the
        // two words of `step`.
        unsafe {
            launch!(self.dropout_apply, cfg, [
                in input, out out, &n, &seed, in step, &threshold, &scale
            ])?
        };
        Ok(())
    }
}
