//! Sigmoid binary cross-entropy benchmarks, loss and gradient of one training step. Always: the
//! CPU reference (the CPU backend's op). With a GPU: our kernels (`kernels/sigmoid_bce.cu`, f32:
//! loss, predictions and `dlogits` in one pass, then the ordered batch sum) against cuDNN's
//! sigmoid and one tensor addition (`c2f_baselines::sigmoid_bce`, which computes `dlogits` only), at
//! CelebA's 40 attributes for batch 64 and at a large head (batch 1024, 1,000 outputs). GB/s
//! count the least traffic: logits and targets read, `dlogits` written. Target: at least cuDNN's
//! speed, though we do more.

mod common;

use c2f_baselines::sigmoid_bce::SigmoidBceCudnn;
use c2f_kernels::device::NO_STATS;
use c2f_kernels::sigmoid_bce::{forward_backward_cpu, SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::testing::{bench_smoke, library_or_skip, SplitMix64};
use criterion::{criterion_group, criterion_main, Criterion};

fn shapes() -> Vec<SigmoidBceShape> {
    if bench_smoke() {
        return vec![SigmoidBceShape {
            batch: 3,
            outputs: 5,
        }];
    }
    [(64, 40), (1024, 1000)]
        .map(|(batch, outputs)| SigmoidBceShape { batch, outputs })
        .to_vec()
}

/// Logits in [-6, 6) and 0/1 targets.
fn draw(s: &SigmoidBceShape) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64(s.len() as u64);
    let logits = (0..s.len())
        .map(|_| rng.uniform(-6.0, 6.0) as f32)
        .collect();
    let targets = (0..s.len()).map(|_| rng.below(2) as f32).collect();
    (logits, targets)
}

fn id(s: &SigmoidBceShape) -> String {
    format!("B{}_A{}", s.batch, s.outputs)
}

fn cpu(c: &mut Criterion) {
    for s in shapes() {
        let (logits, targets) = draw(&s);
        let (mut preds, mut grad) = (vec![0i32; s.len()], vec![0.0f32; s.len()]);
        common::bench_cpu(c, "sigmoid_bce_cpu_f32", &id(&s), || {
            forward_backward_cpu(&s, &logits, &targets, 1.0, &mut preds, &mut grad).unwrap()
        });
    }
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("sigmoid_bce GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "sigmoid_bce_gpu_f32");
    for s in shapes() {
        let id = id(&s);
        let bytes = 3 * s.len() * std::mem::size_of::<f32>();
        let (logits, targets) = draw(&s);
        let x = gpu.upload(&logits).unwrap();
        let t = gpu.upload(&targets).unwrap();
        let mut preds = gpu.alloc_zeros::<i32>(s.len()).unwrap();
        let mut dx = gpu.alloc_zeros::<f32>(s.len()).unwrap();
        let mut bce = SigmoidBceGpu::<f32>::new(&gpu, s).unwrap();
        // The loss is read back once per step by the trainer, outside what is timed here.
        let ours = group.ours(&id, bytes, || {
            bce.enqueue_forward_backward(&x, &t, 1.0, &mut preds, &mut dx, NO_STATS)
                .unwrap()
        });
        bce.finish().unwrap();
        let Some(mut cudnn) =
            library_or_skip("sigmoid_bce cuDNN baseline", SigmoidBceCudnn::new(&gpu, s))
        else {
            return;
        };
        group.versus("cuDNN", &id, (ours, 1.0), bytes, || {
            cudnn.backward(&x, &t, 1.0, &mut dx).unwrap()
        });
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
