//! Softmax cross-entropy and dropout: the CPU reference against hand-computed values, finite
//! differences (f64) and its documented mask formula, and the CUDA kernels against the CPU in f32
//! and bf16, and the bench's cuDNN baseline against the reference (skipped without a GPU).

use crate::common::gpu_tests::{assert_close, check_loss_launch, f32_and_bf16_tests};
use crate::common::skip::or_return;
use c2f_baselines::softmax_ce::{nll_gradient, LogSoftmaxCudnn};
use c2f_kernels::device::NO_STATS;
use c2f_kernels::dropout::{
    dropout_backward_cpu, dropout_forward_cpu, step_words, DropoutGpu, DropoutParams,
};
use c2f_kernels::rng::splitmix64_output;
use c2f_kernels::softmax_ce::{forward_backward_cpu, forward_cpu, SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::testing::{
    assert_bit_identical, gpu_or_skip, library_or_skip, numeric_gradient, rel_error, round_through,
    widen, SplitMix64,
};
use c2f_kernels::{Element, Error, Gpu, Real, Result};

fn shape(batch: usize, classes: usize) -> SoftmaxCeShape {
    SoftmaxCeShape { batch, classes }
}

/// Logits uniform in `[-spread, spread)` and labels uniform in `[0, C)`.
fn draw_inputs(s: &SoftmaxCeShape, spread: f64, seed: u64) -> (Vec<f64>, Vec<i32>) {
    let mut rng = SplitMix64(seed);
    let logits = rng.uniform_vec(s.logits_len(), -spread, spread);
    let labels = (0..s.batch)
        .map(|_| rng.below(s.classes as u64) as i32)
        .collect();
    (logits, labels)
}

/// The f64 reference: (loss, predictions, dlogits).
fn ce64(
    s: &SoftmaxCeShape,
    logits: &[f64],
    labels: &[i32],
    loss_scale: f64,
) -> (f64, Vec<i32>, Vec<f64>) {
    let mut preds = vec![-7; s.batch];
    let mut grad = vec![f64::NAN; s.logits_len()];
    let loss = forward_backward_cpu(s, logits, labels, loss_scale, &mut preds, &mut grad).unwrap();
    (loss, preds, grad)
}

#[test]
fn hand_computed_two_class_case() {
    // softmax([0, ln 3]) = [1/4, 3/4]; label 0 costs ln 4, label 1 costs ln(4/3).
    let s = shape(2, 2);
    let l3 = 3f64.ln();
    let logits = [0.0, l3, 0.0, l3];
    let labels = [0, 1];
    let want_loss = (4f64.ln() + (4.0f64 / 3.0).ln()) / 2.0;
    for scale in [1.0, 2.0] {
        let (loss, preds, grad) = ce64(&s, &logits, &labels, scale);
        assert_close("loss", loss, want_loss, 1e-14);
        assert_eq!(preds, [1, 1]);
        // (softmax - onehot) / B, times the loss scale.
        let want = [-3.0 / 8.0, 3.0 / 8.0, 1.0 / 8.0, -1.0 / 8.0].map(|g| g * scale);
        for (g, w) in grad.iter().zip(want) {
            assert_close("dlogits", *g, w, 1e-14);
        }
    }
}

#[test]
fn hand_computed_uniform_row_ties_to_first_index() {
    // Equal logits: softmax 1/4 each, loss ln 4, argmax the first index.
    let s = shape(1, 4);
    let (loss, preds, grad) = ce64(&s, &[5.0; 4], &[2], 1.0);
    assert_close("loss", loss, 4f64.ln(), 1e-14);
    assert_eq!(preds, [0]);
    for (j, g) in grad.iter().enumerate() {
        let want = if j == 2 { -0.75 } else { 0.25 };
        assert_close("dlogits", *g, want, 1e-14);
    }
}

#[test]
fn argmax_follows_torch_ties_and_nan() {
    let s = shape(5, 4);
    let nan = f64::NAN;
    let logits = [
        1.0,
        3.0,
        3.0,
        0.0, // tie between 1 and 2: first
        2.0,
        2.0,
        2.0,
        2.0, // all equal: 0
        1.0,
        nan,
        5.0,
        nan, // NaN is the maximum, first NaN wins
        -1.0,
        -2.0,
        -0.5,
        -0.75, // plain maximum at 2
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        -3.0,
    ];
    let mut preds = vec![-7; 5];
    forward_cpu(&s, &logits, &[0, 0, 0, 0, 0], &mut preds).unwrap();
    assert_eq!(preds, [1, 0, 1, 2, 3]);
}

#[test]
fn dlogits_match_finite_differences() {
    let s = shape(3, 7);
    let (logits, labels) = draw_inputs(&s, 3.0, 1);
    let scale = 0.7;
    let (_, _, grad) = ce64(&s, &logits, &labels, scale);
    let mut preds = vec![0; s.batch];
    let num = numeric_gradient(
        |x| scale * forward_cpu(&s, x, &labels, &mut preds).unwrap(),
        &logits,
        1e-6,
    );
    let e = rel_error(&grad, &num);
    assert!(e < 1e-7, "dlogits relative error {e}");
    // Each row's gradient sums to zero: softmax sums to one.
    for row in grad.chunks(s.classes) {
        let sum: f64 = row.iter().sum();
        assert!(sum.abs() < 1e-15, "row gradient sum {sum}");
    }
}

#[test]
fn forward_only_matches_forward_backward() {
    let s = shape(9, 13);
    let (logits, labels) = draw_inputs(&s, 4.0, 2);
    let (loss, preds, _) = ce64(&s, &logits, &labels, 1.0);
    let mut preds_only = vec![-7; s.batch];
    let loss_only = forward_cpu(&s, &logits, &labels, &mut preds_only).unwrap();
    assert_eq!(loss_only.to_bits(), loss.to_bits());
    assert_eq!(preds_only, preds);
}

#[test]
fn large_logits_give_finite_results() {
    let s = shape(3, 3);
    let logits = [
        1e4, 0.0, -1e4, // label 0: loss ln(1 + e^-1e4 + e^-2e4) = 0
        -1e4, 1e4, 9999.0, // label 2: loss 1 + ln(1 + e^-1)
        1e4, -1e4, 0.0, // label 1: loss 2e4
    ];
    let labels = [0, 2, 1];
    let want = (0.0 + 1.0 + (1.0 + (-1f64).exp()).ln() + 2e4) / 3.0;
    let (loss, preds, grad) = ce64(&s, &logits, &labels, 1.0);
    assert_close("f64 loss", loss, want, 1e-14);
    assert_eq!(preds, [0, 1, 0]);
    assert!(grad.iter().all(|g| g.is_finite()));

    let logits32: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    let mut preds32 = vec![-7; 3];
    let mut grad32 = vec![f32::NAN; 9];
    let loss32 =
        forward_backward_cpu(&s, &logits32, &labels, 1.0, &mut preds32, &mut grad32).unwrap();
    assert!(loss32.is_finite() && grad32.iter().all(|g| g.is_finite()));
    assert_close("f32 loss", loss32 as f64, want, 1e-6);
    assert_eq!(preds32, preds);
    let e = rel_error(&widen(&grad32), &grad);
    assert!(e < 1e-6, "f32 dlogits relative error {e}");
}

#[test]
fn f32_reference_matches_f64() {
    let s = shape(16, 200);
    let (logits, labels) = draw_inputs(&s, 8.0, 3);
    let (logits32, logits64) = round_through::<f32>(&logits);
    let (loss, preds, grad) = ce64(&s, &logits64, &labels, 1.5);
    let mut preds32 = vec![-7; s.batch];
    let mut grad32 = vec![f32::NAN; s.logits_len()];
    let loss32 =
        forward_backward_cpu(&s, &logits32, &labels, 1.5, &mut preds32, &mut grad32).unwrap();
    assert_close("f32 loss", loss32 as f64, loss, 1e-6);
    assert_eq!(preds32, preds);
    let e = rel_error(&widen(&grad32), &grad);
    assert!(e < 1e-5, "f32 dlogits relative error {e}");
}

#[test]
fn bad_label_is_an_error_and_writes_nothing() {
    let s = shape(4, 3);
    let logits = [0.5f32; 12];
    for (labels, index, label) in [([0, 3, -1, 2], 1, 3), ([-1, 0, 7, 1], 0, -1)] {
        let mut preds = vec![42; 4];
        let mut grad = vec![9.0f32; 12];
        let err =
            forward_backward_cpu(&s, &logits, &labels, 1.0, &mut preds, &mut grad).unwrap_err();
        match err {
            Error::Label {
                index: i,
                label: l,
                classes: 3,
            } => assert_eq!((i, l), (index, label)),
            e => panic!("expected a label error, got {e}"),
        }
        assert!(preds.iter().all(|&p| p == 42), "predictions written");
        assert!(grad.iter().all(|&g| g == 9.0), "dlogits written");
        let err = forward_cpu(&s, &logits, &labels, &mut preds).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "label {label} of sample {index} is outside [0, 3)"
            )),
            "{err}"
        );
    }
}

