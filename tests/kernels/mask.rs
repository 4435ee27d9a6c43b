//! The Coarse2Fine fine-branch ops (ReLU, attention-map choice and mean, bilinear resize, mask and
//! apply): the CPU functions against hand-computed values and finite differences (f64), and the
//! CUDA kernels and the bench's cuDNN ReLU baseline against the f64 reference in f32 and bf16
//! (skipped without a GPU).

use crate::common::gpu_tests::f32_and_bf16_tests;
use crate::common::skip::or_return;
use c2f_baselines::relu::ReluCudnn;
use c2f_kernels::map_select::{
    check_map_indices, mean_maps_backward_cpu, mean_maps_forward_cpu, select_map_backward_cpu,
    select_map_forward_cpu, MapSelectGpu, MapShape,
};
use c2f_kernels::mask::{mask_backward_cpu, mask_forward_cpu, MaskGpu, MaskShape};
use c2f_kernels::relu::{relu_backward_cpu, relu_forward_cpu, ReluGpu};
use c2f_kernels::resize::{
    resize_bilinear_backward_cpu, resize_bilinear_forward_cpu, ResizeBilinearGpu, ResizeShape,
};
use c2f_kernels::testing::{
    assert_bit_identical, bf16_rounding_mismatch, gpu_or_skip, library_or_skip, numeric_gradient,
    rel_error, round_through, widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu, Layout};
use half::bf16;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn close(out: &[f64], expected: &[f64], tol: f64) -> bool {
    out.len() == expected.len() && out.iter().zip(expected).all(|(o, e)| (o - e).abs() <= tol)
}

