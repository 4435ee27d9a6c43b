//! Batch norm (+ fused ReLU): the CPU reference against hand-computed values and finite
//! differences (f64) in both modes, the accumulation rule and bad input; the NHWC reference
//! against the NCHW one; the f32 CPU backend and the CUDA kernels (f32, bf16; NCHW and NHWC) and
//! the benches' cuDNN baseline against the f64 reference; NHWC against NCHW on the GPU, and the
//! bf16 NHWC kernels against the bf16 reference's rounding points (GPU tests skip without a
//! GPU).

use crate::common::gpu_tests::f32_and_bf16_tests;
use crate::common::skip::or_return;
use c2f_baselines::batch_norm::BatchNormCudnn;
use c2f_kernels::batch_norm::{
    backward_inference_cpu, backward_train_cpu, forward_inference_cpu, forward_train_cpu,
    BatchNormGpu, BatchNormParams, BatchNormShape, INCEPTION_EPS,
};
use c2f_kernels::testing::{
    assert_bit_identical, bf16_rounding_mismatch, gpu_or_skip, library_or_skip, numeric_gradient,
    rel_error, round_through, widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu, Layout};
use half::bf16;

fn shape(batch: usize, channels: usize, height: usize, width: usize) -> BatchNormShape {
    BatchNormShape {
        batch,
        channels,
        height,
        width,
    }
}

fn params(relu: bool) -> BatchNormParams {
    BatchNormParams {
        eps: INCEPTION_EPS,
        momentum: 0.1,
        relu,
    }
}

/// Inputs of one layer: every fourth channel has a mean of 50 and a standard deviation of about
/// 2.3, where `E[x²] − E[x]²` in f32 would lose digits of the variance.
#[derive(Clone)]
struct Inputs {
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
    dy: Vec<f64>,
    /// Initial values of the accumulated dgamma and dbeta.
    dgamma0: Vec<f64>,
    dbeta0: Vec<f64>,
}

impl Inputs {
    fn affine(&self) -> [&[f64]; 2] {
        [&self.gamma, &self.beta]
    }
    fn running(&self) -> [&[f64]; 2] {
        [&self.running_mean, &self.running_var]
    }
}

fn draw(s: &BatchNormShape, seed: u64) -> Inputs {
    let mut rng = SplitMix64(seed);
    let c = s.channels;
    let (offset, spread): (Vec<f64>, Vec<f64>) = (0..c)
        .map(|ch| {
            if ch % 4 == 3 {
                (50.0, 4.0)
            } else {
                (rng.uniform(-1.0, 2.0), rng.uniform(0.5, 2.0))
            }
        })
        .unzip();
    let x = (0..s.len())
        .map(|i| {
            let ch = i / s.hw() % c;
            offset[ch] + spread[ch] * rng.uniform(-1.0, 1.0)
        })
        .collect();
    Inputs {
        x,
        gamma: rng.uniform_vec(c, 0.5, 1.5),
        beta: rng.uniform_vec(c, -0.5, 0.5),
        running_mean: offset.iter().map(|o| o + rng.uniform(-0.5, 0.5)).collect(),
        running_var: rng.uniform_vec(c, 0.2, 1.5),
        dy: rng.uniform_vec(s.len(), -1.0, 1.0),
        dgamma0: rng.uniform_vec(c, -2.0, 2.0),
        dbeta0: rng.uniform_vec(c, -2.0, 2.0),
    }
}

struct Train {
    y: Vec<f64>,
    save_mean: Vec<f64>,
    save_invstd: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
}

fn train64(s: &BatchNormShape, p: &BatchNormParams, inp: &Inputs) -> Train {
    let mut t = Train {
        y: vec![f64::NAN; s.len()],
        save_mean: vec![f64::NAN; s.channels],
        save_invstd: vec![f64::NAN; s.channels],
        running_mean: inp.running_mean.clone(),
        running_var: inp.running_var.clone(),
    };
    let running = [&mut t.running_mean[..], &mut t.running_var];
    let saved = [&mut t.save_mean[..], &mut t.save_invstd];
    forward_train_cpu(s, p, &inp.x, inp.affine(), running, &mut t.y, saved).unwrap();
    t
}

fn infer64(s: &BatchNormShape, p: &BatchNormParams, inp: &Inputs) -> Vec<f64> {
    let mut y = vec![f64::NAN; s.len()];
    forward_inference_cpu(s, p, &inp.x, inp.affine(), inp.running(), &mut y).unwrap();
    y
}

/// (dx, dgamma, dbeta) of the training-mode backward, the parameter gradients accumulated onto
/// `inp.dgamma0`, `inp.dbeta0`.
fn back_train64(
    s: &BatchNormShape,
    p: &BatchNormParams,
    inp: &Inputs,
    y: &[f64],
    mean: &[f64],
    invstd: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![f64::NAN; s.len()];
    let (mut dgamma, mut dbeta) = (inp.dgamma0.clone(), inp.dbeta0.clone());
    let xs = [&inp.x[..], y, &inp.dy];
    let grads = [&mut dgamma[..], &mut dbeta];
    backward_train_cpu(s, p, xs, &inp.gamma, [mean, invstd], &mut dx, grads).unwrap();
    (dx, dgamma, dbeta)
}

fn back_infer64(
    s: &BatchNormShape,
    p: &BatchNormParams,
    inp: &Inputs,
    y: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![f64::NAN; s.len()];
    let (mut dgamma, mut dbeta) = (inp.dgamma0.clone(), inp.dbeta0.clone());
    let (xs, grads) = ([&inp.x[..], y, &inp.dy], [&mut dgamma[..], &mut dbeta]);
    backward_inference_cpu(s, p, xs, &inp.gamma, inp.running(), &mut dx, grads).unwrap();
    (dx, dgamma, dbeta)
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
        "{what}: {got} vs {want}"
    );
}

/// N = 2, C = 2, 1x2 pixels. Channel 0 holds {1, 2, 3, 6}: mean 3, var 3.5, unbiased 14/3.
/// Channel 1 holds {10, 20, 30, 40}: mean 25, var 125, unbiased 500/3.
fn hand_case() -> (BatchNormShape, Inputs) {
    let s = shape(2, 2, 1, 2);
    let inp = Inputs {
        x: vec![1.0, 2.0, 10.0, 20.0, 3.0, 6.0, 30.0, 40.0],
        gamma: vec![2.0, -1.0],
        beta: vec![0.5, 1.0],
        running_mean: vec![0.5, -1.0],
        running_var: vec![2.0, 3.0],
        dy: vec![0.0; 8],
        dgamma0: vec![0.0; 2],
        dbeta0: vec![0.0; 2],
    };
    (s, inp)
}

