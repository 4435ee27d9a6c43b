//! Pooling and channel concat/split: the CPU functions against hand-computed values and finite
//! differences (f64), and the CUDA kernels (f32, bf16; NCHW and NHWC) and the benches' cuDNN
//! baseline against the f64 reference; NHWC against NCHW bit for bit, and the bf16 NHWC kernels
//! against the bf16 reference's rounding points (GPU tests skip without a GPU).

use crate::common::gpu_tests::f32_and_bf16_tests;
use crate::common::skip::or_return;
use c2f_baselines::pool::Pool2dCudnn;
use c2f_kernels::concat::{copy_channels_cpu, slice_channels_cpu, ChannelCopyGpu, ChannelSlice};
use c2f_kernels::pool::{
    avg_pool2d_backward_cpu, avg_pool2d_forward_cpu, global_avg_pool_backward_cpu,
    global_avg_pool_forward_cpu, max_pool2d_backward_cpu, max_pool2d_forward_cpu, AvgPool2dGpu,
    GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams, PoolShape,
};
use c2f_kernels::testing::{
    assert_bit_identical, bf16_rounding_mismatch, gpu_or_skip, library_or_skip, numeric_gradient,
    rel_error, round_through, widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu, Layout};
use half::bf16;

fn shape(batch: usize, channels: usize, height: usize, width: usize) -> PoolShape {
    PoolShape {
        batch,
        channels,
        height,
        width,
    }
}

fn params(
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    count_include_pad: bool,
) -> Pool2dParams {
    Pool2dParams {
        kernel,
        stride,
        padding,
        count_include_pad,
    }
}

fn out_len(s: &PoolShape, p: &Pool2dParams) -> usize {
    p.output_shape(s).unwrap().numel()
}

fn max64(s: &PoolShape, p: &Pool2dParams, x: &[f64]) -> (Vec<f64>, Vec<i32>) {
    let n = out_len(s, p);
    let mut y = vec![f64::NAN; n];
    let mut idx = vec![-7; n];
    max_pool2d_forward_cpu(s, p, x, &mut y, &mut idx).unwrap();
    (y, idx)
}

fn max_back64(s: &PoolShape, p: &Pool2dParams, idx: &[i32], dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![f64::NAN; s.numel()];
    max_pool2d_backward_cpu(s, p, idx, dy, &mut dx).unwrap();
    dx
}

fn avg64(s: &PoolShape, p: &Pool2dParams, x: &[f64]) -> Vec<f64> {
    let mut y = vec![f64::NAN; out_len(s, p)];
    avg_pool2d_forward_cpu(s, p, x, &mut y).unwrap();
    y
}

fn avg_back64(s: &PoolShape, p: &Pool2dParams, dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![f64::NAN; s.numel()];
    avg_pool2d_backward_cpu(s, p, dy, &mut dx).unwrap();
    dx
}

fn gap64(s: &PoolShape, x: &[f64]) -> Vec<f64> {
    let mut y = vec![f64::NAN; s.planes()];
    global_avg_pool_forward_cpu(s, x, &mut y).unwrap();
    y
}

fn gap_back64(s: &PoolShape, dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![f64::NAN; s.numel()];
    global_avg_pool_backward_cpu(s, dy, &mut dx).unwrap();
    dx
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `n` distinct values 0.1 apart in a shuffled order, so no window has a tie and a finite
/// difference step far below 0.1 never changes an argmax.
fn distinct_values(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed);
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.1 - n as f64 * 0.05).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

#[test]
fn output_shapes_follow_pytorch() {
    let cases = [
        // InceptionV3's max pools and in-block average pools.
        (
            shape(4, 64, 147, 147),
            Pool2dParams::square(3, 2, 0),
            (73, 73),
        ),
        (
            shape(4, 192, 35, 35),
            Pool2dParams::square(3, 1, 1),
            (35, 35),
        ),
        (shape(4, 768, 17, 17), Pool2dParams::square(3, 2, 0), (8, 8)),
        // k=2 s=3, a non-square kernel, padding with stride, 1x1 outputs.
        (shape(1, 1, 10, 11), Pool2dParams::square(2, 3, 0), (3, 4)),
        (
            shape(1, 1, 7, 5),
            params((3, 1), (2, 1), (1, 0), true),
            (4, 5),
        ),
        (shape(1, 1, 3, 3), Pool2dParams::square(3, 2, 1), (2, 2)),
        (shape(2, 3, 5, 5), Pool2dParams::square(5, 1, 0), (1, 1)),
        (shape(2, 3, 1, 1), Pool2dParams::square(1, 1, 0), (1, 1)),
    ];
    for (s, p, (oh, ow)) in cases {
        let out = p.output_shape(&s).unwrap();
        assert_eq!(out, shape(s.batch, s.channels, oh, ow), "{s:?} {p:?}");
    }
}

