//! What every kernel bench shares: GPU timing with CUDA events inside criterion, the card's
//! measured copy bandwidth, and one summary line per measurement that `tools/gpu-check.sh`
//! collects into its report.
//!
//! Summary lines look like
//! `BENCH<TAB>group<TAB>name<TAB>card<TAB>us<TAB>GB/s<TAB>fraction of copy bandwidth<TAB>baseline`.

#![allow(dead_code)] // each bench binary uses a different subset

use std::sync::OnceLock;
use std::time::Duration;

use c2f_kernels::testing::bench_smoke;
use c2f_kernels::Gpu;
use criterion::Criterion;

/// Times `iters` calls of `launch` on the GPU stream with events: the device time, not the host's.
pub fn gpu_time(gpu: &Gpu, iters: u64, mut launch: impl FnMut()) -> Duration {
    let stream = gpu.stream();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags).expect("record start event");
    for _ in 0..iters {
        launch();
    }
    let end = stream.record_event(flags).expect("record end event");
    let ms = start.elapsed_ms(&end).expect("event elapsed time");
    Duration::from_secs_f64(ms as f64 * 1e-3)
}

/// Mean seconds per call over a fixed number of calls after a warm-up, for the summary lines.
pub fn mean_seconds(gpu: &Gpu, mut launch: impl FnMut()) -> f64 {
    let (warm_up, iters) = if bench_smoke() { (1, 1) } else { (3, 50) };
    for _ in 0..warm_up {
        launch();
    }
    gpu.synchronize().unwrap();
    gpu_time(gpu, iters, launch).as_secs_f64() / iters as f64
}

/// The card's device-to-device copy bandwidth in GB/s (bytes read + bytes written), measured
/// once per process on a 512 MiB buffer. It is the "hardware limit" the kernels are held to.
pub fn copy_bandwidth_gbs(gpu: &Gpu) -> f64 {
    static BW: OnceLock<f64> = OnceLock::new();
    *BW.get_or_init(|| {
        let n = if bench_smoke() { 1 << 16 } else { 128 << 20 }; // f32 elements
        let src = gpu.alloc_zeros::<f32>(n).unwrap();
        let mut dst = gpu.alloc_zeros::<f32>(n).unwrap();
        let stream = gpu.stream().clone();
        let secs = mean_seconds(gpu, || stream.memcpy_dtod(&src, &mut dst).unwrap());
        2.0 * (n * 4) as f64 / secs / 1e9
    })
}

/// Benchmarks `launch` under criterion as `group/name`, then prints the summary line with
/// achieved GB/s (`bytes` is the minimum traffic of the op) and the fraction of copy bandwidth.
pub fn bench_gpu(
    c: &mut Criterion,
    gpu: &Gpu,
    group: &str,
    name: &str,
    bytes: usize,
    baseline: &str,
    mut launch: impl FnMut(),
) -> f64 {
    let mut g = c.benchmark_group(group);
    g.throughput(criterion::Throughput::Bytes(bytes as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| gpu_time(gpu, iters, &mut launch))
    });
    g.finish();
    let secs = mean_seconds(gpu, &mut launch);
    let gbs = bytes as f64 / secs / 1e9;
    let card = gpu.describe().unwrap_or_else(|_| "unknown card".into());
    println!(
        "BENCH\t{group}\t{name}\t{card}\t{:.2}\t{gbs:.1}\t{:.3}\t{baseline}",
        secs * 1e6,
        gbs / copy_bandwidth_gbs(gpu)
    );
    secs
}

/// Prints how many times faster `ours` is than `baseline`, for the report's speed-up table.
pub fn report_speedup(group: &str, what: &str, ours: f64, baseline: f64, target: f64) {
    let speedup = baseline / ours;
    let verdict = if speedup >= target { "meets" } else { "misses" };
    println!("SPEEDUP\t{group}\t{what}\t{speedup:.2}x\t{verdict} the {target}x target");
}

/// Opens the GPU for a bench and prints its copy bandwidth (the limit the summary lines are
/// held to), or says it is skipping the GPU part.
pub fn gpu_or_skip(bench: &str) -> Option<Gpu> {
    let gpu = c2f_kernels::testing::gpu_or_skip(bench)?;
    println!("copy bandwidth: {:.0} GB/s", copy_bandwidth_gbs(&gpu));
    Some(gpu)
}