#[test]
fn forward_train_matches_hand_computed_case() {
    let (s, inp) = hand_case();
    let (mean, var) = ([3.0, 25.0], [3.5, 125.0]);
    for relu in [false, true] {
        let t = train64(&s, &params(relu), &inp);
        for c in 0..2 {
            let invstd = 1.0 / (var[c] + 1e-3f64).sqrt();
            assert_close("save_mean", t.save_mean[c], mean[c]);
            assert_close("save_invstd", t.save_invstd[c], invstd);
            for b in 0..2 {
                for p in 0..2 {
                    let i = (b * 2 + c) * 2 + p;
                    let pre = inp.gamma[c] * (inp.x[i] - mean[c]) * invstd + inp.beta[c];
                    let want = if relu { pre.max(0.0) } else { pre };
                    assert_close(&format!("y[{i}] relu={relu}"), t.y[i], want);
                }
            }
        }
        // momentum·batch stat + (1 − momentum)·running stat, the variance unbiased.
        assert_close("running_mean 0", t.running_mean[0], 0.1 * 3.0 + 0.9 * 0.5);
        assert_close("running_mean 1", t.running_mean[1], 0.1 * 25.0 - 0.9 * 1.0);
        assert_close(
            "running_var 0",
            t.running_var[0],
            0.1 * 14.0 / 3.0 + 0.9 * 2.0,
        );
        assert_close(
            "running_var 1",
            t.running_var[1],
            0.1 * 500.0 / 3.0 + 0.9 * 3.0,
        );
    }
    // The ReLU really cuts here: channel 1 (gamma −1) maps x = 40 to 1 − 15/√125.001 < 0.
    let t = train64(&s, &params(true), &inp);
    assert_eq!(t.y[7], 0.0);
    assert!(t.y[2] > 2.0);
}

#[test]
fn forward_inference_matches_hand_computed_case() {
    let (s, inp) = hand_case();
    for relu in [false, true] {
        let y = infer64(&s, &params(relu), &inp);
        for (i, &got) in y.iter().enumerate() {
            let c = i / 2 % 2;
            let invstd = 1.0 / (inp.running_var[c] + 1e-3f64).sqrt();
            let pre = inp.gamma[c] * (inp.x[i] - inp.running_mean[c]) * invstd + inp.beta[c];
            let want = if relu { pre.max(0.0) } else { pre };
            assert_close(&format!("y[{i}] relu={relu}"), got, want);
        }
    }
    // Channel 1 with gamma −1 and running mean −1 is negative everywhere: the ReLU zeroes it.
    let y = infer64(&s, &params(true), &inp);
    assert_eq!(y[3], 0.0);
}

/// The smallest |pre-activation| of the training or inference forward: finite differences are
/// only valid away from the ReLU's kink.
fn kink_margin(s: &BatchNormShape, inp: &Inputs, train: bool) -> f64 {
    let pre = if train {
        train64(s, &params(false), inp).y
    } else {
        infer64(s, &params(false), inp)
    };
    pre.iter().fold(f64::INFINITY, |m, v| m.min(v.abs()))
}

fn fd_check(what: &str, analytic: &[f64], numeric: &[f64]) {
    let e = rel_error(analytic, numeric);
    assert!(
        e < 1e-6,
        "{what}: relative error {e} against finite differences"
    );
}

/// `loss = Σ dy·y` as a function of x, gamma, beta; the backward's accumulated parameter
/// gradients minus their initial values are the gradients.
fn check_finite_differences(train: bool, relu: bool) {
    let s = shape(2, 3, 2, 3);
    let inp = draw(&s, 11);
    let p = params(relu);
    if relu {
        let margin = kink_margin(&s, &inp, train);
        assert!(
            margin > 1e-3,
            "pre-activation {margin} too close to the kink"
        );
    }
    let forward = |inp: &Inputs| -> Vec<f64> {
        if train {
            train64(&s, &p, inp).y
        } else {
            infer64(&s, &p, inp)
        }
    };
    let loss = |inp: &Inputs| -> f64 { forward(inp).iter().zip(&inp.dy).map(|(y, d)| y * d).sum() };
    let (dx, dgamma, dbeta) = if train {
        let t = train64(&s, &p, &inp);
        back_train64(&s, &p, &inp, &t.y, &t.save_mean, &t.save_invstd)
    } else {
        back_infer64(&s, &p, &inp, &forward(&inp))
    };
    let minus =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
    // The loss's numeric gradient with respect to the input that `field` picks.
    let numeric = |field: fn(&mut Inputs) -> &mut Vec<f64>| {
        let at = field(&mut inp.clone()).clone();
        numeric_gradient(
            |v| {
                let mut q = inp.clone();
                *field(&mut q) = v.to_vec();
                loss(&q)
            },
            &at,
            1e-6,
        )
    };
    let num_dx = numeric(|q| &mut q.x);
    let num_dgamma = numeric(|q| &mut q.gamma);
    let num_dbeta = numeric(|q| &mut q.beta);
    let name = format!("train={train} relu={relu}");
    fd_check(&format!("{name} dx"), &dx, &num_dx);
    fd_check(
        &format!("{name} dgamma"),
        &minus(&dgamma, &inp.dgamma0),
        &num_dgamma,
    );
    fd_check(
        &format!("{name} dbeta"),
        &minus(&dbeta, &inp.dbeta0),
        &num_dbeta,
    );
    if relu {
        // Some outputs are cut and some are not, so the mask is exercised.
        let y = forward(&inp);
        let cut = y.iter().filter(|&&v| v == 0.0).count();
        assert!(cut > 0 && cut < y.len(), "{name}: {cut} of {} cut", y.len());
    }
}

#[test]
fn backward_train_matches_finite_differences() {
    check_finite_differences(true, false);
}

#[test]
fn backward_train_relu_matches_finite_differences() {
    check_finite_differences(true, true);
}

#[test]
fn backward_inference_matches_finite_differences() {
    check_finite_differences(false, false);
}

#[test]
fn backward_inference_relu_matches_finite_differences() {
    check_finite_differences(false, true);
}

/// Two backward calls double dgamma and dbeta from zero, and leave dx as after one call.
#[test]
fn parameter_gradients_accumulate_and_dx_is_assigned() {
    let s = shape(3, 4, 3, 2);
    let mut inp = draw(&s, 12);
    inp.dgamma0 = vec![0.0; s.channels];
    inp.dbeta0 = vec![0.0; s.channels];
    let p = params(true);
    let t = train64(&s, &p, &inp);
    let y_infer = infer64(&s, &p, &inp);
    for train in [true, false] {
        let mut dx = vec![f64::NAN; s.len()];
        let mut dgamma = vec![0.0; s.channels];
        let mut dbeta = vec![0.0; s.channels];
        let call = |dx: &mut [f64], dgamma: &mut [f64], dbeta: &mut [f64]| {
            let grads = [dgamma, dbeta];
            if train {
                let (xs, saved) = (
                    [&inp.x[..], &t.y, &inp.dy],
                    [&t.save_mean[..], &t.save_invstd],
                );
                backward_train_cpu(&s, &p, xs, &inp.gamma, saved, dx, grads)
            } else {
                let xs = [&inp.x[..], &y_infer, &inp.dy];
                backward_inference_cpu(&s, &p, xs, &inp.gamma, inp.running(), dx, grads)
            }
            .unwrap()
        };
        call(&mut dx, &mut dgamma, &mut dbeta);
        let (dx1, dgamma1, dbeta1) = (dx.clone(), dgamma.clone(), dbeta.clone());
        assert!(dx1.iter().all(|v| v.is_finite()), "dx not fully written");
        assert!(dgamma1.iter().chain(&dbeta1).all(|&v| v != 0.0));
        call(&mut dx, &mut dgamma, &mut dbeta);
        assert_eq!(dx, dx1, "train={train}: dx must be assigned");
        let twice = |v: &[f64]| -> Vec<f64> { v.iter().map(|a| 2.0 * a).collect() };
        assert_eq!(
            dgamma,
            twice(&dgamma1),
            "train={train}: dgamma must accumulate"
        );
        assert_eq!(
            dbeta,
            twice(&dbeta1),
            "train={train}: dbeta must accumulate"
        );
    }
}

