//! Sigmoid binary cross-entropy: the CPU reference against hand-computed values and finite
//! differences (f64), and the CUDA kernel against it in f32 and bf16, and the bench's cuDNN
//! baseline's gradient against it (skipped without a GPU).

use crate::common::gpu_tests::{assert_close, check_loss_launch};
use crate::common::skip::or_return;
use c2f_baselines::sigmoid_bce::SigmoidBceCudnn;
use c2f_kernels::device::NO_STATS;
use c2f_kernels::sigmoid_bce::{forward_backward_cpu, sigmoid, SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::testing::{
    gpu_or_skip, library_or_skip, numeric_gradient, rel_error, round_through, widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu};

fn shape(batch: usize, outputs: usize) -> SigmoidBceShape {
    SigmoidBceShape { batch, outputs }
}

/// Logits uniform in `[-spread, spread)` and 0/1 targets drawn at random.
fn draw_inputs(s: &SigmoidBceShape, spread: f64, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64(seed);
    let logits = rng.uniform_vec(s.len(), -spread, spread);
    let targets = (0..s.len()).map(|_| rng.below(2) as f64).collect();
    (logits, targets)
}

/// The f64 reference: (loss, predictions, dlogits), outputs poisoned first.
fn bce64(
    s: &SigmoidBceShape,
    logits: &[f64],
    targets: &[f64],
    loss_scale: f64,
) -> (f64, Vec<i32>, Vec<f64>) {
    let mut preds = vec![-7; s.len()];
    let mut grad = vec![f64::NAN; s.len()];
    let loss = forward_backward_cpu(s, logits, targets, loss_scale, &mut preds, &mut grad).unwrap();
    (loss, preds, grad)
}

#[test]
fn hand_computed_case() {
    // σ(ln 3) = 3/4 and σ(−ln 3) = 1/4.
    // Sample 0: x = [ln 3, 0], t = [1, 0]: −ln(3/4) and ln 2.
    // Sample 1: x = [−ln 3, 2], t = [1, 1]: −ln(1/4) and −ln σ(2).
    let s = shape(2, 2);
    let l3 = 3f64.ln();
    let logits = [l3, 0.0, -l3, 2.0];
    let targets = [1.0, 0.0, 1.0, 1.0];
    let sig2 = 1.0 / (1.0 + (-2f64).exp());
    let want_loss = ((-(0.75f64).ln() + 2f64.ln()) / 2.0 + (4f64.ln() - sig2.ln()) / 2.0) / 2.0;
    for scale in [1.0, 3.0] {
        let (loss, preds, grad) = bce64(&s, &logits, &targets, scale);
        assert_close("loss", loss, want_loss, 1e-14);
        assert_eq!(preds, [1, 0, 0, 1]);
        // (σ − t) / (B·A), times the loss scale.
        let want = [-0.25, 0.5, -0.75, sig2 - 1.0].map(|g| g * scale / 4.0);
        for (g, w) in grad.iter().zip(want) {
            assert_close("dlogits", *g, w, 1e-14);
        }
    }
}

#[test]
fn dlogits_match_finite_differences() {
    let s = shape(5, 7);
    let (logits, targets) = draw_inputs(&s, 4.0, 1);
    let scale = 0.6;
    let (_, _, grad) = bce64(&s, &logits, &targets, scale);
    let num = numeric_gradient(|x| scale * bce64(&s, x, &targets, 1.0).0, &logits, 1e-6);
    let e = rel_error(&grad, &num);
    assert!(e < 1e-7, "dlogits relative error {e}");
}

#[test]
fn soft_targets_have_their_minimum_at_the_logit() {
    // For t in (0, 1) the loss is smallest at x = ln(t/(1−t)), where σ(x) = t: the gradient
    // vanishes there.
    let s = shape(1, 3);
    let targets = [0.2, 0.5, 0.9];
    let logits: Vec<f64> = targets
        .iter()
        .map(|&t: &f64| (t / (1.0 - t)).ln())
        .collect();
    let (_, _, grad) = bce64(&s, &logits, &targets, 1.0);
    for g in grad {
        assert!(g.abs() < 1e-15, "gradient {g} at the minimum");
    }
}

#[test]
fn large_logits_give_finite_results_and_nan_predicts_zero() {
    let s = shape(1, 4);
    let logits = [1e4, -1e4, 1e4, -1e4];
    let targets = [1.0, 0.0, 0.0, 1.0];
    // Right with certainty costs 0; wrong costs |x|.
    let (loss, preds, grad) = bce64(&s, &logits, &targets, 1.0);
    assert_close("loss", loss, 2e4 / 4.0, 1e-14);
    assert_eq!(preds, [1, 0, 1, 0]);
    assert_eq!(grad, [0.0, 0.0, 0.25, -0.25]);
    let logits32 = [1e4f32, -1e4, 1e4, -1e4];
    let t32 = [1.0f32, 0.0, 0.0, 1.0];
    let mut p = [-7; 4];
    let mut g = [f32::NAN; 4];
    let loss32 = forward_backward_cpu(&s, &logits32, &t32, 1.0, &mut p, &mut g).unwrap();
    assert_eq!(loss32, 5e3);
    assert_eq!(g, [0.0, 0.0, 0.25, -0.25]);
    assert_eq!(sigmoid(-1e4f32), 0.0);
    let (_, p, _) = bce64(&shape(1, 1), &[f64::NAN], &[1.0], 1.0);
    assert_eq!(p, [0], "NaN is not a positive prediction");
}

#[test]
fn f32_reference_matches_f64() {
    let s = shape(16, 40);
    let (logits, targets) = draw_inputs(&s, 8.0, 3);
    let (logits32, logits64) = round_through::<f32>(&logits);
    let targets32: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
    let (loss, preds, grad) = bce64(&s, &logits64, &targets, 1.5);
    let mut preds32 = vec![-7; s.len()];
    let mut grad32 = vec![f32::NAN; s.len()];
    let loss32 =
        forward_backward_cpu(&s, &logits32, &targets32, 1.5, &mut preds32, &mut grad32).unwrap();
    assert_close("f32 loss", loss32 as f64, loss, 1e-6);
    assert_eq!(preds32, preds);
    let e = rel_error(&widen(&grad32), &grad);
    assert!(e < 1e-6, "f32 dlogits relative error {e}");
}

#[test]
fn wrong_lengths_and_parameters_are_clear_errors() {
    let s = shape(2, 3);
    let x = [1.0f32; 6];
    let mut preds = [0; 6];
    let mut grad = [0.0f32; 6];
    let msg = |e: c2f_kernels::Error| e.to_string();
    let e = forward_backward_cpu(&s, &x[..5], &x, 1.0, &mut preds, &mut grad).unwrap_err();
    assert!(msg(e).contains("sigmoid BCE logits has 5 elements, expected 6"));
    let e = forward_backward_cpu(&s, &x, &x[..4], 1.0, &mut preds, &mut grad).unwrap_err();
    assert!(msg(e).contains("sigmoid BCE targets has 4 elements, expected 6"));
    let e = forward_backward_cpu(&s, &x, &x, 1.0, &mut preds[..2], &mut grad).unwrap_err();
    assert!(msg(e).contains("predictions has 2 elements, expected 6"));
    let e = forward_backward_cpu(&s, &x, &x, 1.0, &mut preds, &mut grad[..1]).unwrap_err();
    assert!(msg(e).contains("dlogits has 1 elements, expected 6"));
    let e = forward_backward_cpu(&s, &x, &x, f64::INFINITY, &mut preds, &mut grad).unwrap_err();
    assert!(msg(e).contains("loss_scale inf is not finite"));
    let e =
        forward_backward_cpu(&shape(3, 0), &[] as &[f32], &[], 1.0, &mut [], &mut []).unwrap_err();
    assert!(msg(e).contains("zero dimension"));
}

/// Runs the kernels in `T` against the f64 reference on the same rounded inputs: predictions
/// exactly, loss and gradient within `tol`, and a rerun gives the same bits.
fn gpu_matches_reference<T: Element>(gpu: &Gpu, s: SigmoidBceShape, spread: f64, tol: f64) {
    let (logits, targets) = draw_inputs(&s, spread, 21);
    let (logits_t, logits64) = round_through::<T>(&logits);
    let (targets_t, targets64) = round_through::<T>(&targets);
    let loss_scale = 0.5;
    let (ref_loss, ref_preds, ref_grad) = bce64(&s, &logits64, &targets64, loss_scale);

    let mut bce = SigmoidBceGpu::<T>::new(gpu, s).unwrap();
    let x_d = gpu.upload(&logits_t).unwrap();
    let t_d = gpu.upload(&targets_t).unwrap();
    let name = format!("sigmoid BCE {} {s:?}", T::SUFFIX);
    let reference = (ref_loss, &ref_preds[..], &ref_grad[..]);
    check_loss_launch::<T>(gpu, &name, reference, tol, |preds, grad| {
        bce.enqueue_forward_backward(&x_d, &t_d, loss_scale, preds, grad, NO_STATS)
            .unwrap();
        bce.finish().unwrap()
    });
}

/// CelebA's 40 attributes and the paper's 6, one output, more outputs than threads, many
/// samples.
fn gpu_shapes() -> Vec<SigmoidBceShape> {
    vec![
        shape(64, 40),
        shape(7, 6),
        shape(3, 1),
        shape(2, 300),
        shape(500, 3),
    ]
}

#[test]
fn gpu_bce_f32_matches_reference() {
    let gpu = or_return!(gpu_or_skip("sigmoid_bce gpu_bce_f32_matches_reference"));
    for s in gpu_shapes() {
        gpu_matches_reference::<f32>(&gpu, s, 6.0, 1e-5);
    }
    gpu_matches_reference::<f32>(&gpu, shape(8, 50), 1e4, 1e-5);
}

#[test]
fn gpu_bce_bf16_matches_reference() {
    let gpu = or_return!(gpu_or_skip("sigmoid_bce gpu_bce_bf16_matches_reference"));
    for s in gpu_shapes() {
        gpu_matches_reference::<half::bf16>(&gpu, s, 6.0, 1e-2);
    }
}

#[test]
fn gpu_bce_wrong_length_is_an_error() {
    let gpu = or_return!(gpu_or_skip("sigmoid_bce gpu_bce_wrong_length_is_an_error"));
    let mut bce = SigmoidBceGpu::<f32>::new(&gpu, shape(2, 3)).unwrap();
    let x_d = gpu.upload(&[1.0f32; 5]).unwrap();
    let t_d = gpu.upload(&[1.0f32; 6]).unwrap();
    let mut preds = gpu.alloc_zeros::<i32>(6).unwrap();
    let mut grad = gpu.alloc_zeros::<f32>(6).unwrap();
    let err = bce
        .enqueue_forward_backward(&x_d, &t_d, 1.0, &mut preds, &mut grad, NO_STATS)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("sigmoid BCE logits has 5 elements, expected 6"),
        "{err}"
    );
}

