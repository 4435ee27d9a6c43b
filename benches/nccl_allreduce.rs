//! NCCL all-reduce (sum, f32) on the CUDA backend at 1 MB, 25 MB (the gradient bucket) and
//! 100 MB: algorithm bandwidth (bytes / time) and bus bandwidth (× 2(n−1)/n, nccl-tests'
//! convention, the figure to compare with the link's datasheet). With one GPU, the only machine
//! this project has, n = 1: the bus bandwidth is 0 by definition and the time is NCCL's fixed
//! cost per call, which is what the line then shows. Prints `NETBENCH` lines; without a GPU it
//! says so.

use std::time::Instant;

use c2f_dist::collective::{Collective, Reduce};
use c2f_dist::nccl::{unique_id, NcclCollective};
use c2f_inception::backend::prelude::*;
use c2f_inception::cuda::testing::cuda_or_skip;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let Some(mut b) = cuda_or_skip("nccl_allreduce") else {
        return;
    };
    let id = unique_id().expect("NCCL makes an id");
    let mut nccl = NcclCollective::new(&b, 0, 1, &id).expect("a world of one");
    let world = nccl.world_size();
    let mut group = c.benchmark_group("nccl_allreduce_f32");
    group.sample_size(10);
    for mb in [1usize, 25, 100] {
        let len = mb * 1_000_000 / 4;
        let t = b.alloc(len).unwrap();
        b.fill(t, 1.0).unwrap();
        let name = format!("{mb}MB");
        group.bench_function(&name, |bench| {
            bench.iter(|| {
                nccl.all_reduce(&mut b, t, Reduce::Sum).unwrap();
                b.synchronize().unwrap();
            })
        });
        let reps = 20;
        let start = Instant::now();
        for _ in 0..reps {
            nccl.all_reduce(&mut b, t, Reduce::Sum).unwrap();
        }
        b.synchronize().unwrap();
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        let algbw = (len * 4) as f64 / secs / 1e9;
        let busbw = algbw * 2.0 * (world - 1) as f64 / world as f64;
        println!(
            "NETBENCH\tnccl_allreduce_{name}\t{} world {world}\t{:.1} µs\talgbw {algbw:.1} GB/s\tbusbw {busbw:.1} GB/s",
            b.describe(),
            secs * 1e6
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