#[test]
fn one_value_per_channel_is_an_error_when_training() {
    let s = shape(1, 2, 1, 1);
    let inp = draw(&s, 13);
    let mut rm = inp.running_mean.clone();
    let mut rv = inp.running_var.clone();
    let (mut y, mut m, mut v) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
    let (running, saved) = ([&mut rm[..], &mut rv], [&mut m[..], &mut v]);
    let err = forward_train_cpu(
        &s,
        &params(true),
        &inp.x,
        inp.affine(),
        running,
        &mut y,
        saved,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected more than 1 value per channel when training"),
        "{err}"
    );
    assert_eq!(rm, inp.running_mean, "running stats touched on error");
    // Inference mode is fine with one value.
    let y = infer64(&s, &params(false), &inp);
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_buffers_and_params_are_clear_errors() {
    let s = shape(2, 2, 1, 2);
    let inp = draw(&s, 14);
    let mut y = vec![0.0; s.len()];
    let (short, running) = ([&inp.gamma[..1], &inp.beta], inp.running());
    let err = forward_inference_cpu(&s, &params(true), &inp.x, short, running, &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("batch norm gamma has 1 elements, expected 2"),
        "{err}"
    );
    let (affine, running) = (inp.affine(), inp.running());
    let err =
        forward_inference_cpu(&s, &params(true), &inp.x[..7], affine, running, &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("batch norm x has 7 elements, expected 8"),
        "{err}"
    );
    for (eps, momentum, needle) in [
        (0.0, 0.1, "eps 0 must be positive"),
        (f64::NAN, 0.1, "eps NaN must be positive"),
        (1e-3, 1.5, "momentum 1.5 must be in [0, 1]"),
        (1e-3, -0.1, "momentum -0.1 must be in [0, 1]"),
    ] {
        let p = BatchNormParams {
            eps,
            momentum,
            relu: false,
        };
        let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; 2], vec![0.0; 2]);
        let (xs, grads) = ([&inp.x[..], &inp.x, &inp.dy], [&mut dg[..], &mut db]);
        let err = backward_inference_cpu(&s, &p, xs, &inp.gamma, inp.running(), &mut dx, grads)
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(dg, vec![0.0; 2], "dgamma written on error");
    }
    let err = infer_shape_error(shape(2, 0, 3, 3));
    assert!(err.contains("zero dimension"), "{err}");
}

fn infer_shape_error(s: BatchNormShape) -> String {
    forward_inference_cpu::<f64>(&s, &params(true), &[], [&[], &[]], [&[], &[]], &mut [])
        .unwrap_err()
        .to_string()
}

/// All four ops in `R` on inputs rounded to f32, against the f64 reference on the same values:
/// the CPU backend's accuracy.
#[test]
fn f32_reference_matches_f64() {
    let s = shape(4, 8, 9, 7);
    for relu in [false, true] {
        let p = params(relu);
        let inp = draw(&s, 15);
        let r = |v: &[f64]| round_through::<f32>(v);
        let ((x32, x), (g32, g), (b32, b)) = (r(&inp.x), r(&inp.gamma), r(&inp.beta));
        let ((rm32, rm), (rv32, rv), (dy32, dy)) =
            (r(&inp.running_mean), r(&inp.running_var), r(&inp.dy));
        let ((dg32, dg), (db32, db)) = (r(&inp.dgamma0), r(&inp.dbeta0));
        let inp64 = Inputs {
            x,
            gamma: g,
            beta: b,
            running_mean: rm,
            running_var: rv,
            dy,
            dgamma0: dg,
            dbeta0: db,
        };
        let t = train64(&s, &p, &inp64);
        let y_inf = infer64(&s, &p, &inp64);
        let (ref_dx, ref_dg, ref_db) =
            back_train64(&s, &p, &inp64, &t.y, &t.save_mean, &t.save_invstd);
        let (ref_dxi, ref_dgi, ref_dbi) = back_infer64(&s, &p, &inp64, &y_inf);

        let n = s.len();
        let (mut rm_t, mut rv_t) = (rm32.clone(), rv32.clone());
        let (mut y, mut m, mut v) = (vec![f32::NAN; n], vec![f32::NAN; 8], vec![f32::NAN; 8]);
        let affine = [&g32[..], &b32];
        let (running, saved) = ([&mut rm_t[..], &mut rv_t], [&mut m[..], &mut v]);
        forward_train_cpu(&s, &p, &x32, affine, running, &mut y, saved).unwrap();
        let mut yi = vec![f32::NAN; n];
        forward_inference_cpu(&s, &p, &x32, affine, [&rm32, &rv32], &mut yi).unwrap();
        // The backwards take the reference's own y (rounded), so the ReLU mask is the same.
        let (yt32, _) = r(&t.y);
        let (yi32, _) = r(&y_inf);
        let (m32, _) = r(&t.save_mean);
        let (v32, _) = r(&t.save_invstd);
        let (mut dx, mut dgt, mut dbt) = (vec![f32::NAN; n], dg32.clone(), db32.clone());
        let (xs, grads) = ([&x32[..], &yt32, &dy32], [&mut dgt[..], &mut dbt]);
        backward_train_cpu(&s, &p, xs, &g32, [&m32, &v32], &mut dx, grads).unwrap();
        let (mut dxi, mut dgi, mut dbi) = (vec![f32::NAN; n], dg32.clone(), db32.clone());
        let (xs, grads) = ([&x32[..], &yi32, &dy32], [&mut dgi[..], &mut dbi]);
        backward_inference_cpu(&s, &p, xs, &g32, [&rm32, &rv32], &mut dxi, grads).unwrap();
        for (what, out, reference) in [
            ("y train", widen(&y), &t.y),
            ("save_mean", widen(&m), &t.save_mean),
            ("save_invstd", widen(&v), &t.save_invstd),
            ("running_mean", widen(&rm_t), &t.running_mean),
            ("running_var", widen(&rv_t), &t.running_var),
            ("y inference", widen(&yi), &y_inf),
            ("dx train", widen(&dx), &ref_dx),
            ("dgamma train", widen(&dgt), &ref_dg),
            ("dbeta train", widen(&dbt), &ref_db),
            ("dx inference", widen(&dxi), &ref_dxi),
            ("dgamma inference", widen(&dgi), &ref_dgi),
            ("dbeta inference", widen(&dbi), &ref_dbi),
        ] {
            let e = rel_error(&out, reference);
            assert!(e < 1e-5, "f32 CPU relu={relu} {what}: relative error {e}");
        }
    }
}

/// Every channel at 1000 ± 1: `E[x²] − E[x]²` in f32 would be off by tens of percent.
fn large_mean_case() -> (BatchNormShape, Vec<f32>, BatchNormParams) {
    let s = shape(4, 8, 32, 32);
    let mut rng = SplitMix64(17);
    let x = (0..s.len())
        .map(|_| rng.uniform(999.0, 1001.0) as f32)
        .collect();
    (s, x, params(true))
}

