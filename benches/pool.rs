//! Pooling benchmarks, forward then backward (one layer's share of a training step). Always: the
//! CPU reference (the CPU backend's op). With a GPU: our kernels (`kernels/pool.cu`, f32) against
//! cuDNN's pooling (`c2f_baselines::pool`) at InceptionV3's pools for batch 64 at 299²: the stem's two
//! 3×3 stride-2 max pools (64 channels at 147², 192 at 71²) and the 3×3 stride-1 average pools
//! of the `Mixed_5b` (192 at 35²) and `Mixed_6e` (768 at 17²) pool branches. GB/s count the least
//! traffic: x read and y written forward, dy read and dx written backward (our max pool also
//! writes and reads its indices; cuDNN's reads x and y again instead). Target: at least cuDNN's
//! speed.

mod common;

use c2f_baselines::pool::Pool2dCudnn;
use c2f_kernels::pool::{
    avg_pool2d_backward_cpu, avg_pool2d_forward_cpu, AvgPool2dGpu, MaxPool2dGpu, Pool2dParams,
    PoolShape,
};
use c2f_kernels::testing::{bench_smoke, library_or_skip};
use criterion::{criterion_group, criterion_main, Criterion};

fn shape(batch: usize, channels: usize, side: usize) -> PoolShape {
    PoolShape {
        batch,
        channels,
        height: side,
        width: side,
    }
}

/// (max pool?, input, parameters).
fn gpu_cases() -> Vec<(bool, PoolShape, Pool2dParams)> {
    let (max, avg) = (Pool2dParams::square(3, 2, 0), Pool2dParams::square(3, 1, 1));
    if bench_smoke() {
        return vec![(true, shape(2, 4, 9), max), (false, shape(2, 4, 9), avg)];
    }
    vec![
        (true, shape(64, 64, 147), max),
        (true, shape(64, 192, 71), max),
        (false, shape(64, 192, 35), avg),
        (false, shape(64, 768, 17), avg),
    ]
}

fn cpu(c: &mut Criterion) {
    let (s, p) = (shape(8, 192, 35), Pool2dParams::square(3, 1, 1));
    let out = p.output_shape(&s).unwrap();
    let (x, dy) = (common::draw(s.numel(), 1), common::draw(out.numel(), 2));
    let (mut y, mut dx) = (vec![0.0f32; out.numel()], vec![0.0f32; s.numel()]);
    common::bench_cpu(c, "pool_cpu_f32", "avg_3x3_s1_B8_C192_35x35", || {
        avg_pool2d_forward_cpu(&s, &p, &x, &mut y).unwrap();
        avg_pool2d_backward_cpu(&s, &p, &dy, &mut dx).unwrap();
    });
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("pool GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "pool_gpu_f32");
    for (is_max, s, p) in gpu_cases() {
        let out = p.output_shape(&s).unwrap();
        let id = format!(
            "{}_{}x{}_s{}_B{}_C{}_{}x{}",
            if is_max { "max" } else { "avg" },
            p.kernel.0,
            p.kernel.1,
            p.stride.0,
            s.batch,
            s.channels,
            s.height,
            s.width
        );
        let bytes = 2 * (s.numel() + out.numel()) * std::mem::size_of::<f32>();
        let x = gpu.upload(&common::draw(s.numel(), 1)).unwrap();
        let dy = gpu.upload(&common::draw(out.numel(), 2)).unwrap();
        let mut y = gpu.alloc_zeros::<f32>(out.numel()).unwrap();
        let mut dx = gpu.alloc_zeros::<f32>(s.numel()).unwrap();
        let ours = if is_max {
            let pool = MaxPool2dGpu::<f32>::new(&gpu, s, p).unwrap();
            let mut indices = gpu.alloc_zeros::<i32>(out.numel()).unwrap();
            group.ours(&id, bytes, || {
                pool.forward(&x, &mut y, &mut indices).unwrap();
                pool.backward(&indices, &dy, &mut dx).unwrap();
            })
        } else {
            let pool = AvgPool2dGpu::<f32>::new(&gpu, s, p).unwrap();
            group.ours(&id, bytes, || {
                pool.forward(&x, &mut y).unwrap();
                pool.backward(&dy, &mut dx).unwrap();
            })
        };
        let made = if is_max {
            Pool2dCudnn::max(&gpu, s, p)
        } else {
            Pool2dCudnn::average(&gpu, s, p)
        };
        let Some(cudnn) = library_or_skip("pool cuDNN baseline", made) else {
            return;
        };
        group.versus("cuDNN", &id, (ours, 1.0), bytes, || {
            cudnn.forward(&x, &mut y).unwrap();
            cudnn.backward(&x, &y, &dy, &mut dx).unwrap();
        });
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