#[test]
fn wrong_lengths_and_parameters_are_clear_errors() {
    let s = shape(2, 3);
    let logits = [1.0f32; 6];
    let mut preds = [0; 2];
    let mut grad = [0.0f32; 6];
    let msg = |e: Error| e.to_string();
    let e = forward_cpu(&s, &logits[..5], &[0, 1], &mut preds).unwrap_err();
    assert!(
        msg(e).contains("softmax CE logits has 5 elements, expected 6"),
        "logits"
    );
    let e = forward_cpu(&s, &logits, &[0], &mut preds).unwrap_err();
    assert!(msg(e).contains("labels has 1 elements, expected 2"));
    let e =
        forward_backward_cpu(&s, &logits, &[0, 1], 1.0, &mut preds, &mut grad[..4]).unwrap_err();
    assert!(msg(e).contains("dlogits has 4 elements, expected 6"));
    let e =
        forward_backward_cpu(&s, &logits, &[0, 1], f64::NAN, &mut preds, &mut grad).unwrap_err();
    assert!(msg(e).contains("loss_scale NaN is not finite"));
    let e = forward_cpu(&shape(0, 3), &[] as &[f32], &[], &mut []).unwrap_err();
    assert!(msg(e).contains("zero dimension"));
}

/// Dropout's parameters and the step whose mask it draws.
#[derive(Debug, Clone, Copy)]
struct Dropout {
    params: DropoutParams,
    step: u64,
}

