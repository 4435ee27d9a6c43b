//! The golden case written by `tools/make_golden.py` with PyTorch (torchvision's InceptionV3 in
//! float64, train mode, batch 2 × 3 × 107 × 107, 10 classes): the shared generator bit for bit,
//! the CPU backend in f64 within 1e-4 relative on every recorded tensor (naming any that is off),
//! and the CPU backend in f32 within what float32 can do (see `tools/make_golden.py`: PyTorch's
//! own float32 gradients are about 2% off its float64 ones here).

use c2f_inception::backend::{Backend, BnMode};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::{counter_uniform, golden_init};
use c2f_inception::network::Network;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_kernels::testing::rel_error;
use c2f_kernels::Real;
use safetensors::{Dtype, SafeTensors};

const TOLERANCE: f64 = 1e-4;
/// Bound on each parameter's gradient norm in f32 (PyTorch's own float32 run: median 2.2e-2
/// relative on the whole gradient, on a case like this one).
const F32_GRADIENT_TOLERANCE: f64 = 5e-2;
/// Bound on forward tensors in f32 (PyTorch's own float32 logits: 1.4e-4 relative).
const F32_FORWARD_TOLERANCE: f64 = 5e-4;
const LABELS: [usize; 2] = [3, 7];

fn golden() -> SafeTensors<'static> {
    static BYTES: &[u8] = include_bytes!("data/inception_golden.safetensors");
    SafeTensors::deserialize(BYTES).expect("tests/data/inception_golden.safetensors is readable")
}

fn floats(file: &SafeTensors, name: &str) -> Vec<f64> {
    let view = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("golden file lacks {name}"));
    match view.dtype() {
        Dtype::F64 => view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("golden {name} is {other:?}"),
    }
}

fn widen<R: Real>(v: &[R]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}

fn narrow<R: Real>(v: &[f64]) -> Vec<R> {
    v.iter().map(|&x| R::from_f64(x)).collect()
}

#[test]
fn generator_matches_python_bit_for_bit() {
    let file = golden();
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

/// Mean softmax cross-entropy of `logits [B, C]` and its gradient, in f64.
fn cross_entropy(logits: &[f64], classes: usize) -> (f64, Vec<f64>) {
    let batch = LABELS.len();
    let mut loss = 0.0;
    let mut grad = vec![0.0; logits.len()];
    for (b, &label) in LABELS.iter().enumerate() {
        let row = &logits[b * classes..][..classes];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += (sum.ln() + max - row[label]) / batch as f64;
        for c in 0..classes {
            let p = (row[c] - max).exp() / sum;
            grad[b * classes + c] = (p - if c == label { 1.0 } else { 0.0 }) / batch as f64;
        }
    }
    (loss, grad)
}

/// What one run of the golden case produced, in f64.
struct Run {
    mixed_6e: Vec<f64>,
    logits: Vec<f64>,
    loss: f64,
    grads: Vec<f64>,
    running: Vec<f64>,
    graph: Graph,
}

fn run<R: Real>() -> Run {
    let graph = Graph::new(InceptionConfig {
        input_size: 107,
        width: 1.0,
        depth: Depth::Full { classes: 10 },
    })
    .unwrap();
    let mut params = vec![0.0f32; graph.params.total()];
    let mut buffers = vec![0.0f32; graph.buffers.total()];
    golden_init(&graph, &mut params, &mut buffers);
    let mut image = vec![0.0f32; 2 * 3 * 107 * 107];
    counter_uniform("input", -1.0, 1.0, &mut image);

    let mut cpu = CpuBackend::<R>::new();
    let mut net = Network::new(&mut cpu, graph.clone(), 2).unwrap();
    net.dropout.p = 0.0; // the golden run has no dropout
    cpu.write(net.params, &narrow(&widen(&params))).unwrap();
    cpu.write(net.buffers, &narrow(&widen(&buffers))).unwrap();
    cpu.write(net.input(), &narrow(&widen(&image))).unwrap();
    net.forward(&mut cpu, BnMode::Train).unwrap();
    let mixed_6e = widen(&cpu.read(net.activation(graph.mixed_6e)).unwrap());
    let logits = widen(&cpu.read(net.output()).unwrap());
    let (loss, dlogits) = cross_entropy(&logits, 10);
    cpu.write(net.output_grad(), &narrow(&dlogits)).unwrap();
    net.backward(&mut cpu, BnMode::Train, false).unwrap();
    Run {
        mixed_6e,
        logits,
        loss,
        grads: widen(&cpu.read(net.grads).unwrap()),
        running: widen(&cpu.read(net.buffers).unwrap()),
        graph,
    }
}

const RUNNING: [&str; 4] = [
    "Conv2d_1a_3x3.bn.running_mean",
    "Conv2d_1a_3x3.bn.running_var",
    "Mixed_6e.branch_pool.bn.running_mean",
    "Mixed_6e.branch_pool.bn.running_var",
];

/// Collects every recorded tensor whose relative error is `tolerance` or more.
fn compare(r: &Run, file: &SafeTensors, tolerance: f64, gradient_entries: bool) -> Vec<String> {
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
    for e in r.graph.params.entries() {
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
        let e = r.graph.buffers.get(name).unwrap();
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
    let failures = compare(&run::<f64>(), &golden(), TOLERANCE, true);
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
    let file = golden();
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