#[test]
fn invalid_parameters_and_lengths_are_clear_errors() {
    let s = shape(1, 2, 4, 4);
    let bad = [
        (
            Pool2dParams::square(3, 1, 2),
            "padding should be at most half",
        ),
        (
            params((3, 2), (1, 1), (1, 2), true),
            "padding should be at most half",
        ),
        (
            Pool2dParams::square(3, 0, 1),
            "stride should be greater than zero",
        ),
        (
            params((0, 3), (1, 1), (0, 0), true),
            "kernel size should be greater than zero",
        ),
        (Pool2dParams::square(5, 1, 0), "output size is too small"),
    ];
    for (p, message) in bad {
        let err = p.output_shape(&s).unwrap_err().to_string();
        assert!(err.contains(message), "{p:?}: {err}");
        let mut y = vec![0.0f32; 4];
        let err = avg_pool2d_forward_cpu(&s, &p, &[1.0f32; 32], &mut y).unwrap_err();
        assert!(err.to_string().contains(message), "{p:?}: {err}");
    }
    let err = Pool2dParams::square(1, 1, 0)
        .output_shape(&shape(1, 0, 4, 4))
        .unwrap_err();
    assert!(err.to_string().contains("zero dimension"), "{err}");

    let p = Pool2dParams::square(2, 2, 0);
    let mut y = vec![0.0f32; 8];
    let mut idx = vec![0i32; 8];
    let err = max_pool2d_forward_cpu(&s, &p, &[1.0f32; 31], &mut y, &mut idx).unwrap_err();
    assert!(
        err.to_string()
            .contains("max pool x has 31 elements, expected 32"),
        "{err}"
    );
    let mut idx = vec![0i32; 7];
    let err = max_pool2d_forward_cpu(&s, &p, &[1.0f32; 32], &mut y, &mut idx).unwrap_err();
    assert!(
        err.to_string()
            .contains("max pool indices has 7 elements, expected 8"),
        "{err}"
    );
    let mut dx = vec![0.0f32; 32];
    let err = avg_pool2d_backward_cpu(&s, &p, &[1.0f32; 9], &mut dx).unwrap_err();
    assert!(
        err.to_string()
            .contains("avg pool dy has 9 elements, expected 8"),
        "{err}"
    );
    let mut g = vec![0.0f32; 3];
    let err = global_avg_pool_forward_cpu(&s, &[1.0f32; 32], &mut g).unwrap_err();
    assert!(
        err.to_string()
            .contains("global avg pool y has 3 elements, expected 2"),
        "{err}"
    );
}

#[test]
fn max_pool_hand_computed_with_ties() {
    // k2 s2 on 4x4: each window's maximum is tied in two windows; the first one in row-major
    // order wins, as in PyTorch.
    let s = shape(1, 1, 4, 4);
    #[rustfmt::skip]
    let x = [
        1.0, 5.0, 2.0, 2.0,
        3.0, 5.0, 0.0, 1.0,
        -1.0, -2.0, 7.0, 7.0,
        -3.0, -4.0, 7.0, 6.0,
    ];
    let (y, idx) = max64(&s, &Pool2dParams::square(2, 2, 0), &x);
    assert_eq!(y, [5.0, 2.0, -1.0, 7.0]);
    assert_eq!(idx, [1, 2, 8, 10]);
}

#[test]
fn max_pool_padding_is_negative_infinity() {
    // k3 s2 p1 on 3x3 of negative values: zero padding would win every window.
    let s = shape(1, 1, 3, 3);
    let p = Pool2dParams::square(3, 2, 1);
    let x = [-5.0, -2.0, -8.0, -4.0, -9.0, -1.0, -7.0, -3.0, -6.0];
    let (y, idx) = max64(&s, &p, &x);
    assert_eq!(y, [-2.0, -1.0, -3.0, -1.0]);
    assert_eq!(idx, [1, 5, 7, 5]);
    // Element 5 is the maximum of two outputs: its gradient is their sum.
    let dx = max_back64(&s, &p, &idx, &[0.5, 0.25, 2.0, 4.0]);
    assert_eq!(dx, [0.0, 0.5, 0.0, 0.0, 0.0, 4.25, 0.0, 2.0, 0.0]);
}

#[test]
fn max_pool_propagates_nan_and_handles_negative_infinity() {
    // Windows of three: [NaN, 5, NaN] keeps the last NaN, [-inf x3] names its first element,
    // [2, NaN, 9] keeps the NaN.
    let s = shape(1, 1, 1, 9);
    let p = params((1, 3), (1, 3), (0, 0), true);
    let inf = f64::INFINITY;
    let x = [
        f64::NAN,
        5.0,
        f64::NAN,
        -inf,
        -inf,
        -inf,
        2.0,
        f64::NAN,
        9.0,
    ];
    let (y, idx) = max64(&s, &p, &x);
    assert!(y[0].is_nan() && y[2].is_nan(), "{y:?}");
    assert_eq!(y[1], -inf);
    assert_eq!(idx, [2, 3, 7]);
}

#[test]
fn max_pool_backward_routes_overlaps_and_ties_by_hand() {
    // Two planes, 1x5, kernel 1x3, stride 2: the windows share element 2.
    // Plane 0: [1, 2, 9, 3, 4]: both windows pick element 2, which gets both gradients.
    // Plane 1: [4, 1, 4, 4, 0]: window 0 ties at 0 and 2 (picks 0), window 1 ties at 2 and 3
    // (picks 2).
    let s = shape(1, 2, 1, 5);
    let p = params((1, 3), (1, 2), (0, 0), true);
    let x = [1.0, 2.0, 9.0, 3.0, 4.0, 4.0, 1.0, 4.0, 4.0, 0.0];
    let (y, idx) = max64(&s, &p, &x);
    assert_eq!(y, [9.0, 9.0, 4.0, 4.0]);
    assert_eq!(idx, [2, 2, 0, 2]);
    let dx = max_back64(&s, &p, &idx, &[0.5, 0.25, 1.0, 2.0]);
    assert_eq!(dx, [0.0, 0.0, 0.75, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0]);
}

