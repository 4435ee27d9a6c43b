//! BAP: the CPU reference against hand-computed values and finite differences (f64), and the
//! CUDA kernels against the f64 reference in f32 and bf16 (skipped without a GPU).

use crate::common::gpu_tests::f32_and_bf16_tests;
use crate::common::skip::or_return;
use c2f_kernels::bap::{
    backward_cpu, forward_bf16_reference, forward_cpu, BapGpu, BapShape, NHWC_MAX_MAPS,
};
use c2f_kernels::testing::{
    assert_bit_identical, bf16_rounding_mismatch, gpu_or_skip, library_or_skip, numeric_gradient,
    rel_error, round_through, widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu, Layout};
use half::bf16;

fn shape(batch: usize, maps: usize, channels: usize, height: usize, width: usize) -> BapShape {
    BapShape {
        batch,
        maps,
        channels,
        height,
        width,
    }
}

/// Non-negative attention (it comes after a ReLU) and signed features.
fn draw_inputs(s: &BapShape, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64(seed);
    (
        rng.uniform_vec(s.attention_len(), 0.0, 1.0),
        rng.uniform_vec(s.features_len(), -1.0, 1.0),
    )
}

fn forward64(s: &BapShape, a: &[f64], f: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut parts = vec![f64::NAN; s.parts_len()];
    let mut norms = vec![f64::NAN; s.batch];
    forward_cpu(s, [a, f], &mut parts, &mut norms).unwrap();
    (parts, norms)
}

fn backward64(s: &BapShape, a: &[f64], f: &[f64], dz: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (parts, norms) = forward64(s, a, f);
    backward64_at(s, a, f, &parts, &norms, dz)
}

/// The f64 backward at given forward outputs. A kernel's backward is checked at its own forward's
/// outputs: the signed square root's slope `1/(2|S|)` makes the gradient ill-conditioned where
/// `P` is near zero, so the f32 rounding of `Z` alone moves the f32 CPU reference's own
/// gradients by 1e-3 relative at 768 channels, which no backward could beat.
fn backward64_at(
    s: &BapShape,
    a: &[f64],
    f: &[f64],
    parts: &[f64],
    norms: &[f64],
    dz: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut da = vec![f64::NAN; s.attention_len()];
    let mut df = vec![f64::NAN; s.features_len()];
    backward_cpu(s, [a, f], (parts, norms), dz, [&mut da, &mut df]).unwrap();
    (da, df)
}

#[test]
fn forward_matches_hand_computed_case() {
    // One sample, 2 maps, 1 channel, 1x2 pixels: A = [[1, 3], [0, 1]], F = [[2, 4]].
    // P = [(1*2 + 3*4)/2, (0*2 + 1*4)/2] = [7, 2]; S = sqrt(P + 1e-12); Z = S / |S|.
    let s = shape(1, 2, 1, 1, 2);
    let (parts, norms) = forward64(&s, &[1.0, 3.0, 0.0, 1.0], &[2.0, 4.0]);
    let s7 = (7.0f64 + 1e-12).sqrt();
    let s2 = (2.0f64 + 1e-12).sqrt();
    let norm = (s7 * s7 + s2 * s2).sqrt();
    assert!(
        (norms[0] - norm).abs() < 1e-12,
        "norm {} vs {norm}",
        norms[0]
    );
    assert!((parts[0] - s7 / norm).abs() < 1e-12);
    assert!((parts[1] - s2 / norm).abs() < 1e-12);
}

#[test]
fn forward_signed_sqrt_keeps_sign_and_zero() {
    // Channel 0 pools to -3, channel 1 to exactly 0: S = [-sqrt(3), 0].
    let s = shape(1, 1, 2, 1, 1);
    let (parts, norms) = forward64(&s, &[1.0], &[-3.0, 0.0]);
    let s3 = (3.0f64 + 1e-12).sqrt();
    assert!((norms[0] - s3).abs() < 1e-12);
    assert_eq!(parts[0], -1.0);
    assert_eq!(parts[1], 0.0);
}

#[test]
fn forward_output_is_unit_norm_per_sample() {
    let s = shape(3, 4, 5, 3, 2);
    let (a, f) = draw_inputs(&s, 1);
    let (parts, _) = forward64(&s, &a, &f);
    for z in parts.chunks(s.part_len()) {
        let norm: f64 = z.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-12, "sample norm {norm}");
    }
}

