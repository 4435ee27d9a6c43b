//! The batched transpose with a type conversion: the CPU reference against `Layout::convert`
//! (NCHW ↔ NHWC, and back to the start) and against the casts' references, and the kernels
//! against it bit for bit in all four type pairs, assigned and accumulated (odd shapes, each
//! tile kind, a batch past the grid's 65,535, views inside poisoned buffers), with the bench's
//! cuDNN baseline held to the same answers (all skipped without a GPU).

use crate::common::skip::or_return;
use c2f_baselines::transpose::TransposeCudnn;
use c2f_kernels::cast::{accumulate_cpu, to_bf16_cpu, to_f32_cpu};
use c2f_kernels::testing::{
    assert_bit_identical, assert_same_bits, gpu_or_skip, library_or_skip, SplitMix64,
};
use c2f_kernels::transpose::{transpose_cpu, TransposeGpu, TransposeShape};
use c2f_kernels::{Element, Error, Gpu, Layout};
use half::bf16;

/// `n` values of `T` of every kind a conversion must get right: for f32, exact ties below an
/// even and an odd bf16, subnormals, zeros, NaNs (payload in the low bits only too), ±inf and
/// values that round to inf, and random bits; for bf16, random bits (NaNs, signalling ones
/// included, and subnormals among them) with ±inf and ±0 added.
fn values<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            let sign = (r as u32) & 0x8000_0000;
            let low = (r >> 8) as u32;
            if std::mem::size_of::<T>() == 2 {
                let bits = match r % 8 {
                    0 => (sign >> 16) as u16 | 0x7f80,
                    1 => (sign >> 16) as u16,
                    _ => (r >> 16) as u16,
                };
                return bytemuck::cast::<u16, T>(bits);
            }
            let high = (r >> 32) as u32 & 0xffff_0000;
            let bits = match r % 12 {
                0 => high | 0x8000,
                1 => high | 0x8000 | (low & 0x7fff),
                2 => sign | (low & 0x007f_ffff),
                3 => sign | 0x7f80_0000 | (1 + low % 0x7f_ffff),
                4 => sign | 0x7f80_0000,
                5 => sign | 0x7f7f_8000 | (low & 0x7fff),
                6 => sign,
                _ => (r >> 16) as u32,
            };
            bytemuck::cast::<u32, T>(bits)
        })
        .collect()
}

/// Poison the kernels never write by chance: a signalling bf16 NaN, an f32 NaN whose low 16 bits
/// are set (a widened bf16's are zero).
fn poison<T: Element>() -> T {
    if std::mem::size_of::<T>() == 2 {
        bytemuck::cast::<u16, T>(0x7fa5)
    } else {
        bytemuck::cast::<u32, T>(0x7fc0_1234)
    }
}

/// Same bits, or NaN for NaN (a sum's NaN payload is the hardware's choice).
fn assert_same_or_nan<T: Element>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let same = bytemuck::bytes_of(&g) == bytemuck::bytes_of(&w);
        assert!(
            same || (g.to_f32().is_nan() && w.to_f32().is_nan()),
            "{what}: [{i}] is {g:?}, expected {w:?}"
        );
    }
}

/// `(N, C, H·W)` activations and `(K, C, R·S)` weights: odd sides, sides of 1, and shapes past
/// a tile.
const LAYOUT_SHAPES: [(usize, usize, usize); 5] =
    [(2, 3, 5), (1, 7, 49), (3, 33, 65), (2, 1, 9), (4, 16, 1)];

#[test]
fn reference_is_layout_convert_and_undoes_itself() {
    fn check<T: Element>(seed: u64) {
        for (n, c, hw) in LAYOUT_SHAPES {
            let what = format!("{} {n}x{c}x{hw}", T::SUFFIX);
            let nchw = values::<T>(n * c * hw, seed);
            let last = TransposeShape::to_channels_last(n, c, hw);
            let mut nhwc = vec![poison::<T>(); nchw.len()];
            transpose_cpu(&last, &nchw, &mut nhwc, false).unwrap();
            let want = Layout::Nchw.convert(Layout::Nhwc, &nchw, c, hw);
            assert_same_bits(&format!("{what} to NHWC"), &nhwc, &want);

            let first = TransposeShape::to_channels_first(n, c, hw);
            assert_eq!(first, last.inverse());
            let mut back = vec![poison::<T>(); nchw.len()];
            transpose_cpu(&first, &nhwc, &mut back, false).unwrap();
            let want = Layout::Nhwc.convert(Layout::Nchw, &nhwc, c, hw);
            assert_same_bits(&format!("{what} to NCHW"), &back, &want);
            assert_same_bits(&format!("{what} there and back"), &back, &nchw);
        }
    }
    check::<f32>(1);
    check::<bf16>(2);
}

