//! ConvTranspose2d: the CPU reference against hand-computed values and finite differences (f64),
//! the CUDA kernels against the f64 reference in f32 and bf16, and cuDNN against our forward
//! (the GPU tests are skipped without a GPU).

use crate::common::gpu_tests::f32_and_bf16_tests;
use crate::common::skip::or_return;
use c2f_baselines::conv_transpose::CudnnConvTranspose;
use c2f_kernels::conv_transpose::{
    backward_cpu, forward_cpu, ConvTransposeGpu, ConvTransposeParams,
};
use c2f_kernels::testing::{
    assert_bit_identical, gpu_or_skip, library_or_skip, numeric_gradient, rel_error, round_through,
    widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu};

#[allow(clippy::too_many_arguments)]
fn params(
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> ConvTransposeParams {
    ConvTransposeParams {
        batch,
        in_channels,
        out_channels,
        height,
        width,
        kernel_size,
        stride,
        padding,
        output_padding,
    }
}

/// x, weight, bias and an upstream gradient dy, all uniform in [-1, 1).
struct Inputs {
    x: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    dy: Vec<f64>,
}

fn draw_inputs(p: &ConvTransposeParams, seed: u64) -> Inputs {
    let mut rng = SplitMix64(seed);
    Inputs {
        x: rng.uniform_vec(p.input_len(), -1.0, 1.0),
        weight: rng.uniform_vec(p.weight_len(), -1.0, 1.0),
        bias: rng.uniform_vec(p.out_channels, -1.0, 1.0),
        dy: rng.uniform_vec(p.output_len(), -1.0, 1.0),
    }
}

fn forward64(p: &ConvTransposeParams, x: &[f64], w: &[f64], bias: &[f64]) -> Vec<f64> {
    let mut y = vec![f64::NAN; p.output_len()];
    forward_cpu(p, x, [w, bias], &mut y).unwrap();
    y
}

/// `(dx, d_weight, d_bias)` with the parameter gradients accumulated onto zeros.
fn backward64(
    p: &ConvTransposeParams,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![f64::NAN; p.input_len()];
    let mut dw = vec![0.0; p.weight_len()];
    let mut db = vec![0.0; p.out_channels];
    backward_cpu(p, [x, dy], w, &mut dx, [&mut dw, &mut db]).unwrap();
    (dx, dw, db)
}

fn assert_close(what: &str, out: &[f64], expected: &[f64]) {
    assert_eq!(out.len(), expected.len(), "{what}: length");
    for (i, (o, e)) in out.iter().zip(expected).enumerate() {
        assert!((o - e).abs() < 1e-12, "{what}[{i}] = {o}, expected {e}");
    }
}

#[test]
fn forward_matches_hand_computed_stride_two_kernel_two() {
    // Each input pixel stamps x·w onto its own 2x2 block of the 4x4 output, plus the bias.
    let p = params(1, 1, 1, 2, 2, 2, 2, 0, 0);
    let y = forward64(
        &p,
        &[1.0, 2.0, 3.0, 4.0],
        &[1.0, 10.0, 100.0, 1000.0],
        &[0.5],
    );
    #[rustfmt::skip]
    let expected = [
        1.0, 10.0, 2.0, 20.0,
        100.0, 1000.0, 200.0, 2000.0,
        3.0, 30.0, 4.0, 40.0,
        300.0, 3000.0, 400.0, 4000.0,
    ]
    .map(|v| v + 0.5);
    assert_eq!((p.out_height(), p.out_width()), (4, 4));
    assert_close("y", &y, &expected);
}

#[test]
fn forward_matches_hand_computed_padding_and_output_padding() {
    // k=3, stride 2, padding 1, output_padding 1: Hout = (2-1)*2 - 2 + 3 + 1 = 4. Without padding
    // the 5x5 "full" output is the sum of x[i,j]·w stamped at (2i, 2j); padding 1 crops its first
    // row and column, and output_padding adds one more row and column at the end (here the full
    // output's last row and column, so nothing is zero).
    let p = params(1, 1, 1, 2, 2, 3, 2, 1, 1);
    let w: Vec<f64> = (1..=9).map(f64::from).collect();
    let y = forward64(&p, &[1.0, 2.0, 3.0, 4.0], &w, &[0.25]);
    #[rustfmt::skip]
    let expected = [
        5.0, 14.0, 10.0, 12.0,
        14.0, 36.0, 24.0, 30.0,
        15.0, 34.0, 20.0, 24.0,
        24.0, 55.0, 32.0, 36.0,
    ]
    .map(|v| v + 0.25);
    assert_eq!((p.out_height(), p.out_width()), (4, 4));
    assert_close("y", &y, &expected);
}

#[test]
fn forward_sums_input_channels_per_output_channel() {
    // 2 input channels, 2 output channels, 1x1 input, k=1: y[co] = bias[co] + Σ_ci x[ci] w[ci,co].
    let p = params(1, 2, 2, 1, 1, 1, 1, 0, 0);
    let y = forward64(&p, &[2.0, 3.0], &[1.0, 10.0, 100.0, 1000.0], &[0.5, -0.5]);
    assert_close("y", &y, &[2.0 + 300.0 + 0.5, 20.0 + 3000.0 - 0.5]);
}

#[test]
fn forward_matches_direct_sum() {
    // y[b,co,oy,ox] = bias[co] + Σ over (ci, ky, kx) with oy = iy·s − p + ky for an integer
    // iy in range (and the same for x), written here as the plain definition.
    for &(k, s, pad, op) in &COMBOS {
        let p = params(2, 3, 4, 5, 3, k, s, pad, op);
        let inp = draw_inputs(&p, 60);
        let y = forward64(&p, &inp.x, &inp.weight, &inp.bias);
        let (ho, wo) = (p.out_height(), p.out_width());
        let (h, w) = (p.height as i64, p.width as i64);
        let mut expected = Vec::with_capacity(p.output_len());
        for b in 0..p.batch {
            for co in 0..p.out_channels {
                for oy in 0..ho as i64 {
                    for ox in 0..wo as i64 {
                        let mut sum = inp.bias[co];
                        for ci in 0..p.in_channels {
                            for ky in 0..k as i64 {
                                for kx in 0..k as i64 {
                                    let (ny, nx) = (oy + pad as i64 - ky, ox + pad as i64 - kx);
                                    let (iy, ix) = (ny / s as i64, nx / s as i64);
                                    let on_grid = ny % s as i64 == 0 && nx % s as i64 == 0;
                                    if !on_grid || ny < 0 || nx < 0 || iy >= h || ix >= w {
                                        continue;
                                    }
                                    let xi = ((b * p.in_channels + ci) as i64 * h + iy) * w + ix;
                                    let wi = ((ci * p.out_channels + co) * k * k) as i64
                                        + ky * k as i64
                                        + kx;
                                    sum += inp.x[xi as usize] * inp.weight[wi as usize];
                                }
                            }
                        }
                        expected.push(sum);
                    }
                }
            }
        }
        let e = rel_error(&y, &expected);
        assert!(e < 1e-14, "{p:?}: forward vs direct sum relative error {e}");
    }
}

/// (k, stride, padding, output_padding) combinations the finite-difference test covers.
const COMBOS: [(usize, usize, usize, usize); 7] = [
    (2, 2, 0, 0),
    (3, 2, 1, 1),
    (4, 2, 1, 0),
    (3, 1, 1, 0),
    (5, 3, 2, 2),
    (1, 1, 0, 0),
    (4, 3, 0, 1),
];

#[test]
fn backward_matches_finite_differences() {
    for (i, &(k, s, pad, op)) in COMBOS.iter().enumerate() {
        for &(ci, co) in &[(1, 1), (3, 2), (2, 3)] {
            let p = params(2, ci, co, 3, 4, k, s, pad, op);
            let inp = draw_inputs(&p, 10 + i as u64);
            let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
                let y = forward64(&p, x, w, b);
                y.iter().zip(&inp.dy).map(|(y, g)| y * g).sum()
            };
            let (dx, dw, db) = backward64(&p, &inp.x, &inp.weight, &inp.dy);
            let num_dx = numeric_gradient(|v| loss(v, &inp.weight, &inp.bias), &inp.x, 1e-6);
            let num_dw = numeric_gradient(|v| loss(&inp.x, v, &inp.bias), &inp.weight, 1e-6);
            let num_db = numeric_gradient(|v| loss(&inp.x, &inp.weight, v), &inp.bias, 1e-6);
            for (what, analytic, numeric) in [
                ("dx", &dx, &num_dx),
                ("d_weight", &dw, &num_dw),
                ("d_bias", &db, &num_db),
            ] {
                let e = rel_error(analytic, numeric);
                assert!(e < 1e-7, "{p:?}: {what} relative error {e}");
            }
        }
    }
}

