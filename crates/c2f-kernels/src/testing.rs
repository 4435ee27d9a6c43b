//! Helpers shared by the tests and benches of every crate: a deterministic generator, error
//! measures, finite differences, and opening a GPU or saying the test was skipped.

use crate::device::Gpu;
use crate::error::{Error, Result};

/// Set to `1` on a GPU machine: then a test that cannot open the GPU fails instead of skipping.
pub const REQUIRE_GPU_ENV: &str = "C2F_REQUIRE_GPU";

/// Opens GPU 0 for `test`, or prints `skipped: no CUDA device` with the reason and returns `None`.
/// Panics instead when `C2F_REQUIRE_GPU=1`, so a broken GPU setup cannot pass as a skip.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(gpu) => Some(gpu),
        Err(e) if gpu_required() => {
            panic!("{test}: {REQUIRE_GPU_ENV}=1 but the GPU could not be opened: {e}")
        }
        Err(e) => {
            println!("{test}: skipped: no CUDA device ({e})");
            None
        }
    }
}

/// What `made` holds for `test`, or `None` after printing `skipped: …` when it is a missing GPU
/// library (cuBLAS, cuDNN, NCCL, NVRTC). With `C2F_REQUIRE_GPU=1` a missing library fails the test.
pub fn library_or_skip<T>(test: &str, made: Result<T>) -> Option<T> {
    match made {
        Ok(value) => Some(value),
        Err(e @ (Error::Library { .. } | Error::NoNvrtc)) if !gpu_required() => {
            println!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}

/// Set to `1` to run the GPU benchmarks at tiny shapes with a repetition or two: the test command
/// does so on the CPU emulator, so that the bench code the GPU check runs has run before. The
/// figures mean nothing then.
pub const BENCH_SMOKE_ENV: &str = "C2F_BENCH_SMOKE";

/// Whether [`BENCH_SMOKE_ENV`] is set.
pub fn bench_smoke() -> bool {
    std::env::var(BENCH_SMOKE_ENV).is_ok_and(|v| v == "1")
}

pub use crate::rng::SplitMix64;

/// `‖out − reference‖ / ‖reference‖`, the measure every kernel test bounds.
pub fn rel_error(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "rel_error: length mismatch");
    let (mut diff, mut norm) = (0.0, 0.0);
    for (o, r) in out.iter().zip(reference) {
        diff += (o - r) * (o - r);
        norm += r * r;
    }
    assert!(
        norm > 0.0,
        "rel_error: the reference is all zeros, so the test could not fail"
    );
    // NaN anywhere (a poisoned, unwritten element) makes the error NaN, which fails any `<` bound.
    (diff / norm).sqrt()
}

/// Central-difference gradient of `loss` at `x`, with step `h`.
pub fn numeric_gradient(mut loss: impl FnMut(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + h;
            let up = loss(&probe);
            probe[i] = x[i] - h;
            let down = loss(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Converts f64 values to the storage type and back, so a reference sees exactly what a kernel
/// in that type sees.
pub fn round_through<T: crate::element::Element>(values: &[f64]) -> (Vec<T>, Vec<f64>) {
    let stored: Vec<T> = values.iter().map(|&v| T::from_f64(v)).collect();
    let seen = stored.iter().map(|v| v.to_f64()).collect();
    (stored, seen)
}

/// Storage values widened to f64.
pub fn widen<T: crate::element::Element>(values: &[T]) -> Vec<f64> {
    values.iter().map(|v| v.to_f64()).collect()
}

/// Most of a bf16 output that may sit off a reference rounding at the same points.
///
/// Why: kernel and reference round to bf16 once, from f32 values `a` and `b` that differ only by
/// the order of f32 sums, `|a − b| ≤ δ` with `δ` a few f32 ulps (`2⁻²⁴` relative) of the
/// operands. `rnd(a) ≠ rnd(b)` only when a bf16 rounding boundary lies between them, and then by
/// one bf16 ulp (`2⁻⁸` relative, `δ` being far smaller); a boundary lies between them for about
/// a share `δ/ulp ≈ κ·2⁻¹⁶` of the values, `κ` the conditioning: under 0.2% for `κ ≤ 100`.
/// Near a cancellation (an output far smaller than its operands, `y = (x − mean)·scale + shift
/// ≈ 0`) `δ` is set by the operands, so there the values may be several of the tiny output's
/// ulps apart while within [`BF16_CANCELLATION_FLOOR`] of the largest output. A rounding at
/// another point (of an intermediate as large as the output) moves a value by up to half a bf16
/// ulp of that intermediate and changes tens of percent of them.
pub const BF16_ROUNDING_SHARE: f64 = 0.01;

/// The absolute difference, relative to the largest reference value, allowed beyond one bf16
/// ulp: `2⁻¹⁶`, 256 f32 ulps of the largest operand.
pub const BF16_CANCELLATION_FLOOR: f64 = 1.0 / 65536.0;

/// The bf16 ulps between two values (their order-preserving bit keys' distance); NaN against
/// NaN is 0, NaN against a number is `u32::MAX`.
fn bf16_ulps(a: half::bf16, b: half::bf16) -> u32 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u32::MAX
        };
    }
    let key = |v: half::bf16| {
        let bits = v.to_bits() as i32;
        if bits & 0x8000 != 0 {
            -(bits & 0x7fff)
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

/// Why `got` does not round as `want` does (see [`BF16_ROUNDING_SHARE`]): a value more than one
/// bf16 ulp and [`BF16_CANCELLATION_FLOOR`] away, or more than that share of them off at all.
/// `None` when it does.
pub fn bf16_rounding_mismatch(got: &[half::bf16], want: &[half::bf16]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values, expected {}", got.len(), want.len()));
    }
    let largest = want
        .iter()
        .map(|v| v.to_f64().abs())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let floor = largest * BF16_CANCELLATION_FLOOR;
    let mut off = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ulps = bf16_ulps(g, w);
        if ulps == 0 {
            continue;
        }
        if ulps > 1 && (g.to_f64() - w.to_f64()).abs() > floor {
            return Some(format!("[{i}] {g} vs {w}: {ulps} bf16 ulps apart"));
        }
        off += 1;
    }
    let share = off as f64 / got.len().max(1) as f64;
    (share > BF16_ROUNDING_SHARE).then(|| {
        format!(
            "{off} of {} values off ({:.2}%, bound {:.0}%)",
            got.len(),
            100.0 * share,
            100.0 * BF16_ROUNDING_SHARE
        )
    })
}

/// Asserts that `got` holds `want`'s bits, naming the first element that does not.
pub fn assert_same_bits<T: bytemuck::Pod + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let differs = |i: &usize| bytemuck::bytes_of(&got[*i]) != bytemuck::bytes_of(&want[*i]);
    if let Some(i) = (0..got.len()).find(differs) {
        panic!("{what}: [{i}] is {:?}, expected {:?}", got[i], want[i]);
    }
}

/// Asserts that two runs produced the same bits.
pub fn assert_bit_identical<T: bytemuck::Pod>(what: &str, a: &[T], b: &[T]) {
    assert!(
        bytemuck::cast_slice::<T, u8>(a) == bytemuck::cast_slice::<T, u8>(b),
        "{what}: two runs differ in their bits, but determinism is promised"
    );
}

/// How many device allocations the calling thread has made, as the CPU emulator of the CUDA
/// driver (`tools/cuda-emu`) counts them (per thread, so tests running beside it do not count); `None` on a real driver, which keeps no such count. Tests use
/// it to show that a training step allocates nothing once the first has run.
pub fn emulator_allocation_count() -> Option<u64> {
    emulator_query(b"c2fEmuAllocationCount\0")
}

/// The math settings of the last cuDNN convolution and cuBLAS GEMM the calling thread ran, as
/// the emulator's stand-ins for those libraries record them; `None` on a real driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatedMath {
    /// The convolution descriptor's `cudnnMathType_t` (`CUDNN_FMA_MATH` is 3), -1 before any.
    pub convolution: i32,
    /// The handle's `cublasMath_t` (`CUBLAS_TF32_TENSOR_OP_MATH` is 3), -1 before any.
    pub gemm: i32,
}

/// See [`EmulatedMath`].
pub fn emulator_math_modes() -> Option<EmulatedMath> {
    Some(EmulatedMath {
        convolution: emulator_query(b"c2fEmuLastConvolutionMath\0")?,
        gemm: emulator_query(b"c2fEmuLastGemmMath\0")?,
    })
}

/// What the emulator's function `name` (NUL-terminated), which takes no arguments, returns;
/// `None` where the driver loaded is not the emulator.
fn emulator_query<T>(name: &[u8]) -> Option<T> {
    // SAFETY: opens the driver library cudarc has already loaded (the same object, so the same
    // state) and calls one of the emulator's plain query functions, which take no arguments and
    // return `T`.
    unsafe {
        let driver = libloading::Library::new("libcuda.so.1").ok()?;
        let query: libloading::Symbol<unsafe extern "C" fn() -> T> = driver.get(name).ok()?;
        Some(query())
    }
}