/// save_mean and save_invstd of the f32 values `x`, in f64.
fn large_mean_reference(s: &BatchNormShape, p: &BatchNormParams, x: &[f32]) -> Train {
    let c = s.channels;
    let inp = Inputs {
        x: widen(x),
        gamma: vec![1.0; c],
        beta: vec![0.25; c],
        running_mean: vec![0.5; c],
        running_var: vec![2.0; c],
        dy: vec![],
        dgamma0: vec![],
        dbeta0: vec![],
    };
    train64(s, p, &inp)
}

fn check_large_mean_stats(what: &str, t: &Train, mean: &[f32], invstd: &[f32]) {
    let e_mean = rel_error(&widen(mean), &t.save_mean);
    let e_invstd = rel_error(&widen(invstd), &t.save_invstd);
    assert!(e_mean < 1e-6, "{what}: save_mean relative error {e_mean}");
    assert!(
        e_invstd < 1e-4,
        "{what}: save_invstd relative error {e_invstd}"
    );
}

#[test]
fn f32_variance_survives_large_means() {
    let (s, x, p) = large_mean_case();
    let t = large_mean_reference(&s, &p, &x);
    let c = s.channels;
    let (mut rm, mut rv) = (vec![0.5f32; c], vec![2.0f32; c]);
    let (mut y, mut m, mut v) = (
        vec![f32::NAN; s.len()],
        vec![f32::NAN; c],
        vec![f32::NAN; c],
    );
    let affine = [&vec![1.0; c][..], &vec![0.25; c]];
    let (running, saved) = ([&mut rm[..], &mut rv], [&mut m[..], &mut v]);
    forward_train_cpu(&s, &p, &x, affine, running, &mut y, saved).unwrap();
    check_large_mean_stats("f32 CPU", &t, &m, &v);
}

/// Everything one GPU run produces, downloaded, activations in NCHW.
struct GpuOut<T> {
    y: Vec<T>,
    save_mean: Vec<f32>,
    save_invstd: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    y_inference: Vec<T>,
    dx: Vec<T>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    dx_inference: Vec<T>,
    dgamma_inference: Vec<f32>,
    dbeta_inference: Vec<f32>,
}

/// The inputs of one GPU run, as the kernels store them (NCHW here): `x`, `dy`, and the `y`s
/// and saved stats the backwards read; `f32` the per-channel inputs `[gamma, beta,
/// running_mean, running_var, save_mean, save_invstd, dgamma0, dbeta0]`.
struct GpuIn<T> {
    x: Vec<T>,
    dy: Vec<T>,
    y_train: Vec<T>,
    y_inference: Vec<T>,
    f32: [Vec<f32>; 8],
}

/// All four ops on the GPU in `layout` (activations converted in and out), outputs poisoned:
/// training forward, inference forward, then both backwards from `inp`'s `y`s and saved stats.
fn gpu_run<T: Element>(gpu: &Gpu, bn: &mut BatchNormGpu<T>, inp: &GpuIn<T>) -> GpuOut<T> {
    let s = *bn.shape();
    let (layout, n, c, hw) = (bn.layout(), s.len(), s.channels, s.hw());
    let up_act = |v: &[T]| gpu.upload(&Layout::Nchw.convert(layout, v, c, hw)).unwrap();
    let (x_d, dy_d, yt_d, yi_d) = (
        up_act(&inp.x),
        up_act(&inp.dy),
        up_act(&inp.y_train),
        up_act(&inp.y_inference),
    );
    let up = |v: &[f32]| gpu.upload(v).unwrap();
    let [g_d, b_d, rm_d, rv_d, mean_d, invstd_d, _, _] = inp.f32.each_ref().map(|v| up(v));
    let [_, _, rm0, rv0, _, _, dg0, db0] = &inp.f32;
    let (mut rm, mut rv) = (up(rm0), up(rv0));
    let mut y = gpu.alloc_poisoned::<T>(n).unwrap();
    let mut m = gpu.alloc_poisoned::<f32>(c).unwrap();
    let mut v = gpu.alloc_poisoned::<f32>(c).unwrap();
    let affine = [&g_d, &b_d];
    bn.forward_train(&x_d, affine, [&mut rm, &mut rv], &mut y, [&mut m, &mut v])
        .unwrap();
    let mut yi = gpu.alloc_poisoned::<T>(n).unwrap();
    bn.forward_inference(&x_d, affine, [&rm_d, &rv_d], &mut yi)
        .unwrap();
    let mut dx = gpu.alloc_poisoned::<T>(n).unwrap();
    let (mut dg, mut db) = (up(dg0), up(db0));
    let saved = [&mean_d, &invstd_d];
    bn.backward_train(
        [&x_d, &yt_d, &dy_d],
        &g_d,
        saved,
        &mut dx,
        [&mut dg, &mut db],
    )
    .unwrap();
    let mut dxi = gpu.alloc_poisoned::<T>(n).unwrap();
    let (mut dgi, mut dbi) = (up(dg0), up(db0));
    let (xs, running) = ([&x_d, &yi_d, &dy_d], [&rm_d, &rv_d]);
    bn.backward_inference(xs, &g_d, running, &mut dxi, [&mut dgi, &mut dbi])
        .unwrap();
    let d = |v: &cudarc::driver::CudaSlice<f32>| gpu.download(v).unwrap();
    let down_act = |v: &cudarc::driver::CudaSlice<T>| {
        layout.convert(Layout::Nchw, &gpu.download(v).unwrap(), c, hw)
    };
    GpuOut {
        y: down_act(&y),
        save_mean: d(&m),
        save_invstd: d(&v),
        running_mean: d(&rm),
        running_var: d(&rv),
        y_inference: down_act(&yi),
        dx: down_act(&dx),
        dgamma: d(&dg),
        dbeta: d(&db),
        dx_inference: down_act(&dxi),
        dgamma_inference: d(&dgi),
        dbeta_inference: d(&dbi),
    }
}

