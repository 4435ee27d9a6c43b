//! SGD update: the CPU reference against a hand-computed two-step sequence and f64, the CUDA
//! kernel against the f64 reference at a rate that changes every step, read from its device slot,
//! and the step that also writes the bf16 working copy against the plain step (GPU tests skipped
//! without a GPU).

use crate::common::skip::or_return;
use c2f_baselines::sgd::SgdCublas;
use c2f_kernels::sgd::{step_cpu, SgdGpu, SgdParams};
use c2f_kernels::testing::{
    assert_bit_identical, assert_same_bits, gpu_or_skip, library_or_skip, rel_error, widen,
    SplitMix64,
};
use cudarc::driver::CudaSlice;

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs(),
        "{what}: {got} vs {want} (relative bound {tol})"
    );
}

#[test]
fn hand_computed_two_steps_with_momentum_and_weight_decay() {
    // lr 0.1, momentum 0.9, weight decay 0.01, p = [1, -2], g1 = [0.5, 0.25], g2 = [0.25, -1].
    // Step 1: d = g1 + 0.01 p = [0.51, 0.23]; buf = d; p = [0.949, -2.023].
    // Step 2: d = g2 + 0.01 p = [0.25949, -1.02023]; buf = 0.9 [0.51, 0.23] + d
    //   = [0.71849, -0.81323]; p = [0.949 - 0.071849, -2.023 + 0.081323] = [0.877151, -1.941677].
    let params = SgdParams::new(0.9, 0.01);
    let steps = [[0.5, 0.25], [0.25, -1.0]];
    let want_p = [[0.949, -2.023], [0.877151, -1.941677]];
    let want_buf = [[0.51, 0.23], [0.71849, -0.81323]];

    let mut p = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    let mut p32 = [1.0f32, -2.0];
    let mut buf32 = [0.0f32; 2];
    for (k, g) in steps.iter().enumerate() {
        step_cpu(&params, 0.1, &mut p, g, &mut buf).unwrap();
        let g32 = g.map(|v| v as f32);
        step_cpu(&params, 0.1, &mut p32, &g32, &mut buf32).unwrap();
        for i in 0..2 {
            let at = format!("step {} element {i}", k + 1);
            assert_close(&format!("f64 p {at}"), p[i], want_p[k][i], 1e-14);
            assert_close(&format!("f64 buf {at}"), buf[i], want_buf[k][i], 1e-14);
            assert_close(&format!("f32 p {at}"), p32[i] as f64, want_p[k][i], 1e-6);
            assert_close(
                &format!("f32 buf {at}"),
                buf32[i] as f64,
                want_buf[k][i],
                1e-6,
            );
        }
    }
}

#[test]
fn hand_computed_grad_scale_without_momentum() {
    // grad_scale 0.5, no momentum: d = 0.5 g + 0.1 p = 0.5·4 + 0.1·2 = 2.2; p = 2 − 0.5·2.2 = 0.9.
    // The momentum buffer is not touched (PyTorch keeps none).
    let params = SgdParams {
        grad_scale: 0.5,
        ..SgdParams::new(0.0, 0.1)
    };
    let mut p = [2.0f64];
    let mut buf = [123.0f64];
    step_cpu(&params, 0.5, &mut p, &[4.0], &mut buf).unwrap();
    assert_close("p", p[0], 0.9, 1e-15);
    assert_eq!(buf[0], 123.0);
}

fn draw(n: usize, seed: u64) -> Vec<f64> {
    SplitMix64(seed).uniform_vec(n, -1.0, 1.0)
}

/// The rate of step `k` of three from base rate `lr`: a new one every step, as a schedule's.
fn rate(lr: f64, k: usize) -> f64 {
    lr * [1.0, 0.6, 0.3][k]
}