#[test]
fn max_pool_backward_matches_finite_differences() {
    for (s, p) in [
        (shape(2, 3, 7, 6), Pool2dParams::square(3, 2, 1)),
        (shape(1, 2, 6, 9), params((2, 3), (1, 2), (1, 1), true)),
        (shape(2, 2, 10, 11), Pool2dParams::square(2, 3, 0)),
    ] {
        let x = distinct_values(s.numel(), 11);
        let w = SplitMix64(12).uniform_vec(out_len(&s, &p), -1.0, 1.0);
        let (_, idx) = max64(&s, &p, &x);
        let dx = max_back64(&s, &p, &idx, &w);
        let num = numeric_gradient(|x| dot(&max64(&s, &p, x).0, &w), &x, 1e-3);
        let e = rel_error(&dx, &num);
        assert!(e < 1e-9, "{s:?} {p:?}: dx relative error {e}");
    }
}

#[test]
fn max_pool_backward_rejects_an_index_outside_its_window() {
    let s = shape(1, 1, 4, 4);
    let p = Pool2dParams::square(2, 2, 0);
    let mut dx = vec![0.0f64; 16];
    // Output (0, 1) covers elements 2, 3, 6, 7: 0 is in the plane but not in that window.
    for bad in [0, -1, 16] {
        let idx = [1, bad, 8, 10];
        let err = max_pool2d_backward_cpu(&s, &p, &idx, &[1.0; 4], &mut dx).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("max pool index {bad} of output (0, 1)")),
            "{err}"
        );
    }
}

#[test]
fn avg_pool_hand_computed_with_padding() {
    // k3 s1 p1 on 3x3 holding 1..9. Window sums: corners cover 4 elements, edges 6, centre 9.
    let s = shape(1, 1, 3, 3);
    let x: Vec<f64> = (1..=9).map(f64::from).collect();
    let sums = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
    let counts = [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0];
    let with_pad = avg64(&s, &params((3, 3), (1, 1), (1, 1), true), &x);
    let without = avg64(&s, &params((3, 3), (1, 1), (1, 1), false), &x);
    for i in 0..9 {
        assert!((with_pad[i] - sums[i] / 9.0).abs() < 1e-15, "{with_pad:?}");
        assert!(
            (without[i] - sums[i] / counts[i]).abs() < 1e-15,
            "{without:?}"
        );
    }
}

#[test]
fn avg_pool_backward_hand_computed() {
    // k2 s1 on 2x3: two windows, shares dy/4, the middle column is in both.
    let s = shape(1, 1, 2, 3);
    let dx = avg_back64(&s, &Pool2dParams::square(2, 1, 0), &[0.4, 0.8]);
    let expected = [0.1, 0.3, 0.2, 0.1, 0.3, 0.2];
    assert!(rel_error(&dx, &expected) < 1e-15, "{dx:?}");
    // Kernel 1x3, padding 1 on 1x2: both windows cover both elements and one padding column,
    // so the divisor is 3 with count_include_pad and 2 without.
    let s = shape(1, 1, 1, 2);
    let with_pad = avg_back64(&s, &params((1, 3), (1, 1), (0, 1), true), &[0.6, 1.2]);
    let without = avg_back64(&s, &params((1, 3), (1, 1), (0, 1), false), &[0.6, 1.2]);
    assert!(rel_error(&with_pad, &[0.6, 0.6]) < 1e-15, "{with_pad:?}");
    assert!(rel_error(&without, &[0.9, 0.9]) < 1e-15, "{without:?}");
}

#[test]
fn avg_pool_backward_matches_finite_differences() {
    for (s, p) in [
        (shape(2, 3, 5, 6), params((3, 3), (1, 1), (1, 1), true)),
        (shape(2, 3, 5, 6), params((3, 3), (1, 1), (1, 1), false)),
        (shape(1, 2, 7, 5), params((3, 2), (2, 1), (1, 1), false)),
        (shape(2, 2, 10, 11), Pool2dParams::square(2, 3, 0)),
    ] {
        let x = SplitMix64(21).uniform_vec(s.numel(), -1.0, 1.0);
        let w = SplitMix64(22).uniform_vec(out_len(&s, &p), -1.0, 1.0);
        let dx = avg_back64(&s, &p, &w);
        let num = numeric_gradient(|x| dot(&avg64(&s, &p, x), &w), &x, 1e-3);
        let e = rel_error(&dx, &num);
        assert!(e < 1e-9, "{s:?} {p:?}: dx relative error {e}");
    }
}

#[test]
fn global_avg_pool_hand_computed_and_finite_differences() {
    let s = shape(1, 2, 2, 2);
    let y = gap64(&s, &[1.0, 2.0, 3.0, 6.0, -1.0, 0.5, 0.25, 4.25]);
    assert_eq!(y, [3.0, 1.0]);
    let dx = gap_back64(&s, &[2.0, -4.0]);
    assert_eq!(dx, [0.5, 0.5, 0.5, 0.5, -1.0, -1.0, -1.0, -1.0]);

    let s = shape(2, 3, 4, 5);
    let x = SplitMix64(31).uniform_vec(s.numel(), -1.0, 1.0);
    let w = SplitMix64(32).uniform_vec(s.planes(), -1.0, 1.0);
    let dx = gap_back64(&s, &w);
    let num = numeric_gradient(|x| dot(&gap64(&s, x), &w), &x, 1e-3);
    let e = rel_error(&dx, &num);
    assert!(e < 1e-9, "global avg pool dx relative error {e}");
}

