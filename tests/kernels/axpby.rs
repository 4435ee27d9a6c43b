//! `y = α·x + β·y`: the CPU reference against hand-computed values, β = 0 ignoring a NaN `y`,
//! and the kernel and its cuBLAS bench baseline against the reference (skipped without a GPU).

use crate::common::skip::or_return;
use c2f_baselines::axpby::AxpbyCublas;
use c2f_kernels::axpby::{axpby_cpu, AxpbyGpu};
use c2f_kernels::testing::{
    assert_bit_identical, gpu_or_skip, library_or_skip, rel_error, round_through, widen, SplitMix64,
};
use c2f_kernels::{Element, Gpu};

#[test]
fn hand_computed_and_assigning() {
    let x = [1.0f64, -2.0, 0.5];
    let mut y = [10.0f64, 20.0, -4.0];
    axpby_cpu(2.0, &x, 0.5, &mut y).unwrap();
    assert_eq!(y, [7.0, 6.0, -1.0]);
    let mut poisoned = [f64::NAN; 3];
    axpby_cpu(100.0, &x, 0.0, &mut poisoned).unwrap();
    assert_eq!(poisoned, [100.0, -200.0, 50.0]);
    let err = axpby_cpu(1.0, &x, 1.0, &mut [0.0f64; 2]).unwrap_err();
    assert!(
        err.to_string()
            .contains("axpby y has 2 elements, expected 3"),
        "{err}"
    );
}

/// `y[offset..] = α x[offset..] + β y[offset..]` on buffers of `offset + n` elements: an offset
/// of 1 makes both views misaligned for the kernel's float4 path, and `y[..offset]` must keep
/// its values.
fn gpu_matches<T: Element>(gpu: &Gpu, n: usize, offset: usize, alpha: f64, beta: f64, tol: f64) {
    let len = offset + n;
    let mut rng = SplitMix64(len as u64);
    let (x_t, x64) = round_through::<T>(&rng.uniform_vec(len, -1.0, 1.0));
    let y0 = if beta == 0.0 {
        vec![f64::NAN; len]
    } else {
        rng.uniform_vec(len, -1.0, 1.0)
    };
    let (y_t, y64) = round_through::<T>(&y0);
    let mut reference = y64[offset..].to_vec();
    axpby_cpu(alpha, &x64[offset..], beta, &mut reference).unwrap();
    let op = AxpbyGpu::<T>::new(gpu).unwrap();
    let x = gpu.upload(&x_t).unwrap();
    let run = || {
        let mut y = gpu.upload(&y_t).unwrap();
        op.run(alpha, &x.slice(offset..), beta, &mut y.slice_mut(offset..))
            .unwrap();
        gpu.download(&y).unwrap()
    };
    let (first, second) = (run(), run());
    let what = format!(
        "axpby {} n={n} offset={offset} α={alpha} β={beta}",
        T::SUFFIX
    );
    let e = rel_error(&widen(&first[offset..]), &reference);
    assert!(e < tol, "{what}: relative error {e}");
    assert_bit_identical(
        &format!("{what}: y before the view"),
        &first[..offset],
        &y_t[..offset],
    );
    assert_bit_identical(&what, &first, &second);
}

#[test]
fn gpu_matches_reference() {
    let gpu = or_return!(gpu_or_skip("axpby gpu_matches_reference"));
    // Lengths with and without a scalar tail after the float4 body, aligned and not.
    for (n, offset, alpha, beta) in [
        (1, 0, 2.0, 1.0),
        (1000, 0, 100.0, 0.0),
        (1003, 0, 3.0, 0.5),
        (1003, 1, 3.0, 0.0),
        (1 << 20, 0, -0.5, 1.0),
        (1 << 20, 1, -0.5, 1.0),
    ] {
        gpu_matches::<f32>(&gpu, n, offset, alpha, beta, 1e-6);
        gpu_matches::<half::bf16>(&gpu, n, offset, alpha, beta, 1e-2);
    }
}

/// The bench's cuBLAS baseline computes the same `y` (a NaN-poisoned `y` with β = 0 included),
/// at each of its three call sequences.
#[test]
fn gpu_cublas_baseline_matches_reference() {
    let gpu = or_return!(gpu_or_skip("axpby gpu_cublas_baseline_matches_reference"));
    let blas = or_return!(library_or_skip(
        "axpby gpu_cublas_baseline_matches_reference",
        AxpbyCublas::new(&gpu)
    ));
    for (n, alpha, beta) in [(1000, 3.0, 0.0), (4099, -0.5, 1.0), (1 << 16, 2.0, -0.75)] {
        let mut rng = SplitMix64(7 + n as u64);
        let x = rng.uniform_vec(n, -1.0, 1.0);
        let y0 = if beta == 0.0 {
            vec![f64::NAN; n]
        } else {
            rng.uniform_vec(n, -1.0, 1.0)
        };
        let (x32, x64) = round_through::<f32>(&x);
        let (y32, y64) = round_through::<f32>(&y0);
        let mut reference = y64;
        axpby_cpu(alpha, &x64, beta, &mut reference).unwrap();
        let x_d = gpu.upload(&x32).unwrap();
        let mut y_d = gpu.upload(&y32).unwrap();
        blas.run(alpha, &x_d, beta, &mut y_d).unwrap();
        let e = rel_error(&widen(&gpu.download(&y_d).unwrap()), &reference);
        assert!(
            e < 1e-6,
            "cuBLAS axpby n={n} α={alpha} β={beta}: relative error {e}"
        );
    }
}