/// The bench's cuDNN baseline gives the reference's `dlogits`.
#[test]
fn gpu_cudnn_baseline_matches_reference() {
    let test = "sigmoid_bce gpu_cudnn_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    for s in [shape(64, 40), shape(7, 6), shape(2, 300)] {
        let mut cudnn = or_return!(library_or_skip(test, SigmoidBceCudnn::new(&gpu, s)));
        let (logits, targets) = draw_inputs(&s, 6.0, 24);
        let (logits32, logits64) = round_through::<f32>(&logits);
        let (targets32, targets64) = round_through::<f32>(&targets);
        let loss_scale = 0.5;
        let (_, _, ref_grad) = bce64(&s, &logits64, &targets64, loss_scale);
        let x_d = gpu.upload(&logits32).unwrap();
        let t_d = gpu.upload(&targets32).unwrap();
        let mut dx_d = gpu.alloc_poisoned::<f32>(s.len()).unwrap();
        cudnn.backward(&x_d, &t_d, loss_scale, &mut dx_d).unwrap();
        let e = rel_error(&widen(&gpu.download(&dx_d).unwrap()), &ref_grad);
        assert!(
            e < 1e-5,
            "cuDNN sigmoid BCE dlogits {s:?}: relative error {e}"
        );
    }
}
