//! Pooling benchmarks, forward then backward (one layer's share of a training step). Always: the
//! CPU reference (the CPU backend's op). With a GPU: our kernels (`kernels/pool.cu`, f32) against
//! cuDNN's pooling (`c2f_baselines::pool`) at InceptionV3's pools for batch 64 at 299²: the stem's two
//! 3×3 stride-2 max pools (64 channels at 147², 192 at 71²) and the 3×3 stride-1 average pools
//! of the `Mixed_5b` (192 at 35²) and `Mixed_6e` (768 at 17²) pool branches. GB/s count the least
//! traffic: x read and y written forward, dy read and dx written backward (our max pool also
//! writes and reads its indices; cuDNN's reads x and y again instead). Target: at least cuDNN's
//! speed.
//!
//! Channels-last rows: our NHWC kernels in f32 and bf16 at the same pools, held to the fraction
//! of the card's copy bandwidth each summary line prints (target ≥ 0.8, issue 20). No library
//! baseline here yet: cuDNN's NHWC pooling is not bound in `c2f_baselines`.

mod common;

use c2f_baselines::pool::Pool2dCudnn;
use c2f_kernels::pool::{
    avg_pool2d_backward_cpu, avg_pool2d_forward_cpu, AvgPool2dGpu, MaxPool2dGpu, Pool2dParams,
    PoolShape,
};
use c2f_kernels::testing::{bench_smoke, library_or_skip};
use c2f_kernels::{Element, Gpu, Layout};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::driver::CudaSlice;
use half::bf16;

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

fn case_id(is_max: bool, s: &PoolShape, p: &Pool2dParams) -> String {
    format!(
        "{}_{}x{}_s{}_B{}_C{}_{}x{}",
        if is_max { "max" } else { "avg" },
        p.kernel.0,
        p.kernel.1,
        p.stride.0,
        s.batch,
        s.channels,
        s.height,
        s.width
    )
}

/// One pool's device buffers: x, dy, y, dx.
struct Buffers<T> {
    x: CudaSlice<T>,
    dy: CudaSlice<T>,
    y: CudaSlice<T>,
    dx: CudaSlice<T>,
}

impl<T: Element> Buffers<T> {
    fn new(gpu: &Gpu, s: &PoolShape, out: &PoolShape) -> Self {
        let up = |v: Vec<f32>| -> CudaSlice<T> {
            let v: Vec<T> = v.into_iter().map(T::from_f32).collect();
            gpu.upload(&v).unwrap()
        };
        Buffers {
            x: up(common::draw(s.numel(), 1)),
            dy: up(common::draw(out.numel(), 2)),
            y: gpu.alloc_zeros::<T>(out.numel()).unwrap(),
            dx: gpu.alloc_zeros::<T>(s.numel()).unwrap(),
        }
    }
}

/// Our pool forward then backward in `T` and `layout`, benched as `ours_{id}`: seconds per call.
fn bench_ours<T: Element>(
    group: &mut common::GpuGroup,
    (is_max, s, p, layout): (bool, PoolShape, Pool2dParams, Layout),
    b: &mut Buffers<T>,
) -> f64 {
    let (gpu, out) = (group.gpu, p.output_shape(&s).unwrap());
    let id = case_id(is_max, &s, &p);
    let bytes = 2 * (s.numel() + out.numel()) * std::mem::size_of::<T>();
    if is_max {
        let pool = MaxPool2dGpu::<T>::with_layout(gpu, s, p, layout).unwrap();
        let mut indices = gpu.alloc_zeros::<i32>(out.numel()).unwrap();
        group.ours(&id, bytes, || {
            pool.forward(&b.x, &mut b.y, &mut indices).unwrap();
            pool.backward(&indices, &b.dy, &mut b.dx).unwrap();
        })
    } else {
        let pool = AvgPool2dGpu::<T>::with_layout(gpu, s, p, layout).unwrap();
        group.ours(&id, bytes, || {
            pool.forward(&b.x, &mut b.y).unwrap();
            pool.backward(&b.dy, &mut b.dx).unwrap();
        })
    }
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("pool GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "pool_gpu_f32");
    for (is_max, s, p) in gpu_cases() {
        let out = p.output_shape(&s).unwrap();
        let id = case_id(is_max, &s, &p);
        let bytes = 2 * (s.numel() + out.numel()) * std::mem::size_of::<f32>();
        let mut b = Buffers::<f32>::new(&gpu, &s, &out);
        let ours = bench_ours(&mut group, (is_max, s, p, Layout::Nchw), &mut b);
        let made = if is_max {
            Pool2dCudnn::max(&gpu, s, p)
        } else {
            Pool2dCudnn::average(&gpu, s, p)
        };
        let Some(cudnn) = library_or_skip("pool cuDNN baseline", made) else {
            return;
        };
        group.versus("cuDNN", &id, (ours, 1.0), bytes, || {
            cudnn.forward(&b.x, &mut b.y).unwrap();
            cudnn.backward(&b.x, &b.y, &b.dy, &mut b.dx).unwrap();
        });
    }
}

/// Our NHWC kernels in `T` at the same pools.
fn gpu_nhwc<T: Element>(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("pool NHWC GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, format!("pool_gpu_nhwc_{}", T::SUFFIX));
    for (is_max, s, p) in gpu_cases() {
        let mut b = Buffers::<T>::new(&gpu, &s, &p.output_shape(&s).unwrap());
        bench_ours(&mut group, (is_max, s, p, Layout::Nhwc), &mut b);
    }
}

criterion_group!(benches, cpu, gpu, gpu_nhwc::<f32>, gpu_nhwc::<bf16>);
criterion_main!(benches);
