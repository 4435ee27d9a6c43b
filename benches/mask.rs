//! The fine branch's ops, forward then backward, at the shapes of a batch-64 step at 299²: eight
//! 17×17 attention maps, an up-sampled map resized to 299×299, and the 3×299×299 image it masks.
//! The resize reads the 136×136 map the model's up-sampler gives at 299²
//! (`c2f_train::upsampler::default_channels`). Always: the CPU reference's mask at batch 8. With a GPU, our kernels
//! (`kernels/mask.cu`, f32):
//! - the attention ReLU against cuDNN's activation forward and backward (`c2f_baselines::relu`);
//! - the map choice (one map per sample, its gradient accumulated into the maps' own), the
//!   bilinear resize and the normalised mask, which no CUDA library offers: their peer is PyTorch
//!   on the same card (`tools/torch_ops_baseline.py`, whose `TORCHOP` lines carry these names).
//!
//! - the mask also in bf16, at 448², and with the image in channels-last NHWC (`nhwc_` rows).
//!
//! GB/s count the least traffic: every input read once and every output written once (the map
//! choice touches only the chosen map); each BENCH line names the card and the fraction of its
//! copy bandwidth reached. Target: at least cuDNN's speed on the ReLU, at least PyTorch's on the
//! rest, and ≥ 80% of copy bandwidth on the mask in either layout.

mod common;

use c2f_baselines::relu::ReluCudnn;
use c2f_kernels::map_select::{MapSelectGpu, MapShape};
use c2f_kernels::mask::{mask_backward_cpu, mask_forward_cpu, MaskGpu, MaskShape};
use c2f_kernels::relu::ReluGpu;
use c2f_kernels::resize::{ResizeBilinearGpu, ResizeShape};
use c2f_kernels::testing::{bench_smoke, library_or_skip};
use c2f_kernels::{Element, Gpu, Layout};
use criterion::{criterion_group, criterion_main, Criterion};

/// (batch, attention side, up-sampler output side, input side).
fn sizes() -> (usize, usize, usize, usize) {
    if bench_smoke() {
        (2, 3, 8, 11)
    } else {
        (64, 17, 136, 299)
    }
}

const MAPS: usize = 8;
const CHANNELS: usize = 3;