impl Dropout {
    fn key(&self) -> u64 {
        self.params.key(self.step)
    }

    fn keeps(&self, index: u64) -> bool {
        self.params.keeps(self.step, index)
    }

    fn threshold(&self) -> u32 {
        self.params.threshold()
    }

    fn inference(self) -> Dropout {
        Dropout {
            params: DropoutParams {
                training: false,
                ..self.params
            },
            ..self
        }
    }
}

fn dropout(p: f64, seed: u64, step: u64) -> Dropout {
    Dropout {
        params: DropoutParams {
            p,
            seed,
            training: true,
        },
        step,
    }
}

fn forward<R: Real>(d: &Dropout, x: &[R], y: &mut [R]) -> Result<()> {
    dropout_forward_cpu(&d.params, d.step, x, y)
}

fn backward<R: Real>(d: &Dropout, dy: &[R], dx: &mut [R]) -> Result<()> {
    dropout_backward_cpu(&d.params, d.step, dy, dx)
}

/// Values in `±[0.5, 2)`: never zero, so a zero output means a dropped element.
fn nonzero_values(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let v = rng.uniform(0.5, 2.0);
            if rng.below(2) == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

#[test]
fn dropout_mask_follows_the_documented_formula() {
    let params = dropout(0.3, 7, 3);
    // key: the (step+1)-th output of splitmix64 seeded with `seed`.
    let mut seeded = SplitMix64(7);
    let key = (0..4).map(|_| seeded.next_u64()).last().unwrap();
    assert_eq!(params.key(), key);
    assert_eq!(splitmix64_output(7, 4), key);
    // u_i: the (i+1)-th output of splitmix64 seeded with the key.
    let mut stream = SplitMix64(key);
    let x = vec![1.0f64; 5000];
    let mut y = vec![f64::NAN; x.len()];
    forward(&params, &x, &mut y).unwrap();
    let scale = 1.0 / 0.7;
    for (i, &yi) in y.iter().enumerate() {
        let u = stream.next_u64();
        let keep = (u >> 40) as f64 / (1u64 << 24) as f64 >= 0.3;
        assert_eq!(params.keeps(i as u64), keep, "element {i}");
        assert_eq!(yi, if keep { scale } else { 0.0 }, "element {i}");
    }
}

#[test]
fn dropout_keep_test_is_exact_at_the_boundary() {
    // With p exactly element 0's draw r/2^24 the element is kept (r/2^24 ≥ p); with p one ulp
    // above, it is dropped.
    let probe = dropout(0.0, 8, 2);
    let r = splitmix64_output(probe.key(), 1) >> 40;
    let p = r as f64 / (1u64 << 24) as f64;
    let at = dropout(p, 8, 2);
    assert!(at.keeps(0), "r = {r}, p = {p}: dropped");
    assert_eq!(at.threshold() as u64, r);
    let above = dropout(f64::from_bits(p.to_bits() + 1), 8, 2);
    assert!(!above.keeps(0), "r = {r}, p just above: kept");
    let mut y = [f32::NAN; 1];
    forward(&above, &[1.5f32], &mut y).unwrap();
    assert_eq!(y[0], 0.0);
    forward(&at, &[1.5f32], &mut y).unwrap();
    assert_eq!(y[0], (1.5 * (1.0 / (1.0 - p))) as f32);
}

#[test]
fn dropout_keeps_a_fraction_one_minus_p() {
    let n = 100_000;
    let x = nonzero_values(n, 11);
    for p in [0.1, 0.3, 0.5, 0.9] {
        let mut y = vec![f64::NAN; n];
        forward(&dropout(p, 5, 0), &x, &mut y).unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        let frac = kept as f64 / n as f64;
        // 0.01 is more than six standard deviations of the fraction at p = 0.5.
        assert!((frac - (1.0 - p)).abs() < 0.01, "p = {p}: kept {frac}");
        for (&yi, &xi) in y.iter().zip(&x) {
            assert!(yi == 0.0 || yi == xi * (1.0 / (1.0 - p)), "{yi} from {xi}");
        }
    }
    // Another step and another seed draw other masks: about p² + (1−p)² of the decisions agree.
    let kept = |params: Dropout| -> Vec<bool> { (0..n as u64).map(|i| params.keeps(i)).collect() };
    let base = kept(dropout(0.5, 5, 0));
    for other in [dropout(0.5, 5, 1), dropout(0.5, 6, 0)] {
        let same = base
            .iter()
            .zip(kept(other))
            .filter(|(a, b)| **a == *b)
            .count();
        let frac = same as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.01, "{other:?}: {frac} agree");
    }
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let n = 10_007;
    let params = dropout(0.4, 99, 12);
    let x = nonzero_values(n, 1);
    let dy = nonzero_values(n, 2);
    let mut y = vec![f64::NAN; n];
    let mut dx = vec![f64::NAN; n];
    forward(&params, &x, &mut y).unwrap();
    backward(&params, &dy, &mut dx).unwrap();
    let scale = 1.0 / 0.6;
    let mut dropped = 0;
    for i in 0..n {
        if y[i] == 0.0 {
            dropped += 1;
            assert_eq!(dx[i], 0.0, "element {i} dropped forward, kept backward");
        } else {
            assert_eq!(dx[i], dy[i] * scale, "element {i}");
        }
    }
    assert!(dropped > n / 4 && dropped < n / 2, "{dropped} dropped");
}

