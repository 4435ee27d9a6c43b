//! CPU convolution: forward against a direct f64 convolution, backward-data and backward-filter
//! by finite differences, the accumulate rules, and f32 against f64.

use c2f_inception::cpu::conv::{backward_data, backward_filter, forward, Conv2dShape};
use c2f_kernels::testing::{numeric_gradient, rel_error, SplitMix64};

#[allow(clippy::too_many_arguments)]
fn shape(
    batch: usize,
    in_channels: usize,
    side: (usize, usize),
    out_channels: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels,
        height: side.0,
        width: side.1,
        out_channels,
        kernel,
        stride,
        padding,
    }
}

/// The kinds of convolution InceptionV3 has, plus odd sizes.
fn cases() -> Vec<Conv2dShape> {
    vec![
        shape(2, 3, (9, 9), 4, (3, 3), (2, 2), (0, 0)),
        shape(2, 3, (6, 7), 5, (1, 1), (1, 1), (0, 0)),
        shape(3, 2, (5, 9), 3, (1, 7), (1, 1), (0, 3)),
        shape(1, 4, (8, 5), 2, (7, 1), (1, 1), (3, 0)),
        shape(2, 2, (6, 6), 3, (5, 5), (1, 1), (2, 2)),
        shape(2, 3, (7, 6), 2, (3, 3), (1, 1), (1, 1)),
        shape(1, 2, (5, 5), 2, (1, 1), (2, 2), (0, 0)),
    ]
}

fn direct(s: &Conv2dShape, x: &[f64], w: &[f64]) -> Vec<f64> {
    let (oh, ow) = (s.out_height(), s.out_width());
    let mut y = vec![0.0; s.output_len()];
    for n in 0..s.batch {
        for k in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for c in 0..s.in_channels {
                        for ky in 0..s.kernel.0 {
                            for kx in 0..s.kernel.1 {
                                let iy = (oy * s.stride.0 + ky) as isize - s.padding.0 as isize;
                                let ix = (ox * s.stride.1 + kx) as isize - s.padding.1 as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.height as isize
                                    || ix >= s.width as isize
                                {
                                    continue;
                                }
                                let xv = x[((n * s.in_channels + c) * s.height + iy as usize)
                                    * s.width
                                    + ix as usize];
                                let wv = w
                                    [((k * s.in_channels + c) * s.kernel.0 + ky) * s.kernel.1 + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((n * s.out_channels + k) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

fn inputs(s: &Conv2dShape, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64(seed);
    (
        rng.uniform_vec(s.input_len(), -1.0, 1.0),
        rng.uniform_vec(s.weight_len(), -1.0, 1.0),
        rng.uniform_vec(s.output_len(), -1.0, 1.0),
    )
}

#[test]
fn forward_matches_direct_convolution() {
    for s in cases() {
        let (x, w, _) = inputs(&s, 1);
        let mut y = vec![f64::NAN; s.output_len()];
        forward(&s, &x, &w, &mut y).unwrap();
        let e = rel_error(&y, &direct(&s, &x, &w));
        assert!(e < 1e-14, "{s:?}: forward relative error {e}");
    }
}

#[test]
fn backward_matches_finite_differences() {
    for s in cases() {
        let (x, w, dy) = inputs(&s, 2);
        let loss = |x: &[f64], w: &[f64]| -> f64 {
            direct(&s, x, w).iter().zip(&dy).map(|(a, b)| a * b).sum()
        };
        let mut dx = vec![f64::NAN; s.input_len()];
        backward_data(&s, &dy, &w, &mut dx, false).unwrap();
        let e = rel_error(&dx, &numeric_gradient(|x| loss(x, &w), &x, 1e-6));
        assert!(e < 1e-8, "{s:?}: dx relative error {e}");
        let mut dw = vec![0.0; s.weight_len()];
        backward_filter(&s, &x, &dy, &mut dw).unwrap();
        let e = rel_error(&dw, &numeric_gradient(|w| loss(&x, w), &w, 1e-6));
        assert!(e < 1e-8, "{s:?}: dw relative error {e}");
    }
}

#[test]
fn accumulate_rules() {
    for s in cases() {
        let (x, w, dy) = inputs(&s, 3);
        let mut dx = vec![f64::NAN; s.input_len()];
        backward_data(&s, &dy, &w, &mut dx, false).unwrap();
        let once = dx.clone();
        backward_data(&s, &dy, &w, &mut dx, true).unwrap();
        let twice: Vec<f64> = once.iter().map(|v| 2.0 * v).collect();
        assert!(rel_error(&dx, &twice) < 1e-15, "{s:?}: dx accumulate");
        let start = SplitMix64(4).uniform_vec(s.weight_len(), -1.0, 1.0);
        let mut dw = start.clone();
        backward_filter(&s, &x, &dy, &mut dw).unwrap();
        let mut fresh = vec![0.0; s.weight_len()];
        backward_filter(&s, &x, &dy, &mut fresh).unwrap();
        let expected: Vec<f64> = start.iter().zip(&fresh).map(|(a, b)| a + b).collect();
        assert!(rel_error(&dw, &expected) < 1e-15, "{s:?}: dw accumulates");
    }
}

#[test]
fn f32_matches_f64() {
    let s = shape(4, 16, (17, 17), 24, (3, 3), (1, 1), (1, 1));
    let (x, w, dy) = inputs(&s, 5);
    let narrow = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let widen = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let mut y32 = vec![f32::NAN; s.output_len()];
    forward(&s, &narrow(&x), &narrow(&w), &mut y32).unwrap();
    let mut y64 = vec![0.0; s.output_len()];
    forward(&s, &x, &w, &mut y64).unwrap();
    assert!(rel_error(&widen(&y32), &y64) < 1e-6);
    let mut dw32 = vec![0.0f32; s.weight_len()];
    backward_filter(&s, &narrow(&x), &narrow(&dy), &mut dw32).unwrap();
    let mut dw64 = vec![0.0; s.weight_len()];
    backward_filter(&s, &x, &dy, &mut dw64).unwrap();
    assert!(rel_error(&widen(&dw32), &dw64) < 1e-6);
}

#[test]
fn bad_shapes_are_clear_errors() {
    let s = shape(1, 2, (3, 3), 2, (5, 5), (1, 1), (0, 0));
    let err = forward(&s, &[0.5f32; 18], &[0.5f32; 100], &mut [0.0f32; 0]).unwrap_err();
    assert!(
        err.to_string().contains("larger than the padded input"),
        "{err}"
    );
    let s = shape(1, 2, (3, 3), 2, (3, 3), (1, 1), (1, 1));
    let err = forward(&s, &[0.5f32; 17], &[0.5f32; 36], &mut [0.0f32; 18]).unwrap_err();
    assert!(
        err.to_string()
            .contains("conv2d input has 17 elements, expected 18"),
        "{err}"
    );
}