fn cpu(c: &mut Criterion) {
    let side = if bench_smoke() { 11 } else { 160 };
    let s = MaskShape {
        batch: 8,
        channels: CHANNELS,
        height: side,
        width: side,
    };
    let (u, x, dxf) = (
        common::draw(s.map_len(), 1),
        common::draw(s.image_len(), 2),
        common::draw(s.image_len(), 3),
    );
    let mut xf = vec![0.0f32; s.image_len()];
    let (mut u_max, mut argmax) = (vec![0.0f32; s.batch], vec![0i32; s.batch]);
    let mut du = vec![0.0f32; s.map_len()];
    common::bench_cpu(
        c,
        "mask_cpu_f32",
        &format!("mask_B8_C3_{side}x{side}"),
        || {
            mask_forward_cpu(&s, &u, &x, &mut xf, &mut u_max, &mut argmax).unwrap();
            mask_backward_cpu(&s, &u, &x, &dxf, &u_max, &argmax, &mut du, None).unwrap();
        },
    );
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("mask GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "mask_gpu_f32");
    let f32_bytes = std::mem::size_of::<f32>();
    let (batch, side, up, input) = sizes();
    let maps = MapShape {
        batch,
        maps: MAPS,
        height: side,
        width: side,
    };

    // The attention ReLU, against cuDNN.
    let n = maps.maps_len();
    let id = format!("relu_B{batch}_M{MAPS}_{side}x{side}");
    let (x, dy) = (
        gpu.upload(&common::draw(n, 1)).unwrap(),
        gpu.upload(&common::draw(n, 2)).unwrap(),
    );
    let (mut y, mut dx) = (
        gpu.alloc_zeros::<f32>(n).unwrap(),
        gpu.alloc_zeros::<f32>(n).unwrap(),
    );
    let relu = ReluGpu::<f32>::new(&gpu).unwrap();
    let bytes = 5 * n * f32_bytes;
    let ours = group.ours(&id, bytes, || {
        relu.forward(&x, &mut y).unwrap();
        relu.backward(&y, &dy, &mut dx).unwrap();
    });
    let Some(cudnn) = library_or_skip("mask cuDNN ReLU baseline", ReluCudnn::new(&gpu, n)) else {
        return;
    };
    group.versus("cuDNN", &id, (ours, 1.0), bytes, || {
        cudnn.forward(&x, &mut y).unwrap();
        cudnn.backward(&x, &y, &dy, &mut dx).unwrap();
    });

    // One map per sample, its gradient accumulated into the maps' (the BAP's share is there).
    let select = MapSelectGpu::<f32>::new(&gpu, maps).unwrap();
    let indices: Vec<i32> = (0..batch).map(|b| (b % MAPS) as i32).collect();
    let indices = gpu.upload(&indices).unwrap();
    let ds = gpu.upload(&common::draw(maps.map_len(), 3)).unwrap();
    let mut s = gpu.alloc_zeros::<f32>(maps.map_len()).unwrap();
    let id = format!("select_B{batch}_M{MAPS}_{side}x{side}");
    group.ours(&id, 5 * maps.map_len() * f32_bytes, || {
        select.select_forward(&x, &indices, &mut s).unwrap();
        select
            .select_backward(&indices, &ds, &mut dx, true)
            .unwrap();
    });

    // The up-sampler's output resized to the input.
    let rs = ResizeShape {
        batch,
        channels: 1,
        in_height: up,
        in_width: up,
        out_height: input,
        out_width: input,
    };
    let resize = ResizeBilinearGpu::<f32>::new(&gpu, rs).unwrap();
    let small = gpu.upload(&common::draw(rs.in_len(), 4)).unwrap();
    let big_grad = gpu.upload(&common::draw(rs.out_len(), 5)).unwrap();
    let mut big = gpu.alloc_zeros::<f32>(rs.out_len()).unwrap();
    let mut small_grad = gpu.alloc_zeros::<f32>(rs.in_len()).unwrap();
    let id = format!("resize_B{batch}_{up}to{input}");
    group.ours(&id, 2 * (rs.in_len() + rs.out_len()) * f32_bytes, || {
        resize.forward(&small, &mut big).unwrap();
        resize.backward(&big_grad, &mut small_grad).unwrap();
    });

    drop(group);
    mask_rows::<f32>(c, &gpu, batch, input);
    mask_rows::<half::bf16>(c, &gpu, batch, input);
}

/// The normalised mask applied to the image, and its gradient with respect to the map, in `T`,
/// at the input side and at 448², with the image in NCHW and in channels-last NHWC (the `nhwc_`
/// rows, issue 20's layout).
fn mask_rows<T: Element>(c: &mut Criterion, gpu: &Gpu, batch: usize, input: usize) {
    let mut group = common::GpuGroup::new(c, gpu, format!("mask_gpu_{}", T::SUFFIX));
    let sides = if bench_smoke() {
        vec![input]
    } else {
        vec![input, 448]
    };
    for side in sides {
        let ms = MaskShape {
            batch,
            channels: CHANNELS,
            height: side,
            width: side,
        };
        let draw = |len, seed| -> Vec<T> {
            common::draw(len, seed)
                .into_iter()
                .map(T::from_f32)
                .collect()
        };
        let u = gpu.upload(&draw(ms.map_len(), 6)).unwrap();
        let image = gpu.upload(&draw(ms.image_len(), 7)).unwrap();
        let dxf = gpu.upload(&draw(ms.image_len(), 8)).unwrap();
        let mut xf = gpu.alloc_zeros::<T>(ms.image_len()).unwrap();
        let mut u_max = gpu.alloc_zeros::<f32>(batch).unwrap();
        let mut argmax = gpu.alloc_zeros::<i32>(batch).unwrap();
        let mut du = gpu.alloc_zeros::<T>(ms.map_len()).unwrap();
        let bytes = (3 * ms.map_len() + 4 * ms.image_len()) * std::mem::size_of::<T>();
        for (layout, prefix) in [(Layout::Nchw, ""), (Layout::Nhwc, "nhwc_")] {
            let mut mask = MaskGpu::<T>::with_layout(gpu, ms, layout).unwrap();
            let id = format!("{prefix}mask_B{batch}_C{CHANNELS}_{side}x{side}");
            group.ours(&id, bytes, || {
                mask.forward(&u, &image, &mut xf, &mut u_max, &mut argmax)
                    .unwrap();
                mask.backward(&u, &image, &dxf, &u_max, &argmax, &mut du)
                    .unwrap();
            });
        }
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
