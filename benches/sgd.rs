//! SGD update benchmarks. Always: the CPU reference (the CPU backend's op). With a GPU: our fused
//! kernel (`kernels/sgd.cu`) against the same update as four cuBLAS passes (`c2f_baselines::sgd`, the
//! shape of `torch.optim.SGD`'s for-loop implementation), on a flat buffer of InceptionV3's
//! 23,834,568 parameters (torchvision, through `fc`), momentum 0.9 and weight decay 1e-5 as the
//! trainer uses them. GB/s count the least traffic, which only the fused kernel reaches: weights,
//! gradients and momentum read, weights and momentum written (20 bytes per parameter). Target:
//! at least twice cuBLAS's speed (it moves 44 bytes per parameter). The bf16 step's update, which
//! also writes the bf16 working copy of the weights (22 bytes per parameter), is held to 1.1×
//! the plain step followed by a separate cast (26 bytes; 1.18× at equal bandwidth).

mod common;

use c2f_baselines::sgd::SgdCublas;
use c2f_kernels::cast::CastGpu;
use c2f_kernels::sgd::{step_cpu, SgdGpu, SgdParams};
use c2f_kernels::testing::{bench_smoke, library_or_skip};
use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;

/// torchvision's `inception_v3(aux_logits=False)` parameter count.
const INCEPTION_V3_PARAMS: usize = 23_834_568;

fn params() -> SgdParams {
    SgdParams::new(0.9, 1e-5)
}

const LEARNING_RATE: f32 = 1e-3;

fn cpu(c: &mut Criterion) {
    let n = if bench_smoke() { 4099 } else { 1 << 22 };
    let (mut w, g, mut buf) = (common::draw(n, 1), common::draw(n, 2), vec![0.0f32; n]);
    common::bench_cpu(c, "sgd_cpu_f32", &format!("n{n}"), || {
        step_cpu(&params(), LEARNING_RATE, &mut w, &g, &mut buf).unwrap()
    });
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("sgd GPU benches") else {
        return;
    };
    let n = if bench_smoke() {
        4099
    } else {
        INCEPTION_V3_PARAMS
    };
    let bytes = 5 * n * std::mem::size_of::<f32>();
    let mut w = gpu.upload(&common::draw(n, 1)).unwrap();
    let g = gpu.upload(&common::draw(n, 2)).unwrap();
    let mut buf = gpu.upload(&vec![0.0f32; n]).unwrap();
    let lr = gpu.upload(&[LEARNING_RATE]).unwrap();
    let id = format!("n{n}");
    let sgd = SgdGpu::new(&gpu).unwrap();
    let mut group = common::GpuGroup::new(c, &gpu, "sgd_gpu_f32");
    let ours = group.ours(&id, bytes, || {
        sgd.step(&params(), &lr, &mut w, &g, &mut buf).unwrap()
    });
    // The bf16 step's update: the same step writing the bf16 working copy of the weights (2
    // bytes more per parameter), against the step then a separate cast (6 bytes more).
    let mut copy = gpu.alloc_zeros::<bf16>(n).unwrap();
    let copy_bytes = bytes + 2 * n;
    let fused = group.ours(&format!("with_bf16_copy_{id}"), copy_bytes, || {
        sgd.step_range_with_copy(&params(), &lr, 0..n, (&mut w, &mut copy), &g, &mut buf)
            .unwrap()
    });
    let cast = CastGpu::new(&gpu).unwrap();
    let what = format!("with_bf16_copy_{id} vs step then cast");
    group.baseline(
        &format!("step_then_cast_{id}"),
        (&what, fused, 1.1),
        copy_bytes,
        || {
            sgd.step(&params(), &lr, &mut w, &g, &mut buf).unwrap();
            cast.to_bf16(&w, &mut copy).unwrap()
        },
    );
    let Some(blas) = library_or_skip("sgd cuBLAS baseline", SgdCublas::new(&gpu)) else {
        return;
    };
    group.versus("cuBLAS", &id, (ours, 2.0), bytes, || {
        blas.step(&params(), LEARNING_RATE as f64, &mut w, &g, &mut buf)
            .unwrap()
    });
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