#[test]
fn reference_converts_as_the_casts_do() {
    for (n, c, hw) in LAYOUT_SHAPES {
        let what = format!("{n}x{c}x{hw}");
        let s = TransposeShape::to_channels_last(n, c, hw);
        let moved = |x: &[f32]| Layout::Nchw.convert(Layout::Nhwc, x, c, hw);
        let moved_bf16 = |x: &[bf16]| Layout::Nchw.convert(Layout::Nhwc, x, c, hw);

        let wide = values::<f32>(s.len(), 3);
        let mut want = vec![bf16::ZERO; s.len()];
        to_bf16_cpu(&moved(&wide), &mut want).unwrap();
        let mut got = vec![poison::<bf16>(); s.len()];
        transpose_cpu(&s, &wide, &mut got, false).unwrap();
        assert_same_bits(&format!("{what} f32 to bf16"), &got, &want);

        let narrow = values::<bf16>(s.len(), 4);
        let mut want = vec![0.0f32; s.len()];
        to_f32_cpu(&moved_bf16(&narrow), &mut want).unwrap();
        let mut got = vec![poison::<f32>(); s.len()];
        transpose_cpu(&s, &narrow, &mut got, false).unwrap();
        assert_same_bits(&format!("{what} bf16 to f32"), &got, &want);

        let y0 = values::<f32>(s.len(), 5);
        let mut want = y0.clone();
        accumulate_cpu(&moved_bf16(&narrow), &mut want).unwrap();
        let mut got = y0.clone();
        transpose_cpu(&s, &narrow, &mut got, true).unwrap();
        assert_same_or_nan(&format!("{what} bf16 added into f32"), &got, &want);
    }

    // bf16 into bf16: the sum in f32, rounded once to nearest even.
    let s = TransposeShape::new(1, 1, 3);
    let x = [2f32.powi(-8), 3.0 * 2f32.powi(-8), -1.0].map(bf16::from_f32);
    let mut y = [1.0f32; 3].map(bf16::from_f32);
    transpose_cpu(&s, &x, &mut y, true).unwrap();
    assert_eq!(y.map(|v| v.to_bits()), [0x3f80, 0x3f82, 0x0000]);
    // A same-type copy keeps a signalling NaN's bits; a conversion quiets it.
    let x = [bf16::from_bits(0x7f81)];
    let mut same = [bf16::ZERO];
    let s1 = TransposeShape::new(1, 1, 1);
    transpose_cpu(&s1, &x, &mut same, false).unwrap();
    assert_eq!(same[0].to_bits(), 0x7f81);
    let mut wide = [0.0f32];
    transpose_cpu(&s1, &x, &mut wide, false).unwrap();
    assert_eq!(wide[0].to_bits(), 0x7f81_0000);
}

#[test]
fn reference_refuses_wrong_lengths_and_zero_dimensions() {
    let s = TransposeShape::new(2, 3, 4);
    assert_eq!((s.len(), s.is_empty()), (24, false));
    let x = vec![1.0f32; 24];
    let mut y = vec![0.0f32; 24];
    let errors = [
        transpose_cpu(&s, &x[1..], &mut y, false).unwrap_err(),
        transpose_cpu(&s, &x, &mut y[..23], true).unwrap_err(),
        transpose_cpu(&TransposeShape::new(2, 0, 4), &x[..0], &mut y[..0], false).unwrap_err(),
    ];
    for (err, msg) in errors.iter().zip([
        "transpose input has 23 elements, expected 24",
        "transpose output has 23 elements, expected 24",
        "transpose shape has a zero dimension",
    ]) {
        assert!(err.to_string().contains(msg), "{err}");
    }
}