#[test]
fn backward_matches_finite_differences() {
    let s = shape(2, 3, 4, 2, 3);
    let (a, f) = draw_inputs(&s, 2);
    let dz = SplitMix64(3).uniform_vec(s.parts_len(), -1.0, 1.0);
    let loss = |a: &[f64], f: &[f64]| -> f64 {
        let (parts, _) = forward64(&s, a, f);
        parts.iter().zip(&dz).map(|(p, d)| p * d).sum()
    };
    let (da, df) = backward64(&s, &a, &f, &dz);
    let num_da = numeric_gradient(|x| loss(x, &f), &a, 1e-6);
    let num_df = numeric_gradient(|x| loss(&a, x), &f, 1e-6);
    let (ea, ef) = (rel_error(&da, &num_da), rel_error(&df, &num_df));
    assert!(ea < 1e-6, "dA relative error {ea}");
    assert!(ef < 1e-6, "dF relative error {ef}");
}

#[test]
fn f32_reference_matches_f64() {
    let s = shape(2, 8, 24, 5, 5);
    let (a, f) = draw_inputs(&s, 4);
    let (parts64, _) = forward64(&s, &a, &f);
    let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let f32v: Vec<f32> = f.iter().map(|&v| v as f32).collect();
    let mut parts = vec![f32::NAN; s.parts_len()];
    let mut norms = vec![f32::NAN; s.batch];
    forward_cpu(&s, [&a32, &f32v], &mut parts, &mut norms).unwrap();
    let e = rel_error(&widen(&parts), &parts64);
    assert!(e < 1e-5, "f32 CPU forward relative error {e}");
}

#[test]
fn wrong_buffer_length_is_a_clear_error() {
    let s = shape(1, 2, 3, 2, 2);
    let mut parts = vec![0.0f32; s.parts_len()];
    let mut norms = vec![0.0f32; 1];
    let err = forward_cpu(&s, [&[1.0f32; 7], &[1.0f32; 12]], &mut parts, &mut norms).unwrap_err();
    assert!(
        err.to_string()
            .contains("BAP attention has 7 elements, expected 8"),
        "{err}"
    );
}

/// `[parts, d_attention, d_features]` and the norms from the GPU in `bap`'s layout, `A` and `F`
/// (and the gradients) given and returned in NCHW; every output poisoned first. The backward
/// reads `saved` (parts, norms) when given, else the forward's own.
fn gpu_run<T: Element>(
    gpu: &Gpu,
    bap: &mut BapGpu<T>,
    [a, f, dz]: [&[T]; 3],
    saved: Option<(&[T], &[f32])>,
) -> ([Vec<T>; 3], Vec<f32>) {
    let (s, layout) = (*bap.shape(), bap.layout());
    let hw = s.hw();
    let a_d = gpu
        .upload(&Layout::Nchw.convert(layout, a, s.maps, hw))
        .unwrap();
    let f_d = gpu
        .upload(&Layout::Nchw.convert(layout, f, s.channels, hw))
        .unwrap();
    let dz_d = gpu.upload(dz).unwrap();
    let mut parts = gpu.alloc_poisoned::<T>(s.parts_len()).unwrap();
    let mut norms = gpu.alloc_poisoned::<f32>(s.batch).unwrap();
    let mut da = gpu.alloc_poisoned::<T>(s.attention_len()).unwrap();
    let mut df = gpu.alloc_poisoned::<T>(s.features_len()).unwrap();
    bap.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
    let (parts_out, norms_out) = (gpu.download(&parts).unwrap(), gpu.download(&norms).unwrap());
    if let Some((p, n)) = saved {
        parts = gpu.upload(p).unwrap();
        norms = gpu.upload(n).unwrap();
    }
    bap.backward([&a_d, &f_d], (&parts, &norms), &dz_d, [&mut da, &mut df])
        .unwrap();
    let da = layout.convert(Layout::Nchw, &gpu.download(&da).unwrap(), s.maps, hw);
    let df = layout.convert(Layout::Nchw, &gpu.download(&df).unwrap(), s.channels, hw);
    ([parts_out, da, df], norms_out)
}