#[test]
fn backward_assigns_dx_and_accumulates_parameter_gradients() {
    let p = params(2, 3, 4, 5, 4, 4, 2, 1, 1);
    let inp = draw_inputs(&p, 20);
    let (dx1, dw1, db1) = backward64(&p, &inp.x, &inp.weight, &inp.dy);
    let mut dx = SplitMix64(21).uniform_vec(p.input_len(), -1.0, 1.0);
    let mut dw = vec![0.0; p.weight_len()];
    let mut db = vec![0.0; p.out_channels];
    for _ in 0..2 {
        let grads = [&mut dw[..], &mut db];
        backward_cpu(&p, [&inp.x, &inp.dy], &inp.weight, &mut dx, grads).unwrap();
    }
    assert_close("dx after two calls", &dx, &dx1);
    let twice = |v: &[f64]| v.iter().map(|a| 2.0 * a).collect::<Vec<_>>();
    assert!(rel_error(&dw, &twice(&dw1)) < 1e-14, "d_weight not doubled");
    assert!(rel_error(&db, &twice(&db1)) < 1e-14, "d_bias not doubled");
}

#[test]
fn f32_reference_matches_f64() {
    let p = params(2, 8, 8, 9, 9, 4, 2, 1, 0);
    let inp = draw_inputs(&p, 30);
    let y64 = forward64(&p, &inp.x, &inp.weight, &inp.bias);
    let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let mut y = vec![f32::NAN; p.output_len()];
    let params32 = [&to32(&inp.weight)[..], &to32(&inp.bias)];
    forward_cpu(&p, &to32(&inp.x), params32, &mut y).unwrap();
    let e = rel_error(&widen(&y), &y64);
    assert!(e < 1e-5, "f32 CPU forward relative error {e}");
}

