//! Center loss: the CPU reference against hand-computed values and finite differences (f64), and
//! the fused CUDA kernels (and the unfused bench baseline) against the f64 reference in f32 and
//! bf16 (skipped without a GPU).

use crate::common::gpu_tests::f32_and_bf16_tests;
use crate::common::skip::or_return;
use c2f_baselines::center_loss::CenterLossUnfused;
use c2f_kernels::center_loss::{
    forward_update_cpu, CenterLossGpu, CenterLossParams, CenterLossShape, CenterRule,
};
use c2f_kernels::device::NO_STATS;
use c2f_kernels::testing::{
    assert_bit_identical, gpu_or_skip, numeric_gradient, rel_error, round_through, widen,
    SplitMix64,
};
use c2f_kernels::{Element, Error, Gpu};
use cudarc::driver::CudaSlice;

fn shape(batch: usize, dim: usize, classes: usize) -> CenterLossShape {
    CenterLossShape {
        batch,
        dim,
        classes,
    }
}

fn params(lambda: f64, beta: f64, rule: CenterRule) -> CenterLossParams {
    CenterLossParams { lambda, beta, rule }
}

const RULES: [CenterRule; 2] = [CenterRule::MovingAverage, CenterRule::Normalized];

/// Rows of norm 1, like the normalised BAP output.
fn draw_features(s: &CenterLossShape, seed: u64) -> Vec<f64> {
    let mut f = SplitMix64(seed).uniform_vec(s.features_len(), -1.0, 1.0);
    for row in f.chunks_mut(s.dim) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    f
}

/// Nonzero centers with row norms between 0.5 and 2, the size a moving average of unit rows has.
fn draw_centers(s: &CenterLossShape, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed);
    let mut c = rng.uniform_vec(s.centers_len(), -1.0, 1.0);
    for row in c.chunks_mut(s.dim) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let target = rng.uniform(0.5, 2.0);
        row.iter_mut().for_each(|v| *v *= target / norm);
    }
    c
}

/// Random labels with at least one repeat (the last sample shares the first one's label).
fn draw_labels(s: &CenterLossShape, seed: u64) -> Vec<i32> {
    let mut rng = SplitMix64(seed);
    let mut y: Vec<i32> = (0..s.batch)
        .map(|_| rng.below(s.classes as u64) as i32)
        .collect();
    if s.batch > 1 {
        y[s.batch - 1] = y[0];
    }
    y
}

/// f64 reference: (loss, d_features, updated centers).
fn run64(
    s: &CenterLossShape,
    p: &CenterLossParams,
    f: &[f64],
    y: &[i32],
    c: &[f64],
) -> (f64, Vec<f64>, Vec<f64>) {
    let mut centers = c.to_vec();
    let mut df = vec![f64::NAN; s.features_len()];
    let loss = forward_update_cpu(s, p, f, y, &mut centers, &mut df).unwrap();
    (loss, df, centers)
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() < 1e-12,
        "{what}: got {got}, expected {want}"
    );
}

#[test]
fn hand_computed_case_moving_average() {
    // The paper's rule, against the raw centers: c0 = [3, 4], c1 = 0, c2 = [0, -2] (absent).
    // f0 = [1, 0] (label 0): diff [-2, -4],     |diff|² 20
    // f1 = [0, 1] (label 1): diff [0, 1],       |diff|² 1
    // f2 = [0.6, -0.8] (label 0): diff [-2.4, -4.8], |diff|² 28.8
    let s = shape(3, 2, 3);
    let p = params(0.5, 0.05, CenterRule::MovingAverage);
    let f = [1.0, 0.0, 0.0, 1.0, 0.6, -0.8];
    let c = [3.0, 4.0, 0.0, 0.0, 0.0, -2.0];
    let (loss, df, centers) = run64(&s, &p, &f, &[0, 1, 0], &c);
    assert_close("loss", loss, 0.5 / 3.0 * (20.0 + 1.0 + 28.8));
    let want_df = [-2.0, -4.0, 0.0, 1.0, -2.4, -4.8].map(|v| v / 3.0);
    for (i, (&g, &w)) in df.iter().zip(&want_df).enumerate() {
        assert_close(&format!("df[{i}]"), g, w);
    }
    // c0 moves twice, by f0 then f2: 0.95·[3, 4] + 0.05·[1, 0] = [2.9, 3.8], then
    // 0.95·[2.9, 3.8] + 0.05·[0.6, -0.8] = [2.785, 3.57]; c1 = 0.05·[0, 1]; c2 unchanged.
    let want_c = [2.785, 3.57, 0.0, 0.05, 0.0, -2.0];
    for (i, (&g, &w)) in centers.iter().zip(&want_c).enumerate() {
        assert_close(&format!("centers[{i}]"), g, w);
    }
}

