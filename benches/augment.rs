//! WS-DAN's augmentation ops at the shapes of a batch-64 step: 3×299² images with 17×17
//! attention maps, and 3×448² with 26×26 (InceptionV3's Mixed_6e at each input side), 32 maps
//! per sample. Always: the CPU references at batch 8. With a GPU, our kernels
//! (`kernels/augment.cu`, f32), which no CUDA library offers; their peer is PyTorch on the same
//! card (`tools/torch_ops_baseline.py`, whose `TORCHOP` lines carry these names):
//! - the crop resized to the image, against a per-sample `F.interpolate(align_corners=True)`
//!   loop over the crops (and `torchvision.ops.roi_align` where torchvision is installed);
//! - the attention drop, against `x * (F.interpolate(normalised map) < θ)`;
//! - the map choice by mass and the crop box, against the same written with tensor ops
//!   (`cumsum`, `searchsorted`, the up-sampled map thresholded, `any` and `amin`/`amax`).
//!
//! GB/s count the least traffic: every input read once (the crop: only its boxes' pixels) and
//! every output written once. The choice and the box read only the maps, a few hundred KB: they
//! are bound by latency and the up-sampled map's arithmetic, not by bandwidth, so their fraction
//! of copy bandwidth is small by nature. Target: at least PyTorch's speed.

mod common;

use c2f_kernels::augment::{
    attention_boxes_cpu, crop_resize_cpu, drop_mask_cpu, maps_by_mass_cpu, AugmentGpu,
    AugmentShape, MapsByMassGpu,
};
use c2f_kernels::map_select::MapShape;
use c2f_kernels::testing::{bench_smoke, SplitMix64};
use c2f_kernels::Gpu;
use criterion::{criterion_group, criterion_main, Criterion};

const CHANNELS: usize = 3;
/// WS-DAN's attention maps per sample.
const MAPS: usize = 32;
const PADDING: f64 = 0.1;

/// (batch, [(image side, map side)]).
fn sizes() -> (usize, Vec<(usize, usize)>) {
    if bench_smoke() {
        (2, vec![(11, 3)])
    } else {
        (64, vec![(299, 17), (448, 26)])
    }
}

fn shape(batch: usize, side: usize, map_side: usize) -> AugmentShape {
    AugmentShape {
        batch,
        channels: CHANNELS,
        height: side,
        width: side,
        map_height: map_side,
        map_width: map_side,
    }
}

/// Boxes of 0.4 to 0.9 of each side, somewhere in the image, as WS-DAN's crops are.
fn boxes(s: &AugmentShape, seed: u64) -> Vec<i32> {
    let mut rng = SplitMix64(seed);
    let mut side = |n: usize| {
        let len = ((n as f64 * rng.uniform(0.4, 0.9)) as usize).max(1);
        let start = rng.below((n - len + 1) as u64) as usize;
        [start as i32, (start + len) as i32]
    };
    (0..s.batch)
        .flat_map(|_| {
            let ([y0, y1], [x0, x1]) = (side(s.height), side(s.width));
            [y0, x0, y1, x1]
        })
        .collect()
}

/// Pixels inside the boxes, over every channel: what the crop reads.
fn box_pixels(s: &AugmentShape, boxes: &[i32]) -> usize {
    let area = |b: &[i32]| ((b[2] - b[0]) * (b[3] - b[1])) as usize;
    s.channels * boxes.chunks(4).map(area).sum::<usize>()
}

