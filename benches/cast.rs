//! f32 ↔ bf16 cast benchmarks. Always: the CPU reference. With a GPU: our kernels
//! (`kernels/cast.cu`) against cuDNN's `cudnnTransformTensor` between an f32 and a bf16 tensor
//! (`c2f_baselines::cast`, the call a cuDNN user makes to convert a tensor; skipped where cuDNN
//! refuses the conversion), for the bf16 step's sizes: InceptionV3's 23,834,568 parameters (the
//! weights' working copy, a weight gradient added into the f32 one) and one 64×768×17×17
//! activation. GB/s count the least traffic: x read and y written, plus y read for the sum (6
//! bytes per element for a cast, 10 for the sum). Target: at least cuDNN's speed, and 80% of
//! copy bandwidth.

mod common;

use c2f_baselines::cast::CastCudnn;
use c2f_kernels::cast::{to_bf16_cpu, CastGpu};
use c2f_kernels::testing::bench_smoke;
use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;

/// torchvision's `inception_v3(aux_logits=False)` parameter count.
const INCEPTION_V3_PARAMS: usize = 23_834_568;
/// A Mixed_6 block's output at batch 64.
const ACTIVATION: usize = 64 * 768 * 17 * 17;

fn cpu(c: &mut Criterion) {
    let n = if bench_smoke() { 4099 } else { 1 << 22 };
    let x = common::draw(n, 1);
    let mut y = vec![bf16::ZERO; n];
    common::bench_cpu(c, "cast_cpu", &format!("to_bf16_n{n}"), || {
        to_bf16_cpu(&x, &mut y).unwrap()
    });
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("cast GPU benches") else {
        return;
    };
    let ours_op = CastGpu::new(&gpu).unwrap();
    let mut group = common::GpuGroup::new(c, &gpu, "cast_gpu");
    let sizes = if bench_smoke() {
        vec![("smoke", 4099)]
    } else {
        vec![("params", INCEPTION_V3_PARAMS), ("activation", ACTIVATION)]
    };
    for (what, n) in sizes {
        let wide_in = gpu.upload(&common::draw(n, 1)).unwrap();
        let mut narrow = gpu.alloc_zeros::<bf16>(n).unwrap();
        ours_op.to_bf16(&wide_in, &mut narrow).unwrap();
        let mut wide = gpu.alloc_zeros::<f32>(n).unwrap();
        // A baseline cuDNN refuses (or a cuDNN without the call) leaves our rows alone.
        let cudnn = CastCudnn::new(&gpu, n)
            .inspect_err(|e| println!("cast cuDNN baseline at {what}: skipped: {e}"))
            .ok();
        let (cast, sum) = (6 * n, 10 * n);

        let id = format!("to_bf16_{what}_n{n}");
        let ours = group.ours(&id, cast, || {
            ours_op.to_bf16(&wide_in, &mut narrow).unwrap()
        });
        if let Some(cudnn) = &cudnn {
            group.versus("cuDNN", &id, (ours, 1.0), cast, || {
                cudnn.to_bf16(&wide_in, &mut narrow).unwrap()
            });
        }

        let id = format!("to_f32_{what}_n{n}");
        let ours = group.ours(&id, cast, || ours_op.to_f32(&narrow, &mut wide).unwrap());
        if let Some(cudnn) = &cudnn {
            group.versus("cuDNN", &id, (ours, 1.0), cast, || {
                cudnn.to_f32(&narrow, &mut wide).unwrap()
            });
        }

        let id = format!("accumulate_{what}_n{n}");
        let ours = group.ours(&id, sum, || ours_op.accumulate(&narrow, &mut wide).unwrap());
        if let Some(cudnn) = &cudnn {
            group.versus("cuDNN", &id, (ours, 1.0), sum, || {
                cudnn.accumulate(&narrow, &mut wide).unwrap()
            });
        }
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
