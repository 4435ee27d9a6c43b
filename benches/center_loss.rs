//! Center-loss benchmarks. Always: the CPU reference (the CPU backend's op). With a GPU: the fused
//! forward + center update against the unfused baseline (the same computation as eight separate
//! kernel launches), at B = 64, D = M·768 with M ∈ {8, 32}, C = 200, in f32 and bf16.
//! Target: ≥ 80% of copy bandwidth.

mod common;

use c2f_baselines::center_loss::CenterLossUnfused;
use c2f_kernels::center_loss::{
    forward_update_cpu, CenterLossGpu, CenterLossParams, CenterLossShape,
};
use c2f_kernels::device::NO_STATS;
use c2f_kernels::testing::SplitMix64;
use c2f_kernels::{Element, Gpu};
use criterion::{criterion_group, criterion_main, Criterion};

fn shape(maps: usize) -> CenterLossShape {
    CenterLossShape {
        batch: 64,
        dim: maps * 768,
        classes: 200,
    }
}

/// Unit-norm feature rows (the normalised BAP output), centers of norm about 1, random labels.
fn inputs(s: &CenterLossShape) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let mut rng = SplitMix64(21);
    let unit_rows = |rng: &mut SplitMix64, rows: usize| -> Vec<f32> {
        let mut v = rng.uniform_vec(rows * s.dim, -1.0, 1.0);
        for row in v.chunks_mut(s.dim) {
            let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v.into_iter().map(|x| x as f32).collect()
    };
    let f = unit_rows(&mut rng, s.batch);
    let c = unit_rows(&mut rng, s.classes);
    let y = (0..s.batch)
        .map(|_| rng.below(s.classes as u64) as i32)
        .collect();
    (f, y, c)
}

fn cpu(c: &mut Criterion) {
    let p = CenterLossParams::default();
    for maps in [8, 32] {
        let s = shape(maps);
        let (f, y, mut centers) = inputs(&s);
        let mut df = vec![0.0f32; s.features_len()];
        let id = format!("forward_update_B{}_D{}", s.batch, s.dim);
        common::bench_cpu(c, "center_loss_cpu_f32", &id, || {
            forward_update_cpu(&s, &p, &f, &y, &mut centers, &mut df).unwrap()
        });
    }
}

/// Minimum traffic: read f, write df, read and write each center row the batch touches, read the
/// labels.
fn min_bytes<T>(s: &CenterLossShape, labels: &[i32]) -> usize {
    let mut classes = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    2 * s.features_len() * std::mem::size_of::<T>()
        + 2 * classes.len() * s.dim * std::mem::size_of::<f32>()
        + std::mem::size_of_val(labels)
}

fn gpu_dtype<T: Element>(c: &mut Criterion, gpu: &Gpu) {
    let p = CenterLossParams::default();
    for maps in [8, 32] {
        let s = shape(maps);
        let (f, y, centers) = inputs(&s);
        let f_t: Vec<T> = f.iter().map(|&v| T::from_f32(v)).collect();
        let f_d = gpu.upload(&f_t).unwrap();
        let y_d = gpu.upload(&y).unwrap();
        let mut c_d = gpu.upload(&centers).unwrap();
        let mut df_d = gpu.alloc_zeros::<T>(s.features_len()).unwrap();
        let mut group = common::GpuGroup::new(c, gpu, format!("center_loss_gpu_{}", T::SUFFIX));
        let id = format!("B{}_D{}_C{}", s.batch, s.dim, s.classes);
        let bytes = min_bytes::<T>(&s, &y);

        // Timed without the per-call read-back of the loss, which would stall the stream.
        let mut fused = CenterLossGpu::<T>::new(gpu, s).unwrap();
        let scales = gpu.upload(&p.scales(s.batch).map(|v| v as f32)).unwrap();
        let update = p.update();
        let ours = group.bench(&format!("fused_{id}"), bytes, || {
            fused
                .enqueue(&update, &scales, &f_d, &y_d, &mut c_d, &mut df_d, NO_STATS)
                .unwrap()
        });
        fused.finish().expect("the fused kernels reported an error");
        let mut unfused = CenterLossUnfused::<T>::new(gpu, s).unwrap();
        group.versus("unfused", &id, (ours, 1.0), bytes, || {
            unfused
                .enqueue(&p, &f_d, &y_d, &mut c_d, &mut df_d)
                .unwrap()
        });
    }
}

common::gpu_f32_and_bf16!("center_loss GPU benches", gpu_dtype);

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
