//! `y = α·x + β·y`: the CPU reference against hand-computed values, β = 0 ignoring a NaN `y`,
//! and the kernel against the reference in f32 and bf16 (skipped without a GPU).

use c2f_kernels::axpby::{axpby_cpu, AxpbyGpu};
use c2f_kernels::testing::{
    assert_bit_identical, gpu_or_skip, rel_error, round_through, widen, SplitMix64,
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

fn gpu_matches<T: Element>(gpu: &Gpu, n: usize, alpha: f64, beta: f64, tol: f64) {
    let mut rng = SplitMix64(n as u64);
    let (x_t, x64) = round_through::<T>(&rng.uniform_vec(n, -1.0, 1.0));
    let y0 = if beta == 0.0 {
        vec![f64::NAN; n]
    } else {
        rng.uniform_vec(n, -1.0, 1.0)
    };
    let (y_t, y64) = round_through::<T>(&y0);
    let mut reference = y64.clone();
    axpby_cpu(alpha, &x64, beta, &mut reference).unwrap();
    let op = AxpbyGpu::<T>::new(gpu).unwrap();
    let x = gpu.upload(&x_t).unwrap();
    let run = || {
        let mut y = gpu.upload(&y_t).unwrap();
        op.run(alpha, &x, beta, &mut y).unwrap();
        gpu.download(&y).unwrap()
    };
    let (first, second) = (run(), run());
    let e = rel_error(&widen(&first), &reference);
    assert!(
        e < tol,
        "axpby {} n={n} α={alpha} β={beta}: relative error {e}",
        T::SUFFIX
    );
    assert_bit_identical("axpby", &first, &second);
}

#[test]
fn gpu_matches_reference() {
    let Some(gpu) = gpu_or_skip("axpby gpu_matches_reference") else {
        return;
    };
    for (n, alpha, beta) in [(1, 2.0, 1.0), (1000, 100.0, 0.0), (1 << 20, -0.5, 1.0)] {
        gpu_matches::<f32>(&gpu, n, alpha, beta, 1e-6);
        gpu_matches::<half::bf16>(&gpu, n, alpha, beta, 1e-2);
    }
}
