//! The interpolators against hand-computed values and against PyTorch's `F.interpolate`
//! (`tests/data/interp_golden.safetensors`, float64, made by `tools/make_interp_golden.py`).

use c2f_kernels::testing::rel_error;
use c2f_train::interpolate::{cubic_weights, resize, Interpolation};
use safetensors::SafeTensors;

fn row(method: Interpolation, x: &[f64], out: usize) -> Vec<f64> {
    resize(method, 1, (1, x.len()), (1, out), x).unwrap()
}

#[test]
fn hand_computed_rows() {
    // 2 → 4: scale ½, sources max(½·(o + ½) − ½, 0) = 0, ¼, ¾, 1¼ (the last clamps to x1).
    assert_eq!(
        row(Interpolation::Bilinear, &[1.0, 3.0], 4),
        [1.0, 1.5, 2.5, 3.0]
    );
    // Legacy nearest, 3 → 5: ⌊0.6·o⌋ = 0, 0, 1, 1, 2; 5 → 2: ⌊2.5·o⌋ = 0, 2.
    assert_eq!(
        row(Interpolation::Nearest, &[1.0, 2.0, 4.0], 5),
        [1.0, 1.0, 2.0, 2.0, 4.0]
    );
    assert_eq!(
        row(Interpolation::Nearest, &[0.0, 1.0, 2.0, 3.0, 4.0], 2),
        [0.0, 2.0]
    );
    // Bicubic 2 → 4, first output: source −¼, so t = ¾ and taps −2..=1 clamp to x0, x0, x0, x1;
    // weights (A = −0.75) −0.03515625, 0.26171875, 0.87890625, −0.10546875 (worked by hand),
    // so 1·1.10546875 + 3·(−0.10546875) = 0.7890625: the overshoot bilinear does not have.
    let w = cubic_weights(0.75);
    assert_eq!(w, [-0.03515625, 0.26171875, 0.87890625, -0.10546875]);
    let y = row(Interpolation::Bicubic, &[1.0, 3.0], 4);
    assert_eq!(y[0], 0.7890625);
    // Symmetric input, symmetric output.
    assert!((y[1] + y[2] - 4.0).abs() < 1e-15 && (y[0] + y[3] - 4.0).abs() < 1e-15);
}

#[test]
fn cubic_weights_sum_to_one_and_interpolate() {
    for t in [0.0, 0.1, 0.37, 0.5, 0.93] {
        let s: f64 = cubic_weights(t).iter().sum();
        assert!((s - 1.0).abs() < 1e-15, "t = {t}: {s}");
    }
    assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn same_size_is_identity() {
    let x: Vec<f64> = (0..2 * 5 * 7).map(|i| (i as f64 * 0.37).sin()).collect();
    for m in Interpolation::ALL {
        assert_eq!(resize(m, 2, (5, 7), (5, 7), &x).unwrap(), x, "{m:?}");
    }
}

#[test]
fn bad_shapes_are_refused() {
    let e = resize(Interpolation::Bicubic, 1, (0, 3), (4, 4), &[]).unwrap_err();
    assert!(e.to_string().contains("bicubic"), "{e}");
    let e = resize(Interpolation::Nearest, 1, (2, 3), (4, 4), &[0.0; 5]).unwrap_err();
    assert!(e.to_string().contains("resize input"), "{e}");
}

fn tensor(file: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f64>) {
    let t = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("{name} in the golden file"));
    assert_eq!(t.dtype(), safetensors::Dtype::F64, "{name}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn matches_pytorch_golden() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/interp_golden.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases: Vec<String> = file
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix(".input").map(str::to_owned))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases: {cases:?}");
    for case in cases {
        let (ishape, x) = tensor(&file, &format!("{case}.input"));
        for m in Interpolation::ALL {
            let (oshape, want) = tensor(&file, &format!("{case}.{}", m.name()));
            let got = resize(
                m,
                ishape[0],
                (ishape[1], ishape[2]),
                (oshape[1], oshape[2]),
                &x,
            )
            .unwrap();
            let e = rel_error(&got, &want);
            // Bilinear computes its positions and weights in f32, as PyTorch's float kernel: at
            // 13 → 40 that alone is ~8e-7 from float64.
            let bound = if m == Interpolation::Bilinear {
                5e-6
            } else {
                1e-13
            };
            eprintln!("{case} {}: {e:.2e}", m.name());
            assert!(e < bound, "{case} {}: rel error {e:.3e}", m.name());
            if m == Interpolation::Nearest {
                assert_eq!(got, want, "{case}: nearest copies values exactly");
            }
        }
    }
}