/// The whole output buffer after the kernel ran on views of `x` and `y0` (each at offset 1 and
/// 2, in buffers 3 elements longer, so the elements outside must keep their values), twice for
/// the same bits; and the CPU reference's.
fn run_both<I: Element, O: Element>(
    gpu: &Gpu,
    op: &TransposeGpu,
    s: &TransposeShape,
    accumulate: bool,
    seed: u64,
) -> (Vec<O>, Vec<O>) {
    let n = s.len();
    let (xs, ys) = (1..1 + n, 2..2 + n);
    let x = values::<I>(n + 3, seed);
    let y0 = if accumulate {
        values::<O>(n + 3, seed + 1)
    } else {
        vec![poison::<O>(); n + 3]
    };
    let mut want = y0.clone();
    transpose_cpu(s, &x[xs.clone()], &mut want[ys.clone()], accumulate).unwrap();
    let x_d = gpu.upload(&x).unwrap();
    let run = || {
        let mut y = gpu.upload(&y0).unwrap();
        op.run(
            s,
            &x_d.slice(xs.clone()),
            &mut y.slice_mut(ys.clone()),
            accumulate,
        )
        .unwrap();
        gpu.download(&y).unwrap()
    };
    let got = run();
    assert_bit_identical(&format!("{s:?}"), &got, &run());
    (got, want)
}

/// The kernel for `I → O` against the reference on `s`: assigned bit for bit, accumulated bit
/// for bit but a NaN sum's payload.
fn gpu_matches<I: Element, O: Element>(gpu: &Gpu, op: &TransposeGpu, s: &TransposeShape) {
    let what = |acc: &str| format!("{} to {} {acc} {s:?}", I::SUFFIX, O::SUFFIX);
    let seed = s.len() as u64;
    let (got, want) = run_both::<I, O>(gpu, op, s, false, seed);
    assert_same_bits(&what("assigned"), &got, &want);
    let (got, want) = run_both::<I, O>(gpu, op, s, true, seed);
    assert_same_or_nan(&what("accumulated"), &got, &want);
}

fn gpu_all_pairs(gpu: &Gpu, op: &TransposeGpu, s: &TransposeShape) {
    gpu_matches::<f32, f32>(gpu, op, s);
    gpu_matches::<bf16, bf16>(gpu, op, s);
    gpu_matches::<f32, bf16>(gpu, op, s);
    gpu_matches::<bf16, f32>(gpu, op, s);
}

#[test]
fn gpu_transposes_match_reference_bit_for_bit() {
    let gpu = or_return!(gpu_or_skip(
        "transpose gpu_transposes_match_reference_bit_for_bit"
    ));
    let op = TransposeGpu::new(&gpu).unwrap();
    // Sides of 1, 3, 7, 49 and off the tiles; flat tiles (few rows: NCHW → NHWC of an image),
    // tall ones (few columns: weights with R·S = 1 or 9), 32×32 ones, and 64×64 ones (a grid of
    // at least 1,024 of them).
    let shapes = [
        (1, 1, 1),
        (3, 1, 7),
        (2, 7, 1),
        (2, 3, 49),
        (2, 49, 3),
        (3, 7, 49),
        (1, 33, 65),
        (2, 65, 33),
        (2, 3, 700),
        (1, 300, 5),
        (2, 17, 300),
        (1, 1, 600),
        (1, 600, 1),
        (1024, 33, 40),
    ];
    for (batch, rows, cols) in shapes {
        gpu_all_pairs(&gpu, &op, &TransposeShape::new(batch, rows, cols));
    }
}

#[test]
fn gpu_batch_past_the_grid_limit() {
    let gpu = or_return!(gpu_or_skip("transpose gpu_batch_past_the_grid_limit"));
    let op = TransposeGpu::new(&gpu).unwrap();
    // More matrices than grid y holds (65,535): the rest go to grid z.
    let s = TransposeShape::new(65_537, 2, 3);
    gpu_matches::<bf16, bf16>(&gpu, &op, &s);
    gpu_matches::<f32, bf16>(&gpu, &op, &s);
}