/// Uniform in `[lo, hi)` but never within 0.05 of zero, so a finite difference step never crosses
/// a ReLU's or a mask's kink.
fn away_from_zero(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    SplitMix64(seed)
        .uniform_vec(n, lo, hi)
        .into_iter()
        .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// ReLU

fn relu64(x: &[f64]) -> Vec<f64> {
    let mut y = vec![f64::NAN; x.len()];
    relu_forward_cpu(x, &mut y).unwrap();
    y
}

fn relu_back64(y: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![f64::NAN; y.len()];
    relu_backward_cpu(y, dy, &mut dx).unwrap();
    dx
}

#[test]
fn relu_hand_computed_with_nan_as_pytorch() {
    let x = [-1.5, 0.0, 2.25, f64::NAN, -0.0, 3.0];
    let y = relu64(&x);
    assert_eq!(y[..3], [0.0, 0.0, 2.25]);
    assert!(y[3].is_nan());
    assert_eq!(y[4..], [0.0, 3.0]);
    // As torch: a NaN output passes its gradient, a NaN gradient under y <= 0 is dropped.
    let dy = [f64::NAN, 2.0, 0.5, 7.0, f64::NAN, -4.0];
    assert_eq!(relu_back64(&y, &dy), [0.0, 0.0, 0.5, 7.0, 0.0, -4.0]);

    let x = away_from_zero(50, 1, -1.0, 1.0);
    let w = SplitMix64(2).uniform_vec(50, -1.0, 1.0);
    let dx = relu_back64(&relu64(&x), &w);
    let num = numeric_gradient(|x| dot(&relu64(x), &w), &x, 1e-6);
    let e = rel_error(&dx, &num);
    assert!(e < 1e-9, "relu dx relative error {e}");

    let err = relu_backward_cpu(&[1.0f64; 4], &[1.0; 3], &mut [0.0; 4]).unwrap_err();
    assert!(
        err.to_string()
            .contains("relu dy has 3 elements, expected 4"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Attention-map choice and mean

fn maps(batch: usize, m: usize, height: usize, width: usize) -> MapShape {
    MapShape {
        batch,
        maps: m,
        height,
        width,
    }
}

fn select64(s: &MapShape, a: &[f64], k: &[i32]) -> Vec<f64> {
    let mut out = vec![f64::NAN; s.map_len()];
    select_map_forward_cpu(s, a, k, &mut out).unwrap();
    out
}

fn select_back64(s: &MapShape, k: &[i32], ds: &[f64]) -> Vec<f64> {
    let mut da = vec![f64::NAN; s.maps_len()];
    select_map_backward_cpu(s, k, ds, &mut da, false).unwrap();
    da
}

fn mean64(s: &MapShape, a: &[f64]) -> Vec<f64> {
    let mut out = vec![f64::NAN; s.map_len()];
    mean_maps_forward_cpu(s, a, &mut out).unwrap();
    out
}

fn mean_back64(s: &MapShape, ds: &[f64]) -> Vec<f64> {
    let mut da = vec![f64::NAN; s.maps_len()];
    mean_maps_backward_cpu(s, ds, &mut da).unwrap();
    da
}

#[test]
fn map_choice_hand_computed_assign_and_accumulate() {
    // Two samples, three 1x2 maps each; sample 0 takes map 2, sample 1 map 0.
    let s = maps(2, 3, 1, 2);
    let a = [
        1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0,
    ];
    let k = [2, 0];
    assert_eq!(select64(&s, &a, &k), [5.0, 6.0, 7.0, 8.0]);
    let ds = [0.5, -1.0, 2.0, 4.0];
    #[rustfmt::skip]
    assert_eq!(
        select_back64(&s, &k, &ds),
        [0.0, 0.0, 0.0, 0.0, 0.5, -1.0, 2.0, 4.0, 0.0, 0.0, 0.0, 0.0]
    );
    let mut da = a.to_vec();
    select_map_backward_cpu(&s, &k, &ds, &mut da, true).unwrap();
    #[rustfmt::skip]
    assert_eq!(da, [1.0, 2.0, 3.0, 4.0, 5.5, 5.0, 9.0, 12.0, 9.0, 10.0, 11.0, 12.0]);
}

#[test]
fn map_mean_hand_computed() {
    let s = maps(2, 3, 1, 2);
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0, -3.0, 0.5, 0.0, 1.0, 6.0, 1.0];
    assert_eq!(mean64(&s, &a), [3.0, 5.0, 1.0, 2.5 / 3.0]);
    let da = mean_back64(&s, &[3.0, -6.0, 1.5, 0.75]);
    #[rustfmt::skip]
    assert_eq!(da, [1.0, -2.0, 1.0, -2.0, 1.0, -2.0, 0.5, 0.25, 0.5, 0.25, 0.5, 0.25]);
}

#[test]
fn map_choice_and_mean_match_finite_differences() {
    let s = maps(3, 4, 5, 6);
    let a = SplitMix64(11).uniform_vec(s.maps_len(), -1.0, 1.0);
    let w = SplitMix64(12).uniform_vec(s.map_len(), -1.0, 1.0);
    let k = [3, 0, 2];
    let da = select_back64(&s, &k, &w);
    let num = numeric_gradient(|a| dot(&select64(&s, a, &k), &w), &a, 1e-3);
    let e = rel_error(&da, &num);
    assert!(e < 1e-9, "map choice dA relative error {e}");
    let da = mean_back64(&s, &w);
    let num = numeric_gradient(|a| dot(&mean64(&s, a), &w), &a, 1e-3);
    let e = rel_error(&da, &num);
    assert!(e < 1e-9, "map mean dA relative error {e}");
}

#[test]
fn map_choice_errors_name_the_sample_and_value() {
    let s = maps(3, 4, 2, 2);
    let a = vec![1.0f64; s.maps_len()];
    let mut out = vec![0.0f64; s.map_len()];
    for (k, message) in [
        (
            [0, 4, 1],
            "attention map index 4 of sample 1 is outside [0, 4)",
        ),
        (
            [0, 1, -1],
            "attention map index -1 of sample 2 is outside [0, 4)",
        ),
    ] {
        let err = select_map_forward_cpu(&s, &a, &k, &mut out).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
        let mut da = vec![0.0f64; s.maps_len()];
        let err = select_map_backward_cpu(&s, &k, &out, &mut da, true).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
        assert!(check_map_indices(&k, 4).is_err());
    }
    assert!(check_map_indices(&[0, 3, 2], 4).is_ok());
    let err = select_map_forward_cpu(&s, &a, &[0, 1], &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("map choice indices has 2 elements, expected 3"),
        "{err}"
    );
    let err = select_map_forward_cpu(&s, &a[1..], &[0, 1, 2], &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("map choice A has 47 elements, expected 48"),
        "{err}"
    );
    let err = mean_maps_forward_cpu(&s, &a, &mut out[1..]).unwrap_err();
    assert!(
        err.to_string()
            .contains("map mean S has 11 elements, expected 12"),
        "{err}"
    );
    let err = mean_maps_forward_cpu(&maps(3, 0, 2, 2), &a, &mut out).unwrap_err();
    assert!(err.to_string().contains("zero dimension"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bilinear resize

fn resize(n: usize, c: usize, from: (usize, usize), to: (usize, usize)) -> ResizeShape {
    ResizeShape {
        batch: n,
        channels: c,
        in_height: from.0,
        in_width: from.1,
        out_height: to.0,
        out_width: to.1,
    }
}

fn resize64(s: &ResizeShape, x: &[f64]) -> Vec<f64> {
    let mut y = vec![f64::NAN; s.out_len()];
    resize_bilinear_forward_cpu(s, x, &mut y).unwrap();
    y
}

fn resize_back64(s: &ResizeShape, dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![f64::NAN; s.in_len()];
    resize_bilinear_backward_cpu(s, dy, &mut dx).unwrap();
    dx
}

#[test]
fn bilinear_2x2_to_3x3_hand_computed() {
    // scale 2/3: output rows read src = max(2/3·(o + ½) − ½, 0) = 0 (clamped from −1/6), ½, 7/6.
    // Row 2's i0 = 1 is the last input row, so both of its weights land there. Rows (and
    // columns): [x0], [(x0 + x1)/2], [x1].
    let s = resize(1, 1, (2, 2), (3, 3));
    // The weights are f32 (as the kernels'), so row 2's λ = 1/6 is rounded and its two shares
    // sum to 1 within 1e-7.
    let y = resize64(&s, &[1.0, 5.0, -2.0, 7.0]);
    let expected = [1.0, 3.0, 5.0, -0.5, 2.75, 6.0, -2.0, 2.5, 7.0];
    assert!(close(&y, &expected, 1e-6), "{y:?}");
    // dx = Wᵀ dy W with W = [[1, 0], [½, ½], [0, 1]].
    let dx = resize_back64(&s, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    assert!(close(&dx, &[5.25, 8.25, 14.25, 17.25], 1e-6), "{dx:?}");
}

#[test]
fn bilinear_3x3_to_2x2_hand_computed() {
    // scale 3/2: src = 0.25 and 1.75, so W = [[¾, ¼, 0], [0, ¼, ¾]] (no antialiasing).
    let s = resize(1, 1, (3, 3), (2, 2));
    let y = resize64(&s, &[1.0, 0.0, 4.0, 2.0, 8.0, 0.0, 0.0, 4.0, 16.0]);
    assert!(close(&y, &[1.4375, 2.75, 1.625, 10.25], 1e-15), "{y:?}");
    let dx = resize_back64(&s, &[1.0, 2.0, 3.0, 4.0]);
    #[rustfmt::skip]
    let expected = [0.5625, 0.5625, 1.125, 0.75, 0.625, 1.125, 1.6875, 1.3125, 2.25];
    assert!(close(&dx, &expected, 1e-15), "{dx:?}");
}

#[test]
fn bilinear_same_size_is_the_identity_and_1x1_broadcasts() {
    let s = resize(2, 3, (4, 5), (4, 5));
    let x = SplitMix64(21).uniform_vec(s.in_len(), -1.0, 1.0);
    assert_eq!(resize64(&s, &x), x);
    assert_eq!(resize_back64(&s, &x), x);
    let s = resize(1, 2, (1, 1), (2, 3));
    assert_eq!(
        resize64(&s, &[0.5, -2.0]),
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -2.0, -2.0, -2.0, -2.0, -2.0, -2.0]
    );
    assert_eq!(
        resize_back64(
            &s,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
        ),
        [21.0, 3.0]
    );
}

fn resize_cases() -> Vec<ResizeShape> {
    vec![
        resize(2, 3, (4, 5), (7, 9)),
        resize(1, 2, (7, 6), (3, 4)),
        resize(1, 1, (17, 17), (30, 23)),
        resize(2, 1, (5, 3), (2, 8)),
        resize(1, 2, (1, 4), (3, 1)),
    ]
}

#[test]
fn bilinear_backward_matches_finite_differences() {
    for s in resize_cases() {
        let x = SplitMix64(31).uniform_vec(s.in_len(), -1.0, 1.0);
        let w = SplitMix64(32).uniform_vec(s.out_len(), -1.0, 1.0);
        let dx = resize_back64(&s, &w);
        let num = numeric_gradient(|x| dot(&resize64(&s, x), &w), &x, 1e-3);
        let e = rel_error(&dx, &num);
        assert!(e < 1e-9, "{s:?}: dx relative error {e}");
    }
}

#[test]
fn bilinear_errors() {
    let s = resize(1, 2, (3, 3), (2, 2));
    let mut y = vec![0.0f64; 8];
    let err = resize_bilinear_forward_cpu(&s, &[1.0; 17], &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("bilinear resize x has 17 elements, expected 18"),
        "{err}"
    );
    let mut dx = vec![0.0f64; 18];
    let err = resize_bilinear_backward_cpu(&s, &[1.0; 9], &mut dx).unwrap_err();
    assert!(
        err.to_string()
            .contains("bilinear resize dy has 9 elements, expected 8"),
        "{err}"
    );
    let err =
        resize_bilinear_forward_cpu(&resize(1, 2, (3, 3), (0, 2)), &[1.0; 18], &mut y).unwrap_err();
    assert!(err.to_string().contains("zero dimension"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Mask and apply

fn mask_shape(batch: usize, channels: usize, height: usize, width: usize) -> MaskShape {
    MaskShape {
        batch,
        channels,
        height,
        width,
    }
}

/// `(X_f, u_max, argmax)`.
fn mask64(s: &MaskShape, u: &[f64], x: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<i32>) {
    let mut xf = vec![f64::NAN; s.image_len()];
    let (mut um, mut am) = (vec![f64::NAN; s.batch], vec![-7; s.batch]);
    mask_forward_cpu(s, u, x, &mut xf, &mut um, &mut am).unwrap();
    (xf, um, am)
}

/// `(dU, dX)`.
fn mask_back64(s: &MaskShape, u: &[f64], x: &[f64], dxf: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (_, um, am) = mask64(s, u, x);
    let mut du = vec![f64::NAN; s.map_len()];
    let mut dx = vec![f64::NAN; s.image_len()];
    mask_backward_cpu(s, u, x, dxf, &um, &am, &mut du, Some(&mut dx)).unwrap();
    let mut du2 = vec![f64::NAN; s.map_len()];
    mask_backward_cpu(s, u, x, dxf, &um, &am, &mut du2, None).unwrap();
    assert_eq!(du, du2, "dU must not depend on whether dX is asked for");
    (du, dx)
}

#[test]
fn mask_hand_computed_with_ones_masks() {
    // Three samples of 1x3 pixels, two channels. Sample 0: max 2 at pixel 1, the negative pixel
    // masked out. Sample 1: all zero, sample 2: all negative: both the ones mask.
    let s = mask_shape(3, 2, 1, 3);
    let u = [0.5, 2.0, -1.0, 0.0, 0.0, 0.0, -0.5, -0.25, -3.0];
    #[rustfmt::skip]
    let x = [
        4.0, 1.0, 3.0, -8.0, 2.0, 5.0,
        1.0, 2.0, 3.0, 4.0, 5.0, 6.0,
        -1.0, 0.5, 2.0, 1.5, -2.5, 3.0,
    ];
    let (xf, um, am) = mask64(&s, &u, &x);
    assert_eq!(um, [2.0, 0.0, -0.25]);
    assert_eq!(am, [1, 0, 1]);
    let mut expected = x;
    expected[..6].copy_from_slice(&[1.0, 1.0, 0.0, -2.0, 2.0, 0.0]);
    assert_eq!(xf, expected);

    // g = Σ_c dX_f·X. Sample 0, mask [¼, 1, 0], g = [12 − 4, 3 − 2, 9 + 5] = [8, 1, 14]:
    // dU0 = g0/2 = 4, dU1 = (g1 − (¼g0 + g1))/2 = −g0/8 = −1 whatever g1 is, and dU2 = 0 (masked
    // out). The ones masks have no gradient.
    #[rustfmt::skip]
    let dxf = [
        3.0, 3.0, 3.0, 0.5, -1.0, 1.0,
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        2.0, 2.0, 2.0, 2.0, 2.0, 2.0,
    ];
    let (du, dx) = mask_back64(&s, &u, &x, &dxf);
    assert_eq!(du, [4.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    #[rustfmt::skip]
    let expected_dx = [
        0.75, 3.0, 0.0, 0.125, -1.0, 0.0,
        1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        2.0, 2.0, 2.0, 2.0, 2.0, 2.0,
    ];
    assert_eq!(dx, expected_dx);
}

#[test]
fn mask_ties_take_the_first_maximum_and_nan_spreads() {
    let s = mask_shape(2, 1, 2, 2);
    let u = [1.0, 3.0, 3.0, 2.0, 1.0, f64::NAN, 4.0, f64::NAN];
    let x = [1.0; 8];
    let (xf, um, am) = mask64(&s, &u, &x);
    assert_eq!(am, [1, 1]);
    assert_eq!(um[0], 3.0);
    assert!(um[1].is_nan());
    assert_eq!(xf[..4], [1.0 / 3.0, 1.0, 1.0, 2.0 / 3.0]);
    assert!(xf[4..].iter().all(|v| v.is_nan()), "{xf:?}");
}

/// Three samples: a positive maximum among mixed signs, one more with a large spread, and one
/// all negative (the ones mask). Values 0.1 apart at least, so the argmax is unique and a
/// finite-difference step never changes it or crosses zero.
fn mask_fd_inputs(s: &MaskShape, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let hw = s.hw();
    let mut rng = SplitMix64(seed);
    let mut u = Vec::new();
    for b in 0..s.batch {
        let mut v: Vec<f64> = (0..hw).map(|i| i as f64 * 0.1 - 0.35 * b as f64).collect();
        for i in (1..hw).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
        u.extend(
            v.into_iter()
                .map(|v: f64| if v.abs() < 0.03 { v + 0.05 } else { v }),
        );
    }
    let last = (s.batch - 1) * hw;
    for v in &mut u[last..] {
        *v = -0.1 - v.abs();
    }
    let x = SplitMix64(seed + 1).uniform_vec(s.image_len(), -1.0, 1.0);
    (u, x)
}

#[test]
fn mask_backward_matches_finite_differences() {
    for s in [mask_shape(3, 3, 4, 5), mask_shape(3, 2, 3, 3)] {
        let (u, x) = mask_fd_inputs(&s, 41);
        let w = SplitMix64(43).uniform_vec(s.image_len(), -1.0, 1.0);
        let (du, dx) = mask_back64(&s, &u, &x, &w);
        let num_u = numeric_gradient(|u| dot(&mask64(&s, u, &x).0, &w), &u, 1e-6);
        let e = rel_error(&du, &num_u);
        assert!(e < 1e-8, "{s:?}: dU relative error {e}");
        let num_x = numeric_gradient(|x| dot(&mask64(&s, &u, x).0, &w), &x, 1e-6);
        let e = rel_error(&dx, &num_x);
        assert!(e < 1e-8, "{s:?}: dX relative error {e}");

        // The argmax's term matters: without it dU[j] would be g[j]/u_max.
        let (_, um, am) = mask64(&s, &u, &x);
        let hw = s.hw();
        for b in 0..s.batch - 1 {
            let j = am[b] as usize;
            let g: f64 = (0..s.channels)
                .map(|c| w[(b * s.channels + c) * hw + j] * x[(b * s.channels + c) * hw + j])
                .sum();
            let naive = g / um[b];
            let exact = du[b * hw + j];
            assert!(
                (naive - exact).abs() > 0.1 * exact.abs().max(0.1),
                "{s:?} sample {b}: dU at the argmax {exact} vs {naive} without the max term"
            );
            assert!((exact - num_u[b * hw + j]).abs() < 1e-6);
        }
        // The all-negative sample has the ones mask: no gradient to U.
        assert!(du[(s.batch - 1) * hw..].iter().all(|&d| d == 0.0));
    }
}

#[test]
fn mask_errors() {
    let s = mask_shape(2, 3, 2, 2);
    let (u, x) = (vec![1.0f64; 8], vec![1.0f64; 24]);
    let mut xf = vec![0.0f64; 24];
    let (mut um, mut am) = (vec![0.0f64; 2], vec![0i32; 2]);
    let err = mask_forward_cpu(&s, &u[1..], &x, &mut xf, &mut um, &mut am).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask U has 7 elements, expected 8"),
        "{err}"
    );
    let err = mask_forward_cpu(&s, &u, &x[1..], &mut xf, &mut um, &mut am).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask X has 23 elements, expected 24"),
        "{err}"
    );
    let err = mask_forward_cpu(&s, &u, &x, &mut xf, &mut um, &mut am[1..]).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask argmax has 1 elements, expected 2"),
        "{err}"
    );
    mask_forward_cpu(&s, &u, &x, &mut xf, &mut um, &mut am).unwrap();
    let mut du = vec![0.0f64; 8];
    let err = mask_backward_cpu(&s, &u, &x, &x, &um, &[0, 4], &mut du, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask argmax 4 of sample 1 is outside [0, 4)"),
        "{err}"
    );
    let mut dx = [0.0f64; 23];
    let err = mask_backward_cpu(&s, &u, &x, &x, &um, &am, &mut du, Some(&mut dx[..])).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask dX has 23 elements, expected 24"),
        "{err}"
    );
    let err = mask_backward_cpu(&s, &u, &x, &x, &um, &am, &mut du[1..], None).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask dU has 7 elements, expected 8"),
        "{err}"
    );
}

#[test]
fn f32_cpu_matches_f64() {
    let s = mask_shape(3, 3, 13, 11);
    let (u, x) = mask_fd_inputs(&s, 51);
    let dxf = SplitMix64(52).uniform_vec(s.image_len(), -1.0, 1.0);
    let (u32_, u64_) = round_through::<f32>(&u);
    let (x32, x64) = round_through::<f32>(&x);
    let (d32, d64) = round_through::<f32>(&dxf);
    let (xf64, um64, am64) = mask64(&s, &u64_, &x64);
    let (du64, dx64) = mask_back64(&s, &u64_, &x64, &d64);
    let mut xf = vec![f32::NAN; s.image_len()];
    let (mut um, mut am) = (vec![f32::NAN; s.batch], vec![-7; s.batch]);
    mask_forward_cpu(&s, &u32_, &x32, &mut xf, &mut um, &mut am).unwrap();
    assert_eq!(am, am64);
    assert_eq!(widen(&um), um64);
    assert!(rel_error(&widen(&xf), &xf64) < 1e-6);
    let mut du = vec![f32::NAN; s.map_len()];
    let mut dx = vec![f32::NAN; s.image_len()];
    mask_backward_cpu(&s, &u32_, &x32, &d32, &um, &am, &mut du, Some(&mut dx)).unwrap();
    assert!(rel_error(&widen(&du), &du64) < 1e-5);
    assert!(rel_error(&widen(&dx), &dx64) < 1e-6);

    let r = resize(2, 3, (17, 17), (30, 41));
    let (x32, x64) = round_through::<f32>(&SplitMix64(53).uniform_vec(r.in_len(), -1.0, 1.0));
    let (d32, d64) = round_through::<f32>(&SplitMix64(54).uniform_vec(r.out_len(), -1.0, 1.0));
    let mut y = vec![f32::NAN; r.out_len()];
    resize_bilinear_forward_cpu(&r, &x32, &mut y).unwrap();
    assert!(rel_error(&widen(&y), &resize64(&r, &x64)) < 1e-6);
    let mut dx = vec![f32::NAN; r.in_len()];
    resize_bilinear_backward_cpu(&r, &d32, &mut dx).unwrap();
    assert!(rel_error(&widen(&dx), &resize_back64(&r, &d64)) < 1e-6);
}

// ---------------------------------------------------------------------------------------------
// GPU

/// `rel_error` needs a reference that is not all zeros; check every GPU case's references here,
/// on the CPU, so a case that could never fail shows up without a GPU.
#[test]
fn gpu_case_references_are_not_all_zero() {
    fn check(what: String, references: &[Vec<f64>]) {
        for (i, r) in references.iter().enumerate() {
            assert!(
                r.iter().any(|&v| v != 0.0) && r.iter().all(|v| v.is_finite()),
                "{what}: reference {i} is all zero or not finite"
            );
        }
    }
    fn all<T: Element>() {
        for n in relu_sizes() {
            check(format!("relu {} {n}", T::SUFFIX), &relu_case::<T>(n).2);
        }
        for s in gpu_map_cases() {
            check(format!("maps {} {s:?}", T::SUFFIX), &maps_case::<T>(&s).3);
        }
        for s in gpu_resize_cases() {
            check(
                format!("resize {} {s:?}", T::SUFFIX),
                &resize_case::<T>(&s).2,
            );
        }
        for s in gpu_mask_cases() {
            let case = mask_case::<T>(&s);
            check(format!("mask {} {s:?}", T::SUFFIX), &case.references);
            assert!(case.u_max.iter().all(|v| v.is_finite()));
            assert!(case.argmax.iter().all(|&j| j >= 0 && (j as usize) < s.hw()));
        }
    }
    all::<f32>();
    all::<half::bf16>();
}

/// The rounded inputs `x`, `dy` of a ReLU GPU case and the references `[y, dx]`.
fn relu_case<T: Element>(n: usize) -> (Vec<T>, Vec<T>, Vec<Vec<f64>>) {
    let (x_t, x64) = round_through::<T>(&SplitMix64(61).uniform_vec(n, -1.0, 1.0));
    let (dy_t, dy64) = round_through::<T>(&SplitMix64(62).uniform_vec(n, -1.0, 1.0));
    let y64 = relu64(&x64);
    let dx64 = relu_back64(&y64, &dy64);
    (x_t, dy_t, vec![y64, dx64])
}

fn gpu_relu_case<T: Element>(gpu: &Gpu, n: usize, tol: f64) {
    let (x_t, dy_t, references) = relu_case::<T>(n);
    let relu = ReluGpu::<T>::new(gpu).unwrap();
    let (x_d, dy_d) = (gpu.upload(&x_t).unwrap(), gpu.upload(&dy_t).unwrap());
    let run = || {
        let mut y = gpu.alloc_poisoned::<T>(n).unwrap();
        let mut dx = gpu.alloc_poisoned::<T>(n).unwrap();
        relu.forward(&x_d, &mut y).unwrap();
        relu.backward(&y, &dy_d, &mut dx).unwrap();
        [y, dx].map(|b| gpu.download(&b).unwrap())
    };
    let first = run();
    let name = format!("relu {} n={n}", T::SUFFIX);
    for ((what, out), reference) in ["y", "dx"].iter().zip(&first).zip(&references) {
        let e = rel_error(&widen(out), reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    let second = run();
    for ((what, a), b) in ["y", "dx"].iter().zip(&first).zip(&second) {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
}

fn relu_sizes() -> [usize; 3] {
    [7, 255, 64 * 8 * 17 * 17]
}

#[test]
fn gpu_relu_matches_reference() {
    let gpu = or_return!(gpu_or_skip("mask gpu_relu_matches_reference"));
    for n in relu_sizes() {
        gpu_relu_case::<f32>(&gpu, n, 1e-5);
        gpu_relu_case::<half::bf16>(&gpu, n, 1e-2);
    }
}

/// The bench's cuDNN ReLU gives the reference's `y` and `dx`.
#[test]
fn gpu_cudnn_relu_baseline_matches_reference() {
    let test = "mask gpu_cudnn_relu_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    for n in relu_sizes() {
        let relu = or_return!(library_or_skip(test, ReluCudnn::new(&gpu, n)));
        let (x_t, dy_t, references) = relu_case::<f32>(n);
        let (x_d, dy_d) = (gpu.upload(&x_t).unwrap(), gpu.upload(&dy_t).unwrap());
        let mut y = gpu.alloc_poisoned::<f32>(n).unwrap();
        let mut dx = gpu.alloc_poisoned::<f32>(n).unwrap();
        relu.forward(&x_d, &mut y).unwrap();
        relu.backward(&x_d, &y, &dy_d, &mut dx).unwrap();
        for ((what, out), reference) in ["y", "dx"].iter().zip([y, dx]).zip(&references) {
            let e = rel_error(&widen(&gpu.download(&out).unwrap()), reference);
            assert!(e < 1e-6, "cuDNN relu n={n}: {what} relative error {e}");
        }
    }
}

/// The rounded inputs `A`, `dS`, the indices, and the references `[select S, select dA, select
/// dA accumulated onto A, mean S, mean dA]` of a map GPU case.
#[allow(clippy::type_complexity)]
fn maps_case<T: Element>(s: &MapShape) -> (Vec<T>, Vec<T>, Vec<i32>, Vec<Vec<f64>>) {
    let s = *s;
    let (a_t, a64) = round_through::<T>(&SplitMix64(71).uniform_vec(s.maps_len(), -1.0, 1.0));
    let (ds_t, ds64) = round_through::<T>(&SplitMix64(72).uniform_vec(s.map_len(), -1.0, 1.0));
    let mut rng = SplitMix64(73);
    let k: Vec<i32> = (0..s.batch)
        .map(|_| rng.below(s.maps as u64) as i32)
        .collect();
    // The accumulating backward starts from an existing gradient (here: A's values).
    let mut acc64 = a64.clone();
    select_map_backward_cpu(&s, &k, &ds64, &mut acc64, true).unwrap();
    let references = vec![
        select64(&s, &a64, &k),
        select_back64(&s, &k, &ds64),
        acc64,
        mean64(&s, &a64),
        mean_back64(&s, &ds64),
    ];
    (a_t, ds_t, k, references)
}

fn gpu_maps_match_reference<T: Element>(gpu: &Gpu, s: MapShape, tol: f64) {
    let (a_t, ds_t, k, references) = maps_case::<T>(&s);
    let op = MapSelectGpu::<T>::new(gpu, s).unwrap();
    assert_eq!(*op.shape(), s);
    let (a_d, ds_d, k_d) = (
        gpu.upload(&a_t).unwrap(),
        gpu.upload(&ds_t).unwrap(),
        gpu.upload(&k).unwrap(),
    );
    let run = || {
        let mut sel = gpu.alloc_poisoned::<T>(s.map_len()).unwrap();
        let mut da = gpu.alloc_poisoned::<T>(s.maps_len()).unwrap();
        let mut acc = gpu.upload(&a_t).unwrap();
        let mut mean = gpu.alloc_poisoned::<T>(s.map_len()).unwrap();
        let mut dm = gpu.alloc_poisoned::<T>(s.maps_len()).unwrap();
        op.select_forward(&a_d, &k_d, &mut sel).unwrap();
        op.select_backward(&k_d, &ds_d, &mut da, false).unwrap();
        op.select_backward(&k_d, &ds_d, &mut acc, true).unwrap();
        op.mean_forward(&a_d, &mut mean).unwrap();
        op.mean_backward(&ds_d, &mut dm).unwrap();
        [sel, da, acc, mean, dm].map(|b| gpu.download(&b).unwrap())
    };
    let first = run();
    let name = format!("maps {} {s:?}", T::SUFFIX);
    let names = [
        "select S",
        "select dA",
        "select dA accumulated",
        "mean S",
        "mean dA",
    ];
    for ((what, out), reference) in names.iter().zip(&first).zip(&references) {
        let e = rel_error(&widen(out), reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    // The choice is a copy: exact. Accumulating leaves the other maps' bits alone.
    let mut chosen = Vec::new();
    for (b, &kb) in k.iter().enumerate() {
        chosen.extend_from_slice(&a_t[(b * s.maps + kb as usize) * s.hw()..][..s.hw()]);
    }
    assert_bit_identical(&format!("{name} select S"), &first[0], &chosen);
    for (b, &kb) in k.iter().enumerate() {
        for m in (0..s.maps).filter(|&m| m != kb as usize) {
            let at = (b * s.maps + m) * s.hw();
            assert_bit_identical(
                &format!("{name} accumulate leaves map {m} of sample {b}"),
                &first[2][at..][..s.hw()],
                &a_t[at..][..s.hw()],
            );
        }
    }
    let second = run();
    for ((what, a), b) in names.iter().zip(&first).zip(&second) {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
}

fn gpu_map_cases() -> [MapShape; 3] {
    [maps(64, 8, 17, 17), maps(3, 5, 7, 9), maps(2, 1, 1, 1)]
}

#[test]
fn gpu_map_choice_and_mean_match_reference() {
    let gpu = or_return!(gpu_or_skip("mask gpu_map_choice_and_mean_match_reference"));
    for s in gpu_map_cases() {
        gpu_maps_match_reference::<f32>(&gpu, s, 1e-5);
        gpu_maps_match_reference::<half::bf16>(&gpu, s, 1e-2);
    }
}

#[test]
fn gpu_bad_map_index_never_goes_out_of_bounds() {
    let gpu = or_return!(gpu_or_skip(
        "mask gpu_bad_map_index_never_goes_out_of_bounds"
    ));
    let s = maps(3, 2, 2, 2);
    let op = MapSelectGpu::<f32>::new(&gpu, s).unwrap();
    let a: Vec<f32> = (0..s.maps_len()).map(|i| i as f32 + 1.0).collect();
    let a_d = gpu.upload(&a).unwrap();
    let k_d = gpu.upload(&[1, 2, -1]).unwrap();
    let mut sel = gpu.alloc_poisoned::<f32>(s.map_len()).unwrap();
    op.select_forward(&a_d, &k_d, &mut sel).unwrap();
    let sel = gpu.download(&sel).unwrap();
    assert_eq!(sel[..4], a[4..8]);
    assert!(sel[4..].iter().all(|v| v.is_nan()), "{sel:?}");
    let ds = gpu.upload(&[1.0f32; 12]).unwrap();
    let mut da = gpu.alloc_zeros::<f32>(s.maps_len()).unwrap();
    op.select_backward(&k_d, &ds, &mut da, false).unwrap();
    let da = gpu.download(&da).unwrap();
    assert_eq!(da[..8], [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    assert!(da[8..].iter().all(|v| v.is_nan()), "{da:?}");
    let mut acc = gpu.upload(&a).unwrap();
    op.select_backward(&k_d, &ds, &mut acc, true).unwrap();
    let acc = gpu.download(&acc).unwrap();
    assert_eq!(acc[..4], a[..4]);
    assert_eq!(acc[4..8], [6.0, 7.0, 8.0, 9.0]);
    assert_eq!(acc[8..], a[8..]);
}

/// The rounded inputs `x`, `dy` of a resize GPU case and the references `[y, dx]`.
fn resize_case<T: Element>(s: &ResizeShape) -> (Vec<T>, Vec<T>, Vec<Vec<f64>>) {
    let (x_t, x64) = round_through::<T>(&SplitMix64(81).uniform_vec(s.in_len(), -1.0, 1.0));
    let (dy_t, dy64) = round_through::<T>(&SplitMix64(82).uniform_vec(s.out_len(), -1.0, 1.0));
    (x_t, dy_t, vec![resize64(s, &x64), resize_back64(s, &dy64)])
}

fn gpu_resize_matches_reference<T: Element>(gpu: &Gpu, s: ResizeShape, tol: f64) {
    let (x_t, dy_t, references) = resize_case::<T>(&s);
    let op = ResizeBilinearGpu::<T>::new(gpu, s).unwrap();
    assert_eq!(*op.shape(), s);
    let (x_d, dy_d) = (gpu.upload(&x_t).unwrap(), gpu.upload(&dy_t).unwrap());
    let run = || {
        let mut y = gpu.alloc_poisoned::<T>(s.out_len()).unwrap();
        let mut dx = gpu.alloc_poisoned::<T>(s.in_len()).unwrap();
        op.forward(&x_d, &mut y).unwrap();
        op.backward(&dy_d, &mut dx).unwrap();
        [y, dx].map(|b| gpu.download(&b).unwrap())
    };
    let first = run();
    let name = format!("resize {} {s:?}", T::SUFFIX);
    for ((what, out), reference) in ["y", "dx"].iter().zip(&first).zip(&references) {
        let e = rel_error(&widen(out), reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    let second = run();
    for ((what, a), b) in ["y", "dx"].iter().zip(&first).zip(&second) {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
}

/// Up-sampling resizes to 299 and 448 (from the 136 and 208 the model's up-sampler gives), a
/// direct 17 → 299, downsizing, odd and non-square sizes, 1x1 and the identity.
fn gpu_resize_cases() -> Vec<ResizeShape> {
    vec![
        resize(4, 1, (136, 136), (299, 299)),
        resize(2, 1, (208, 208), (448, 448)),
        resize(2, 1, (17, 17), (299, 299)),
        resize(2, 3, (31, 45), (12, 7)),
        resize(3, 2, (5, 3), (2, 8)),
        resize(2, 2, (1, 1), (3, 4)),
        resize(2, 2, (9, 6), (9, 6)),
    ]
}

f32_and_bf16_tests!("mask", gpu_f32_resize_matches_reference, gpu_bf16_resize_matches_reference,
    each of gpu_resize_cases() => gpu_resize_matches_reference);

/// Mask inputs for the GPU: random maps with a positive maximum, one all-zero sample and one
/// all-negative sample (both the ones mask) when the batch has room, and where the maps span
/// several of the kernels' 1,024-pixel chunks, a fourth sample whose maximum is tied between
/// chunks 1 and 60 (the first must win).
fn gpu_mask_inputs(s: &MaskShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let hw = s.hw();
    let mut u = SplitMix64(91).uniform_vec(s.map_len(), -0.5, 1.5);
    if s.batch >= 3 {
        u[hw..2 * hw].fill(0.0);
        u[2 * hw..3 * hw]
            .iter_mut()
            .for_each(|v| *v = -0.1 - v.abs());
    }
    if s.batch >= 4 && hw > 61 * 1024 {
        u[3 * hw + 1500] = 2.0;
        u[3 * hw + 60 * 1024 + 7] = 2.0;
    }
    let x = SplitMix64(92).uniform_vec(s.image_len(), -1.0, 1.0);
    let dxf = SplitMix64(93).uniform_vec(s.image_len(), -1.0, 1.0);
    (u, x, dxf)
}

/// A mask GPU case: the rounded inputs, the reference `u_max` and argmax, and the references
/// `[X_f, dU, dX]`.
struct MaskCase<T> {
    u: Vec<T>,
    x: Vec<T>,
    dxf: Vec<T>,
    u_max: Vec<f64>,
    argmax: Vec<i32>,
    references: Vec<Vec<f64>>,
}

fn mask_case<T: Element>(s: &MaskShape) -> MaskCase<T> {
    let (u, x, dxf) = gpu_mask_inputs(s);
    let (u_t, u64_) = round_through::<T>(&u);
    let (x_t, x64) = round_through::<T>(&x);
    let (d_t, d64) = round_through::<T>(&dxf);
    let (xf64, um64, am64) = mask64(s, &u64_, &x64);
    let (du64, dx64) = mask_back64(s, &u64_, &x64, &d64);
    MaskCase {
        u: u_t,
        x: x_t,
        dxf: d_t,
        u_max: um64,
        argmax: am64,
        references: vec![xf64, du64, dx64],
    }
}

/// `[X_f, dU, dU (with dX), dX]` and `(u_max, argmax)`, as [`gpu_mask_run`] returns them.
type MaskRun<T> = ([Vec<T>; 4], (Vec<f32>, Vec<i32>));

/// `[X_f, dU, dU (with dX), dX]` and `(u_max, argmax)` from the GPU in `layout`, the images given
/// and returned in NCHW; every output poisoned first.
fn gpu_mask_run<T: Element>(
    gpu: &Gpu,
    op: &mut MaskGpu<T>,
    (u, x, dxf): (&[T], &[T], &[T]),
) -> MaskRun<T> {
    let (s, layout) = (*op.shape(), op.layout());
    let to_layout = |v: &[T]| Layout::Nchw.convert(layout, v, s.channels, s.hw());
    let (u_d, x_d, d_d) = (
        gpu.upload(u).unwrap(),
        gpu.upload(&to_layout(x)).unwrap(),
        gpu.upload(&to_layout(dxf)).unwrap(),
    );
    let mut xf = gpu.alloc_poisoned::<T>(s.image_len()).unwrap();
    let mut um = gpu.alloc_poisoned::<f32>(s.batch).unwrap();
    let mut am = gpu.upload(&vec![-7i32; s.batch]).unwrap();
    let mut du = gpu.alloc_poisoned::<T>(s.map_len()).unwrap();
    let mut du2 = gpu.alloc_poisoned::<T>(s.map_len()).unwrap();
    let mut dx = gpu.alloc_poisoned::<T>(s.image_len()).unwrap();
    op.forward(&u_d, &x_d, &mut xf, &mut um, &mut am).unwrap();
    op.backward(&u_d, &x_d, &d_d, &um, &am, &mut du).unwrap();
    op.backward_with_dx(&u_d, &x_d, &d_d, &um, &am, &mut du2, &mut dx)
        .unwrap();
    let stats = (gpu.download(&um).unwrap(), gpu.download(&am).unwrap());
    let to_nchw = |v: Vec<T>| layout.convert(Layout::Nchw, &v, s.channels, s.hw());
    let [xf, du, du2, dx] = [xf, du, du2, dx].map(|b| gpu.download(&b).unwrap());
    ([to_nchw(xf), du, du2, to_nchw(dx)], stats)
}

fn gpu_mask_matches_reference<T: Element>(gpu: &Gpu, (s, layout): (MaskShape, Layout), tol: f64) {
    let MaskCase {
        u: u_t,
        x: x_t,
        dxf: d_t,
        u_max: um64,
        argmax: am64,
        references,
    } = mask_case::<T>(&s);
    let [xf64, du64, dx64] = [0, 1, 2].map(|i| &references[i]);
    let mut op = MaskGpu::<T>::with_layout(gpu, s, layout).unwrap();
    assert_eq!(*op.shape(), s);
    let inputs = (&u_t[..], &x_t[..], &d_t[..]);
    let (first, (um, am)) = gpu_mask_run(gpu, &mut op, inputs);
    let name = format!("mask {} {layout:?} {s:?}", T::SUFFIX);
    // Ties (likely in bf16) are resolved by the same rule on the same values: exact.
    assert_eq!(am, am64, "{name}: argmax");
    assert_eq!(widen(&um), um64, "{name}: u_max");
    let names = ["X_f", "dU", "dU (with dX)", "dX"];
    for ((what, out), reference) in names.iter().zip(&first).zip([xf64, du64, du64, dx64]) {
        let e = rel_error(&widen(out), reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    assert_bit_identical(
        &format!("{name} dU with and without dX"),
        &first[1],
        &first[2],
    );
    if s.batch >= 3 {
        let hw = s.hw();
        assert!(widen(&first[1][hw..3 * hw]).iter().all(|&d| d == 0.0));
        assert_bit_identical(
            &format!("{name} ones mask"),
            &first[0][s.channels * hw..3 * s.channels * hw],
            &x_t[s.channels * hw..3 * s.channels * hw],
        );
    }
    let (second, stats2) = gpu_mask_run(gpu, &mut op, inputs);
    for ((what, a), b) in names.iter().zip(&first).zip(&second) {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
    assert_bit_identical(&format!("{name} u_max"), &um, &stats2.0);
    assert_eq!(am, stats2.1, "{name}: argmax differs between runs");
}

fn gpu_mask_cases() -> Vec<MaskShape> {
    vec![
        mask_shape(4, 3, 299, 299),
        mask_shape(3, 3, 37, 41),
        mask_shape(2, 1, 1, 3),
        mask_shape(5, 2, 3, 100),
    ]
}

fn with_layout(shapes: Vec<MaskShape>, layout: Layout) -> Vec<(MaskShape, Layout)> {
    shapes.into_iter().map(|s| (s, layout)).collect()
}

f32_and_bf16_tests!("mask", gpu_f32_mask_matches_reference, gpu_bf16_mask_matches_reference,
    each of with_layout(gpu_mask_cases(), Layout::Nchw) => gpu_mask_matches_reference);

// NHWC against the f64 reference (on the NCHW image), with 1 to 4 channels (none a vector).
f32_and_bf16_tests!("mask", gpu_nhwc_f32_mask_matches_reference,
    gpu_nhwc_bf16_mask_matches_reference,
    each of with_layout(gpu_mask_cases(), Layout::Nhwc) => gpu_mask_matches_reference);

/// NHWC reads the same values in the same order as NCHW: the same bits.
fn gpu_nhwc_mask_matches_nchw<T: Element>(gpu: &Gpu, s: MaskShape, _tol: f64) {
    let case = mask_case::<T>(&s);
    let inputs = (&case.u[..], &case.x[..], &case.dxf[..]);
    let runs = [Layout::Nchw, Layout::Nhwc].map(|layout| {
        gpu_mask_run(
            gpu,
            &mut MaskGpu::with_layout(gpu, s, layout).unwrap(),
            inputs,
        )
    });
    let [(nchw, nchw_stats), (nhwc, nhwc_stats)] = &runs;
    let name = format!("mask {} NHWC vs NCHW {s:?}", T::SUFFIX);
    for ((what, a), b) in ["X_f", "dU", "dU (with dX)", "dX"]
        .iter()
        .zip(nhwc)
        .zip(nchw)
    {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
    assert_bit_identical(&format!("{name} u_max"), &nhwc_stats.0, &nchw_stats.0);
    assert_eq!(nhwc_stats.1, nchw_stats.1, "{name}: argmax");
}

f32_and_bf16_tests!("mask", gpu_nhwc_f32_mask_matches_nchw, gpu_nhwc_bf16_mask_matches_nchw,
    each of [gpu_mask_cases(), vec![mask_shape(2, 4, 13, 17)]].concat()
        => gpu_nhwc_mask_matches_nchw);

/// The bf16 NHWC mask against the bf16 reference: the f32 reference on the widened bf16 inputs,
/// each output rounded to bf16 once. A mutant that rounds the mask value to bf16 before the
/// product fails it.
#[test]
fn gpu_nhwc_bf16_mask_rounds_as_reference() {
    let gpu = or_return!(gpu_or_skip("mask gpu_nhwc_bf16_mask_rounds_as_reference"));
    let to_f32 = |v: &[bf16]| -> Vec<f32> { v.iter().map(|v| v.to_f32()).collect() };
    let to_bf16 = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&v| bf16::from_f32(v)).collect() };
    for s in [mask_shape(4, 3, 61, 67), mask_shape(3, 3, 37, 41)] {
        let case = mask_case::<bf16>(&s);
        let (u, x, dxf) = (to_f32(&case.u), to_f32(&case.x), to_f32(&case.dxf));
        let nhwc = (Layout::Nhwc, s);
        let to_nhwc = |v: &[f32]| Layout::Nchw.convert(Layout::Nhwc, v, s.channels, s.hw());
        let (x_l, dxf_l) = (to_nhwc(&x), to_nhwc(&dxf));
        let mut xf = vec![f32::NAN; s.image_len()];
        let (mut um, mut am) = (vec![f32::NAN; s.batch], vec![-7; s.batch]);
        mask_forward_cpu(&nhwc, &u, &x_l, &mut xf, &mut um, &mut am).unwrap();
        let (mut du, mut dx) = (vec![f32::NAN; s.map_len()], vec![f32::NAN; s.image_len()]);
        mask_backward_cpu(&nhwc, &u, &x_l, &dxf_l, &um, &am, &mut du, Some(&mut dx)).unwrap();
        let mut op = MaskGpu::<bf16>::with_layout(&gpu, s, Layout::Nhwc).unwrap();
        let (got, _) = gpu_mask_run(&gpu, &mut op, (&case.u, &case.x, &case.dxf));
        let to_nchw = |v: &[f32]| Layout::Nhwc.convert(Layout::Nchw, v, s.channels, s.hw());
        let want = [to_bf16(&to_nchw(&xf)), to_bf16(&du), to_bf16(&to_nchw(&dx))];
        let name = format!("bf16 NHWC mask {s:?}");
        for ((what, got), want) in ["X_f", "dU", "dX"]
            .iter()
            .zip([&got[0], &got[1], &got[3]])
            .zip(&want)
        {
            if let Some(why) = bf16_rounding_mismatch(got, want) {
                panic!("{name} {what}: {why}");
            }
        }
        // The mutant: Mk rounded to bf16 before it multiplies X.
        let hw = s.hw();
        let mutant: Vec<bf16> = (0..s.image_len())
            .map(|i| {
                let (b, p) = (i / (s.channels * hw), i % hw);
                let mk = if um[b] <= 0.0 {
                    1.0
                } else {
                    u[b * hw + p].max(0.0) / um[b]
                };
                bf16::from_f32(bf16::from_f32(mk).to_f32() * x[i])
            })
            .collect();
        assert!(
            bf16_rounding_mismatch(&got[0], &mutant).is_some(),
            "{name}: the check passes a reference that rounds the mask first"
        );
    }
}

/// The NHWC CPU reference is the NCHW one on the transposed image, exactly (f64).
#[test]
fn nhwc_reference_is_nchw_on_the_transposed_image() {
    let s = mask_shape(3, 3, 7, 9);
    let (u, x, dxf) = gpu_mask_inputs(&s);
    let (xf, um, am) = mask64(&s, &u, &x);
    let (du, dx) = mask_back64(&s, &u, &x, &dxf);
    let to_nhwc = |v: &[f64]| Layout::Nchw.convert(Layout::Nhwc, v, s.channels, s.hw());
    let nhwc = (Layout::Nhwc, s);
    let mut xf_l = vec![f64::NAN; s.image_len()];
    let (mut um_l, mut am_l) = (vec![f64::NAN; s.batch], vec![-7; s.batch]);
    mask_forward_cpu(&nhwc, &u, &to_nhwc(&x), &mut xf_l, &mut um_l, &mut am_l).unwrap();
    let (mut du_l, mut dx_l) = (vec![f64::NAN; s.map_len()], vec![f64::NAN; s.image_len()]);
    let (x_l, dxf_l) = (to_nhwc(&x), to_nhwc(&dxf));
    mask_backward_cpu(
        &nhwc,
        &u,
        &x_l,
        &dxf_l,
        &um_l,
        &am_l,
        &mut du_l,
        Some(&mut dx_l),
    )
    .unwrap();
    assert_eq!(xf_l, to_nhwc(&xf));
    assert_eq!((um_l, am_l), (um, am));
    assert_eq!(du_l, du);
    assert_eq!(dx_l, to_nhwc(&dx));
}

#[test]
fn gpu_wrong_lengths_are_errors() {
    let gpu = or_return!(gpu_or_skip("mask gpu_wrong_lengths_are_errors"));
    let relu = ReluGpu::<f32>::new(&gpu).unwrap();
    let x = gpu.alloc_poisoned::<f32>(10).unwrap();
    let mut y = gpu.alloc_poisoned::<f32>(9).unwrap();
    let err = relu.forward(&x, &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("relu y has 9 elements, expected 10"),
        "{err}"
    );
    let s = mask_shape(2, 3, 4, 4);
    let mut op = MaskGpu::<f32>::new(&gpu, s).unwrap();
    let u = gpu.alloc_poisoned::<f32>(32).unwrap();
    let img = gpu.alloc_poisoned::<f32>(96).unwrap();
    let mut xf = gpu.alloc_poisoned::<f32>(95).unwrap();
    let mut um = gpu.alloc_poisoned::<f32>(2).unwrap();
    let mut am = gpu.alloc_zeros::<i32>(2).unwrap();
    let err = op.forward(&u, &img, &mut xf, &mut um, &mut am).unwrap_err();
    assert!(
        err.to_string()
            .contains("mask X_f has 95 elements, expected 96"),
        "{err}"
    );
    let mut du = gpu.alloc_poisoned::<f32>(32).unwrap();
    let mut dx = gpu.alloc_poisoned::<f32>(95).unwrap();
    let err = op
        .backward_with_dx(&u, &img, &img, &um, &am, &mut du, &mut dx)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("mask dX has 95 elements, expected 96"),
        "{err}"
    );
    let err = MapSelectGpu::<f32>::new(&gpu, maps(2, 0, 3, 3))
        .err()
        .unwrap();
    assert!(err.to_string().contains("zero dimension"), "{err}");
    let err = ResizeBilinearGpu::<f32>::new(&gpu, resize(1, 1, (0, 3), (2, 2)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("zero dimension"), "{err}");
}