#[test]
fn dropout_edge_probabilities_and_inference() {
    let x32: Vec<f32> = nonzero_values(3001, 3).iter().map(|&v| v as f32).collect();
    let mut y = vec![f32::NAN; x32.len()];
    forward(&dropout(0.0, 1, 0), &x32, &mut y).unwrap();
    assert_bit_identical("p = 0", &y, &x32);
    forward(&dropout(1.0, 1, 0), &x32, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0), "p = 1 keeps something");
    let inference = dropout(0.5, 1, 0).inference();
    y.fill(f32::NAN);
    forward(&inference, &x32, &mut y).unwrap();
    assert_bit_identical("inference", &y, &x32);
    y.fill(f32::NAN);
    backward(&inference, &x32, &mut y).unwrap();
    assert_bit_identical("inference backward", &y, &x32);
}

#[test]
fn dropout_bad_probability_or_length_is_an_error() {
    let x = [1.0f32; 8];
    let mut y = [0.0f32; 8];
    for p in [-0.1, 1.5, f64::NAN] {
        for training in [true, false] {
            let mut params = dropout(p, 0, 0);
            params.params.training = training;
            let err = forward(&params, &x, &mut y).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("dropout probability {p} is outside [0, 1]")),
                "{err}"
            );
        }
    }
    let err = backward(&dropout(0.5, 0, 0), &x, &mut y[..7]).unwrap_err();
    assert!(
        err.to_string()
            .contains("dropout output has 7 elements, expected 8"),
        "{err}"
    );
}