#[test]
fn gpu_wrong_lengths_shapes_and_types_are_errors() {
    let gpu = or_return!(gpu_or_skip(
        "transpose gpu_wrong_lengths_shapes_and_types_are_errors"
    ));
    let op = TransposeGpu::new(&gpu).unwrap();
    let s = TransposeShape::new(2, 3, 4);
    let x = gpu.upload(&[1.0f32; 24]).unwrap();
    let short = gpu.upload(&[1.0f32; 23]).unwrap();
    let mut y = gpu.upload(&[poison::<bf16>(); 24]).unwrap();
    let mut long = gpu.upload(&[poison::<bf16>(); 25]).unwrap();
    let errors = [
        op.run(&s, &short, &mut y, false).unwrap_err(),
        op.run(&s, &x, &mut long, true).unwrap_err(),
        op.run(&TransposeShape::new(0, 3, 8), &x, &mut y, false)
            .unwrap_err(),
        op.run(&TransposeShape::new(1, 1 << 16, 1 << 15), &x, &mut y, false)
            .unwrap_err(),
    ];
    for (err, msg) in errors.iter().zip([
        "transpose input has 23 elements, expected 24",
        "transpose output has 25 elements, expected 24",
        "transpose shape has a zero dimension",
        "transpose shape too large for 32-bit indexing",
    ]) {
        assert!(err.to_string().contains(msg), "{err}");
    }
    assert_same_bits(
        "output of a refused call",
        &gpu.download(&y).unwrap(),
        &[poison::<bf16>(); 24],
    );

    // A storage type without a kernel: refused by name, not a panic.
    let odd = gpu.upload(&[Odd(0); 24]).unwrap();
    let err = op.run(&s, &odd, &mut y, false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ElementTypes {
                op: "transpose",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("Odd to half::"), "{err}");
}

/// An element type of the crate's trait that no kernel stores.
#[derive(Clone, Copy, Default, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
struct Odd(u16);

// SAFETY: a plain 16-bit value, any bits valid, zero included.
unsafe impl cudarc::driver::DeviceRepr for Odd {}
unsafe impl cudarc::driver::ValidAsZeroBits for Odd {}

impl Element for Odd {
    const SUFFIX: &'static str = "odd";
    fn from_f32(v: f32) -> Self {
        Odd(v as u16)
    }
    fn to_f32(self) -> f32 {
        self.0 as f32
    }
}

/// The bench's cuDNN baseline (`cudnnTransformTensor` from NCHW to NHWC and back) gives the
/// reference's answers: bf16 and f32 moved bit for bit, and f32 weights to bf16 rounded as
/// ours. The emulator has no stand-in for the call, so it is skipped there.
#[test]
fn gpu_cudnn_baseline_matches_reference() {
    let test = "transpose gpu_cudnn_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    let (n, c, hw) = (3, 33, 49);
    fn check<I: Element, O: Element>(gpu: &Gpu, test: &str, (n, c, hw): (usize, usize, usize)) {
        let cudnn = match TransposeCudnn::<I, O>::new(gpu, n, c, hw) {
            Err(e) if gpu.is_emulator() => {
                println!("{test}: skipped on the emulator: {e}");
                return;
            }
            made => or_return!(library_or_skip(test, made)),
        };
        let what = format!("cuDNN {} to {}", I::SUFFIX, O::SUFFIX);
        // Finite values: cuDNN's conversions of NaN are its own.
        let x: Vec<I> = SplitMix64(7)
            .uniform_vec(n * c * hw, -4.0, 4.0)
            .into_iter()
            .map(I::from_f64)
            .collect();
        let x_d = gpu.upload(&x).unwrap();
        for last in [true, false] {
            let s = if last {
                TransposeShape::to_channels_last(n, c, hw)
            } else {
                TransposeShape::to_channels_first(n, c, hw)
            };
            let mut want = vec![poison::<O>(); x.len()];
            transpose_cpu(&s, &x, &mut want, false).unwrap();
            let mut y = gpu.upload(&vec![poison::<O>(); x.len()]).unwrap();
            if last {
                cudnn.to_channels_last(&x_d, &mut y).unwrap();
            } else {
                cudnn.to_channels_first(&x_d, &mut y).unwrap();
            }
            assert_same_bits(&format!("{what} {s:?}"), &gpu.download(&y).unwrap(), &want);
        }
    }
    check::<f32, f32>(&gpu, test, (n, c, hw));
    check::<bf16, bf16>(&gpu, test, (n, c, hw));
    check::<f32, bf16>(&gpu, test, (n, c, hw));
}