impl<T: Element> GpuOut<T> {
    /// The activation outputs, then the f32 ones, named, widened.
    fn named(&self) -> [(&'static str, Vec<f64>); 12] {
        [
            ("y train", widen(&self.y)),
            ("y inference", widen(&self.y_inference)),
            ("dx train", widen(&self.dx)),
            ("dx inference", widen(&self.dx_inference)),
            ("save_mean", widen(&self.save_mean)),
            ("save_invstd", widen(&self.save_invstd)),
            ("running_mean", widen(&self.running_mean)),
            ("running_var", widen(&self.running_var)),
            ("dgamma train", widen(&self.dgamma)),
            ("dbeta train", widen(&self.dbeta)),
            ("dgamma inference", widen(&self.dgamma_inference)),
            ("dbeta inference", widen(&self.dbeta_inference)),
        ]
    }

    fn activations(&self) -> [&[T]; 4] {
        [&self.y, &self.y_inference, &self.dx, &self.dx_inference]
    }

    fn assert_same_bits(&self, name: &str, other: &Self) {
        let names = self.named().map(|(what, _)| format!("{name} {what}"));
        for (what, (a, b)) in names
            .iter()
            .zip(self.activations().iter().zip(other.activations()))
        {
            assert_bit_identical(what, a, b);
        }
        let (a, b) = (self.named(), other.named());
        for (what, (a, b)) in names.iter().zip(a.iter().zip(&b)).skip(4) {
            assert_bit_identical(what, &a.1, &b.1);
        }
    }
}

/// All four ops on the GPU in `T` against the f64 reference on the same rounded inputs, outputs
/// poisoned with NaN, and a second run giving the same bits. Activations are held to `tol`; the
/// f32 outputs (stats, parameter gradients) to 1e-5 in both storage types.
/// `(s, relu, layout)`: the shape, whether ReLU is fused, and the activations' layout (the
/// references run in NCHW; activations go up converted and come back converted).
fn gpu_matches_reference<T: Element>(
    gpu: &Gpu,
    (s, relu, layout): (BatchNormShape, bool, Layout),
    tol: f64,
) {
    let p = params(relu);
    let inp = draw(&s, 16);
    let (x_t, x) = round_through::<T>(&inp.x);
    let (dy_t, dy) = round_through::<T>(&inp.dy);
    let r = |v: &[f64]| round_through::<f32>(v);
    let ((g32, gamma), (b32, beta)) = (r(&inp.gamma), r(&inp.beta));
    let ((rm32, running_mean), (rv32, running_var)) = (r(&inp.running_mean), r(&inp.running_var));
    let ((dg32, dgamma0), (db32, dbeta0)) = (r(&inp.dgamma0), r(&inp.dbeta0));
    let inp = Inputs {
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        dy,
        dgamma0,
        dbeta0,
    };
    let t = train64(&s, &p, &inp);
    let y_inf = infer64(&s, &p, &inp);
    // The backwards get the reference's outputs and saved stats, rounded as the GPU stores them.
    let (yt_t, yt) = round_through::<T>(&t.y);
    let (yi_t, yi) = round_through::<T>(&y_inf);
    let ((mean32, mean), (invstd32, invstd)) = (r(&t.save_mean), r(&t.save_invstd));
    let (ref_dx, ref_dg, ref_db) = back_train64(&s, &p, &inp, &yt, &mean, &invstd);
    let (ref_dxi, ref_dgi, ref_dbi) = back_infer64(&s, &p, &inp, &yi);
    let gpu_in = GpuIn {
        x: x_t,
        dy: dy_t,
        y_train: yt_t,
        y_inference: yi_t,
        f32: [g32, b32, rm32, rv32, mean32, invstd32, dg32, db32],
    };
    let mut bn = BatchNormGpu::<T>::with_layout(gpu, s, p, layout).unwrap();
    let a = gpu_run(gpu, &mut bn, &gpu_in);
    let name = format!("batch norm {} {layout:?} relu={relu} {s:?}", T::SUFFIX);
    let references = [
        &t.y,
        &y_inf,
        &ref_dx,
        &ref_dxi,
        &t.save_mean,
        &t.save_invstd,
        &t.running_mean,
        &t.running_var,
        &ref_dg,
        &ref_db,
        &ref_dgi,
        &ref_dbi,
    ];
    for (i, ((what, out), reference)) in a.named().into_iter().zip(references).enumerate() {
        let bound = if i < 4 { tol } else { 1e-5 };
        let e = rel_error(&out, reference);
        assert!(
            e < bound,
            "{name}: {what} relative error {e} (bound {bound})"
        );
    }
    a.assert_same_bits(&name, &gpu_run(gpu, &mut bn, &gpu_in));
}

/// One value per sample and channel (H = W = 1), odd sizes, several chunks per channel crossing
/// row boundaries (35x35, 64x64 with few channels), many channels with one chunk, and more chunks
/// per channel (300) than threads in a block.
fn gpu_shapes() -> Vec<BatchNormShape> {
    vec![
        shape(5, 3, 1, 1),
        shape(2, 4, 7, 5),
        shape(3, 5, 64, 64),
        shape(8, 96, 35, 35),
        shape(16, 768, 2, 3),
        shape(8, 2, 256, 300),
    ]
}

/// Each shape with ReLU fused and without.
fn with_relu(
    shapes: Vec<BatchNormShape>,
    layout: Layout,
) -> impl Iterator<Item = (BatchNormShape, bool, Layout)> {
    shapes
        .into_iter()
        .flat_map(move |s| [(s, true, layout), (s, false, layout)])
}

fn gpu_cases() -> impl Iterator<Item = (BatchNormShape, bool, Layout)> {
    with_relu(gpu_shapes(), Layout::Nchw)
}

/// NHWC: channel counts that defeat the 16-byte vectors (C = 1, odd C, C = 12 with f32 vectors
/// but not bf16 ones), that fill them (16, 96, 768: one, several lanes, several tiles), a
/// partly-filled tile (C = 40), one value per sample and channel, and several chunks per tile.
fn nhwc_shapes() -> Vec<BatchNormShape> {
    vec![
        shape(5, 3, 1, 1),
        shape(2, 1, 7, 5),
        shape(3, 5, 33, 31),
        shape(2, 12, 9, 11),
        shape(4, 16, 30, 30),
        shape(2, 40, 7, 7),
        shape(8, 96, 17, 17),
        shape(16, 768, 2, 3),
    ]
}

f32_and_bf16_tests!("batch_norm", gpu_f32_matches_reference, gpu_bf16_matches_reference,
    each of gpu_cases() => gpu_matches_reference);

f32_and_bf16_tests!("batch_norm", gpu_nhwc_f32_matches_reference,
    gpu_nhwc_bf16_matches_reference,
    each of with_relu(nhwc_shapes(), Layout::Nhwc) => gpu_matches_reference);

#[test]
fn gpu_rejects_bad_input() {
    let gpu = or_return!(gpu_or_skip("batch_norm gpu_rejects_bad_input"));
    let s = shape(1, 3, 1, 1);
    let mut bn = BatchNormGpu::<f32>::new(&gpu, s, params(true)).unwrap();
    let x = gpu.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let g = gpu.upload(&[1.0f32; 3]).unwrap();
    let b = gpu.upload(&[0.5f32; 3]).unwrap();
    let (mut rm, mut rv) = (
        gpu.upload(&[0.25f32; 3]).unwrap(),
        gpu.upload(&[2.0f32; 3]).unwrap(),
    );
    let mut y = gpu.alloc_poisoned::<f32>(3).unwrap();
    let (mut m, mut v) = (
        gpu.alloc_poisoned::<f32>(3).unwrap(),
        gpu.alloc_poisoned::<f32>(3).unwrap(),
    );
    let err = bn
        .forward_train(&x, [&g, &b], [&mut rm, &mut rv], &mut y, [&mut m, &mut v])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected more than 1 value per channel when training"),
        "{err}"
    );
    assert_eq!(gpu.download(&rm).unwrap(), vec![0.25f32; 3]);
    let short = gpu.upload(&[1.0f32; 2]).unwrap();
    let err = bn
        .forward_inference(&x, [&short, &b], [&rm, &rv], &mut y)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("batch norm gamma has 2 elements, expected 3"),
        "{err}"
    );
    // Inference with one value per channel works: y = (x − 0.25)/√(2.001) + 0.5.
    bn.forward_inference(&x, [&g, &b], [&rm, &rv], &mut y)
        .unwrap();
    let got = gpu.download(&y).unwrap();
    for (i, &v) in got.iter().enumerate() {
        let want = ((i as f64 + 1.0) - 0.25) / (2.0f64 + 1e-3).sqrt() + 0.5;
        assert!((v as f64 - want).abs() < 1e-6, "y[{i}] {v} vs {want}");
    }
    let bad = BatchNormParams {
        eps: -1.0,
        ..params(true)
    };
    let err = BatchNormGpu::<f32>::new(&gpu, s, bad).err().unwrap();
    assert!(err.to_string().contains("eps -1 must be positive"), "{err}");
}

