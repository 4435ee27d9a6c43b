//! f32 ↔ bf16 casts and the bf16 gradient added into an f32 one: the CPU reference against
//! hand-rounded values, and the kernels against it bit for bit (ties, subnormals, NaN, ±inf,
//! lengths off the vector width, unaligned views, poisoned outputs), with the bench's cuDNN
//! baseline held to the same answers (all skipped without a GPU).

use crate::common::skip::or_return;
use c2f_baselines::cast::CastCudnn;
use c2f_kernels::cast::{accumulate_cpu, to_bf16_cpu, to_f32_cpu, CastGpu};
use c2f_kernels::testing::{
    assert_bit_identical, assert_same_bits, gpu_or_skip, library_or_skip, SplitMix64,
};
use c2f_kernels::{Element, Gpu};
use cudarc::driver::{CudaView, CudaViewMut};
use half::bf16;

const fn b(bits: u16) -> bf16 {
    bf16::from_bits(bits)
}

#[test]
fn reference_rounds_to_nearest_even_and_keeps_specials() {
    let cases: [(f32, u16); 12] = [
        (1.0, 0x3f80),
        // Halfway between 1 and 1 + 2⁻⁷: to the even 1; 1 + 3·2⁻⁸, halfway above the odd
        // 1 + 2⁻⁷: up to the even 1 + 2⁻⁶.
        (f32::from_bits(0x3f80_8000), 0x3f80),
        (f32::from_bits(0x3f81_8000), 0x3f82),
        // Just above halfway: up.
        (f32::from_bits(0x3f80_8001), 0x3f81),
        (-2.5e-3, 0xbb24),
        // The largest f32 rounds to +inf; the smallest subnormal to +0; a subnormal above half
        // of bf16's smallest subnormal to that subnormal.
        (f32::MAX, 0x7f80),
        (f32::from_bits(1), 0x0000),
        (f32::from_bits(0x0000_8001), 0x0001),
        (f32::INFINITY, 0x7f80),
        (f32::NEG_INFINITY, 0xff80),
        // A NaN whose payload lies in the low bits only stays a NaN (quieted), not inf.
        (f32::from_bits(0x7f80_0001), 0x7fc0),
        (-0.0, 0x8000),
    ];
    let x: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let mut y = vec![b(0x1234); x.len()];
    to_bf16_cpu(&x, &mut y).unwrap();
    for ((v, want), got) in cases.iter().zip(&y) {
        assert_eq!(got.to_bits(), *want, "bf16({v:e}) = {got:?}");
    }

    let narrow = [b(0x3f81), b(0x0001), b(0x7f81), b(0xff80)];
    let mut wide = [7.0f32; 4];
    to_f32_cpu(&narrow, &mut wide).unwrap();
    let bits: Vec<u32> = wide.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, [0x3f81_0000, 0x0001_0000, 0x7f81_0000, 0xff80_0000]);
    let mut sum = [0.5f32, 1.0, 2.0, 3.0];
    accumulate_cpu(&narrow, &mut sum).unwrap();
    assert_eq!(sum[0], 0.5 + 1.0 + 2f32.powi(-7));
    assert_eq!(sum[1], 1.0);
    assert!(sum[2].is_nan() && sum[3] == f32::NEG_INFINITY, "{sum:?}");

    let err = to_bf16_cpu(&x, &mut y[1..]).unwrap_err();
    assert!(
        err.to_string()
            .contains("cast to bf16 output has 11 elements, expected 12"),
        "{err}"
    );
}

/// `n` f32 values of every kind the cast must get right: random magnitudes over the whole
/// exponent range, exact ties below an even and an odd bf16, subnormals, zeros, NaNs (quiet,
/// signalling, payload in the low bits only), ±inf and values that round to inf.
fn special_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            let high = (r >> 32) as u32 & 0xffff_0000;
            let sign = (r as u32) & 0x8000_0000;
            let low = (r >> 8) as u32;
            let bits = match r % 12 {
                // A tie, and at or past one.
                0 => high | 0x8000,
                1 => high | 0x8000 | (low & 0x7fff),
                2 => sign | (low & 0x007f_ffff), // a subnormal
                3 => sign | 0x7f80_0000 | (1 + low % 0x7f_ffff), // a NaN
                4 => sign | 0x7f80_0000,         // ±inf
                // From the tie between the largest bf16 and inf up: rounds to ±inf.
                5 => sign | 0x7f7f_8000 | (low & 0x7fff),
                6 => sign, // ±0
                _ => (r >> 16) as u32,
            };
            f32::from_bits(bits)
        })
        .collect()
}

