//! Up-sampler pretraining, pairs per second: one epoch of generated pairs (generation on the
//! host, forward, L2 gradient, backward, SGD step) at input 299 (17² maps) and 448 (26² maps),
//! for the up-sampler `c2f train` builds there (three stride-2 transposed convs, 8 channels
//! between, to 136² and 208², then the bilinear resize to the input side), on the CPU backend
//! and, where a GPU opens, on the CUDA backend (in `tools/gpu-check.sh run`).
//! Prints `CPUBENCH` / `NETBENCH` lines with pairs/s; the GPU figure is bounded by the host's
//! pair generation, which the line's ms/run makes visible.

use std::time::Instant;

use c2f_inception::backend::prelude::*;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_kernels::testing::bench_smoke;
use c2f_train::pretrain::{pretrain_upsampler, PretrainConfig};
use criterion::{criterion_group, criterion_main, Criterion};

fn config(size: usize, pairs: usize, batch: usize) -> PretrainConfig {
    PretrainConfig {
        pairs,
        held_out: 16,
        epochs: 1,
        batch,
        ..PretrainConfig::new(size)
    }
}

fn case<B: Backend<Scalar = f32>>(
    c: &mut Criterion,
    b: &mut B,
    device: &str,
    tag: &str,
    cfg: &PretrainConfig,
) {
    let name = format!("b{}_{}", cfg.batch, cfg.input_size);
    let mut group = c.benchmark_group(format!("pretrain_upsampler_{device}_f32"));
    group.sample_size(10);
    group.bench_function(&name, |bench| {
        bench.iter(|| pretrain_upsampler(b, cfg, &mut |_| {}).unwrap())
    });
    group.finish();
    // Own figure for the report: the epoch's training pairs/s (held-out passes excluded).
    let start = Instant::now();
    let report = pretrain_upsampler(b, cfg, &mut |_| {}).unwrap();
    let pairs = report.epochs[0].pairs_per_second;
    println!(
        "{tag}\tpretrain_upsampler_{device}_{name}\t{}\t{pairs:.1} pairs/s\t{:.0} ms/run",
        b.describe(),
        start.elapsed().as_secs_f64() * 1e3
    );
}

fn bench(c: &mut Criterion) {
    let mut cpu = CpuBackend::<f32>::new();
    for size in [299, 448] {
        case(c, &mut cpu, "cpu", "CPUBENCH", &config(size, 64, 16));
    }
    let Some(mut gpu) = cuda_or_skip("pretrain_upsampler gpu") else {
        return;
    };
    let gpu_configs = if bench_smoke() {
        vec![config(75, 8, 4)]
    } else {
        vec![config(299, 1024, 32), config(448, 1024, 32)]
    };
    for cfg in gpu_configs {
        case(c, &mut gpu, "gpu", "NETBENCH", &cfg);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