#[test]
fn gpu_variance_survives_large_means() {
    let gpu = or_return!(gpu_or_skip("batch_norm gpu_variance_survives_large_means"));
    let (s, x, p) = large_mean_case();
    let t = large_mean_reference(&s, &p, &x);
    let c = s.channels;
    let mut bn = BatchNormGpu::<f32>::new(&gpu, s, p).unwrap();
    let x_d = gpu.upload(&x).unwrap();
    let g = gpu.upload(&vec![1.0f32; c]).unwrap();
    let b = gpu.upload(&vec![0.25f32; c]).unwrap();
    let mut rm = gpu.upload(&vec![0.5f32; c]).unwrap();
    let mut rv = gpu.upload(&vec![2.0f32; c]).unwrap();
    let mut y = gpu.alloc_poisoned::<f32>(s.len()).unwrap();
    let mut m = gpu.alloc_poisoned::<f32>(c).unwrap();
    let mut v = gpu.alloc_poisoned::<f32>(c).unwrap();
    bn.forward_train(&x_d, [&g, &b], [&mut rm, &mut rv], &mut y, [&mut m, &mut v])
        .unwrap();
    check_large_mean_stats(
        "GPU f32",
        &t,
        &gpu.download(&m).unwrap(),
        &gpu.download(&v).unwrap(),
    );
}

/// cuDNN's batch norm and ReLU, the benches' baseline, against the f64 reference in training
/// mode, forward and backward, outputs poisoned: a baseline computing another op would make the
/// benches' speed-ups meaningless. Its bound is looser than our kernels': it is not under test,
/// only checked to be the same op.
#[test]
fn gpu_cudnn_baseline_matches_reference() {
    let test = "batch_norm gpu_cudnn_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    for s in [shape(2, 4, 7, 5), shape(3, 5, 64, 64), shape(8, 96, 35, 35)] {
        for relu in [true, false] {
            let p = params(relu);
            let mut bn = or_return!(library_or_skip(test, BatchNormCudnn::new(&gpu, s, p)));
            let mut inp = draw(&s, 17);
            let as_f32 = |v: &mut Vec<f64>| {
                let (v32, rounded) = round_through::<f32>(v);
                *v = rounded;
                gpu.upload(&v32).unwrap()
            };
            let x = as_f32(&mut inp.x);
            let dy = as_f32(&mut inp.dy);
            let gamma = as_f32(&mut inp.gamma);
            let beta = as_f32(&mut inp.beta);
            let mut running_mean = as_f32(&mut inp.running_mean);
            let mut running_var = as_f32(&mut inp.running_var);
            let mut dgamma = as_f32(&mut inp.dgamma0);
            let mut dbeta = as_f32(&mut inp.dbeta0);
            let t = train64(&s, &p, &inp);
            let (mut y, mut mean, mut invstd) = (
                gpu.alloc_poisoned::<f32>(s.len()).unwrap(),
                gpu.alloc_poisoned::<f32>(s.channels).unwrap(),
                gpu.alloc_poisoned::<f32>(s.channels).unwrap(),
            );
            let (running, saved) = (
                [&mut running_mean, &mut running_var],
                [&mut mean, &mut invstd],
            );
            bn.forward_train(&x, [&gamma, &beta], running, &mut y, saved)
                .unwrap();
            // The backward starts from the forward's own outputs, as in training.
            let d = |v: &cudarc::driver::CudaSlice<f32>| widen(&gpu.download(v).unwrap());
            let (ref_dx, ref_dg, ref_db) =
                back_train64(&s, &p, &inp, &d(&y), &d(&mean), &d(&invstd));
            let mut dx = gpu.alloc_poisoned::<f32>(s.len()).unwrap();
            let grads = [&mut dgamma, &mut dbeta];
            bn.backward_train([&x, &y, &dy], &gamma, [&mean, &invstd], &mut dx, grads)
                .unwrap();
            for (what, got, want) in [
                ("y", d(&y), &t.y),
                ("save_mean", d(&mean), &t.save_mean),
                ("save_invstd", d(&invstd), &t.save_invstd),
                ("running_mean", d(&running_mean), &t.running_mean),
                ("running_var", d(&running_var), &t.running_var),
                ("dx", d(&dx), &ref_dx),
                ("dgamma", d(&dgamma), &ref_dg),
                ("dbeta", d(&dbeta), &ref_db),
            ] {
                let e = rel_error(&got, want);
                println!("cuDNN batch norm relu={relu} {s:?} {what}: relative error {e:.2e}");
                assert!(
                    e < 1e-4,
                    "cuDNN batch norm relu={relu} {s:?}: {what} is {e:.3e} off"
                );
            }
        }
    }
}