/// `n` bf16 values from random bits: every kind, NaNs and subnormals included.
fn random_bf16(n: usize, seed: u64) -> Vec<bf16> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| b(rng.next_u64() as u16)).collect()
}

/// Same bits, or NaN for NaN (an f32 sum's NaN payload is the hardware's choice).
fn assert_same_f32(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: [{i}] {g:e} ({:#010x}) vs {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// Poison the kernels never write: a signalling bf16 NaN (a cast's NaNs are quiet) and an f32
/// whose low 16 bits are set (a widened bf16's are zero).
const BF16_POISON: bf16 = b(0x7fa5);
const F32_POISON: u32 = 0x7fc0_1234;

/// Where a kernel's input and output views start and how long they are.
#[derive(Clone, Copy)]
struct Views {
    n: usize,
    x_at: usize,
    y_at: usize,
}

impl Views {
    fn x(&self) -> std::ops::Range<usize> {
        self.x_at..self.x_at + self.n
    }
    fn y(&self) -> std::ops::Range<usize> {
        self.y_at..self.y_at + self.n
    }
}

/// The whole output buffer (starting as `y0`) after `kernel` ran on the views of `x` and of it,
/// twice for the same bits.
fn run_on_views<X: Element, Y: Element>(
    gpu: &Gpu,
    what: &str,
    (x, y0): (&[X], &[Y]),
    at: Views,
    kernel: impl Fn(&CudaView<X>, &mut CudaViewMut<Y>) -> c2f_kernels::Result<()>,
) -> Vec<Y> {
    let x_d = gpu.upload(x).unwrap();
    let run = || {
        let mut y = gpu.upload(y0).unwrap();
        kernel(&x_d.slice(at.x()), &mut y.slice_mut(at.y())).unwrap();
        gpu.download(&y).unwrap()
    };
    let got = run();
    assert_bit_identical(what, &got, &run());
    got
}

/// The three kernels on views of buffers longer by 16, against the CPU reference: the whole
/// output buffer, so the elements outside the view must keep their poison or values.
fn gpu_matches(gpu: &Gpu, op: &CastGpu, at: Views) {
    let (n, len) = (at.n, at.n + 16);
    let what = |op: &str| format!("{op} n {n} x offset {} y offset {}", at.x_at, at.y_at);

    let x = special_f32(len, n as u64);
    let y0 = vec![BF16_POISON; len];
    let mut want = y0.clone();
    to_bf16_cpu(&x[at.x()], &mut want[at.y()]).unwrap();
    let got = run_on_views(gpu, &what("to bf16"), (&x, &y0), at, |x, y| {
        op.to_bf16(x, y)
    });
    assert_same_bits(&what("to bf16"), &got, &want);

    let x = random_bf16(len, 1 + n as u64);
    let y0 = vec![f32::from_bits(F32_POISON); len];
    let mut want = y0.clone();
    to_f32_cpu(&x[at.x()], &mut want[at.y()]).unwrap();
    let got = run_on_views(gpu, &what("to f32"), (&x, &y0), at, |x, y| op.to_f32(x, y));
    assert_same_bits(&what("to f32"), &got, &want);

    // Onto f32 values of every kind (and sums that overflow).
    let y0 = special_f32(len, 2 + n as u64);
    let mut want = y0.clone();
    accumulate_cpu(&x[at.x()], &mut want[at.y()]).unwrap();
    let got = run_on_views(gpu, &what("accumulate"), (&x, &y0), at, |x, y| {
        op.accumulate(x, y)
    });
    assert_same_f32(&what("accumulate"), &got, &want);
}

#[test]
fn gpu_casts_match_reference_bit_for_bit() {
    let gpu = or_return!(gpu_or_skip("cast gpu_casts_match_reference_bit_for_bit"));
    let op = CastGpu::new(&gpu).unwrap();
    // Lengths below, at and off the vector width of 8; views aligned for the vector path (0,
    // and 8 elements: 16 bytes of bf16), and each side misaligned on its own.
    for n in [1, 7, 8, 1003, (1 << 16) + 5] {
        for (x_at, y_at) in [(0, 0), (8, 8), (1, 0), (0, 3), (5, 5)] {
            gpu_matches(&gpu, &op, Views { n, x_at, y_at });
        }
    }
}

#[test]
fn gpu_length_mismatch_is_an_error() {
    let gpu = or_return!(gpu_or_skip("cast gpu_length_mismatch_is_an_error"));
    let op = CastGpu::new(&gpu).unwrap();
    let wide = gpu.upload(&[1.0f32; 8]).unwrap();
    let narrow = gpu.upload(&[b(0x3f80); 7]).unwrap();
    let mut wide_out = gpu.upload(&[2.0f32; 8]).unwrap();
    let mut narrow_out = gpu.upload(&[BF16_POISON; 7]).unwrap();
    let errors = [
        op.to_bf16(&wide, &mut narrow_out).unwrap_err(),
        op.to_f32(&narrow, &mut wide_out).unwrap_err(),
        op.accumulate(&narrow, &mut wide_out).unwrap_err(),
    ];
    for (err, msg) in errors.iter().zip([
        "cast to bf16 output has 7 elements, expected 8",
        "cast to f32 output has 8 elements, expected 7",
        "bf16 accumulation output has 8 elements, expected 7",
    ]) {
        assert!(err.to_string().contains(msg), "{err}");
    }
    assert_eq!(gpu.download(&wide_out).unwrap(), [2.0; 8]);
    assert_same_bits(
        "bf16 output of a refused call",
        &gpu.download(&narrow_out).unwrap(),
        &[BF16_POISON; 7],
    );
}

/// The bench's cuDNN baseline (`cudnnTransformTensor`) gives the reference's answers: the same
/// bits for the casts, and for the sum within one f32 rounding (its summation order is its
/// own). The emulator has no stand-in for the call, so it is skipped there.
#[test]
fn gpu_cudnn_baseline_matches_reference() {
    let test = "cast gpu_cudnn_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    let n = 4099;
    let cudnn = match CastCudnn::new(&gpu, n) {
        Err(e) if gpu.is_emulator() => {
            println!("{test}: skipped on the emulator: {e}");
            return;
        }
        made => or_return!(library_or_skip(test, made)),
    };
    let wide = SplitMix64(5).uniform_vec(n, -4.0, 4.0);
    let wide: Vec<f32> = wide.iter().map(|&v| v as f32).collect();
    let mut narrow = vec![BF16_POISON; n];
    to_bf16_cpu(&wide, &mut narrow).unwrap();
    let wide_d = gpu.upload(&wide).unwrap();
    let mut narrow_d = gpu.upload(&vec![BF16_POISON; n]).unwrap();
    cudnn.to_bf16(&wide_d, &mut narrow_d).unwrap();
    assert_same_bits(
        "cuDNN cast to bf16",
        &gpu.download(&narrow_d).unwrap(),
        &narrow,
    );

    let mut widened = vec![0.0f32; n];
    to_f32_cpu(&narrow, &mut widened).unwrap();
    let mut out = gpu.upload(&vec![f32::from_bits(F32_POISON); n]).unwrap();
    cudnn.to_f32(&narrow_d, &mut out).unwrap();
    assert_same_bits("cuDNN cast to f32", &gpu.download(&out).unwrap(), &widened);

    let mut sum = wide.clone();
    accumulate_cpu(&narrow, &mut sum).unwrap();
    let mut sum_d = wide_d.clone();
    cudnn.accumulate(&narrow_d, &mut sum_d).unwrap();
    for (i, (g, w)) in gpu.download(&sum_d).unwrap().iter().zip(&sum).enumerate() {
        assert!(
            (g - w).abs() <= w.abs() * f32::EPSILON,
            "cuDNN accumulate [{i}]: {g} vs {w}"
        );
    }
}
