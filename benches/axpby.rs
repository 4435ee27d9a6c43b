//! `y = α·x + β·y` benchmarks. Always: the CPU reference (the CPU backend's op). With a GPU: our
//! kernel (`kernels/axpby.cu`, f32) against cuBLAS (`c2f_baselines::axpby`: `saxpy` alone for β = 1,
//! `sscal` then `saxpy` otherwise, a memset then `saxpy` for β = 0) where the trainer uses it:
//! scaling the part features of a batch of 64 (64·8·768, β = 0), adding the center loss's
//! gradient into them (β ≠ 0, 1), and a gradient-sized sum (InceptionV3's 23,834,568 parameters,
//! β = 1). GB/s count the least traffic: x read and y written, plus y read when β ≠ 0. Target:
//! cuBLAS's speed where it is one call (β = 1), and above it where it needs two.

mod common;

use c2f_baselines::axpby::AxpbyCublas;
use c2f_kernels::axpby::{axpby_cpu, AxpbyGpu};
use c2f_kernels::testing::{bench_smoke, library_or_skip};
use criterion::{criterion_group, criterion_main, Criterion};

/// (elements, α, β) of each GPU case.
fn gpu_cases() -> Vec<(usize, f64, f64)> {
    if bench_smoke() {
        return vec![(4099, 100.0, 0.0), (4099, 100.0, 0.5), (4099, 1.0, 1.0)];
    }
    let parts = 64 * 8 * 768;
    vec![
        (parts, 100.0, 0.0),
        (parts, 100.0, 0.5),
        (23_834_568, 1.0, 1.0),
    ]
}

fn cpu(c: &mut Criterion) {
    let n = if bench_smoke() { 4099 } else { 1 << 22 };
    let (x, mut y) = (common::draw(n, 1), common::draw(n, 2));
    common::bench_cpu(c, "axpby_cpu_f32", &format!("n{n}_beta1"), || {
        axpby_cpu(1.0, &x, 1.0, &mut y).unwrap()
    });
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("axpby GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "axpby_gpu_f32");
    let ours_op = AxpbyGpu::<f32>::new(&gpu).unwrap();
    let Some(blas) = library_or_skip("axpby cuBLAS baseline", AxpbyCublas::new(&gpu)) else {
        return;
    };
    for (n, alpha, beta) in gpu_cases() {
        let id = format!("n{n}_beta{beta}");
        let arrays = if beta == 0.0 { 2 } else { 3 };
        let bytes = arrays * n * std::mem::size_of::<f32>();
        let x = gpu.upload(&common::draw(n, 1)).unwrap();
        let mut y = gpu.upload(&common::draw(n, 2)).unwrap();
        let ours = group.ours(&id, bytes, || ours_op.run(alpha, &x, beta, &mut y).unwrap());
        group.versus("cuBLAS", &id, (ours, 1.0), bytes, || {
            blas.run(alpha, &x, beta, &mut y).unwrap()
        });
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