#[test]
fn invalid_parameters_are_clear_errors() {
    let cases = [
        (
            params(1, 1, 1, 4, 4, 3, 2, 0, 2),
            "output_padding 2 must be smaller than stride 2",
        ),
        (
            params(1, 1, 1, 4, 4, 3, 1, 0, 1),
            "output_padding 1 must be smaller than stride 1",
        ),
        (params(1, 1, 1, 4, 4, 3, 0, 0, 0), "stride must be positive"),
        (
            params(1, 1, 1, 4, 4, 0, 1, 0, 0),
            "kernel_size must be positive",
        ),
        (
            params(1, 0, 1, 4, 4, 3, 1, 0, 0),
            "in_channels must be positive",
        ),
        (params(0, 1, 1, 4, 4, 3, 1, 0, 0), "batch must be positive"),
        // (1-1)*1 - 2*1 + 2 + 0 = 0 rows.
        (
            params(1, 1, 1, 1, 5, 2, 1, 1, 0),
            "output height (1 - 1)*1 - 2*1 + 2 + 0 = 0",
        ),
        (
            params(1, 1, 1, 9, 1, 2, 1, 3, 0),
            "output width (1 - 1)*1 - 2*3 + 2 + 0 = -4",
        ),
    ];
    for (p, message) in cases {
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains(message), "{p:?}: `{err}` lacks `{message}`");
        let mut y = vec![0.0f32; p.output_len()];
        let err = forward_cpu(&p, &[], [&[], &[]], &mut y)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(message),
            "forward_cpu: `{err}` lacks `{message}`"
        );
    }
}

