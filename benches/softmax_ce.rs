//! Softmax cross-entropy benchmarks, loss and gradient of one training step. Always: the CPU
//! reference (the CPU backend's op). With a GPU: our kernels (`kernels/softmax_ce.cu`, f32: loss,
//! argmax and `dlogits` in one pass, then the ordered batch sum) against cuDNN's log-softmax
//! forward and backward (`c2f_baselines::softmax_ce`, which computes `dlogits` only), for batch 64 at
//! CUB-200's 200 classes and iNaturalist 2017's 5,089. GB/s count the least traffic: logits read
//! and `dlogits` written. Target: at least cuDNN's speed, though we do more.

mod common;

use c2f_baselines::softmax_ce::{nll_gradient, LogSoftmaxCudnn};
use c2f_kernels::device::NO_STATS;
use c2f_kernels::softmax_ce::{forward_backward_cpu, SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::testing::{bench_smoke, library_or_skip, SplitMix64};
use criterion::{criterion_group, criterion_main, Criterion};

fn shapes() -> Vec<SoftmaxCeShape> {
    let classes: &[usize] = if bench_smoke() { &[7] } else { &[200, 5089] };
    let batch = if bench_smoke() { 3 } else { 64 };
    classes
        .iter()
        .map(|&classes| SoftmaxCeShape { batch, classes })
        .collect()
}

/// Logits in [-6, 6) and labels in [0, C).
fn draw(s: &SoftmaxCeShape) -> (Vec<f32>, Vec<i32>) {
    let mut rng = SplitMix64(s.classes as u64);
    let logits = (0..s.logits_len())
        .map(|_| rng.uniform(-6.0, 6.0) as f32)
        .collect();
    let labels = (0..s.batch)
        .map(|_| rng.below(s.classes as u64) as i32)
        .collect();
    (logits, labels)
}

fn id(s: &SoftmaxCeShape) -> String {
    format!("B{}_C{}", s.batch, s.classes)
}

fn cpu(c: &mut Criterion) {
    for s in shapes() {
        let (logits, labels) = draw(&s);
        let (mut preds, mut grad) = (vec![0i32; s.batch], vec![0.0f32; s.logits_len()]);
        common::bench_cpu(c, "softmax_ce_cpu_f32", &id(&s), || {
            forward_backward_cpu(&s, &logits, &labels, 1.0, &mut preds, &mut grad).unwrap()
        });
    }
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("softmax_ce GPU benches") else {
        return;
    };
    let mut group = common::GpuGroup::new(c, &gpu, "softmax_ce_gpu_f32");
    for s in shapes() {
        let id = id(&s);
        let bytes = 2 * s.logits_len() * std::mem::size_of::<f32>();
        let (logits, labels) = draw(&s);
        let x = gpu.upload(&logits).unwrap();
        let y = gpu.upload(&labels).unwrap();
        let mut preds = gpu.alloc_zeros::<i32>(s.batch).unwrap();
        let mut dx = gpu.alloc_zeros::<f32>(s.logits_len()).unwrap();
        let mut ce = SoftmaxCeGpu::<f32>::new(&gpu, s).unwrap();
        // The loss is read back once per step by the trainer, outside what is timed here.
        let ours = group.ours(&id, bytes, || {
            ce.enqueue_forward_backward(&x, &y, 1.0, &mut preds, &mut dx, NO_STATS)
                .unwrap()
        });
        ce.finish().unwrap();
        let Some(mut cudnn) =
            library_or_skip("softmax_ce cuDNN baseline", LogSoftmaxCudnn::new(&gpu, s))
        else {
            return;
        };
        let dy = gpu
            .upload(&nll_gradient(&s, &labels, 1.0).unwrap())
            .unwrap();
        group.versus("cuDNN", &id, (ours, 1.0), bytes, || {
            cudnn.forward_backward(&x, &dy, &mut dx).unwrap()
        });
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