/// Three steps of the f64 reference from `p0` with gradients `grads[k]` at [`rate`]`(lr, k)`:
/// (p, buf).
fn reference(params: &SgdParams, lr: f64, p0: &[f64], grads: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let mut p = p0.to_vec();
    let mut buf = vec![0.0; p.len()];
    for (k, g) in grads.iter().enumerate() {
        step_cpu(params, rate(lr, k), &mut p, g, &mut buf).unwrap();
    }
    (p, buf)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn f32_reference_matches_f64() {
    let n = 100_003;
    let params = SgdParams {
        grad_scale: 0.25,
        ..SgdParams::new(0.9, 1e-4)
    };
    // The f64 reference starts from the same f32 values.
    let p0 = widen(&to_f32(&draw(n, 1)));
    let grads: Vec<Vec<f64>> = (0..3).map(|k| widen(&to_f32(&draw(n, 10 + k)))).collect();
    let (ref_p, ref_buf) = reference(&params, 0.05, &p0, &grads);
    let mut p = to_f32(&p0);
    let mut buf = vec![0.0f32; n];
    for (k, g) in grads.iter().enumerate() {
        step_cpu(&params, rate(0.05, k) as f32, &mut p, &to_f32(g), &mut buf).unwrap();
    }
    let (ep, eb) = (
        rel_error(&widen(&p), &ref_p),
        rel_error(&widen(&buf), &ref_buf),
    );
    assert!(ep < 1e-6, "f32 weights relative error {ep}");
    assert!(eb < 1e-6, "f32 momentum relative error {eb}");
}

#[test]
fn invalid_parameters_and_lengths_are_clear_errors() {
    let mut p = [1.0f32; 4];
    let mut buf = [0.0f32; 4];
    let g = [1.0f32; 4];
    let ok = SgdParams::new(0.9, 0.0);
    let cases = [
        (ok, -0.1, "invalid SGD learning rate: -0.1"),
        (ok, f32::NAN, "invalid SGD learning rate: NaN"),
        (
            SgdParams::new(f64::NAN, 0.0),
            0.1,
            "invalid SGD momentum: NaN",
        ),
        (
            SgdParams::new(0.9, -1e-4),
            0.1,
            "invalid SGD weight decay: -0.0001",
        ),
        (
            SgdParams {
                grad_scale: f64::INFINITY,
                ..ok
            },
            0.1,
            "invalid SGD grad scale: inf",
        ),
    ];
    for (params, lr, msg) in cases {
        let err = step_cpu(&params, lr, &mut p, &g, &mut buf).unwrap_err();
        assert!(err.to_string().contains(msg), "{err}");
    }
    assert_eq!(p, [1.0; 4], "weights changed by a rejected call");
    let err = step_cpu(&ok, 0.1, &mut p, &g[..3], &mut buf).unwrap_err();
    assert!(
        err.to_string()
            .contains("SGD gradients has 3 elements, expected 4"),
        "{err}"
    );
    let err = step_cpu(&ok, 0.1, &mut p, &g, &mut buf[..2]).unwrap_err();
    assert!(
        err.to_string()
            .contains("SGD momentum buffer has 2 elements, expected 4"),
        "{err}"
    );
}

/// The rate slot holding `lr`.
fn rate_slot(gpu: &c2f_kernels::Gpu, lr: f64) -> CudaSlice<f32> {
    gpu.upload(&[lr as f32]).unwrap()
}

/// Three GPU steps against the f64 reference (f32 relative error below 1e-6), each at its own
/// rate written to the slot before it, a rerun with the same bits, and the same on an unaligned
/// range (the scalar path) leaving the rest untouched.
fn gpu_matches_reference(gpu: &c2f_kernels::Gpu, n: usize, params: SgdParams, lr: f64) {
    let sgd = SgdGpu::new(gpu).unwrap();
    let mut lr_d = rate_slot(gpu, 0.0);
    let p0_32 = to_f32(&draw(n, 3));
    let p0 = widen(&p0_32);
    let grads: Vec<Vec<f64>> = (0..3).map(|k| widen(&to_f32(&draw(n, 20 + k)))).collect();
    let grads_d: Vec<_> = grads
        .iter()
        .map(|g| gpu.upload(&to_f32(g)).unwrap())
        .collect();
    // Poisoned outside the range that is updated, zeros inside, as a fresh buffer would be.
    let mut run = |range: std::ops::Range<usize>| {
        let mut p_d = gpu.upload(&p0_32).unwrap();
        let mut buf_host = vec![f32::NAN; n];
        buf_host[range.clone()].fill(0.0);
        let mut buf_d = gpu.upload(&buf_host).unwrap();
        for (k, g_d) in grads_d.iter().enumerate() {
            gpu.stream()
                .memcpy_htod(&[rate(lr, k) as f32], &mut lr_d)
                .unwrap();
            sgd.step_range(&params, &lr_d, range.clone(), &mut p_d, g_d, &mut buf_d)
                .unwrap();
        }
        (gpu.download(&p_d).unwrap(), gpu.download(&buf_d).unwrap())
    };
    let name = format!("SGD n {n} lr {lr} {params:?}");
    let (ref_p, ref_buf) = reference(&params, lr, &p0, &grads);
    let (p, buf) = run(0..n);
    let ep = rel_error(&widen(&p), &ref_p);
    assert!(ep < 1e-6, "{name}: weights relative error {ep}");
    if params.momentum != 0.0 {
        let eb = rel_error(&widen(&buf), &ref_buf);
        assert!(eb < 1e-6, "{name}: momentum relative error {eb}");
    } else {
        assert!(buf.iter().all(|&b| b == 0.0), "{name}: buffer touched");
    }
    let (p2, buf2) = run(0..n);
    assert_bit_identical(&format!("{name} weights"), &p, &p2);
    assert_bit_identical(&format!("{name} momentum"), &buf, &buf2);

    // An unaligned range: only it changes, with the same values as the full update there
    // (element-wise, so the same bits whichever path ran).
    let range = 1..n - 2;
    let (pr, bufr) = run(range.clone());
    assert_bit_identical(
        &format!("{name} range weights"),
        &pr[range.clone()],
        &p[range.clone()],
    );
    assert_bit_identical(&format!("{name} weights outside"), &pr[..1], &p0_32[..1]);
    assert_bit_identical(
        &format!("{name} weights outside"),
        &pr[n - 2..],
        &p0_32[n - 2..],
    );
    if params.momentum != 0.0 {
        assert_bit_identical(
            &format!("{name} range momentum"),
            &bufr[range.clone()],
            &buf[range],
        );
    }
    assert!(
        bufr[0].is_nan() && bufr[n - 1].is_nan(),
        "{name}: momentum outside the range"
    );
}

/// Momentum, weight decay and a gradient scale: every term of the update.
fn with_momentum() -> SgdParams {
    SgdParams {
        grad_scale: 0.5,
        ..SgdParams::new(0.9, 1e-4)
    }
}

#[test]
fn gpu_f32_matches_reference() {
    let gpu = or_return!(gpu_or_skip("sgd gpu_f32_matches_reference"));
    let momentum = with_momentum();
    for n in [7, 1000, 1_000_003, (1 << 22) + 1] {
        gpu_matches_reference(&gpu, n, momentum, 0.05);
    }
    gpu_matches_reference(&gpu, 100_003, SgdParams::new(0.0, 5e-4), 0.1);
}

/// A signalling bf16 NaN, which the bf16 rounding never writes.
const COPY_POISON: half::bf16 = half::bf16::from_bits(0x7fa5);

/// Three steps with the bf16 working copy against three plain steps on `range`: the same bits in
/// the weights and momentum, the copy the CPU's rounding of the new weights in `range` and its
/// poison outside. `copy_offset` 1 makes the copy a view misaligned for the vector path while
/// the f32 buffers are aligned.
fn gpu_copy_matches_step(
    gpu: &c2f_kernels::Gpu,
    n: usize,
    params: SgdParams,
    range: std::ops::Range<usize>,
    copy_offset: usize,
) {
    let sgd = SgdGpu::new(gpu).unwrap();
    let mut lr_d = rate_slot(gpu, 0.0);
    let p0 = to_f32(&draw(n, 5));
    let grads_d: Vec<_> = (0..3)
        .map(|k| gpu.upload(&to_f32(&draw(n, 40 + k))).unwrap())
        .collect();
    let mut p_d = [gpu.upload(&p0).unwrap(), gpu.upload(&p0).unwrap()];
    let mut buf_d = [
        gpu.alloc_zeros::<f32>(n).unwrap(),
        gpu.alloc_zeros(n).unwrap(),
    ];
    let mut copy_d = gpu.upload(&vec![COPY_POISON; n + copy_offset]).unwrap();
    for (k, g_d) in grads_d.iter().enumerate() {
        gpu.stream()
            .memcpy_htod(&[rate(0.05, k) as f32], &mut lr_d)
            .unwrap();
        let [p_plain, p_copy] = &mut p_d;
        let [buf_plain, buf_copy] = &mut buf_d;
        sgd.step_range(&params, &lr_d, range.clone(), p_plain, g_d, buf_plain)
            .unwrap();
        let mut copy = copy_d.slice_mut(copy_offset..);
        sgd.step_range_with_copy(
            &params,
            &lr_d,
            range.clone(),
            (p_copy, &mut copy),
            g_d,
            buf_copy,
        )
        .unwrap();
    }
    let name = format!("SGD with bf16 copy n {n} range {range:?} copy offset {copy_offset}");
    let [p_plain, p_copy] = p_d.map(|p| gpu.download(&p).unwrap());
    let [buf_plain, buf_copy] = buf_d.map(|b| gpu.download(&b).unwrap());
    assert_same_bits(&format!("{name}: weights"), &p_copy, &p_plain);
    assert_same_bits(&format!("{name}: momentum"), &buf_copy, &buf_plain);
    assert!(
        p_copy[range.clone()] != p0[range.clone()],
        "{name}: the weights did not move"
    );
    let mut want = vec![COPY_POISON; n + copy_offset];
    for i in range {
        want[copy_offset + i] = half::bf16::from_f32(p_copy[i]);
    }
    assert_same_bits(
        &format!("{name}: copy"),
        &gpu.download(&copy_d).unwrap(),
        &want,
    );
}

#[test]
fn gpu_step_with_copy_matches_step() {
    let gpu = or_return!(gpu_or_skip("sgd gpu_step_with_copy_matches_step"));
    let momentum = with_momentum();
    for n in [7, 1003, 100_003] {
        gpu_copy_matches_step(&gpu, n, momentum, 0..n, 0);
        gpu_copy_matches_step(&gpu, n, momentum, 1..n - 2, 0);
        gpu_copy_matches_step(&gpu, n, momentum, 0..n, 1);
    }
    gpu_copy_matches_step(&gpu, 1003, SgdParams::new(0.0, 5e-4), 0..1003, 0);
}

#[test]
fn gpu_bad_range_or_length_is_an_error() {
    let gpu = or_return!(gpu_or_skip("sgd gpu_bad_range_or_length_is_an_error"));
    let sgd = SgdGpu::new(&gpu).unwrap();
    let params = SgdParams::new(0.9, 0.0);
    let lr = rate_slot(&gpu, 0.1);
    let mut p = gpu.upload(&[1.0f32; 8]).unwrap();
    let g = gpu.upload(&[1.0f32; 8]).unwrap();
    let g_short = gpu.upload(&[1.0f32; 7]).unwrap();
    let mut buf = gpu.alloc_zeros::<f32>(8).unwrap();
    let err = sgd
        .step_range(&params, &lr, 4..9, &mut p, &g, &mut buf)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("SGD range 4..9 is not within the 8 parameters"),
        "{err}"
    );
    let err = sgd
        .step(&params, &lr, &mut p, &g_short, &mut buf)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("SGD gradients has 7 elements, expected 8"),
        "{err}"
    );
    let mut copy = gpu.upload(&[COPY_POISON; 7]).unwrap();
    let err = sgd
        .step_range_with_copy(&params, &lr, 0..8, (&mut p, &mut copy), &g, &mut buf)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("SGD bf16 weight copy has 7 elements, expected 8"),
        "{err}"
    );
    assert_same_bits(
        "copy of a refused call",
        &gpu.download(&copy).unwrap(),
        &[COPY_POISON; 7],
    );
    let two_rates = gpu.upload(&[0.1f32; 2]).unwrap();
    let err = sgd
        .step(&params, &two_rates, &mut p, &g, &mut buf)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("SGD learning rate slot has 2 elements, expected 1"),
        "{err}"
    );
    assert_eq!(
        gpu.download(&p).unwrap(),
        [1.0; 8],
        "weights changed by a rejected call"
    );
}

