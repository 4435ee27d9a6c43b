//! Timing of a whole training step on the CUDA backend, shared by the network benches: a
//! criterion group, then three warm-up and ten timed steps for the `NETBENCH` line (images/s,
//! ms/step, device memory the backend holds); one of each under `C2F_BENCH_SMOKE=1`.
//! [`time_steps`] is the timed part alone, for a piece of a step. With `C2F_NVTX` set, NVTX
//! ranges name each step and its layers.

use c2f_inception::backend::prelude::*;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::nvtx;
use c2f_kernels::testing::bench_smoke;
use criterion::Criterion;

/// The network benches' batch and input sizes: 64 at 299² and 448², or 2 at 75² under
/// `C2F_BENCH_SMOKE=1`.
pub fn network_shapes() -> (usize, Vec<usize>) {
    if bench_smoke() {
        (2, vec![75])
    } else {
        (64, vec![299, 448])
    }
}

/// Times `step` (criterion, then the `NETBENCH` line) and returns its seconds per step.
pub fn time_training_step(
    c: &mut Criterion,
    group: &str,
    name: &str,
    batch: usize,
    b: &mut CudaBackend,
    mut step: impl FnMut(&mut CudaBackend),
) -> f64 {
    // `C2F_NVTX=1 nsys profile cargo bench …`: each step in a range named by its case, its
    // layers in theirs (docs/perf.md, Profiling).
    if std::env::var_os("C2F_NVTX").is_some() {
        nvtx::enable().unwrap();
    }
    let mut step = |b: &mut CudaBackend| nvtx::within(name, || step(b));
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(name, |bench| {
        bench.iter(|| {
            step(b);
            b.synchronize().unwrap();
        })
    });
    g.finish();
    let secs = time_steps(b, &mut step);
    println!(
        "NETBENCH\t{name}\t{}\t{:.0} img/s\t{:.1} ms/step\t{:.1} GiB held",
        b.describe(),
        batch as f64 / secs,
        secs * 1e3,
        b.allocated_bytes() as f64 / (1u64 << 30) as f64
    );
    secs
}

/// `step` as `c2f train` runs it on a GPU: once op by op (which makes cuDNN's plans, the
/// launchers and the scratch buffers), then captured into one CUDA graph, replayed by the step
/// returned.
pub fn captured(
    b: &mut CudaBackend,
    mut step: impl FnMut(&mut CudaBackend),
) -> impl FnMut(&mut CudaBackend) {
    step(b);
    let graph = b
        .capture(&mut |b: &mut CudaBackend| {
            step(b);
            Ok(())
        })
        .unwrap();
    move |b: &mut CudaBackend| b.replay(&graph).unwrap()
}

/// Seconds per `step`: the mean of ten timed steps after three warm-up ones (the first builds
/// cuDNN's plans), the device synchronised at both ends; one of each under `C2F_BENCH_SMOKE=1`.
pub fn time_steps(b: &mut CudaBackend, step: &mut impl FnMut(&mut CudaBackend)) -> f64 {
    let (warm_up, reps) = if bench_smoke() { (1, 1) } else { (3, 10) };
    for _ in 0..warm_up {
        step(b);
    }
    b.synchronize().unwrap();
    let start = std::time::Instant::now();
    for _ in 0..reps {
        step(b);
    }
    b.synchronize().unwrap();
    start.elapsed().as_secs_f64() / reps as f64
}