#[test]
fn wrong_buffer_length_is_a_clear_error() {
    let p = params(1, 2, 3, 2, 2, 2, 2, 0, 0);
    let mut y = vec![0.0f32; p.output_len()];
    let err = forward_cpu(&p, &[1.0f32; 7], [&[1.0; 24], &[0.0; 3]], &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("ConvTranspose2d x has 7 elements, expected 8"),
        "{err}"
    );
}

/// Runs forward and backward on the GPU in `T` and checks y, dx, d_weight and d_bias against the
/// f64 reference on the same rounded inputs. Outputs start as NaN; the parameter gradients start
/// from random values, and what the kernels added is compared. A second run must give the
/// same bits.
fn gpu_matches_reference<T: Element>(gpu: &Gpu, p: ConvTransposeParams, tol: f64) {
    let inp = draw_inputs(&p, 40);
    let (x_t, x64) = round_through::<T>(&inp.x);
    let (dy_t, dy64) = round_through::<T>(&inp.dy);
    // Parameters are f32 on the GPU whatever T is.
    let (w32, w64) = round_through::<f32>(&inp.weight);
    let (b32, b64) = round_through::<f32>(&inp.bias);
    let ref_y = forward64(&p, &x64, &w64, &b64);
    let (ref_dx, ref_dw, ref_db) = backward64(&p, &x64, &w64, &dy64);
    let mut rng = SplitMix64(41);
    let (dw0, dw0_64) = round_through::<f32>(&rng.uniform_vec(p.weight_len(), -1.0, 1.0));
    let (db0, db0_64) = round_through::<f32>(&rng.uniform_vec(p.out_channels, -1.0, 1.0));

    let mut conv = ConvTransposeGpu::<T>::new(gpu, p).unwrap();
    let x_d = gpu.upload(&x_t).unwrap();
    let dy_d = gpu.upload(&dy_t).unwrap();
    let w_d = gpu.upload(&w32).unwrap();
    let b_d = gpu.upload(&b32).unwrap();
    let run = |conv: &mut ConvTransposeGpu<T>| {
        let mut y = gpu.alloc_poisoned::<T>(p.output_len()).unwrap();
        let mut dx = gpu.alloc_poisoned::<T>(p.input_len()).unwrap();
        let mut dw = gpu.upload(&dw0).unwrap();
        let mut db = gpu.upload(&db0).unwrap();
        conv.forward(&x_d, [&w_d, &b_d], &mut y).unwrap();
        conv.backward([&x_d, &dy_d], &w_d, &mut dx, [&mut dw, &mut db])
            .unwrap();
        (
            gpu.download(&y).unwrap(),
            gpu.download(&dx).unwrap(),
            gpu.download(&dw).unwrap(),
            gpu.download(&db).unwrap(),
        )
    };
    let (y, dx, dw, db) = run(&mut conv);
    let added = |out: &[f32], start: &[f64]| -> Vec<f64> {
        out.iter().zip(start).map(|(&o, s)| o as f64 - s).collect()
    };
    let name = format!("ConvTranspose2d {} {p:?}", T::SUFFIX);
    for (what, out, reference) in [
        ("y", widen(&y), &ref_y),
        ("dx", widen(&dx), &ref_dx),
        ("d_weight (added)", added(&dw, &dw0_64), &ref_dw),
        ("d_bias (added)", added(&db, &db0_64), &ref_db),
    ] {
        let e = rel_error(&out, reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    let (y2, dx2, dw2, db2) = run(&mut conv);
    assert_bit_identical(&format!("{name} y"), &y, &y2);
    assert_bit_identical(&format!("{name} dx"), &dx, &dx2);
    assert_bit_identical(&format!("{name} d_weight"), &dw, &dw2);
    assert_bit_identical(&format!("{name} d_bias"), &db, &db2);
}

/// Up-sampler layers, odd strides and paddings, channel counts past one tile, a large kernel, and
/// enough tiles that the weight gradient's chunks hold several each.
fn gpu_shapes() -> Vec<ConvTransposeParams> {
    vec![
        params(4, 8, 8, 17, 17, 4, 2, 1, 0),
        params(4, 16, 1, 34, 34, 4, 2, 1, 0),
        params(2, 1, 16, 9, 9, 4, 2, 1, 0),
        params(2, 3, 5, 7, 9, 3, 3, 0, 2),
        params(2, 40, 33, 9, 11, 5, 1, 2, 0),
        params(2, 20, 18, 6, 5, 7, 2, 3, 1),
        params(1, 3, 2, 5, 5, 17, 4, 3, 1),
        params(2, 64, 48, 12, 12, 4, 2, 1, 0),
        params(8, 4, 4, 40, 300, 2, 2, 0, 1),
    ]
}

f32_and_bf16_tests!("conv_transpose", gpu_f32_matches_reference, gpu_bf16_matches_reference,
    each of gpu_shapes() => gpu_matches_reference);

#[test]
fn gpu_rejects_kernel_too_large_for_shared_memory() {
    let gpu = or_return!(gpu_or_skip("conv_transpose gpu_rejects_kernel_too_large"));
    let p = params(1, 1, 1, 2, 2, 50, 1, 0, 0);
    let err = ConvTransposeGpu::<f32>::new(&gpu, p).err().unwrap();
    assert!(err.to_string().contains("kernel_size 50"), "{err}");
}

/// The bench's baseline computes the same op: cuDNN backward-data (exact FMA math, no TF32)
/// against our forward with a zero bias, f32, on the bench's layer shapes at a small batch.
#[test]
fn gpu_cudnn_baseline_matches_forward() {
    const TEST: &str = "conv_transpose gpu_cudnn_baseline_matches_forward";
    let gpu = or_return!(gpu_or_skip(TEST));
    for p in [
        params(2, 16, 8, 17, 17, 4, 2, 1, 0),
        params(2, 4, 1, 34, 34, 4, 2, 1, 0),
        params(2, 3, 5, 7, 9, 3, 3, 0, 2),
    ] {
        let inp = draw_inputs(&p, 50);
        let (x_t, _) = round_through::<f32>(&inp.x);
        let (w_t, _) = round_through::<f32>(&inp.weight);
        let x_d = gpu.upload(&x_t).unwrap();
        let w_d = gpu.upload(&w_t).unwrap();
        let zero_bias = gpu.alloc_zeros::<f32>(p.out_channels).unwrap();
        let mut ours = gpu.alloc_poisoned::<f32>(p.output_len()).unwrap();
        let mut theirs = gpu.alloc_poisoned::<f32>(p.output_len()).unwrap();
        ConvTransposeGpu::<f32>::new(&gpu, p)
            .unwrap()
            .forward(&x_d, [&w_d, &zero_bias], &mut ours)
            .unwrap();
        let made = CudnnConvTranspose::<f32>::new(&gpu, p, false);
        let mut cudnn = or_return!(library_or_skip(TEST, made));
        cudnn.forward(&x_d, &w_d, &mut theirs).unwrap();
        let ours = widen(&gpu.download(&ours).unwrap());
        let theirs = widen(&gpu.download(&theirs).unwrap());
        let e = rel_error(&theirs, &ours);
        assert!(e < 1e-5, "{p:?}: cuDNN vs ours relative error {e}");
    }
}