/// Attention maps as WS-DAN's: after a ReLU, so with zeros.
fn attention(len: usize, seed: u64) -> Vec<f32> {
    common::draw_in(len, seed, -0.5, 1.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect()
}

fn cpu(c: &mut Criterion) {
    let (side, map_side) = if bench_smoke() { (11, 3) } else { (160, 9) };
    let s = shape(8, side, map_side);
    let ms = MapShape {
        batch: s.batch,
        maps: MAPS,
        height: map_side,
        width: map_side,
    };
    let (all, draws) = (
        attention(ms.maps_len(), 1),
        common::draw_in(s.batch, 2, 0.0, 1.0),
    );
    let maps = attention(s.map_len(), 3);
    let thresholds = common::draw_in(s.batch, 4, 0.4, 0.6);
    let x = common::draw(s.image_len(), 5);
    let mut y = vec![0.0f32; s.image_len()];
    let (mut k, mut bx) = (vec![0i32; s.batch], vec![0i32; 4 * s.batch]);
    common::bench_cpu(
        c,
        "augment_cpu_f32",
        &format!("augment_B8_C3_{side}x{side}_maps{map_side}x{map_side}"),
        || {
            maps_by_mass_cpu(&ms, &all, &draws, &mut k).unwrap();
            attention_boxes_cpu(&s, PADDING, &maps, &thresholds, &mut bx).unwrap();
            crop_resize_cpu(&s, &x, &bx, &mut y).unwrap();
            drop_mask_cpu(&s, &maps, &thresholds, &x, &mut y).unwrap();
        },
    );
}

fn gpu_shape(group: &mut common::GpuGroup, gpu: &Gpu, s: AugmentShape) {
    let f32_bytes = std::mem::size_of::<f32>();
    let (b, side, map_side) = (s.batch, s.height, s.map_height);
    let mut op = AugmentGpu::<f32>::new(gpu, s).unwrap();
    let x = gpu.upload(&common::draw(s.image_len(), 6)).unwrap();
    let mut y = gpu.alloc_zeros::<f32>(s.image_len()).unwrap();

    // The crop resized to the image.
    let crop_boxes = boxes(&s, 7);
    let bytes = (box_pixels(&s, &crop_boxes) + s.image_len()) * f32_bytes;
    let crop_boxes = gpu.upload(&crop_boxes).unwrap();
    group.ours(&format!("crop_B{b}_C3_{side}x{side}"), bytes, || {
        op.crop_resize(&x, &crop_boxes, &mut y).unwrap();
    });

    // The attention drop: one map per sample up-sampled and thresholded over the image.
    let maps = gpu.upload(&attention(s.map_len(), 8)).unwrap();
    let drop_thresholds = gpu.upload(&common::draw_in(b, 9, 0.2, 0.5)).unwrap();
    let bytes = (s.map_len() + 2 * s.image_len()) * f32_bytes;
    let id = format!("drop_B{b}_C3_{side}x{side}_maps{map_side}x{map_side}");
    group.ours(&id, bytes, || {
        op.drop_mask(&maps, &drop_thresholds, &x, &mut y).unwrap();
    });

    // Two maps per sample chosen by mass, and the crop box of one.
    let ms = MapShape {
        batch: b,
        maps: MAPS,
        height: map_side,
        width: map_side,
    };
    let mut mass = MapsByMassGpu::<f32>::new(gpu, ms).unwrap();
    let all = gpu.upload(&attention(ms.maps_len(), 10)).unwrap();
    let draws = gpu.upload(&common::draw_in(b, 11, 0.0, 1.0)).unwrap();
    let thresholds = gpu.upload(&common::draw_in(b, 12, 0.4, 0.6)).unwrap();
    let mut k = gpu.alloc_zeros::<i32>(b).unwrap();
    let mut bx = gpu.alloc_zeros::<i32>(4 * b).unwrap();
    let bytes = (ms.maps_len() + s.map_len()) * f32_bytes;
    let id = format!("boxes_B{b}_M{MAPS}_{map_side}x{map_side}_to{side}");
    group.ours(&id, bytes, || {
        mass.pick(&all, &draws, &mut k).unwrap();
        op.attention_boxes(PADDING, &maps, &thresholds, &mut bx)
            .unwrap();
    });
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("augment GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "augment_gpu_f32");
    let (batch, sides) = sizes();
    for (side, map_side) in sides {
        gpu_shape(&mut group, &gpu, shape(batch, side, map_side));
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
