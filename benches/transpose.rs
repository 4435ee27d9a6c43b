//! Layout transpose benchmarks. Always: the CPU reference. With a GPU: our kernel
//! (`kernels/transpose.cu`) against cuDNN's `cudnnTransformTensor` from an NCHW descriptor to an
//! NHWC one or back (`c2f_baselines::transpose`, the call a cuDNN user makes to change a
//! tensor's layout; skipped where cuDNN refuses it), at batch 64: a Mixed_6 block's 768×17²
//! output to NHWC and back, the 3×299² input image to NHWC (bf16), and one convolution's f32
//! weights, 320×192×3×3 KCRS, to bf16 KRSC. GB/s count the least traffic, x read and y written.
//! Target: at least cuDNN's speed, and 80% of copy bandwidth.

mod common;

use c2f_baselines::transpose::TransposeCudnn;
use c2f_kernels::testing::bench_smoke;
use c2f_kernels::transpose::{transpose_cpu, TransposeGpu, TransposeShape};
use c2f_kernels::{Element, Gpu};
use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;

/// One row: `(name, N or K, C, H·W, to channels-last)`.
type Case = (&'static str, usize, usize, usize, bool);

fn cpu(c: &mut Criterion) {
    let (n, ch, hw) = if bench_smoke() {
        (2, 5, 49)
    } else {
        (8, 768, 289)
    };
    let s = TransposeShape::to_channels_last(n, ch, hw);
    let x = common::draw(s.len(), 1);
    let mut y = vec![bf16::ZERO; s.len()];
    common::bench_cpu(
        c,
        "transpose_cpu",
        &format!("to_nhwc_bf16_{n}x{ch}x{hw}"),
        || transpose_cpu(&s, &x, &mut y, false).unwrap(),
    );
}

/// Ours and cuDNN's on each case, from `I` to `O`.
fn bench_cases<I: Element, O: Element>(
    group: &mut common::GpuGroup,
    gpu: &Gpu,
    ours_op: &TransposeGpu,
    cases: &[Case],
) {
    for &(what, n, ch, hw, last) in cases {
        let s = if last {
            TransposeShape::to_channels_last(n, ch, hw)
        } else {
            TransposeShape::to_channels_first(n, ch, hw)
        };
        let x: Vec<I> = common::draw(s.len(), 1)
            .into_iter()
            .map(I::from_f32)
            .collect();
        let x = gpu.upload(&x).unwrap();
        let mut y = gpu.alloc_zeros::<O>(s.len()).unwrap();
        // A baseline cuDNN refuses (or a cuDNN without the call) leaves our rows alone.
        let cudnn = TransposeCudnn::<I, O>::new(gpu, n, ch, hw)
            .inspect_err(|e| println!("transpose cuDNN baseline at {what}: skipped: {e}"))
            .ok();
        let bytes = s.len() * (std::mem::size_of::<I>() + std::mem::size_of::<O>());
        let id = format!("{what}_{}_to_{}", I::SUFFIX, O::SUFFIX);
        let ours = group.ours(&id, bytes, || ours_op.run(&s, &x, &mut y, false).unwrap());
        if let Some(cudnn) = &cudnn {
            group.versus("cuDNN", &id, (ours, 1.0), bytes, || {
                if last {
                    cudnn.to_channels_last(&x, &mut y).unwrap()
                } else {
                    cudnn.to_channels_first(&x, &mut y).unwrap()
                }
            });
        }
    }
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("transpose GPU benches") else {
        return;
    };
    let ours_op = TransposeGpu::new(&gpu).unwrap();
    let mut group = common::GpuGroup::new(c, &gpu, "transpose_gpu");
    let (activations, weights): (Vec<Case>, Vec<Case>) = if bench_smoke() {
        (
            vec![
                ("smoke_nhwc", 2, 5, 49, true),
                ("smoke_nchw", 2, 5, 49, false),
            ],
            vec![("smoke_krsc", 3, 5, 9, true)],
        )
    } else {
        (
            vec![
                ("nhwc_64x768x17x17", 64, 768, 17 * 17, true),
                ("nchw_64x768x17x17", 64, 768, 17 * 17, false),
                ("nhwc_64x3x299x299", 64, 3, 299 * 299, true),
            ],
            vec![("krsc_320x192x3x3", 320, 192, 3 * 3, true)],
        )
    };
    bench_cases::<bf16, bf16>(&mut group, &gpu, &ours_op, &activations);
    bench_cases::<f32, bf16>(&mut group, &gpu, &ours_op, &weights);
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
