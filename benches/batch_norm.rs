//! Batch norm + ReLU benchmarks, training mode, forward then backward (one layer's share of a
//! training step). Always: the CPU reference (the CPU backend's op). With a GPU: our kernels
//! (`kernels/batch_norm.cu`, f32) against cuDNN's batch norm followed by its ReLU (what a
//! framework runs for NCHW f32; `c2f_baselines::batch_norm`), at InceptionV3's shapes for batch 64 at
//! 299²: `Conv2d_2b` (64 channels, 147²), a `Mixed_5b` branch (64, 35²) and a `Mixed_6e` branch
//! (192, 17²). GB/s count the least traffic: x read and y written forward, x, y and dy read and
//! dx written backward. Target: at least cuDNN's speed.
//!
//! Channels-last rows: our NHWC kernels in f32 and bf16 at the same shapes and `Mixed_6e`'s 768
//! channels at 17², held to the fraction of the card's copy bandwidth each summary line prints
//! (target ≥ 0.8, issue 20: the traffic above is the least any implementation moves). No
//! library baseline here yet: cuDNN's NHWC batch norm (`CUDNN_BATCHNORM_SPATIAL_PERSISTENT`) is
//! not bound in `c2f_baselines`.

mod common;

use c2f_baselines::batch_norm::BatchNormCudnn;
use c2f_kernels::batch_norm::{
    backward_train_cpu, forward_train_cpu, BatchNormGpu, BatchNormParams, BatchNormShape,
};
use c2f_kernels::testing::{bench_smoke, library_or_skip};
use c2f_kernels::{Element, Gpu, Layout};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::driver::CudaSlice;
use half::bf16;

fn shape(batch: usize, channels: usize, side: usize) -> BatchNormShape {
    BatchNormShape {
        batch,
        channels,
        height: side,
        width: side,
    }
}

fn gpu_shapes() -> Vec<BatchNormShape> {
    if bench_smoke() {
        vec![shape(2, 8, 9)]
    } else {
        vec![shape(64, 64, 147), shape(64, 64, 35), shape(64, 192, 17)]
    }
}

fn name(s: &BatchNormShape) -> String {
    format!("B{}_C{}_{}x{}", s.batch, s.channels, s.height, s.width)
}

fn draw(len: usize, seed: u64) -> Vec<f32> {
    common::draw_in(len, seed, -1.0, 2.0)
}

fn cpu(c: &mut Criterion) {
    let s = shape(8, 64, 35);
    let p = BatchNormParams::default();
    let x = draw(s.len(), 1);
    let dy = draw(s.len(), 2);
    let gamma = draw(s.channels, 3);
    let beta = draw(s.channels, 4);
    let (mut running_mean, mut running_var) = (vec![0.0f32; s.channels], vec![1.0f32; s.channels]);
    let (mut mean, mut invstd) = (vec![0.0f32; s.channels], vec![0.0f32; s.channels]);
    let (mut y, mut dx) = (vec![0.0f32; s.len()], vec![0.0f32; s.len()]);
    let (mut dgamma, mut dbeta) = (vec![0.0f32; s.channels], vec![0.0f32; s.channels]);
    let id = format!("train_forward_backward_{}", name(&s));
    common::bench_cpu(c, "batch_norm_cpu_f32", &id, || {
        let running = [&mut running_mean[..], &mut running_var];
        let saved = [&mut mean[..], &mut invstd];
        forward_train_cpu(&s, &p, &x, [&gamma, &beta], running, &mut y, saved).unwrap();
        let (xs, grads) = ([&x[..], &y, &dy], [&mut dgamma[..], &mut dbeta]);
        backward_train_cpu(&s, &p, xs, &gamma, [&mean, &invstd], &mut dx, grads).unwrap();
    });
}

/// One layer's device buffers, shared by both implementations; activations in `T`.
struct Layer<T> {
    x: CudaSlice<T>,
    dy: CudaSlice<T>,
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    running_mean: CudaSlice<f32>,
    running_var: CudaSlice<f32>,
    y: CudaSlice<T>,
    mean: CudaSlice<f32>,
    invstd: CudaSlice<f32>,
    dx: CudaSlice<T>,
    dgamma: CudaSlice<f32>,
    dbeta: CudaSlice<f32>,
}