/// Runs the CE kernels in `T` and checks them against the f64 reference on the same rounded
/// inputs; the predictions must match exactly (ties included), and reruns give the same bits.
fn gpu_ce_matches_reference<T: Element>(gpu: &Gpu, s: SoftmaxCeShape, spread: f64, tol: f64) {
    let (logits, labels) = draw_inputs(&s, spread, 21);
    let (logits_t, logits64) = round_through::<T>(&logits);
    let loss_scale = 0.5;
    let (ref_loss, ref_preds, ref_grad) = ce64(&s, &logits64, &labels, loss_scale);

    let mut ce = SoftmaxCeGpu::<T>::new(gpu, s).unwrap();
    let x_d = gpu.upload(&logits_t).unwrap();
    let y_d = gpu.upload(&labels).unwrap();
    let name = format!("softmax CE {} {s:?}", T::SUFFIX);
    let reference = (ref_loss, &ref_preds[..], &ref_grad[..]);
    check_loss_launch::<T>(gpu, &name, reference, tol, |preds, grad| {
        ce.enqueue_forward_backward(&x_d, &y_d, loss_scale, preds, grad, NO_STATS)
            .unwrap();
        ce.finish().unwrap()
    });

    let mut preds_only = gpu.upload(&vec![-7i32; s.batch]).unwrap();
    ce.enqueue_forward(&x_d, &y_d, &mut preds_only).unwrap();
    let loss_only = ce.finish().unwrap();
    assert_close(
        &format!("{name}: forward loss"),
        loss_only as f64,
        ref_loss,
        tol,
    );
    assert_eq!(gpu.download(&preds_only).unwrap(), ref_preds, "{name}");
}

/// Odd class counts, more classes than threads, many samples, and the CUB-200 head.
fn gpu_shapes() -> Vec<SoftmaxCeShape> {
    vec![
        shape(3, 7),
        shape(32, 200),
        shape(5, 1000),
        shape(2, 2049),
        shape(300, 10),
    ]
}

f32_and_bf16_tests!(
    "softmax_ce",
    gpu_ce_f32_matches_reference,
    gpu_ce_bf16_matches_reference,
    |gpu, T, tol| {
        for s in gpu_shapes() {
            gpu_ce_matches_reference::<T>(&gpu, s, 6.0, tol);
        }
        // Logits around ±1e4: the row max keeps everything finite.
        gpu_ce_matches_reference::<T>(&gpu, shape(8, 50), 1e4, tol);
    }
);