/// Runs forward and backward on the GPU in `T` and `layout` and checks both against the f64
/// reference computed from the same rounded inputs; also checks that a second run gives the same
/// bits.
fn gpu_matches_reference<T: Element>(gpu: &Gpu, (s, layout): (BapShape, Layout), tol: f64) {
    let (a, f) = draw_inputs(&s, 5);
    let dz = SplitMix64(6).uniform_vec(s.parts_len(), -1.0, 1.0);
    let (a_t, a64) = round_through::<T>(&a);
    let (f_t, f64v) = round_through::<T>(&f);
    let (dz_t, dz64) = round_through::<T>(&dz);
    let (ref_parts, ref_norms) = forward64(&s, &a64, &f64v);

    let mut bap = BapGpu::<T>::with_layout(gpu, s, layout).unwrap();
    let inputs = [&a_t[..], &f_t[..], &dz_t[..]];
    let ([parts, da, df], norms) = gpu_run(gpu, &mut bap, inputs, None);
    let (ref_da, ref_df) = backward64_at(&s, &a64, &f64v, &widen(&parts), &widen(&norms), &dz64);
    let name = format!("BAP {} {layout:?} {s:?}", T::SUFFIX);
    for (what, out, reference) in [
        ("parts", widen(&parts), &ref_parts),
        ("norms", widen(&norms), &ref_norms),
        ("d_attention", widen(&da), &ref_da),
        ("d_features", widen(&df), &ref_df),
    ] {
        let e = rel_error(&out, reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    let ([parts2, da2, df2], norms2) = gpu_run(gpu, &mut bap, inputs, None);
    assert_bit_identical(&format!("{name} parts"), &parts, &parts2);
    assert_bit_identical(&format!("{name} norms"), &norms, &norms2);
    assert_bit_identical(&format!("{name} d_attention"), &da, &da2);
    assert_bit_identical(&format!("{name} d_features"), &df, &df2);
}

/// Shapes that hit partial tiles in every dimension, more than 32 maps (two map passes of the
/// backward, five of the forward), more HW positions than the forward's shared chunk (676 > 512),
/// and the benchmark's map counts at 768 channels.
fn gpu_shapes() -> Vec<BapShape> {
    vec![
        shape(3, 5, 70, 7, 9),
        shape(2, 40, 130, 5, 5),
        shape(2, 8, 100, 26, 26),
        shape(4, 32, 768, 17, 17),
    ]
}

/// The NHWC kernels' cases: [`gpu_shapes`]' with at most 32 maps, and partial channel pairs (odd
/// N), partial 64- and 256-channel tiles, 8 and 32 maps held with some unused, pixels over
/// several 32-pixel chunks and 96-pixel blocks, and the benchmark's M = 8 at 768 channels.
fn gpu_nhwc_shapes() -> Vec<BapShape> {
    let extra = [
        shape(2, 3, 33, 3, 3),
        shape(2, 17, 301, 5, 5),
        shape(2, 8, 768, 17, 17),
    ];
    let held = gpu_shapes().into_iter().filter(|s| s.maps <= NHWC_MAX_MAPS);
    held.chain(extra).collect()
}

fn with_layout(shapes: Vec<BapShape>, layout: Layout) -> Vec<(BapShape, Layout)> {
    shapes.into_iter().map(|s| (s, layout)).collect()
}

f32_and_bf16_tests!("bap", gpu_f32_matches_reference, gpu_bf16_matches_reference,
    each of with_layout(gpu_shapes(), Layout::Nchw) => gpu_matches_reference);

f32_and_bf16_tests!("bap", gpu_nhwc_f32_matches_reference, gpu_nhwc_bf16_matches_reference,
    each of with_layout(gpu_nhwc_shapes(), Layout::Nhwc) => gpu_matches_reference);

/// NHWC against NCHW on the GPU, on the same (transposed) data. The forward and `dA` sum in other
/// trees (pixel slots, not lanes; channel tiles), so they agree to f32 rounding: 1e-6 relative,
/// against 1e-5 for either to f64. `dF` sums over the maps in NCHW's order: from the same parts
/// and norms (NCHW's, given to both backwards) it is the same bits.
#[test]
fn gpu_nhwc_f32_matches_nchw() {
    let gpu = or_return!(gpu_or_skip("bap gpu_nhwc_f32_matches_nchw"));
    for s in gpu_nhwc_shapes() {
        let (a, f) = draw_inputs(&s, 9);
        let dz = SplitMix64(10).uniform_vec(s.parts_len(), -1.0, 1.0);
        let [a, f, dz] = [&a, &f, &dz].map(|v| round_through::<f32>(v).0);
        let inputs = [&a[..], &f[..], &dz[..]];
        let mut nchw_op = BapGpu::<f32>::new(&gpu, s).unwrap();
        let ([parts, da, df], norms) = gpu_run(&gpu, &mut nchw_op, inputs, None);
        let mut nhwc_op = BapGpu::<f32>::with_layout(&gpu, s, Layout::Nhwc).unwrap();
        let saved = Some((&parts[..], &norms[..]));
        let ([parts_l, da_l, df_l], norms_l) = gpu_run(&gpu, &mut nhwc_op, inputs, saved);
        let name = format!("BAP f32 NHWC vs NCHW {s:?}");
        for (what, got, want) in [
            ("parts", widen(&parts_l), widen(&parts)),
            ("norms", widen(&norms_l), widen(&norms)),
            ("d_attention", widen(&da_l), widen(&da)),
        ] {
            let e = rel_error(&got, &want);
            assert!(e < 1e-6, "{name}: {what} relative error {e}");
        }
        assert_bit_identical(&format!("{name} d_features"), &df_l, &df);
    }
}

/// The bf16 NHWC kernels against the bf16 reference (the module doc's rounding points:
/// `forward_bf16_reference`, and the f32 backward on the widened bf16 values, its outputs
/// rounded once), within [`bf16_rounding_mismatch`]'s bound. A forward reference that rounds `Z`
/// only once (not `S` first) fails it.
#[test]
fn gpu_nhwc_bf16_rounds_as_reference() {
    let gpu = or_return!(gpu_or_skip("bap gpu_nhwc_bf16_rounds_as_reference"));
    let widen32 = |v: &[bf16]| -> Vec<f32> { v.iter().map(|v| v.to_f32()).collect() };
    let to_bf16 = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&v| bf16::from_f32(v)).collect() };
    for s in [shape(4, 32, 768, 17, 17), shape(3, 8, 200, 9, 11)] {
        let (a, f) = draw_inputs(&s, 12);
        let dz = SplitMix64(13).uniform_vec(s.parts_len(), -1.0, 1.0);
        let [a, f, dz] = [&a, &f, &dz].map(|v| round_through::<bf16>(v).0);
        let mut op = BapGpu::<bf16>::with_layout(&gpu, s, Layout::Nhwc).unwrap();
        let ([parts, da, df], norms) = gpu_run(&gpu, &mut op, [&a, &f, &dz], None);
        let name = format!("bf16 NHWC BAP {s:?}");
        let nhwc = (Layout::Nhwc, s);
        let to_nhwc = |v: &[bf16], c| Layout::Nchw.convert(Layout::Nhwc, v, c, s.hw());
        let (a_l, f_l) = (to_nhwc(&a, s.maps), to_nhwc(&f, s.channels));
        let mut want_parts = vec![bf16::NAN; s.parts_len()];
        let mut want_norms = vec![f32::NAN; s.batch];
        forward_bf16_reference(&nhwc, [&a_l, &f_l], &mut want_parts, &mut want_norms).unwrap();
        if let Some(why) = bf16_rounding_mismatch(&parts, &want_parts) {
            panic!("{name} parts: {why}");
        }
        // The norms are f32 outputs (sums of M·N squares), so they are held to the f32 kernels'
        // bound against the f64 norms of the same bf16 inputs: the f32 reference's own sequential
        // sum drifts by about u·sqrt(M·N/3) (5e-6 of the squares' sum at M·N = 24576), more than
        // the kernel's tree.
        let (_, norms64) = forward64(&s, &widen(&a), &widen(&f));
        let e = rel_error(&widen(&norms), &norms64);
        assert!(e < 1e-5, "{name}: norms relative error {e} to f64");
        let (mut want_da, mut want_df) = (
            vec![f32::NAN; s.attention_len()],
            vec![f32::NAN; s.features_len()],
        );
        let (a32, f32v) = (widen32(&a_l), widen32(&f_l));
        let parts32 = widen32(&parts);
        let saved = (&parts32[..], &norms[..]);
        backward_cpu(
            &nhwc,
            [&a32, &f32v],
            saved,
            &widen32(&dz),
            [&mut want_da, &mut want_df],
        )
        .unwrap();
        let to_nchw = |v: &[f32], c| Layout::Nhwc.convert(Layout::Nchw, v, c, s.hw());
        for (what, got, want) in [
            ("d_attention", &da, to_bf16(&to_nchw(&want_da, s.maps))),
            ("d_features", &df, to_bf16(&to_nchw(&want_df, s.channels))),
        ] {
            if let Some(why) = bf16_rounding_mismatch(got, &want) {
                panic!("{name} {what}: {why}");
            }
        }
        // The mutant: the f32 forward with Z rounded once.
        let mut mutant = vec![f32::NAN; s.parts_len()];
        let mut mutant_norms = vec![f32::NAN; s.batch];
        forward_cpu(&nhwc, [&a32, &f32v], &mut mutant, &mut mutant_norms).unwrap();
        assert!(
            bf16_rounding_mismatch(&parts, &to_bf16(&mutant)).is_some(),
            "{name}: the check passes a reference that does not round S before normalising"
        );
    }
}