#[test]
fn hand_computed_case_normalized() {
    // c0 = [3, 4] -> ĉ0 = [0.6, 0.8]; c1 = 0 -> ĉ1 = 0; c2 = [0, -2] is absent from the batch.
    // f0 = [1, 0] (label 0): diff [0.4, -0.8], |diff|² 0.8
    // f1 = [0, 1] (label 1): diff [0, 1],      |diff|² 1
    // f2 = [0.6, -0.8] (label 0): diff [0, -1.6], |diff|² 2.56
    let s = shape(3, 2, 3);
    let p = params(0.5, 0.05, CenterRule::Normalized);
    let f = [1.0, 0.0, 0.0, 1.0, 0.6, -0.8];
    let c = [3.0, 4.0, 0.0, 0.0, 0.0, -2.0];
    let (loss, df, centers) = run64(&s, &p, &f, &[0, 1, 0], &c);
    assert_close("loss", loss, 0.5 / 3.0 * (0.8 + 1.0 + 2.56));
    // df = (2·0.5/3)·diff
    let want_df = [0.4, -0.8, 0.0, 1.0, 0.0, -1.6].map(|v| v / 3.0);
    for (i, (&g, &w)) in df.iter().zip(&want_df).enumerate() {
        assert_close(&format!("df[{i}]"), g, w);
    }
    // c0 += 0.05·([0.4, -0.8] + [0, -1.6]); c1 += 0.05·[0, 1]; c2 unchanged.
    let want_c = [3.02, 3.88, 0.0, 0.05, 0.0, -2.0];
    for (i, (&g, &w)) in centers.iter().zip(&want_c).enumerate() {
        assert_close(&format!("centers[{i}]"), g, w);
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let s = shape(5, 7, 3);
    let f = draw_features(&s, 1);
    let c = draw_centers(&s, 2);
    let y = [2, 0, 2, 1, 2];
    for rule in RULES {
        let p = params(0.7, 0.05, rule);
        let (_, df, _) = run64(&s, &p, &f, &y, &c);
        let num = numeric_gradient(|x| run64(&s, &p, x, &y, &c).0, &f, 1e-6);
        let e = rel_error(&df, &num);
        assert!(e < 1e-7, "{rule:?}: df relative error {e}");
    }
}

#[test]
fn moving_average_moves_once_per_sample_in_batch_order() {
    // Class 1 at samples 0, 2, 3: c1 ← (1−β)³c1 + β(1−β)²f0 + β(1−β)f2 + βf3, the closed form of
    // Eq. 3 applied per sample.
    let s = shape(4, 6, 3);
    let p = params(1.0, 0.05, CenterRule::MovingAverage);
    let f = draw_features(&s, 3);
    let c = draw_centers(&s, 4);
    let (_, _, centers) = run64(&s, &p, &f, &[1, 0, 1, 1], &c);
    let (d, b) = (s.dim, p.beta);
    for j in 0..d {
        let want = (1.0 - b).powi(3) * c[d + j]
            + b * (1.0 - b).powi(2) * f[j]
            + b * (1.0 - b) * f[2 * d + j]
            + b * f[3 * d + j];
        assert_close(&format!("c1[{j}]"), centers[d + j], want);
        // Another order of the same samples lands elsewhere: the order is part of the rule.
        let swapped = (1.0 - b).powi(3) * c[d + j]
            + b * (1.0 - b).powi(2) * f[3 * d + j]
            + b * (1.0 - b) * f[2 * d + j]
            + b * f[j];
        assert!((want - swapped).abs() > 1e-6);
        assert_close(
            &format!("c0[{j}]"),
            centers[j],
            (1.0 - b) * c[j] + b * f[d + j],
        );
    }
    assert_bit_identical("absent class", &centers[2 * d..], &c[2 * d..]);
}

#[test]
fn normalized_rule_accumulates_repeated_labels() {
    let s = shape(4, 6, 3);
    let p = params(1.0, 0.05, CenterRule::Normalized);
    let f = draw_features(&s, 3);
    let c = draw_centers(&s, 4);
    let y = [1, 0, 1, 1];
    let (_, _, centers) = run64(&s, &p, &f, &y, &c);
    let d = s.dim;
    let c1 = &c[d..2 * d];
    let norm = c1.iter().map(|v| v * v).sum::<f64>().sqrt();
    for j in 0..d {
        let chat = c1[j] / norm;
        let all: f64 = [0, 2, 3].iter().map(|&i| f[i * d + j] - chat).sum();
        assert_close(&format!("c1[{j}]"), centers[d + j], c1[j] + p.beta * all);
        // Keeping only one sample per label (as PyTorch ports do) would be visibly different.
        let one = f[3 * d + j] - chat;
        assert!((p.beta * (all - one)).abs() > 1e-6);
    }
    // Class 2 is absent: its row keeps its bits.
    assert_bit_identical("absent class", &centers[2 * d..], &c[2 * d..]);
}

#[test]
fn zero_centers_start() {
    // The paper's start. Under either rule the loss is taken against 0: loss = (λ/B) Σ |f_i|²,
    // df = (2λ/B) f. The paper's rule then makes c2 = β(1−β)²f0 + β(1−β)f2 + βf3, the
    // normalised one c2 = β(f0 + f2 + f3); class 1 is absent and stays 0.
    let s = shape(4, 9, 3);
    let f = draw_features(&s, 5);
    let y = [2, 0, 2, 2];
    let (d, b) = (s.dim, 0.05);
    for rule in RULES {
        let p = params(0.3, b, rule);
        let (loss, df, centers) = run64(&s, &p, &f, &y, &vec![0.0; s.centers_len()]);
        let sq: f64 = f.iter().map(|v| v * v).sum();
        assert_close("loss", loss, 0.3 / 4.0 * sq);
        for (i, (&g, &fv)) in df.iter().zip(&f).enumerate() {
            assert_close(&format!("df[{i}]"), g, 2.0 * 0.3 / 4.0 * fv);
        }
        let weights = match rule {
            CenterRule::MovingAverage => [b * (1.0 - b) * (1.0 - b), b * (1.0 - b), b],
            CenterRule::Normalized => [b, b, b],
        };
        for j in 0..d {
            assert_close("c0", centers[j], b * f[d + j]);
            assert_eq!(centers[d + j], 0.0, "class 1 is absent");
            let want = weights[0] * f[j] + weights[1] * f[2 * d + j] + weights[2] * f[3 * d + j];
            assert_close(&format!("{rule:?} c2"), centers[2 * d + j], want);
        }
    }
}

#[test]
fn bad_label_is_an_error_and_writes_nothing() {
    let s = shape(3, 4, 3);
    let p = CenterLossParams::default();
    let f = draw_features(&s, 6);
    let c = draw_centers(&s, 7);
    for (y, index, label) in [([0, 3, -1], 1, 3i64), ([0, 1, -1], 2, -1)] {
        let mut centers = c.clone();
        let mut df = vec![f64::NAN; s.features_len()];
        let err = forward_update_cpu(&s, &p, &f, &y, &mut centers, &mut df).unwrap_err();
        match err {
            Error::Label {
                index: i,
                label: l,
                classes,
            } => assert_eq!((i, l, classes), (index, label, 3)),
            e => panic!("expected a label error, got {e}"),
        }
        assert!(
            err.to_string().contains(&format!(
                "label {label} of sample {index} is outside [0, 3)"
            )),
            "{err}"
        );
        assert_bit_identical("centers after a bad label", &centers, &c);
        assert!(df.iter().all(|v| v.is_nan()), "d_features was written");
    }
}

#[test]
fn f32_reference_matches_f64() {
    let s = shape(8, 300, 5);
    let f = draw_features(&s, 8);
    let c = draw_centers(&s, 9);
    let y = draw_labels(&s, 10);
    for rule in RULES {
        let p = params(1.0, 0.05, rule);
        let (loss64, df64, c64) = run64(&s, &p, &f, &y, &c);
        let (f32v, _) = round_through::<f32>(&f);
        let (mut c32, c_seen) = round_through::<f32>(&c);
        let mut df = vec![f32::NAN; s.features_len()];
        let loss = forward_update_cpu(&s, &p, &f32v, &y, &mut c32, &mut df).unwrap();
        assert!(rel_error(&[loss as f64], &[loss64]) < 1e-5);
        assert!(rel_error(&widen(&df), &df64) < 1e-5);
        let e = rel_error(&delta(&widen(&c32), &c_seen), &delta(&c64, &c));
        assert!(e < 1e-5, "{rule:?}: center update relative error {e}");
    }
}

#[test]
fn wrong_buffer_length_is_a_clear_error() {
    let s = shape(2, 3, 4);
    let mut centers = vec![0.0f32; 12];
    let mut df = vec![0.0f32; 6];
    let err = forward_update_cpu(
        &s,
        &CenterLossParams::default(),
        &[1.0f32; 6],
        &[0, 1, 2],
        &mut centers,
        &mut df,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("center loss labels has 3 elements, expected 2"),
        "{err}"
    );
}

/// `after − before`, elementwise: the update, which a relative error over whole centers (mostly
/// untouched rows) would hide.
fn delta(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

struct GpuRun<T> {
    loss: f32,
    df: Vec<T>,
    centers: Vec<f32>,
}

/// The fused kernels' λ slot for `p` at batch `s.batch`.
fn scales_slot(gpu: &Gpu, s: &CenterLossShape, p: &CenterLossParams) -> CudaSlice<f32> {
    gpu.upload(&p.scales(s.batch).map(|v| v as f32)).unwrap()
}

/// One fused (or unfused) call from `c0`, with `d_features` poisoned first.
fn run_gpu<T: Element>(
    gpu: &Gpu,
    s: CenterLossShape,
    p: &CenterLossParams,
    f: &[T],
    y: &[i32],
    c0: &[f32],
    unfused: bool,
) -> GpuRun<T> {
    let f_d = gpu.upload(f).unwrap();
    let y_d = gpu.upload(y).unwrap();
    let mut c_d = gpu.upload(c0).unwrap();
    let mut df_d = gpu.alloc_poisoned::<T>(s.features_len()).unwrap();
    let loss = if unfused {
        let mut op = CenterLossUnfused::<T>::new(gpu, s).unwrap();
        op.enqueue(p, &f_d, &y_d, &mut c_d, &mut df_d).unwrap();
        op.finish().unwrap()
    } else {
        let mut op = CenterLossGpu::<T>::new(gpu, s).unwrap();
        let scales = scales_slot(gpu, &s, p);
        op.enqueue(
            &p.update(),
            &scales,
            &f_d,
            &y_d,
            &mut c_d,
            &mut df_d,
            NO_STATS,
        )
        .unwrap();
        op.finish().unwrap()
    };
    GpuRun {
        loss,
        df: gpu.download(&df_d).unwrap(),
        centers: gpu.download(&c_d).unwrap(),
    }
}

/// Checks a GPU run against the f64 reference on the same rounded inputs.
fn check_run<T: Element>(
    name: &str,
    s: &CenterLossShape,
    y: &[i32],
    run: &GpuRun<T>,
    reference: &(f64, Vec<f64>, Vec<f64>),
    c_seen: &[f64],
    tol: f64,
) {
    let (ref_loss, ref_df, ref_c) = reference;
    let centers = widen(&run.centers);
    for (what, out, want) in [
        ("loss", vec![run.loss as f64], vec![*ref_loss]),
        ("d_features", widen(&run.df), ref_df.clone()),
        (
            "center update",
            delta(&centers, c_seen),
            delta(ref_c, c_seen),
        ),
    ] {
        let e = rel_error(&out, &want);
        assert!(e < tol, "{name}: {what} relative error {e} (bound {tol})");
    }
    for k in (0..s.classes).filter(|&k| !y.contains(&(k as i32))) {
        let row = k * s.dim..(k + 1) * s.dim;
        assert!(
            run.centers[row.clone()]
                .iter()
                .zip(&c_seen[row])
                .all(|(&a, &b)| a as f64 == b),
            "{name}: center {k} is absent from the batch but changed"
        );
    }
}

/// Fused kernels in `T` against the f64 reference (from nonzero and from zero centers), and bit
/// identical across two runs from the same start.
fn gpu_matches_reference<T: Element>(gpu: &Gpu, (s, y): (CenterLossShape, Vec<i32>), tol: f64) {
    let y = &y[..];
    let (f_t, f_seen) = round_through::<T>(&draw_features(&s, 11));
    for (rule, start, c) in RULES.into_iter().flat_map(|rule| {
        [
            (rule, "nonzero", draw_centers(&s, 12)),
            (rule, "zero", vec![0.0; s.centers_len()]),
        ]
    }) {
        let p = params(0.8, 0.05, rule);
        let name = format!(
            "center loss {rule:?} {} {s:?} from {start} centers",
            T::SUFFIX
        );
        let (c0, c_seen) = round_through::<f32>(&c);
        let reference = run64(&s, &p, &f_seen, y, &c_seen);
        let first = run_gpu(gpu, s, &p, &f_t, y, &c0, false);
        check_run(&name, &s, y, &first, &reference, &c_seen, tol);
        let second = run_gpu(gpu, s, &p, &f_t, y, &c0, false);
        assert_bit_identical(&format!("{name} loss"), &[first.loss], &[second.loss]);
        assert_bit_identical(&format!("{name} d_features"), &first.df, &second.df);
        assert_bit_identical(&format!("{name} centers"), &first.centers, &second.centers);
    }
}

/// The unfused bench baseline against the f64 reference and against the fused kernels, so a
/// speed-up is never measured against a wrong baseline.
fn baseline_matches_fused<T: Element>(
    gpu: &Gpu,
    s: CenterLossShape,
    y: &[i32],
    rule: CenterRule,
    tol: f64,
) {
    let p = params(0.8, 0.05, rule);
    let (f_t, f_seen) = round_through::<T>(&draw_features(&s, 16));
    let (c0, c_seen) = round_through::<f32>(&draw_centers(&s, 17));
    let name = format!("center loss unfused baseline {rule:?} {} {s:?}", T::SUFFIX);
    let reference = run64(&s, &p, &f_seen, y, &c_seen);
    let base = run_gpu(gpu, s, &p, &f_t, y, &c0, true);
    check_run(&name, &s, y, &base, &reference, &c_seen, tol);
    let fused = run_gpu(gpu, s, &p, &f_t, y, &c0, false);
    for (what, out, want) in [
        ("loss", vec![base.loss as f64], vec![fused.loss as f64]),
        ("d_features", widen(&base.df), widen(&fused.df)),
        (
            "center update",
            delta(&widen(&base.centers), &c_seen),
            delta(&widen(&fused.centers), &c_seen),
        ),
    ] {
        let e = rel_error(&out, &want);
        assert!(e < tol, "{name}: {what} vs fused, relative error {e}");
    }
}

/// Odd sizes with repeated labels (one chunk, several chunks with a partial last one), and the
/// benchmark shape.
fn gpu_cases() -> Vec<(CenterLossShape, Vec<i32>)> {
    let bench = shape(64, 32 * 768, 200);
    vec![
        (shape(5, 37, 4), vec![2, 0, 2, 3, 2]),
        (shape(6, 2500, 5), vec![4, 1, 4, 0, 1, 4]),
        (bench, draw_labels(&bench, 13)),
    ]
}

f32_and_bf16_tests!("center_loss", gpu_f32_matches_reference, gpu_bf16_matches_reference,
    each of gpu_cases() => gpu_matches_reference);

#[test]
fn gpu_unfused_baseline_matches_fused() {
    let gpu = or_return!(gpu_or_skip(
        "center_loss gpu_unfused_baseline_matches_fused"
    ));
    for (s, y) in gpu_cases() {
        for rule in RULES {
            baseline_matches_fused::<f32>(&gpu, s, &y, rule, 1e-5);
            baseline_matches_fused::<half::bf16>(&gpu, s, &y, rule, 1e-2);
        }
    }
}

#[test]
fn gpu_bad_label_is_an_error_and_keeps_centers() {
    let gpu = or_return!(gpu_or_skip(
        "center_loss gpu_bad_label_is_an_error_and_keeps_centers"
    ));
    let s = shape(5, 2500, 4);
    let p = CenterLossParams::default();
    let (f_t, f_seen) = round_through::<f32>(&draw_features(&s, 14));
    let (c0, c_seen) = round_through::<f32>(&draw_centers(&s, 15));
    let f_d = gpu.upload(&f_t).unwrap();
    let mut c_d = gpu.upload(&c0).unwrap();
    let mut df_d = gpu.alloc_poisoned::<f32>(s.features_len()).unwrap();
    let mut op = CenterLossGpu::<f32>::new(&gpu, s).unwrap();
    let scales = scales_slot(&gpu, &s, &p);
    for (y, index, label) in [
        ([1, 4, 0, -1, 1], 1, 4i64),
        ([1, 2, 0, 3, -7], 4, -7),
        ([9, 2, 0, 3, 1], 0, 9),
    ] {
        let y_d = gpu.upload(&y).unwrap();
        op.enqueue(
            &p.update(),
            &scales,
            &f_d,
            &y_d,
            &mut c_d,
            &mut df_d,
            NO_STATS,
        )
        .unwrap();
        let err = op.finish().unwrap_err();
        match err {
            Error::Label {
                index: i,
                label: l,
                classes,
            } => assert_eq!((i, l, classes), (index, label, 4), "labels {y:?}"),
            e => panic!("expected a label error, got {e}"),
        }
        assert_bit_identical(
            "centers after a bad label",
            &gpu.download(&c_d).unwrap(),
            &c0,
        );
    }
    // The status is reset: the next good call on the same op succeeds and is right.
    let y = [1, 3, 0, 3, 1];
    let y_d = gpu.upload(&y).unwrap();
    op.enqueue(
        &p.update(),
        &scales,
        &f_d,
        &y_d,
        &mut c_d,
        &mut df_d,
        NO_STATS,
    )
    .unwrap();
    let loss = op.finish().unwrap();
    let reference = run64(&s, &p, &f_seen, &y, &c_seen);
    let run = GpuRun {
        loss,
        df: gpu.download(&df_d).unwrap(),
        centers: gpu.download(&c_d).unwrap(),
    };
    check_run("after bad labels", &s, &y, &run, &reference, &c_seen, 1e-5);
}