/// The bench's cuBLAS baseline takes the same three steps as the f64 reference (within f32
/// rounding: it adds the terms in another order), and refuses momentum 0.
#[test]
fn gpu_cublas_baseline_matches_reference() {
    let gpu = or_return!(gpu_or_skip("sgd gpu_cublas_baseline_matches_reference"));
    let blas = or_return!(library_or_skip(
        "sgd gpu_cublas_baseline_matches_reference",
        SgdCublas::new(&gpu)
    ));
    let n = 100_003;
    let params = SgdParams {
        grad_scale: 0.5,
        ..SgdParams::new(0.9, 1e-2)
    };
    let p0_32 = to_f32(&draw(n, 4));
    let grads: Vec<Vec<f64>> = (0..3).map(|k| widen(&to_f32(&draw(n, 30 + k)))).collect();
    let (ref_p, ref_buf) = reference(&params, 0.05, &widen(&p0_32), &grads);
    let mut p_d = gpu.upload(&p0_32).unwrap();
    let mut buf_d = gpu.upload(&vec![0.0f32; n]).unwrap();
    for (k, g) in grads.iter().enumerate() {
        let g_d = gpu.upload(&to_f32(g)).unwrap();
        blas.step(&params, rate(0.05, k), &mut p_d, &g_d, &mut buf_d)
            .unwrap();
    }
    let ep = rel_error(&widen(&gpu.download(&p_d).unwrap()), &ref_p);
    let eb = rel_error(&widen(&gpu.download(&buf_d).unwrap()), &ref_buf);
    assert!(ep < 1e-6, "cuBLAS SGD weights relative error {ep}");
    assert!(eb < 1e-6, "cuBLAS SGD momentum relative error {eb}");
    let no_momentum = SgdParams::new(0.0, 0.0);
    let g_d = gpu.upload(&vec![1.0f32; n]).unwrap();
    let err = blas
        .step(&no_momentum, 0.1, &mut p_d, &g_d, &mut buf_d)
        .unwrap_err();
    assert!(err.to_string().contains("momentum above 0"), "{err}");
}