#[test]
fn f32_cpu_matches_f64() {
    let s = shape(2, 5, 17, 13);
    let p = params((3, 3), (2, 2), (1, 1), false);
    let x = SplitMix64(41).uniform_vec(s.numel(), -1.0, 1.0);
    let dy = SplitMix64(42).uniform_vec(out_len(&s, &p), -1.0, 1.0);
    let (x32, x64) = round_through::<f32>(&x);
    let (dy32, dy64) = round_through::<f32>(&dy);
    let n = dy.len();

    let (y64, idx64) = max64(&s, &p, &x64);
    let (mut y, mut idx) = (vec![f32::NAN; n], vec![0i32; n]);
    max_pool2d_forward_cpu(&s, &p, &x32, &mut y, &mut idx).unwrap();
    assert_eq!(idx, idx64);
    assert!(rel_error(&widen(&y), &y64) < 1e-7);
    let mut dx = vec![f32::NAN; s.numel()];
    max_pool2d_backward_cpu(&s, &p, &idx, &dy32, &mut dx).unwrap();
    assert!(rel_error(&widen(&dx), &max_back64(&s, &p, &idx64, &dy64)) < 1e-6);

    avg_pool2d_forward_cpu(&s, &p, &x32, &mut y).unwrap();
    assert!(rel_error(&widen(&y), &avg64(&s, &p, &x64)) < 1e-6);
    avg_pool2d_backward_cpu(&s, &p, &dy32, &mut dx).unwrap();
    assert!(rel_error(&widen(&dx), &avg_back64(&s, &p, &dy64)) < 1e-6);

    let mut g = vec![f32::NAN; s.planes()];
    global_avg_pool_forward_cpu(&s, &x32, &mut g).unwrap();
    assert!(rel_error(&widen(&g), &gap64(&s, &x64)) < 1e-6);
    global_avg_pool_backward_cpu(&s, &dy32[..s.planes()], &mut dx).unwrap();
    assert!(rel_error(&widen(&dx), &gap_back64(&s, &dy64[..s.planes()])) < 1e-6);
}

fn slice(
    batch: usize,
    channels: usize,
    whole: usize,
    offset: usize,
    hw: (usize, usize),
) -> ChannelSlice {
    ChannelSlice {
        batch,
        channels,
        whole_channels: whole,
        offset,
        height: hw.0,
        width: hw.1,
    }
}

#[test]
fn concat_places_channels_and_split_recovers_them() {
    // Two samples of 1x2 pixels: a 1-channel part at offset 0 and a 2-channel part at offset 1
    // of a 3-channel whole.
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0];
    let (sa, sb) = (slice(2, 1, 3, 0, (1, 2)), slice(2, 2, 3, 1, (1, 2)));
    let mut whole = vec![-9.0f64; 12];
    copy_channels_cpu(&sb, &b, &mut whole).unwrap();
    // Channels of part a are not touched yet.
    #[rustfmt::skip]
    assert_eq!(whole, [-9.0, -9.0, 10.0, 11.0, 12.0, 13.0, -9.0, -9.0, 20.0, 21.0, 22.0, 23.0]);
    copy_channels_cpu(&sa, &a, &mut whole).unwrap();
    #[rustfmt::skip]
    assert_eq!(whole, [1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 3.0, 4.0, 20.0, 21.0, 22.0, 23.0]);

    let (mut a2, mut b2) = (vec![f64::NAN; 4], vec![f64::NAN; 8]);
    slice_channels_cpu(&sa, &whole, &mut a2).unwrap();
    slice_channels_cpu(&sb, &whole, &mut b2).unwrap();
    assert_eq!(a2, a);
    assert_eq!(b2, b);

    let err = copy_channels_cpu(&slice(2, 2, 3, 2, (1, 2)), &b, &mut whole).unwrap_err();
    assert!(
        err.to_string()
            .contains("channel slice offset 2 + 2 channels exceeds the whole's 3 channels"),
        "{err}"
    );
    let err = slice_channels_cpu(&sb, &whole[..11], &mut b2).unwrap_err();
    assert!(
        err.to_string()
            .contains("channel slice whole has 11 elements, expected 12"),
        "{err}"
    );
}

/// Max and average pool forward and backward on the GPU in `T` and `layout` from `x` and `dy`
/// (NCHW, converted in), outputs poisoned: `[max y, max dx, avg y, avg dx]` and the max indices,
/// converted back to NCHW.
fn gpu_pool_run<T: Element>(
    gpu: &Gpu,
    (s, p, layout): (PoolShape, Pool2dParams, Layout),
    x: &[T],
    dy: &[T],
) -> ([Vec<T>; 4], Vec<i32>) {
    let o = p.output_shape(&s).unwrap();
    let (c, hw, ohw) = (s.channels, s.hw(), o.hw());
    let max = MaxPool2dGpu::<T>::with_layout(gpu, s, p, layout).unwrap();
    let avg = AvgPool2dGpu::<T>::with_layout(gpu, s, p, layout).unwrap();
    assert_eq!(*max.output_shape(), o);
    assert_eq!(*avg.output_shape(), o);
    let x_d = gpu.upload(&Layout::Nchw.convert(layout, x, c, hw)).unwrap();
    let dy_d = gpu
        .upload(&Layout::Nchw.convert(layout, dy, c, ohw))
        .unwrap();
    let mut y = gpu.alloc_poisoned::<T>(o.numel()).unwrap();
    let mut idx = gpu.upload(&vec![-7i32; o.numel()]).unwrap();
    let mut dx = gpu.alloc_poisoned::<T>(s.numel()).unwrap();
    let mut ya = gpu.alloc_poisoned::<T>(o.numel()).unwrap();
    let mut dxa = gpu.alloc_poisoned::<T>(s.numel()).unwrap();
    max.forward(&x_d, &mut y, &mut idx).unwrap();
    max.backward(&idx, &dy_d, &mut dx).unwrap();
    avg.forward(&x_d, &mut ya).unwrap();
    avg.backward(&dy_d, &mut dxa).unwrap();
    let back = |v: Vec<T>, plane: usize| layout.convert(Layout::Nchw, &v, c, plane);
    let [y, dx, ya, dxa] = [(y, ohw), (dx, hw), (ya, ohw), (dxa, hw)]
        .map(|(b, plane)| back(gpu.download(&b).unwrap(), plane));
    let idx = layout.convert(Layout::Nchw, &gpu.download(&idx).unwrap(), c, ohw);
    ([y, dx, ya, dxa], idx)
}

