//! What every kernel bench shares: GPU timing with CUDA events inside criterion, the card's
//! measured copy bandwidth, and one summary line per measurement that `tools/gpu-check.sh`
//! collects into its report.
//!
//! Summary lines look like
//! `BENCH<TAB>group<TAB>name<TAB>card<TAB>us<TAB>GB/s<TAB>fraction of copy bandwidth<TAB>baseline`.

#![allow(dead_code)] // each bench binary uses a different subset

use std::sync::OnceLock;
use std::time::Duration;

use c2f_kernels::testing::{bench_smoke, SplitMix64};
use c2f_kernels::Gpu;
use criterion::Criterion;

/// `len` values uniform in `[-1, 1)` from `seed`: the benches' inputs.
pub fn draw(len: usize, seed: u64) -> Vec<f32> {
    draw_in(len, seed, -1.0, 1.0)
}

/// `len` values uniform in `[lo, hi)` from `seed`.
pub fn draw_in(len: usize, seed: u64, lo: f64, hi: f64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..len).map(|_| rng.uniform(lo, hi) as f32).collect()
}

/// Benchmarks `f` under criterion as `group/name`, ten samples (the CPU references are slow).
pub fn bench_cpu<O>(c: &mut Criterion, group: &str, name: &str, mut f: impl FnMut() -> O) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(name, |b| b.iter(&mut f));
    g.finish();
}

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

/// One group of GPU benches: criterion, the GPU, and the group's name that each summary line
/// carries.
pub struct GpuGroup<'a> {
    pub c: &'a mut Criterion,
    pub gpu: &'a Gpu,
    pub name: String,
}

impl<'a> GpuGroup<'a> {
    pub fn new(c: &'a mut Criterion, gpu: &'a Gpu, name: impl Into<String>) -> Self {
        GpuGroup {
            c,
            gpu,
            name: name.into(),
        }
    }

    /// [`bench_gpu`] of one of ours as `name`; its seconds per call.
    pub fn bench(&mut self, name: &str, bytes: usize, launch: impl FnMut()) -> f64 {
        bench_gpu(self.c, self.gpu, &self.name, name, bytes, "", launch)
    }

    /// [`Self::bench`] as `ours_{id}`.
    pub fn ours(&mut self, id: &str, bytes: usize, launch: impl FnMut()) -> f64 {
        self.bench(&format!("ours_{id}"), bytes, launch)
    }

    /// [`bench_gpu`] of a library baseline as `name`, then the speed-up line `what` of ours,
    /// which took `ours` seconds per call, held to `target`.
    pub fn baseline(
        &mut self,
        name: &str,
        (what, ours, target): (&str, f64, f64),
        bytes: usize,
        launch: impl FnMut(),
    ) {
        let base = bench_gpu(
            self.c, self.gpu, &self.name, name, bytes, "baseline", launch,
        );
        report_speedup(&self.name, what, ours, base, target);
    }

    /// [`Self::baseline`] as `{library in lower case}_{id}`, its line `{id} vs {library}`.
    pub fn versus(
        &mut self,
        library: &str,
        id: &str,
        (ours, target): (f64, f64),
        bytes: usize,
        launch: impl FnMut(),
    ) {
        let name = format!("{}_{id}", library.to_lowercase());
        let what = format!("{id} vs {library}");
        self.baseline(&name, (&what, ours, target), bytes, launch);
    }
}

/// Prints how many times faster `ours` is than `baseline`, for the report's speed-up table.
pub fn report_speedup(group: &str, what: &str, ours: f64, baseline: f64, target: f64) {
    let speedup = baseline / ours;
    let verdict = if speedup >= target { "meets" } else { "misses" };
    println!("SPEEDUP\t{group}\t{what}\t{speedup:.2}x\t{verdict} the {target}x target");
}

/// `fn gpu(c: &mut Criterion)`, a bench's GPU part that runs `$bench::<f32>(c, &gpu)` and then
/// the bf16 one, or says (as `$what`) that it skips them without a GPU.
#[allow(unused_macros)] // as `dead_code` above
macro_rules! gpu_f32_and_bf16 {
    ($what:literal, $bench:ident) => {
        fn gpu(c: &mut Criterion) {
            let Some(gpu) = common::gpu_or_skip($what) else {
                return;
            };
            $bench::<f32>(c, &gpu);
            $bench::<half::bf16>(c, &gpu);
        }
    };
}

#[allow(unused_imports)]
pub(crate) use gpu_f32_and_bf16;

/// Opens the GPU for a bench and prints its copy bandwidth (the limit the summary lines are
/// held to), or says it is skipping the GPU part.
pub fn gpu_or_skip(bench: &str) -> Option<Gpu> {
    let gpu = c2f_kernels::testing::gpu_or_skip(bench)?;
    println!("copy bandwidth: {:.0} GB/s", copy_bandwidth_gbs(&gpu));
    Some(gpu)
}
