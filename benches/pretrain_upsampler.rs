//! Up-sampler pretraining on the CPU backend, pairs per second: one epoch of generated pairs
//! (generation, forward, L2 gradient, backward, SGD step) at input 299 (17² maps, three
//! transposed convolutions) and 448 (26² maps). Prints `CPUBENCH` lines with pairs/s.

use std::time::Instant;

use c2f_inception::backend::Backend;
use c2f_inception::cpu::CpuBackend;
use c2f_train::pretrain::{pretrain_upsampler, PretrainConfig};
use criterion::{criterion_group, criterion_main, Criterion};

fn config(size: usize) -> PretrainConfig {
    PretrainConfig {
        pairs: 64,
        held_out: 16,
        epochs: 1,
        batch: 16,
        ..PretrainConfig::new(size)
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pretrain_upsampler_cpu_f32");
    group.sample_size(10);
    for size in [299, 448] {
        let cfg = config(size);
        let mut cpu = CpuBackend::<f32>::new();
        let name = format!("b{}_{size}", cfg.batch);
        group.bench_function(&name, |b| {
            b.iter(|| pretrain_upsampler(&mut cpu, &cfg, &mut |_| {}).unwrap())
        });
        // Own figure for the report: the epoch's training pairs/s (held-out passes excluded).
        let start = Instant::now();
        let report = pretrain_upsampler(&mut cpu, &cfg, &mut |_| {}).unwrap();
        let pairs = report.epochs[0].pairs_per_second;
        println!(
            "CPUBENCH\tpretrain_upsampler_{name}\t{}\t{pairs:.1} pairs/s\t{:.0} ms/run",
            cpu.describe(),
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