/// The NHWC CPU reference is the NCHW one on the transposed data, exactly (f64), forward and
/// backward.
#[test]
fn nhwc_reference_is_nchw_on_transposed_data() {
    let s = shape(2, 3, 5, 4, 3);
    let (a, f) = draw_inputs(&s, 14);
    let dz = SplitMix64(15).uniform_vec(s.parts_len(), -1.0, 1.0);
    let (parts, norms) = forward64(&s, &a, &f);
    let (da, df) = backward64_at(&s, &a, &f, &parts, &norms, &dz);
    let to_nhwc = |v: &[f64], c| Layout::Nchw.convert(Layout::Nhwc, v, c, s.hw());
    let (a_l, f_l) = (to_nhwc(&a, s.maps), to_nhwc(&f, s.channels));
    let nhwc = (Layout::Nhwc, s);
    let mut parts_l = vec![f64::NAN; s.parts_len()];
    let mut norms_l = vec![f64::NAN; s.batch];
    forward_cpu(&nhwc, [&a_l, &f_l], &mut parts_l, &mut norms_l).unwrap();
    assert_eq!((&parts_l, &norms_l), (&parts, &norms));
    let mut da_l = vec![f64::NAN; s.attention_len()];
    let mut df_l = vec![f64::NAN; s.features_len()];
    let saved = (&parts[..], &norms[..]);
    backward_cpu(&nhwc, [&a_l, &f_l], saved, &dz, [&mut da_l, &mut df_l]).unwrap();
    assert_eq!(da_l, to_nhwc(&da, s.maps));
    assert_eq!(df_l, to_nhwc(&df, s.channels));
}