/// All four ops of the CPU reference in `R` with activations in `layout` (NCHW values converted
/// in, outputs converted back), in [`GpuOut::named`]'s order. Each activation output goes
/// through `store` (identity, or bf16 rounding for the bf16 reference) before anything reads it:
/// the backwards read the stored training and inference `y`.
fn cpu_run<R: c2f_kernels::Real>(
    layout: Layout,
    s: &BatchNormShape,
    p: &BatchNormParams,
    inp: &Inputs,
    store: fn(R) -> R,
) -> [(&'static str, Vec<f64>); 12] {
    let (c, hw, n) = (s.channels, s.hw(), s.len());
    let laid_out = (layout, *s);
    let real = |v: &[f64]| -> Vec<R> { v.iter().map(|&v| R::from_f64(v)).collect() };
    let act_in = |v: &[f64]| Layout::Nchw.convert(layout, &real(v), c, hw);
    let (x, dy) = (act_in(&inp.x), act_in(&inp.dy));
    let [gamma, beta, rm0, rv0, dg0, db0] = [
        &inp.gamma,
        &inp.beta,
        &inp.running_mean,
        &inp.running_var,
        &inp.dgamma0,
        &inp.dbeta0,
    ]
    .map(|v| real(v));
    let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
    let (mut y, mut mean, mut invstd) = (vec![R::nan(); n], vec![R::nan(); c], vec![R::nan(); c]);
    let affine = [&gamma[..], &beta];
    let (running, saved) = ([&mut rm[..], &mut rv], [&mut mean[..], &mut invstd]);
    forward_train_cpu(&laid_out, p, &x, affine, running, &mut y, saved).unwrap();
    let mut yi = vec![R::nan(); n];
    forward_inference_cpu(&laid_out, p, &x, affine, [&rm0, &rv0], &mut yi).unwrap();
    for v in y.iter_mut().chain(&mut yi) {
        *v = store(*v);
    }
    let (mut dx, mut dg, mut db) = (vec![R::nan(); n], dg0.clone(), db0.clone());
    let (xs, saved) = ([&x[..], &y, &dy], [&mean[..], &invstd]);
    backward_train_cpu(&laid_out, p, xs, &gamma, saved, &mut dx, [&mut dg, &mut db]).unwrap();
    let (mut dxi, mut dgi, mut dbi) = (vec![R::nan(); n], dg0.clone(), db0.clone());
    let (xs, running) = ([&x[..], &yi, &dy], [&rm0[..], &rv0]);
    backward_inference_cpu(
        &laid_out,
        p,
        xs,
        &gamma,
        running,
        &mut dxi,
        [&mut dgi, &mut dbi],
    )
    .unwrap();
    let act_out = |v: &[R]| -> Vec<f64> {
        let stored: Vec<R> = v.iter().map(|&v| store(v)).collect();
        layout
            .convert(Layout::Nchw, &stored, c, hw)
            .iter()
            .map(|&v| c2f_kernels::Real::to_f64(v))
            .collect()
    };
    let wide = |v: &[R]| -> Vec<f64> { v.iter().map(|&v| c2f_kernels::Real::to_f64(v)).collect() };
    [
        ("y train", act_out(&y)),
        ("y inference", act_out(&yi)),
        ("dx train", act_out(&dx)),
        ("dx inference", act_out(&dxi)),
        ("save_mean", wide(&mean)),
        ("save_invstd", wide(&invstd)),
        ("running_mean", wide(&rm)),
        ("running_var", wide(&rv)),
        ("dgamma train", wide(&dg)),
        ("dbeta train", wide(&db)),
        ("dgamma inference", wide(&dgi)),
        ("dbeta inference", wide(&dbi)),
    ]
}

/// The NHWC reference sums each channel's values in NCHW's order, so on the same values it gives
/// NCHW's results bit for bit (f64), every output, C = 1 and odd C included.
#[test]
fn nhwc_reference_matches_nchw_exactly() {
    for s in [shape(2, 3, 4, 5), shape(3, 1, 2, 7), shape(2, 8, 3, 3)] {
        for relu in [false, true] {
            let (p, inp) = (params(relu), draw(&s, 18));
            let nchw = cpu_run::<f64>(Layout::Nchw, &s, &p, &inp, |v| v);
            let nhwc = cpu_run::<f64>(Layout::Nhwc, &s, &p, &inp, |v| v);
            for ((what, a), (_, b)) in nchw.iter().zip(&nhwc) {
                assert!(a.iter().all(|v| v.is_finite()), "{what} not fully written");
                assert_bit_identical(&format!("NHWC vs NCHW relu={relu} {s:?} {what}"), a, b);
            }
        }
    }
}

/// The GPU's NHWC f32 kernels against its NCHW ones on the same values. The element-wise ops
/// given the same statistics (inference forward, inference dx) are the same bits; the
/// reductions run in another tree (per-thread Welford over rows, then a tree over row slots), so
/// the statistics and sums, and what the training y and dx take from them, agree to f32
/// rounding: relative errors of a few f32 ulps (2⁻²⁴ ≈ 6e-8) times the conditioning of the
/// large-mean channels (mean 50, deviation 2.3: about 20), held to 1e-6.
#[test]
fn gpu_nhwc_f32_matches_nchw() {
    let gpu = or_return!(gpu_or_skip("batch_norm gpu_nhwc_f32_matches_nchw"));
    for s in [
        shape(4, 16, 30, 30),
        shape(3, 5, 33, 31),
        shape(8, 96, 17, 17),
    ] {
        for relu in [false, true] {
            let (p, inp) = (params(relu), draw(&s, 19));
            let t = train64(&s, &p, &inp);
            let y_inf = infer64(&s, &p, &inp);
            let f = |v: &[f64]| round_through::<f32>(v).0;
            let gpu_in = GpuIn {
                x: f(&inp.x),
                dy: f(&inp.dy),
                y_train: f(&t.y),
                y_inference: f(&y_inf),
                f32: [
                    &inp.gamma,
                    &inp.beta,
                    &inp.running_mean,
                    &inp.running_var,
                    &t.save_mean,
                    &t.save_invstd,
                    &inp.dgamma0,
                    &inp.dbeta0,
                ]
                .map(|v| f(v)),
            };
            let [nchw, nhwc] = [Layout::Nchw, Layout::Nhwc].map(|layout| {
                let mut bn = BatchNormGpu::<f32>::with_layout(&gpu, s, p, layout).unwrap();
                gpu_run(&gpu, &mut bn, &gpu_in)
            });
            let name = format!("NHWC vs NCHW relu={relu} {s:?}");
            assert_bit_identical(
                &format!("{name} y inference"),
                &nhwc.y_inference,
                &nchw.y_inference,
            );
            assert_bit_identical(
                &format!("{name} dx inference"),
                &nhwc.dx_inference,
                &nchw.dx_inference,
            );
            for ((what, a), (_, b)) in nhwc.named().iter().zip(&nchw.named()) {
                let e = rel_error(a, b);
                println!("{name} {what}: relative error {e:.2e}");
                assert!(e < 1e-6, "{name} {what}: relative error {e:.3e}");
            }
        }
    }
}

/// Rounds to bf16 and back.
fn bf16_round(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// The bf16 NHWC kernels against the bf16 reference (the f32 reference on the same bf16 inputs,
/// each activation output rounded to bf16 once): every activation output within one bf16 ulp,
/// and at most [`c2f_kernels::testing::BF16_ROUNDING_SHARE`] of them one ulp off; the f32
/// outputs within 1e-5. Then mutations of the reference, each rounding at a point the kernels do
/// not, fail that check against the same GPU outputs: the check can tell where rounding happens.
#[test]
fn gpu_nhwc_bf16_rounds_as_reference() {
    let gpu = or_return!(gpu_or_skip("batch_norm gpu_nhwc_bf16_rounds_as_reference"));
    for s in [
        shape(4, 16, 30, 30),
        shape(3, 5, 33, 31),
        shape(8, 96, 17, 17),
    ] {
        for relu in [false, true] {
            let p = params(relu);
            let mut inp = draw(&s, 20);
            let bf = |v: &mut Vec<f64>| *v = round_through::<bf16>(v).1;
            let f = |v: &mut Vec<f64>| *v = round_through::<f32>(v).1;
            bf(&mut inp.x);
            bf(&mut inp.dy);
            for v in [
                &mut inp.gamma,
                &mut inp.beta,
                &mut inp.running_mean,
                &mut inp.running_var,
            ] {
                f(v);
            }
            f(&mut inp.dgamma0);
            f(&mut inp.dbeta0);
            let reference = cpu_run::<f32>(Layout::Nhwc, &s, &p, &inp, bf16_round);
            // The GPU's backwards read the reference's stored y and saved stats.
            let [y_train, y_inference] =
                [&reference[0].1, &reference[1].1].map(|v| round_through::<bf16>(v).0);
            let stat = |i: usize| round_through::<f32>(&reference[i].1).0;
            let f32_in = |v: &[f64]| round_through::<f32>(v).0;
            let gpu_in = GpuIn {
                x: round_through::<bf16>(&inp.x).0,
                dy: round_through::<bf16>(&inp.dy).0,
                y_train,
                y_inference,
                f32: [
                    f32_in(&inp.gamma),
                    f32_in(&inp.beta),
                    f32_in(&inp.running_mean),
                    f32_in(&inp.running_var),
                    stat(4),
                    stat(5),
                    f32_in(&inp.dgamma0),
                    f32_in(&inp.dbeta0),
                ],
            };
            let mut bn = BatchNormGpu::<bf16>::with_layout(&gpu, s, p, Layout::Nhwc).unwrap();
            let out = gpu_run(&gpu, &mut bn, &gpu_in);
            let name = format!("bf16 NHWC relu={relu} {s:?}");
            for (i, ((what, got), (_, want))) in out.named().iter().zip(&reference).enumerate() {
                if i < 4 {
                    let want = round_through::<bf16>(want).0;
                    if let Some(why) = bf16_rounding_mismatch(out.activations()[i], &want) {
                        panic!("{name} {what}: {why}");
                    }
                } else {
                    let e = rel_error(got, want);
                    assert!(e < 1e-5, "{name} {what}: relative error {e:.3e}");
                }
            }
            for (what, i, mutant) in bf16_mutants(&s, &p, &inp, &reference) {
                assert!(
                    bf16_rounding_mismatch(out.activations()[i], &mutant).is_some(),
                    "{name}: the check passes a reference that {what}"
                );
            }
        }
    }
}

/// The bf16 reference's activation outputs recomputed element-wise from its own f32 statistics
/// with one rounding more or one term less, NCHW order: (what the mutant does, the output's
/// index in [`GpuOut::named`], the output).
fn bf16_mutants(
    s: &BatchNormShape,
    p: &BatchNormParams,
    inp: &Inputs,
    reference: &[(&'static str, Vec<f64>); 12],
) -> Vec<(&'static str, usize, Vec<bf16>)> {
    let (hw, channels) = (s.hw(), s.channels);
    let ch = |i: usize| i / hw % channels;
    let relu = |v: f32| if p.relu && v <= 0.0 { 0.0 } else { v };
    let (mean, invstd) = (&reference[4].1, &reference[5].1);
    let y = &reference[0].1;
    let at = |v: &[f64], i: usize| v[i] as f32;
    let n = s.len();
    // y with (x − mean)·scale rounded to bf16 before the shift is added.
    let y_mut = (0..n)
        .map(|i| {
            let c = ch(i);
            let scale = at(&inp.gamma, c) * at(invstd, c);
            let z = bf16_round((at(&inp.x, i) - at(mean, c)) * scale);
            bf16::from_f32(relu(z + at(&inp.beta, c)))
        })
        .collect();
    // dx train without the mean of g.
    let sums: Vec<[f32; 2]> = (0..channels)
        .map(|c| {
            let mut acc = [0.0f32; 2];
            for i in (0..n).filter(|&i| ch(i) == c) {
                let g = if p.relu && y[i] <= 0.0 {
                    0.0
                } else {
                    at(&inp.dy, i)
                };
                acc[0] += g;
                acc[1] += g * (at(&inp.x, i) - at(mean, c));
            }
            acc
        })
        .collect();
    let dx_mut = (0..n)
        .map(|i| {
            let c = ch(i);
            let g = if p.relu && y[i] <= 0.0 {
                0.0
            } else {
                at(&inp.dy, i)
            };
            let invstd = at(invstd, c);
            let proj = sums[c][1] / s.per_channel() as f32 * invstd * invstd;
            let dx = (g - (at(&inp.x, i) - at(mean, c)) * proj) * invstd * at(&inp.gamma, c);
            bf16::from_f32(dx)
        })
        .collect();
    vec![
        ("rounds (x − mean)·scale before the shift", 0, y_mut),
        ("drops the mean of g from dx", 2, dx_mut),
    ]
}

#[test]
fn gpu_nhwc_rejects_bad_input() {
    let gpu = or_return!(gpu_or_skip("batch_norm gpu_nhwc_rejects_bad_input"));
    // 2^24 + 1 channels: 65537 tiles of 256 bf16 channels, above the grid's 65535.
    let s = shape(1, (1 << 24) + 1, 1, 1);
    let err = BatchNormGpu::<bf16>::with_layout(&gpu, s, params(true), Layout::Nhwc)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("batch norm channels 16777217 above the supported 16776960"),
        "{err}"
    );
    let err = BatchNormGpu::<f32>::with_layout(&gpu, shape(2, 0, 3, 3), params(true), Layout::Nhwc)
        .err()
        .unwrap();
    assert!(err.to_string().contains("zero dimension"), "{err}");
    let s = shape(2, 8, 3, 3);
    let mut bn = BatchNormGpu::<f32>::with_layout(&gpu, s, params(true), Layout::Nhwc).unwrap();
    let x = gpu.upload(&vec![1.0f32; s.len() - 1]).unwrap();
    let per_channel = gpu.upload(&[1.0f32; 8]).unwrap();
    let mut y = gpu.alloc_poisoned::<f32>(s.len()).unwrap();
    let err = bn
        .forward_inference(
            &x,
            [&per_channel, &per_channel],
            [&per_channel, &per_channel],
            &mut y,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("batch norm x has 143 elements, expected 144"),
        "{err}"
    );
}

/// A view one element into its buffer is not 16-byte aligned: the kernels take the scalar path
/// (C = 8 would take the vector one) and give its results, the same as from an aligned copy.
#[test]
fn gpu_nhwc_misaligned_view_matches_aligned() {
    let gpu = or_return!(gpu_or_skip(
        "batch_norm gpu_nhwc_misaligned_view_matches_aligned"
    ));
    let s = shape(3, 8, 5, 7);
    let p = params(true);
    let inp = draw(&s, 21);
    let x: Vec<bf16> =
        round_through::<bf16>(&Layout::Nchw.convert(Layout::Nhwc, &inp.x, 8, s.hw())).0;
    let f = |v: &[f64]| gpu.upload(&round_through::<f32>(v).0).unwrap();
    let (g, b, rm, rv) = (
        f(&inp.gamma),
        f(&inp.beta),
        f(&inp.running_mean),
        f(&inp.running_var),
    );
    let mut padded = vec![bf16::from_f32(7.0)];
    padded.extend_from_slice(&x);
    let x_aligned = gpu.upload(&x).unwrap();
    let x_padded = gpu.upload(&padded).unwrap();
    let mut bn = BatchNormGpu::<bf16>::with_layout(&gpu, s, p, Layout::Nhwc).unwrap();
    let mut y_aligned = gpu.alloc_poisoned::<bf16>(s.len()).unwrap();
    bn.forward_inference(&x_aligned, [&g, &b], [&rm, &rv], &mut y_aligned)
        .unwrap();
    let mut y_padded = gpu.alloc_poisoned::<bf16>(s.len() + 1).unwrap();
    let mut y_view = y_padded.slice_mut(1..);
    bn.forward_inference(&x_padded.slice(1..), [&g, &b], [&rm, &rv], &mut y_view)
        .unwrap();
    let got = gpu.download(&y_padded).unwrap();
    assert_bit_identical(
        "misaligned y",
        &got[1..],
        &gpu.download(&y_aligned).unwrap(),
    );
}
