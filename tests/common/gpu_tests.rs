//! Shared GPU-test scaffolding: tests that run one check in f32 and in bf16, and the check of a
//! fused loss launch against its f64 reference.

use c2f_kernels::testing::{assert_bit_identical, rel_error, widen};
use c2f_kernels::{Element, Gpu};
use cudarc::driver::CudaSlice;

/// Two tests, `$f32` and `$bf16`, that open the GPU (or skip, as `"$op $name"`) and run `$check`
/// with `$gpu` the GPU, `$real` the element type and `$tol` the relative-error bound: f32 at
/// 1e-5, bf16 at 1e-2. The form `each of CASES => CHECK` runs `CHECK::<T>(&gpu, case, tol)` for
/// each case.
macro_rules! f32_and_bf16_tests {
    ($op:literal, $f32:ident, $bf16:ident, each of $cases:expr => $check:ident) => {
        $crate::common::gpu_tests::f32_and_bf16_tests!($op, $f32, $bf16, |gpu, T, tol| {
            for case in $cases {
                $check::<T>(&gpu, case, tol);
            }
        });
    };
    ($op:literal, $f32:ident, $bf16:ident, |$gpu:ident, $real:ident, $tol:ident| $check:block) => {
        $crate::common::gpu_tests::f32_and_bf16_tests!(@one $op, $f32, f32, 1e-5, $gpu, $real, $tol, $check);
        $crate::common::gpu_tests::f32_and_bf16_tests!(@one $op, $bf16, half::bf16, 1e-2, $gpu, $real, $tol, $check);
    };
    (@one $op:literal, $name:ident, $t:ty, $bound:expr, $gpu:ident, $real:ident, $tol:ident, $check:block) => {
        #[test]
        fn $name() {
            let Some($gpu) = c2f_kernels::testing::gpu_or_skip(concat!($op, " ", stringify!($name)))
            else {
                return;
            };
            type $real = $t;
            let $tol = $bound;
            $check
        }
    };
}

pub(crate) use f32_and_bf16_tests;

/// `rel_error(got, want)` below `tol`.
pub fn assert_rel_error(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let e = rel_error(got, want);
    assert!(e < tol, "{what}: relative error {e} (bound {tol})");
}

/// `got` within `tol` of `want`, relatively.
pub fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1e-300),
        "{what}: {got} vs {want} (relative bound {tol})"
    );
}

/// Runs a fused loss launch twice and checks the first run against its f64 reference (the loss
/// and `dlogits` within `tol`, the predictions exactly) and the second against the first, bit
/// for bit. `launch(predictions, dlogits)` returns the loss; the predictions start at -7 and
/// `dlogits` NaN.
pub fn check_loss_launch<T: Element>(
    gpu: &Gpu,
    name: &str,
    reference: (f64, &[i32], &[f64]),
    tol: f64,
    mut launch: impl FnMut(&mut CudaSlice<i32>, &mut CudaSlice<T>) -> f32,
) {
    let (ref_loss, ref_preds, ref_grad) = reference;
    let mut run = || {
        let mut preds = gpu.upload(&vec![-7i32; ref_preds.len()]).unwrap();
        let mut grad = gpu.alloc_poisoned::<T>(ref_grad.len()).unwrap();
        let loss = launch(&mut preds, &mut grad);
        (
            loss,
            gpu.download(&preds).unwrap(),
            gpu.download(&grad).unwrap(),
        )
    };
    let (loss, preds, grad) = run();
    assert_close(&format!("{name}: loss"), loss as f64, ref_loss, tol);
    assert_eq!(preds, ref_preds, "{name}: predictions");
    assert_rel_error(&format!("{name}: dlogits"), &widen(&grad), ref_grad, tol);

    let (loss2, preds2, grad2) = run();
    assert_eq!(loss.to_bits(), loss2.to_bits(), "{name}: loss differs");
    assert_eq!(preds, preds2, "{name}: predictions differ");
    assert_bit_identical(&format!("{name} dlogits"), &grad, &grad2);
}
