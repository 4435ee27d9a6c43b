//! BAP benchmarks. Always: the CPU reference (the CPU backend's op). With a GPU: the fused
//! kernels against the baseline of cuBLAS strided-batched GEMMs plus separate signed-sqrt and
//! normalise kernels, at M ∈ {8, 32}, N = 768, H = W ∈ {17, 26}, B = 64, in f32 and bf16, with
//! `A` and `F` in NCHW and in channels-last NHWC (the `nhwc_` rows, issue 20; the baseline is
//! timed once, on NCHW data: its GEMMs cost the same on either). Each BENCH line names the card and
//! the fraction of its copy bandwidth reached. Targets: ≥ 80% of copy bandwidth, and
//! forward+backward ≥ 3× faster than the baseline. At M = 32 the f32 FMA rate of the CUDA cores
//! bounds both layouts below the bandwidth target (`kernels/bap.cu`, NHWC section).

mod common;

use c2f_baselines::bap::BapCublas;
use c2f_kernels::bap::{backward_cpu, forward_cpu, BapGpu, BapShape};
use c2f_kernels::testing::{bench_smoke, SplitMix64};
use c2f_kernels::{Element, Gpu, Layout};
use criterion::{criterion_group, criterion_main, Criterion};

fn shape(batch: usize, maps: usize, side: usize) -> BapShape {
    BapShape {
        batch,
        maps,
        channels: 768,
        height: side,
        width: side,
    }
}

fn inputs(s: &BapShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64(11);
    let mut draw = |n, lo, hi| -> Vec<f32> {
        rng.uniform_vec(n, lo, hi)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    };
    (
        draw(s.attention_len(), 0.0, 1.0),
        draw(s.features_len(), -1.0, 1.0),
        draw(s.parts_len(), -1.0, 1.0),
    )
}

fn cpu(c: &mut Criterion) {
    // A CPU-sized batch: the CPU backend trains at small batch sizes.
    for s in [shape(8, 8, 17), shape(8, 32, 17)] {
        let (a, f, dz) = inputs(&s);
        let mut parts = vec![0.0f32; s.parts_len()];
        let mut norms = vec![0.0f32; s.batch];
        let mut da = vec![0.0f32; s.attention_len()];
        let mut df = vec![0.0f32; s.features_len()];
        let id = format!("B{}_M{}_HW{}", s.batch, s.maps, s.height);
        common::bench_cpu(c, "bap_cpu_f32", &format!("forward_{id}"), || {
            forward_cpu(&s, [&a, &f], &mut parts, &mut norms).unwrap()
        });
        common::bench_cpu(c, "bap_cpu_f32", &format!("backward_{id}"), || {
            backward_cpu(&s, [&a, &f], (&parts, &norms), &dz, [&mut da, &mut df]).unwrap()
        });
    }
}

/// Minimum traffic of forward+backward: read A and F twice (forward, backward), write dA and
/// dF, write the parts, read parts and d_parts.
fn min_bytes<T>(s: &BapShape) -> usize {
    let e = std::mem::size_of::<T>();
    e * (3 * (s.attention_len() + s.features_len()) + 3 * s.parts_len())
}

fn gpu_dtype<T: Element>(c: &mut Criterion, gpu: &Gpu)
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    let shapes = if bench_smoke() {
        vec![shape(2, 8, 5)]
    } else {
        vec![
            shape(64, 8, 17),
            shape(64, 32, 17),
            shape(64, 8, 26),
            shape(64, 32, 26),
        ]
    };
    for s in shapes {
        let (a, f, dz) = inputs(&s);
        let to_t = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
        let a_d = gpu.upload(&to_t(&a)).unwrap();
        let f_d = gpu.upload(&to_t(&f)).unwrap();
        let dz_d = gpu.upload(&to_t(&dz)).unwrap();
        let mut parts = gpu.alloc_zeros::<T>(s.parts_len()).unwrap();
        let mut norms = gpu.alloc_zeros::<f32>(s.batch).unwrap();
        let mut da = gpu.alloc_zeros::<T>(s.attention_len()).unwrap();
        let mut df = gpu.alloc_zeros::<T>(s.features_len()).unwrap();
        let mut group = common::GpuGroup::new(c, gpu, format!("bap_gpu_{}", T::SUFFIX));
        let id = format!("B{}_M{}_HW{}", s.batch, s.maps, s.height);
        let bytes = min_bytes::<T>(&s);

        let mut fused = BapGpu::<T>::new(gpu, s).unwrap();
        let ours = group.bench(&format!("fused_fwd_bwd_{id}"), bytes, || {
            fused.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
            fused
                .backward([&a_d, &f_d], (&parts, &norms), &dz_d, [&mut da, &mut df])
                .unwrap();
        });
        let fwd_bytes =
            std::mem::size_of::<T>() * (s.attention_len() + s.features_len() + s.parts_len());
        group.bench(&format!("fused_fwd_{id}"), fwd_bytes, || {
            fused.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
        });
        // The same bytes in NHWC: the inputs' values are arbitrary, so not transposed.
        let mut nhwc = BapGpu::<T>::with_layout(gpu, s, Layout::Nhwc).unwrap();
        let ours_nhwc = group.bench(&format!("nhwc_fused_fwd_bwd_{id}"), bytes, || {
            nhwc.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
            nhwc.backward([&a_d, &f_d], (&parts, &norms), &dz_d, [&mut da, &mut df])
                .unwrap();
        });
        group.bench(&format!("nhwc_fused_fwd_{id}"), fwd_bytes, || {
            nhwc.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
        });
        let mut blas = match BapCublas::<T>::new(gpu, s) {
            Ok(b) => b,
            Err(e) => {
                println!("{}: cuBLAS baseline skipped: {e}", group.name);
                continue;
            }
        };
        let name = format!("cublas_fwd_bwd_{id}");
        let base = common::bench_gpu(group.c, gpu, &group.name, &name, bytes, "baseline", || {
            blas.forward([&a_d, &f_d], &mut parts, &mut norms).unwrap();
            blas.backward([&a_d, &f_d], (&parts, &norms), &dz_d, [&mut da, &mut df])
                .unwrap();
        });
        for (layout, secs) in [("", ours), ("nhwc_", ours_nhwc)] {
            let what = format!("{layout}fwd_bwd_{id} vs cuBLAS+separate");
            common::report_speedup(&group.name, &what, secs, base, 3.0);
        }
    }
}

common::gpu_f32_and_bf16!("bap GPU benches", gpu_dtype);

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