#[test]
fn gpu_ce_bad_label_is_an_error_then_recovers() {
    let gpu = or_return!(gpu_or_skip(
        "softmax_ce gpu_ce_bad_label_is_an_error_then_recovers"
    ));
    let s = shape(6, 5);
    let (logits, good) = draw_inputs(&s, 2.0, 31);
    let (ref_loss, _, _) = ce64(&s, &logits, &good, 1.0);
    let logits32: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    let mut ce = SoftmaxCeGpu::<f32>::new(&gpu, s).unwrap();
    let x_d = gpu.upload(&logits32).unwrap();
    let mut preds = gpu.upload(&vec![-7i32; s.batch]).unwrap();
    let mut grad = gpu.alloc_poisoned::<f32>(s.logits_len()).unwrap();
    let mut bad = good.clone();
    bad[4] = -3;
    bad[2] = 5;
    let bad_d = gpu.upload(&bad).unwrap();
    for training in [true, false] {
        if training {
            ce.enqueue_forward_backward(&x_d, &bad_d, 1.0, &mut preds, &mut grad, NO_STATS)
        } else {
            ce.enqueue_forward(&x_d, &bad_d, &mut preds)
        }
        .unwrap();
        let err = ce.finish().unwrap_err();
        match err {
            Error::Label {
                index: 2,
                label: 5,
                classes: 5,
            } => {}
            e => panic!("expected label 5 of sample 2, got {e}"),
        }
        // The status was reset: the next call with good labels succeeds.
        let good_d = gpu.upload(&good).unwrap();
        ce.enqueue_forward_backward(&x_d, &good_d, 1.0, &mut preds, &mut grad, NO_STATS)
            .unwrap();
        let loss = ce.finish().unwrap();
        assert_close("loss after a bad call", loss as f64, ref_loss, 1e-5);
    }
}

#[test]
fn gpu_ce_wrong_length_is_an_error() {
    let gpu = or_return!(gpu_or_skip("softmax_ce gpu_ce_wrong_length_is_an_error"));
    let s = shape(2, 3);
    let mut ce = SoftmaxCeGpu::<f32>::new(&gpu, s).unwrap();
    let x_d = gpu.upload(&[1.0f32; 5]).unwrap();
    let y_d = gpu.upload(&[0i32, 1]).unwrap();
    let mut preds = gpu.alloc_zeros::<i32>(2).unwrap();
    let err = ce.enqueue_forward(&x_d, &y_d, &mut preds).unwrap_err();
    assert!(
        err.to_string()
            .contains("softmax CE logits has 5 elements, expected 6"),
        "{err}"
    );
}

/// Dropout on the GPU in `T` must give exactly the CPU's bits (the CPU in f32 on the same rounded
/// values, rounded to `T`): the same mask, the same product. Forward and backward, and reruns.
fn gpu_dropout_matches_cpu<T: Element>(gpu: &Gpu, n: usize, params: Dropout) {
    let (x_t, x64) = round_through::<T>(&nonzero_values(n, 41));
    let (dy_t, dy64) = round_through::<T>(&nonzero_values(n, 42));
    let cpu = |input: &[f64], is_backward: bool| -> Vec<T> {
        let input32: Vec<f32> = input.iter().map(|&v| v as f32).collect();
        let mut out = vec![f32::NAN; n];
        if is_backward {
            backward(&params, &input32, &mut out).unwrap();
        } else {
            forward(&params, &input32, &mut out).unwrap();
        }
        out.iter().map(|&v| T::from_f32(v)).collect()
    };
    let (ref_y, ref_dx) = (cpu(&x64, false), cpu(&dy64, true));

    let drop = DropoutGpu::<T>::new(gpu).unwrap();
    let step = gpu.upload(&step_words(params.step)).unwrap();
    let x_d = gpu.upload(&x_t).unwrap();
    let dy_d = gpu.upload(&dy_t).unwrap();
    let run = || {
        let mut y = gpu.alloc_poisoned::<T>(n).unwrap();
        let mut dx = gpu.alloc_poisoned::<T>(n).unwrap();
        drop.apply(&params.params, &step, &x_d, &mut y).unwrap();
        drop.apply(&params.params, &step, &dy_d, &mut dx).unwrap();
        (gpu.download(&y).unwrap(), gpu.download(&dx).unwrap())
    };
    let (y, dx) = run();
    let name = format!("dropout {} n {n} {params:?}", T::SUFFIX);
    assert_bit_identical(&format!("{name}: GPU y vs CPU"), &y, &ref_y);
    assert_bit_identical(&format!("{name}: GPU dx vs CPU"), &dx, &ref_dx);
    let (y2, dx2) = run();
    assert_bit_identical(&format!("{name}: y"), &y, &y2);
    assert_bit_identical(&format!("{name}: dx"), &dx, &dx2);
}

