//! InceptionV3 forward+backward on the CPU backend, images per second, at the shapes whose
//! PyTorch CPU figures are known (`tools/torch_cpu_baseline.py` times the same shapes): up to
//! Mixed_6e at width 1.0, batch 8 at 160² and batch 4 at 299²; and the CPU demo's shape, batch 8
//! at 160², width 0.25. Each step: forward in train mode, a loss gradient, backward to the
//! parameters. Prints `CPUBENCH` lines with images/s, effective GFLOP/s, and the fraction of this
//! machine's GEMM limit that is (the convolutions are im2col + GEMM, so a step cannot beat it).

use std::time::Instant;

use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::network::Network;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use rayon::prelude::*;

#[path = "common/golden_net.rs"]
mod golden_net;
use golden_net::golden_network;

struct Case {
    name: &'static str,
    batch: usize,
    size: usize,
    width: f64,
}

const CASES: [Case; 3] = [
    Case {
        name: "mixed6e_w1.0_b8_160",
        batch: 8,
        size: 160,
        width: 1.0,
    },
    Case {
        name: "mixed6e_w1.0_b4_299",
        batch: 4,
        size: 299,
        width: 1.0,
    },
    Case {
        name: "mixed6e_w0.25_b8_160",
        batch: 8,
        size: 160,
        width: 0.25,
    },
];

/// Multiply-accumulates of the convolutions and `fc`, per image, forward only.
fn forward_macs(graph: &Graph) -> f64 {
    let mut macs = 0.0;
    for op in &graph.ops {
        if let c2f_inception::spec::Op::Conv { conv, output, .. } = op {
            let c = &graph.convs[*conv];
            let out = graph.activations[*output];
            macs += (out.len() * c.in_channels * c.kernel.0 * c.kernel.1) as f64;
        }
    }
    macs
}

/// The backend, the network, and the loss gradient each step copies into the network's output
/// gradient (backward reuses that memory).
fn step_setup(case: &Case) -> (CpuBackend, Network, Tensor) {
    let config = InceptionConfig {
        input_size: case.size,
        width: case.width,
        depth: Depth::Mixed6e,
    };
    let mut cpu = CpuBackend::new();
    let (net, loss_grad) = golden_network(&mut cpu, config, case.batch, 1);
    (cpu, net, loss_grad)
}

fn step(cpu: &mut CpuBackend, net: &mut Network, loss_grad: Tensor) {
    net.forward(cpu, BnMode::Train).unwrap();
    cpu.axpby(1.0, loss_grad, 0.0, net.output_grad()).unwrap();
    net.backward(cpu, BnMode::Train, false).unwrap();
}

/// The hardware limit the step is held to: this machine's f32 GEMM rate through the backend's own
/// GEMM (ndarray's, i.e. matrixmultiply's kernel), one 512² product per rayon thread at once, as
/// the backend runs one image per thread.
fn gemm_limit_gflops() -> f64 {
    let n = 512;
    let a = Array2::<f32>::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 3) % 13) as f32 * 0.1);
    let b = a.t().to_owned();
    let threads = rayon::current_num_threads();
    let run = |reps: usize| {
        (0..threads).into_par_iter().for_each(|_| {
            let mut c = Array2::<f32>::zeros((n, n));
            for _ in 0..reps {
                general_mat_mul(1.0, &a, &b, 0.0, &mut c);
            }
            std::hint::black_box(&c);
        })
    };
    run(1);
    let reps = 8;
    let start = Instant::now();
    run(reps);
    let secs = start.elapsed().as_secs_f64();
    2.0 * (n * n * n * reps * threads) as f64 / secs / 1e9
}

fn bench(c: &mut Criterion) {
    let limit = gemm_limit_gflops();
    let mut group = c.benchmark_group("inception_cpu_f32");
    group.sample_size(10);
    for case in &CASES {
        let (mut cpu, mut net, loss_grad) = step_setup(case);
        group.bench_function(case.name, |b| {
            b.iter(|| step(&mut cpu, &mut net, loss_grad))
        });
        // Own figure for the report: mean of a few timed steps after one warm-up.
        step(&mut cpu, &mut net, loss_grad);
        let reps = 3;
        let start = Instant::now();
        for _ in 0..reps {
            step(&mut cpu, &mut net, loss_grad);
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        let images = case.batch as f64 / secs;
        // Forward+backward is about 3× the forward's multiply-adds, 2 FLOP each.
        let gflops = 6.0 * forward_macs(&net.graph) * case.batch as f64 / secs / 1e9;
        println!(
            "CPUBENCH\t{}\t{}\t{images:.2} img/s\t{gflops:.0} GFLOP/s\t{:.0}% of the {limit:.0} \
             GFLOP/s GEMM limit\t{:.0} ms/step",
            case.name,
            cpu.describe(),
            100.0 * gflops / limit,
            secs * 1e3
        );
    }
    group.finish();
}

/// Bytes a network holds for training at batch 64 (parameters, gradients, momentum, running
/// statistics, activations and what backward keeps): the same plan on every backend, which adds
/// only its own workspace (cuDNN's) on top. Allocation here is lazy, so it costs nothing.
fn memory(_: &mut Criterion) {
    for size in [299, 448] {
        for (depth, name) in [
            (Depth::Mixed6e, "mixed6e"),
            (Depth::Full { classes: 200 }, "full"),
        ] {
            let graph = Graph::new(InceptionConfig {
                input_size: size,
                width: 1.0,
                depth,
            })
            .unwrap();
            let mut cpu = CpuBackend::<f32>::new();
            let _net = Network::new(&mut cpu, graph, 64).unwrap();
            println!(
                "MEMORY\t{name}_b64_{size}\t{:.2} GiB",
                cpu.allocated_bytes() as f64 / (1u64 << 30) as f64
            );
        }
    }
}

criterion_group!(benches, memory, bench);
criterion_main!(benches);