/// Inputs of the pooling GPU tests: `x` and `dy` in `T`, and the same values in f64.
fn pool_inputs<T: Element>(s: &PoolShape, p: &Pool2dParams) -> [(Vec<T>, Vec<f64>); 2] {
    [
        SplitMix64(51).uniform_vec(s.numel(), -1.0, 1.0),
        SplitMix64(52).uniform_vec(out_len(s, p), -1.0, 1.0),
    ]
    .map(|v| round_through::<T>(&v))
}

/// Max and average pool forward and backward on the GPU in `T` and a layout, against the f64
/// reference on the same rounded inputs, with poisoned outputs and a second run that must give
/// the same bits.
fn gpu_pool_matches_reference<T: Element>(
    gpu: &Gpu,
    (s, p, layout): (PoolShape, Pool2dParams, Layout),
    tol: f64,
) {
    let [(x_t, x64), (dy_t, dy64)] = pool_inputs::<T>(&s, &p);
    let (ref_max, ref_idx) = max64(&s, &p, &x64);
    let ref_max_dx = max_back64(&s, &p, &ref_idx, &dy64);
    let ref_avg = avg64(&s, &p, &x64);
    let ref_avg_dx = avg_back64(&s, &p, &dy64);
    let run = || gpu_pool_run(gpu, (s, p, layout), &x_t, &dy_t);
    let (first, idx) = run();
    let name = format!("pool {} {layout:?} {s:?} {p:?}", T::SUFFIX);
    // Ties are resolved on the same rounded values by the same rule: the indices are exact.
    assert!(
        idx == ref_idx,
        "{name}: max pool indices differ from the reference"
    );
    let names = ["max y", "max dx", "avg y", "avg dx"];
    let references = [&ref_max, &ref_max_dx, &ref_avg, &ref_avg_dx];
    for ((what, out), reference) in names.iter().zip(&first).zip(references) {
        let e = rel_error(&widen(out), reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    let (second, idx2) = run();
    for ((what, a), b) in names.iter().zip(&first).zip(&second) {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
    assert_bit_identical(&format!("{name} max indices"), &idx, &idx2);
}

/// InceptionV3's pools and odd ones: k2 s3, non-square kernels and strides, 1x1 outputs,
/// count_include_pad off.
fn gpu_pool_cases() -> Vec<(PoolShape, Pool2dParams, Layout)> {
    vec![
        (shape(4, 64, 147, 147), Pool2dParams::square(3, 2, 0)),
        (shape(4, 192, 35, 35), Pool2dParams::square(3, 1, 1)),
        (shape(2, 6, 9, 9), params((3, 3), (1, 1), (1, 1), false)),
        (shape(2, 5, 10, 11), Pool2dParams::square(2, 3, 0)),
        (shape(3, 4, 9, 7), params((3, 1), (2, 1), (1, 0), false)),
        (shape(2, 3, 6, 4), params((3, 2), (2, 2), (1, 1), false)),
        (shape(2, 3, 5, 5), Pool2dParams::square(5, 1, 0)),
    ]
    .into_iter()
    .map(|(s, p)| (s, p, Layout::Nchw))
    .collect()
}

/// NHWC: InceptionV3's pools at smaller sizes, channel counts that defeat the 16-byte vectors
/// (C = 1, 3, 5, 12 with f32 vectors but not bf16 ones), non-square kernels and strides, 1x1
/// outputs, count_include_pad off.
fn gpu_nhwc_pool_cases() -> Vec<(PoolShape, Pool2dParams, Layout)> {
    vec![
        (shape(2, 64, 37, 37), Pool2dParams::square(3, 2, 0)),
        (shape(2, 192, 13, 13), Pool2dParams::square(3, 1, 1)),
        (shape(2, 1, 9, 9), params((3, 3), (1, 1), (1, 1), false)),
        (shape(2, 5, 10, 11), Pool2dParams::square(2, 3, 0)),
        (shape(3, 12, 9, 7), params((3, 1), (2, 1), (1, 0), false)),
        (shape(2, 3, 6, 4), params((3, 2), (2, 2), (1, 1), false)),
        (shape(2, 24, 5, 5), Pool2dParams::square(5, 1, 0)),
    ]
    .into_iter()
    .map(|(s, p)| (s, p, Layout::Nhwc))
    .collect()
}

f32_and_bf16_tests!("pool", gpu_f32_pool_matches_reference, gpu_bf16_pool_matches_reference,
    each of gpu_pool_cases() => gpu_pool_matches_reference);

f32_and_bf16_tests!("pool", gpu_nhwc_f32_pool_matches_reference,
    gpu_nhwc_bf16_pool_matches_reference,
    each of gpu_nhwc_pool_cases() => gpu_pool_matches_reference);

/// The NHWC kernels visit each window in NCHW's order with NCHW's arithmetic: on the same
/// values every output and index is the same bits, in f32 and in bf16.
fn gpu_nhwc_pool_matches_nchw<T: Element>(
    gpu: &Gpu,
    (s, p, _): (PoolShape, Pool2dParams, Layout),
    _tol: f64,
) {
    let [(x, _), (dy, _)] = pool_inputs::<T>(&s, &p);
    let (nchw, nchw_idx) = gpu_pool_run(gpu, (s, p, Layout::Nchw), &x, &dy);
    let (nhwc, nhwc_idx) = gpu_pool_run(gpu, (s, p, Layout::Nhwc), &x, &dy);
    let name = format!("pool {} NHWC vs NCHW {s:?} {p:?}", T::SUFFIX);
    for ((what, a), b) in ["max y", "max dx", "avg y", "avg dx"]
        .iter()
        .zip(&nhwc)
        .zip(&nchw)
    {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
    assert_bit_identical(&format!("{name} max indices"), &nhwc_idx, &nchw_idx);
}

f32_and_bf16_tests!("pool", gpu_nhwc_f32_pool_matches_nchw, gpu_nhwc_bf16_pool_matches_nchw,
    each of gpu_nhwc_pool_cases() => gpu_nhwc_pool_matches_nchw);

/// More planes than the windowed kernels' grid covers at 4 per thread (65,535 × 4), so threads
/// stride over a second group of planes.
#[test]
fn gpu_pool_strides_past_the_grid() {
    let gpu = or_return!(gpu_or_skip("pool gpu_pool_strides_past_the_grid"));
    let s = shape(2, 131_075, 2, 2);
    let case = (s, Pool2dParams::square(2, 1, 0), Layout::Nchw);
    gpu_pool_matches_reference::<f32>(&gpu, case, 1e-5);
}

/// The global pool forward and backward on the GPU in `T` and `layout` from `x` and `dy` (NCHW,
/// converted in), outputs poisoned: `y [N, C]` and `dx`, converted back to NCHW.
fn gpu_global_run<T: Element>(
    gpu: &Gpu,
    s: PoolShape,
    layout: Layout,
    x: &[T],
    dy: &[T],
) -> [Vec<T>; 2] {
    let pool = GlobalAvgPoolGpu::<T>::with_layout(gpu, s, layout).unwrap();
    let x_d = gpu
        .upload(&Layout::Nchw.convert(layout, x, s.channels, s.hw()))
        .unwrap();
    let dy_d = gpu.upload(dy).unwrap();
    let mut y = gpu.alloc_poisoned::<T>(s.planes()).unwrap();
    let mut dx = gpu.alloc_poisoned::<T>(s.numel()).unwrap();
    pool.forward(&x_d, &mut y).unwrap();
    pool.backward(&dy_d, &mut dx).unwrap();
    let dx = layout.convert(
        Layout::Nchw,
        &gpu.download(&dx).unwrap(),
        s.channels,
        s.hw(),
    );
    [gpu.download(&y).unwrap(), dx]
}

fn global_inputs<T: Element>(s: &PoolShape) -> [(Vec<T>, Vec<f64>); 2] {
    [
        SplitMix64(61).uniform_vec(s.numel(), -1.0, 1.0),
        SplitMix64(62).uniform_vec(s.planes(), -1.0, 1.0),
    ]
    .map(|v| round_through::<T>(&v))
}

fn gpu_global_matches_reference<T: Element>(gpu: &Gpu, (s, layout): (PoolShape, Layout), tol: f64) {
    let [(x_t, x64), (dy_t, dy64)] = global_inputs::<T>(&s);
    let (ref_y, ref_dx) = (gap64(&s, &x64), gap_back64(&s, &dy64));
    let run = || gpu_global_run(gpu, s, layout, &x_t, &dy_t);
    let [y, dx] = run();
    let name = format!("global avg pool {} {layout:?} {s:?}", T::SUFFIX);
    for (what, out, reference) in [("y", &y, &ref_y), ("dx", &dx, &ref_dx)] {
        let e = rel_error(&widen(out), reference);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    let [y2, dx2] = run();
    assert_bit_identical(&format!("{name} y"), &y, &y2);
    assert_bit_identical(&format!("{name} dx"), &dx, &dx2);
}

/// InceptionV3's final 8x8, planes that do not fill a block, 1x1 planes, planes above 32 elements.
fn gpu_global_shapes() -> Vec<PoolShape> {
    vec![
        shape(4, 2048, 8, 8),
        shape(3, 5, 7, 9),
        shape(2, 3, 1, 1),
        shape(1, 2, 37, 41),
    ]
}

/// Each shape in both layouts (NHWC adds C = 1).
fn gpu_global_cases() -> Vec<(PoolShape, Layout)> {
    let mut shapes = gpu_global_shapes();
    shapes.push(shape(3, 1, 5, 6));
    let nhwc = shapes.iter().map(|&s| (s, Layout::Nhwc));
    gpu_global_shapes()
        .into_iter()
        .map(|s| (s, Layout::Nchw))
        .chain(nhwc.collect::<Vec<_>>())
        .collect()
}

f32_and_bf16_tests!("pool",
    gpu_f32_global_avg_pool_matches_reference, gpu_bf16_global_avg_pool_matches_reference,
    each of gpu_global_cases() => gpu_global_matches_reference);

/// The NHWC global pool sums with 32 row slots added in the NCHW warp butterfly's order: the
/// same bits as NCHW, forward and backward, f32 and bf16.
fn gpu_nhwc_global_matches_nchw<T: Element>(gpu: &Gpu, s: PoolShape, _tol: f64) {
    let [(x, _), (dy, _)] = global_inputs::<T>(&s);
    let nchw = gpu_global_run(gpu, s, Layout::Nchw, &x, &dy);
    let nhwc = gpu_global_run(gpu, s, Layout::Nhwc, &x, &dy);
    let name = format!("global avg pool {} NHWC vs NCHW {s:?}", T::SUFFIX);
    for ((what, a), b) in ["y", "dx"].iter().zip(&nhwc).zip(&nchw) {
        assert_bit_identical(&format!("{name} {what}"), a, b);
    }
}

f32_and_bf16_tests!("pool", gpu_nhwc_f32_global_avg_pool_matches_nchw,
    gpu_nhwc_bf16_global_avg_pool_matches_nchw,
    each of gpu_global_shapes() => gpu_nhwc_global_matches_nchw);

/// The bf16 NHWC pools against the bf16 reference: the f32 reference on the same bf16 inputs,
/// each output rounded to bf16 once ([`bf16_rounding_mismatch`]'s bound; max pool and its
/// backward, the average forward and the global backward round the same f32 values and match
/// exactly). A mutant global pool that rounds each sum to bf16 before dividing fails the check.
#[test]
fn gpu_nhwc_bf16_pool_rounds_as_reference() {
    let gpu = or_return!(gpu_or_skip("pool gpu_nhwc_bf16_pool_rounds_as_reference"));
    let to_f32 = |v: &[f64]| -> Vec<f32> { v.iter().map(|&v| v as f32).collect() };
    let to_bf16 = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&v| bf16::from_f32(v)).collect() };
    for (s, p, layout) in gpu_nhwc_pool_cases() {
        let [(x, x64), (dy, dy64)] = pool_inputs::<bf16>(&s, &p);
        let (x32, dy32) = (to_f32(&x64), to_f32(&dy64));
        let (n_out, n_in) = (out_len(&s, &p), s.numel());
        let (mut y, mut idx) = (vec![f32::NAN; n_out], vec![-7; n_out]);
        max_pool2d_forward_cpu(&s, &p, &x32, &mut y, &mut idx).unwrap();
        let mut dx = vec![f32::NAN; n_in];
        max_pool2d_backward_cpu(&s, &p, &idx, &dy32, &mut dx).unwrap();
        let mut ya = vec![f32::NAN; n_out];
        avg_pool2d_forward_cpu(&s, &p, &x32, &mut ya).unwrap();
        let mut dxa = vec![f32::NAN; n_in];
        avg_pool2d_backward_cpu(&s, &p, &dy32, &mut dxa).unwrap();
        let (got, got_idx) = gpu_pool_run(&gpu, (s, p, layout), &x, &dy);
        let name = format!("bf16 NHWC pool {s:?} {p:?}");
        assert!(got_idx == idx, "{name}: max pool indices differ");
        let reference = [&y, &dx, &ya, &dxa].map(|v| to_bf16(v));
        for ((what, got), want) in ["max y", "max dx", "avg y", "avg dx"]
            .iter()
            .zip(&got)
            .zip(&reference)
        {
            if let Some(why) = bf16_rounding_mismatch(got, want) {
                panic!("{name} {what}: {why}");
            }
        }
    }
    // 7x7 planes: the divisor is no power of two, so rounding the sum first shows.
    for s in [gpu_global_shapes(), vec![shape(8, 64, 7, 7)]].concat() {
        let [(x, x64), (dy, dy64)] = global_inputs::<bf16>(&s);
        let x32 = to_f32(&x64);
        let (mut y, mut dx) = (vec![f32::NAN; s.planes()], vec![f32::NAN; s.numel()]);
        global_avg_pool_forward_cpu(&s, &x32, &mut y).unwrap();
        global_avg_pool_backward_cpu(&s, &to_f32(&dy64), &mut dx).unwrap();
        let got = gpu_global_run(&gpu, s, Layout::Nhwc, &x, &dy);
        let name = format!("bf16 NHWC global avg pool {s:?}");
        for ((what, got), want) in ["y", "dx"]
            .iter()
            .zip(&got)
            .zip([to_bf16(&y), to_bf16(&dx)])
        {
            if let Some(why) = bf16_rounding_mismatch(got, &want) {
                panic!("{name} {what}: {why}");
            }
        }
        if s.height == 7 {
            // The mutant: each plane's sum rounded to bf16 before the division.
            let hw = s.hw() as f32;
            let mutant: Vec<bf16> = x32
                .chunks(s.hw())
                .map(|plane| bf16::from_f32(bf16_round(plane.iter().sum::<f32>()) / hw))
                .collect();
            assert!(
                bf16_rounding_mismatch(&got[0], &mutant).is_some(),
                "{name}: the check passes a reference that rounds the sum first"
            );
        }
    }
}

fn bf16_round(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// Concat of three parts into a poisoned whole, then the split back out; both are bit copies,
/// so they must equal the CPU result exactly.
fn gpu_channels_match_cpu<T: Element>(gpu: &Gpu) {
    let (batch, hw) = (3, (5, 7));
    let parts = [(64, 0), (96, 64), (32, 160)];
    let whole_c = 192;
    let slices: Vec<ChannelSlice> = parts
        .iter()
        .map(|&(c, off)| slice(batch, c, whole_c, off, hw))
        .collect();
    let data: Vec<Vec<T>> = slices
        .iter()
        .enumerate()
        .map(|(i, s)| {
            round_through::<T>(&SplitMix64(70 + i as u64).uniform_vec(s.part_len(), -1.0, 1.0)).0
        })
        .collect();
    let copy = ChannelCopyGpu::<T>::new(gpu).unwrap();
    let whole_len = slices[0].whole_len();
    let mut ref_whole = vec![T::from_f32(f32::NAN); whole_len];
    let mut whole = gpu.alloc_poisoned::<T>(whole_len).unwrap();
    for (s, d) in slices.iter().zip(&data) {
        copy_channels_cpu(s, d, &mut ref_whole).unwrap();
        copy.copy_channels(s, &gpu.upload(d).unwrap(), &mut whole)
            .unwrap();
        // After each part the channels not yet written must still hold the poison.
        assert_bit_identical(
            &format!("concat {} after part {s:?}", T::SUFFIX),
            &gpu.download(&whole).unwrap(),
            &ref_whole,
        );
    }
    for (s, d) in slices.iter().zip(&data) {
        let mut part = gpu.alloc_poisoned::<T>(s.part_len()).unwrap();
        copy.slice_channels(s, &whole, &mut part).unwrap();
        assert_bit_identical(
            &format!("split {} {s:?}", T::SUFFIX),
            &gpu.download(&part).unwrap(),
            d,
        );
    }
    let bad = slice(batch, 64, whole_c, 160, hw);
    let mut part = gpu.alloc_poisoned::<T>(bad.part_len()).unwrap();
    let err = copy.slice_channels(&bad, &whole, &mut part).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the whole's 192 channels"),
        "{err}"
    );
}

#[test]
fn gpu_channel_concat_and_split_match_cpu() {
    let gpu = or_return!(gpu_or_skip("pool gpu_channel_concat_and_split_match_cpu"));
    gpu_channels_match_cpu::<f32>(&gpu);
    gpu_channels_match_cpu::<half::bf16>(&gpu);
}

#[test]
fn gpu_wrong_lengths_are_errors() {
    let gpu = or_return!(gpu_or_skip("pool gpu_wrong_lengths_are_errors"));
    let s = shape(1, 2, 4, 4);
    let max = MaxPool2dGpu::<f32>::new(&gpu, s, Pool2dParams::square(2, 2, 0)).unwrap();
    let x = gpu.alloc_poisoned::<f32>(31).unwrap();
    let mut y = gpu.alloc_poisoned::<f32>(8).unwrap();
    let mut idx = gpu.alloc_zeros::<i32>(8).unwrap();
    let err = max.forward(&x, &mut y, &mut idx).unwrap_err();
    assert!(
        err.to_string()
            .contains("max pool x has 31 elements, expected 32"),
        "{err}"
    );
    let err = MaxPool2dGpu::<f32>::new(&gpu, s, Pool2dParams::square(3, 1, 2))
        .err()
        .unwrap();
    assert!(err.to_string().contains("padding"), "{err}");
    let avg =
        AvgPool2dGpu::<f32>::with_layout(&gpu, s, Pool2dParams::square(2, 2, 0), Layout::Nhwc)
            .unwrap();
    let err = avg.backward(&x, &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("avg pool dy has 31 elements, expected 8"),
        "{err}"
    );
    let global = GlobalAvgPoolGpu::<f32>::with_layout(&gpu, s, Layout::Nhwc).unwrap();
    let err = global.forward(&x, &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("global avg pool x has 31 elements, expected 32"),
        "{err}"
    );
}

/// cuDNN's pooling, the benches' baseline, against the f64 reference, max and average, forward
/// and backward, outputs poisoned. Distinct input values, so no window has a tie that cuDNN's
/// max backward could route elsewhere.
#[test]
fn gpu_cudnn_baseline_matches_reference() {
    let test = "pool gpu_cudnn_baseline_matches_reference";
    let gpu = or_return!(gpu_or_skip(test));
    for (s, p, _) in gpu_pool_cases().into_iter().skip(1).take(4) {
        let n_out = out_len(&s, &p);
        let (x32, x) = round_through::<f32>(&distinct_values(s.numel(), 53));
        let (dy32, dy) = round_through::<f32>(&SplitMix64(54).uniform_vec(n_out, -1.0, 1.0));
        let (x_d, dy_d) = (gpu.upload(&x32).unwrap(), gpu.upload(&dy32).unwrap());
        let (ref_max, ref_idx) = max64(&s, &p, &x);
        let ref_avg = avg64(&s, &p, &x);
        let cases = [
            (
                "max",
                Pool2dCudnn::max(&gpu, s, p),
                ref_max,
                max_back64(&s, &p, &ref_idx, &dy),
            ),
            (
                "average",
                Pool2dCudnn::average(&gpu, s, p),
                ref_avg,
                avg_back64(&s, &p, &dy),
            ),
        ];
        for (what, made, ref_y, ref_dx) in cases {
            let pool = or_return!(library_or_skip(test, made));
            let mut y = gpu.alloc_poisoned::<f32>(n_out).unwrap();
            let mut dx = gpu.alloc_poisoned::<f32>(s.numel()).unwrap();
            pool.forward(&x_d, &mut y).unwrap();
            pool.backward(&x_d, &y, &dy_d, &mut dx).unwrap();
            for (part, got, want) in [("y", &y, &ref_y), ("dx", &dx, &ref_dx)] {
                let e = rel_error(&widen(&gpu.download(got).unwrap()), want);
                println!("cuDNN {what} pool {s:?} {p:?} {part}: relative error {e:.2e}");
                assert!(
                    e < 1e-5,
                    "cuDNN {what} pool {s:?} {p:?}: {part} is {e:.3e} off"
                );
            }
        }
    }
}