/// The NHWC kernels hold at most 32 maps: more is a typed error naming the count.
#[test]
fn gpu_nhwc_rejects_more_than_32_maps() {
    let gpu = or_return!(gpu_or_skip("bap gpu_nhwc_rejects_more_than_32_maps"));
    let err = BapGpu::<f32>::with_layout(&gpu, shape(2, 33, 16, 3, 3), Layout::Nhwc)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("BAP maps 33 above the 32"),
        "{err}"
    );
}

/// The cuBLAS baseline the benchmark compares against must compute the same thing, or the
/// speed-up means nothing.
fn baseline_matches_fused<T: Element>(gpu: &Gpu, s: BapShape, tol: f64)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    use c2f_baselines::bap::BapCublas;
    let (a, f) = draw_inputs(&s, 7);
    let dz = SplitMix64(8).uniform_vec(s.parts_len(), -1.0, 1.0);
    let (a_t, a64) = round_through::<T>(&a);
    let (f_t, f64v) = round_through::<T>(&f);
    let (dz_t, dz64) = round_through::<T>(&dz);
    let (ref_parts, _) = forward64(&s, &a64, &f64v);
    let test = "bap gpu_cublas_baseline_matches_reference";
    let made = BapCublas::<T>::new(gpu, s);
    let mut blas = or_return!(library_or_skip(test, made));
    let a_d = gpu.upload(&a_t).unwrap();
    let f_d = gpu.upload(&f_t).unwrap();
    let dz_d = gpu.upload(&dz_t).unwrap();
    let mut parts = gpu.alloc_poisoned::<T>(s.parts_len()).unwrap();
    let mut norms = gpu.alloc_poisoned::<f32>(s.batch).unwrap();
    let mut da = gpu.alloc_poisoned::<T>(s.attention_len()).unwrap();
    let mut df = gpu.alloc_poisoned::<T>(s.features_len()).unwrap();
    blas.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
    blas.backward([&a_d, &f_d], (&parts, &norms), &dz_d, [&mut da, &mut df])
        .unwrap();
    let name = format!("BAP cuBLAS baseline {} {s:?}", T::SUFFIX);
    let parts = widen(&gpu.download(&parts).unwrap());
    let norms = widen(&gpu.download(&norms).unwrap());
    let (ref_da, ref_df) = backward64_at(&s, &a64, &f64v, &parts, &norms, &dz64);
    for (what, out, reference) in [
        ("parts", parts, &ref_parts),
        ("d_attention", widen(&gpu.download(&da).unwrap()), &ref_da),
        ("d_features", widen(&gpu.download(&df).unwrap()), &ref_df),
    ] {
        let e = rel_error(&out, reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
}

#[test]
fn gpu_cublas_baseline_matches_reference() {
    let gpu = or_return!(gpu_or_skip("bap gpu_cublas_baseline_matches_reference"));
    // cuBLAS may use TF32 or reorder sums, and the bf16 baseline rounds P and G to bf16 too.
    for s in gpu_shapes() {
        baseline_matches_fused::<f32>(&gpu, s, 1e-4);
        baseline_matches_fused::<half::bf16>(&gpu, s, 3e-2);
    }
}