impl<T: Element> Layer<T> {
    fn new(gpu: &Gpu, s: &BatchNormShape) -> Layer<T> {
        let up = |v: &[f32]| gpu.upload(v).unwrap();
        let up_act = |v: Vec<f32>| {
            let v: Vec<T> = v.into_iter().map(T::from_f32).collect();
            gpu.upload(&v).unwrap()
        };
        let zeros = |len| gpu.alloc_zeros::<f32>(len).unwrap();
        Layer {
            x: up_act(draw(s.len(), 1)),
            dy: up_act(draw(s.len(), 2)),
            gamma: up(&draw(s.channels, 3)),
            beta: up(&draw(s.channels, 4)),
            running_mean: zeros(s.channels),
            running_var: up(&vec![1.0; s.channels]),
            y: gpu.alloc_zeros::<T>(s.len()).unwrap(),
            mean: zeros(s.channels),
            invstd: zeros(s.channels),
            dx: gpu.alloc_zeros::<T>(s.len()).unwrap(),
            dgamma: zeros(s.channels),
            dbeta: zeros(s.channels),
        }
    }
}

/// Calls `$op.forward_train` then `$op.backward_train` on layer `$l`: the two implementations
/// share these signatures but no trait.
macro_rules! forward_backward {
    ($op:expr, $l:expr) => {{
        let l = &mut $l;
        let (running, saved) = (
            [&mut l.running_mean, &mut l.running_var],
            [&mut l.mean, &mut l.invstd],
        );
        $op.forward_train(&l.x, [&l.gamma, &l.beta], running, &mut l.y, saved)
            .unwrap();
        let (xs, stats, grads) = (
            [&l.x, &l.y, &l.dy],
            [&l.mean, &l.invstd],
            [&mut l.dgamma, &mut l.dbeta],
        );
        $op.backward_train(xs, &l.gamma, stats, &mut l.dx, grads)
            .unwrap();
    }};
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("batch_norm GPU benches") else {
        return;
    };
    let p = BatchNormParams::default();
    let mut group = common::GpuGroup::new(c, &gpu, "batch_norm_gpu_f32");
    for s in gpu_shapes() {
        let mut layer = Layer::<f32>::new(&gpu, &s);
        let bytes = 6 * s.len() * std::mem::size_of::<f32>();
        let id = name(&s);
        let mut ours = BatchNormGpu::<f32>::new(&gpu, s, p).unwrap();
        let ours_s = group.ours(&id, bytes, || forward_backward!(ours, layer));
        let Some(mut cudnn) =
            library_or_skip("batch_norm cuDNN baseline", BatchNormCudnn::new(&gpu, s, p))
        else {
            return;
        };
        group.versus("cuDNN", &id, (ours_s, 1.0), bytes, || {
            forward_backward!(cudnn, layer)
        });
    }
}

/// Our NHWC kernels in `T`.
fn gpu_nhwc<T: Element>(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("batch_norm NHWC GPU benches") else {
        return;
    };
    let p = BatchNormParams::default();
    let mut group = common::GpuGroup::new(c, &gpu, format!("batch_norm_gpu_nhwc_{}", T::SUFFIX));
    let mut shapes = gpu_shapes();
    if !bench_smoke() {
        shapes.push(shape(64, 768, 17));
    }
    for s in shapes {
        let mut layer = Layer::<T>::new(&gpu, &s);
        let bytes = 6 * s.len() * std::mem::size_of::<T>();
        let mut ours = BatchNormGpu::<T>::with_layout(&gpu, s, p, Layout::Nhwc).unwrap();
        group.ours(&name(&s), bytes, || forward_backward!(ours, layer));
    }
}

criterion_group!(benches, cpu, gpu, gpu_nhwc::<f32>, gpu_nhwc::<bf16>);
criterion_main!(benches);
