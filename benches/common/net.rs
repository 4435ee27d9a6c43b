//! Timing of a whole training step on the CUDA backend, shared by the network benches: three
//! warm-up steps, a criterion group, then ten timed steps for the `NETBENCH` line (images/s,
//! ms/step, device memory the backend holds).

use c2f_inception::backend::Backend;
use c2f_inception::cuda::CudaBackend;
use criterion::Criterion;

pub fn time_training_step(
    c: &mut Criterion,
    group: &str,
    name: &str,
    batch: usize,
    b: &mut CudaBackend,
    mut step: impl FnMut(&mut CudaBackend),
) {
    for _ in 0..3 {
        step(b);
    }
    b.synchronize().unwrap();
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(name, |bench| {
        bench.iter(|| {
            step(b);
            b.synchronize().unwrap();
        })
    });
    g.finish();
    let reps = 10;
    let start = std::time::Instant::now();
    for _ in 0..reps {
        step(b);
    }
    b.synchronize().unwrap();
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    println!(
        "NETBENCH\t{name}\t{}\t{:.0} img/s\t{:.1} ms/step\t{:.1} GiB held",
        b.describe(),
        batch as f64 / secs,
        secs * 1e3,
        b.allocated_bytes() as f64 / (1u64 << 30) as f64
    );
}
