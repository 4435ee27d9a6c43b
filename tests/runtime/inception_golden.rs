//! The golden case written by `tools/make_golden.py` with PyTorch (torchvision's InceptionV3 in
//! float64, train mode, batch 2 × 3 × 107 × 107, 10 classes): the shared generator bit for bit,
//! the CPU backend in f64 within 1e-4 relative on every recorded tensor (naming any that is off),
//! and the CPU backend in f32 within what float32 can do (see `tools/make_golden.py`: PyTorch's
//! own float32 gradients are about 2% off its float64 ones here).

use crate::common::golden::{self, floats, Run};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::counter_uniform;
use c2f_inception::spec::Graph;
use c2f_kernels::testing::rel_error;
use c2f_kernels::Real;
use safetensors::SafeTensors;

const TOLERANCE: f64 = 1e-4;
/// Bound on each parameter's gradient norm in f32 (PyTorch's own float32 run: median 2.2e-2
/// relative on the whole gradient, on a case like this one).
const F32_GRADIENT_TOLERANCE: f64 = 5e-2;
/// Bound on forward tensors in f32 (PyTorch's own float32 logits: 1.4e-4 relative).
const F32_FORWARD_TOLERANCE: f64 = 5e-4;

#[test]
fn generator_matches_python_bit_for_bit() {
    let file = golden::file();
    for (name, lo, hi) in [
        (
            "Conv2d_1a_3x3.conv.weight",
            -1.0 / 27f64.sqrt(),
            1.0 / 27f64.sqrt(),
        ),
        ("input", -1.0, 1.0),
    ] {
        let expected = floats(&file, &format!("init/{name}"));
        let mut ours = vec![f32::NAN; expected.len()];
        counter_uniform(name, lo, hi, &mut ours);
        for (i, (o, e)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(*o as f64, *e, "{name}[{i}]: {o} vs python {e}");
        }
    }
}

/// The golden step on the CPU backend in `R`.
fn run<R: Real>() -> (Graph, Run) {
    let mut cpu = CpuBackend::<R>::new();
    let mut net = golden::network(&mut cpu);
    let run = golden::run(&mut cpu, &mut net);
    (net.graph, run)
}

const RUNNING: [&str; 4] = [
    "Conv2d_1a_3x3.bn.running_mean",
    "Conv2d_1a_3x3.bn.running_var",
    "Mixed_6e.branch_pool.bn.running_mean",
    "Mixed_6e.branch_pool.bn.running_var",
];

/// Collects every recorded tensor whose relative error is `tolerance` or more.
fn compare(
    (graph, r): &(Graph, Run),
    file: &SafeTensors,
    tolerance: f64,
    gradient_entries: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |what: String, ours: &[f64], reference: &[f64]| {
        let e = rel_error(ours, reference);
        // NaN fails too.
        if e.is_nan() || e >= tolerance {
            failures.push(format!("{what}: relative error {e:.3e}"));
        }
    };
    check("mixed_6e".into(), &r.mixed_6e, &floats(file, "mixed_6e"));
    check("logits".into(), &r.logits, &floats(file, "logits"));
    check("loss".into(), &[r.loss], &floats(file, "loss"));
    for e in graph.params.entries() {
        let g = &r.grads[e.range()];
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let name = &e.name;
        check(
            format!("grad norm of {name}"),
            &[norm],
            &floats(file, &format!("grad_norm/{name}")),
        );
        if gradient_entries {
            let n = g.len();
            let at = [g[0], g[n / 3], g[2 * n / 3], g[n - 1]];
            check(
                format!("gradient entries of {name}"),
                &at,
                &floats(file, &format!("grad_at/{name}")),
            );
        }
    }
    for name in RUNNING {
        let e = graph.buffers.get(name).unwrap();
        check(
            format!("updated {name}"),
            &r.running[e.range()],
            &floats(file, &format!("running/{name}")),
        );
    }
    failures
}

#[test]
fn cpu_backend_f64_matches_pytorch() {
    let failures = compare(&run::<f64>(), &golden::file(), TOLERANCE, true);
    assert!(
        failures.is_empty(),
        "{} golden tensors are off:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// float32 through 94 BatchNorm+ReLU layers: the forward holds to a few 1e-4 and gradients to a
/// few percent, the levels PyTorch's own float32 run reaches on this case.
#[test]
fn cpu_backend_f32_matches_pytorch_within_float32_limits() {
    let file = golden::file();
    let r = run::<f32>();
    let forward = compare(&r, &file, F32_FORWARD_TOLERANCE, false)
        .into_iter()
        .filter(|f| !f.starts_with("grad norm"))
        .collect::<Vec<_>>();
    assert!(
        forward.is_empty(),
        "forward tensors off:\n{}",
        forward.join("\n")
    );
    let gradients = compare(&r, &file, F32_GRADIENT_TOLERANCE, false);
    assert!(
        gradients.is_empty(),
        "gradient norms off:\n{}",
        gradients.join("\n")
    );
}