fn gpu_dropout_cases<T: Element>(gpu: &Gpu) {
    for n in [1, 1000, 100_003, (1 << 21) + 5] {
        gpu_dropout_matches_cpu::<T>(gpu, n, dropout(0.3, 17, 4));
    }
    for p in [0.0, 0.5, 1.0] {
        gpu_dropout_matches_cpu::<T>(gpu, 4099, dropout(p, 3, 1));
    }
    let inference = dropout(0.5, 3, 1).inference();
    gpu_dropout_matches_cpu::<T>(gpu, 4099, inference);
}

#[test]
fn gpu_dropout_f32_matches_cpu() {
    let gpu = or_return!(gpu_or_skip("softmax_ce gpu_dropout_f32_matches_cpu"));
    gpu_dropout_cases::<f32>(&gpu);
}

#[test]
fn gpu_dropout_bf16_matches_cpu() {
    let gpu = or_return!(gpu_or_skip("softmax_ce gpu_dropout_bf16_matches_cpu"));
    gpu_dropout_cases::<half::bf16>(&gpu);
}

/// The bench's cuDNN baseline gives the reference's log-probabilities and `dlogits`.
#[test]
fn gpu_cudnn_baseline_matches_reference() {
    let test = "softmax_ce gpu_cudnn_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    for s in [shape(3, 7), shape(64, 200), shape(5, 2049)] {
        let mut cudnn = or_return!(library_or_skip(test, LogSoftmaxCudnn::new(&gpu, s)));
        let (logits, labels) = draw_inputs(&s, 6.0, 23);
        let (logits32, logits64) = round_through::<f32>(&logits);
        let loss_scale = 0.5;
        let (_, _, ref_grad) = ce64(&s, &logits64, &labels, loss_scale);
        let ref_log_probs: Vec<f64> = logits64
            .chunks(s.classes)
            .flat_map(|row| {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let log_sum = row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                row.iter().map(move |x| x - m - log_sum)
            })
            .collect();
        let x_d = gpu.upload(&logits32).unwrap();
        let dy_d = gpu
            .upload(&nll_gradient(&s, &labels, loss_scale).unwrap())
            .unwrap();
        let mut dx_d = gpu.alloc_poisoned::<f32>(s.logits_len()).unwrap();
        cudnn.forward_backward(&x_d, &dy_d, &mut dx_d).unwrap();
        let log_probs = gpu.download(cudnn.log_probs()).unwrap();
        let grad = gpu.download(&dx_d).unwrap();
        let e = rel_error(&widen(&log_probs), &ref_log_probs);
        assert!(e < 1e-5, "cuDNN log-softmax {s:?}: relative error {e}");
        let e = rel_error(&widen(&grad), &ref_grad);
        assert!(e < 1e-5, "cuDNN softmax dlogits {s:?}: relative error {e}");
    }
    let err = nll_gradient(&shape(2, 3), &[0, 3], 1.0).unwrap_err();
    assert!(matches!(err, Error::Label { index: 1, .. }), "{err}");
}
