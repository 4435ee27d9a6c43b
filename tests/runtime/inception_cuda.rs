//! The CUDA backend against the CPU backend (f32): every op on random inputs, then the whole
//! InceptionV3 golden case (`tests/runtime/inception_golden.rs`: same initialisation, same input), and
//! run-to-run determinism; with TF32 on, the convolutions and the `fc` within TF32's bound, and
//! the precision reaching cuDNN and cuBLAS. Without a GPU (or without cuDNN/cuBLAS) every test prints
//! `skipped: ...` and passes, unless `C2F_REQUIRE_GPU=1`.
//!
//! Op tensors are carved out of one shared buffer per backend at odd offsets (16-byte aligned
//! for the cuDNN convolutions), so the runtime's case of several operands in one flat buffer is
//! what is tested.

use crate::common::golden::{self, floats};
use crate::common::skip::or_return;
use c2f_inception::backend::{prelude::*, BnMode, BnParams, BnStats, LinearShape, Tensor};
use c2f_inception::cpu::conv::Conv2dShape;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::{AlgorithmChoice, ConvAlgorithms, CudaBackend};
use c2f_inception::spec::Graph;
use c2f_inception::Precision;
use c2f_kernels::augment::AugmentShape;
use c2f_kernels::bap::BapShape;
use c2f_kernels::batch_norm::{BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{CenterLossParams, CenterLossShape};
use c2f_kernels::concat::ChannelSlice;
use c2f_kernels::conv_transpose::ConvTransposeParams;
use c2f_kernels::dropout::{step_words, DropoutParams};
use c2f_kernels::layout::Layout;
use c2f_kernels::map_select::MapShape;
use c2f_kernels::mask::MaskShape;
use c2f_kernels::pool::{Pool2dParams, PoolShape};
use c2f_kernels::resize::ResizeShape;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::sigmoid_bce::SigmoidBceShape;
use c2f_kernels::softmax_ce::SoftmaxCeShape;
use c2f_kernels::testing::{
    assert_bit_identical, emulator_math_modes, rel_error, EmulatedMath, SplitMix64,
};
use c2f_kernels::Error;

/// Every single op, CUDA against CPU, both in f32.
const OP_TOLERANCE: f64 = 1e-5;
/// The golden case's Mixed_6e features and running statistics, CUDA against CPU f32.
const FORWARD_TOLERANCE: f64 = 1e-4;
/// The golden case's logits, CUDA against CPU f32. float32 rounding through 94 BatchNorm layers
/// puts the CPU's f32 logits 1.3e-4 from PyTorch's float64 ones (Mixed_6e: 4e-5), and a correct
/// GPU run lands about as far away in another direction, so the two differ by about √2 of that:
/// the f32 bound of `tests/runtime/inception_golden.rs` rather than 1e-4.
const LOGITS_TOLERANCE: f64 = 5e-4;
/// Each parameter's gradient norm, CUDA against CPU f32: the float32 bound of
/// `tests/runtime/inception_golden.rs` (PyTorch's own float32 gradients are ~2% off its float64 ones).
const GRADIENT_TOLERANCE: f64 = 5e-2;
/// The same bounds against PyTorch's float64 run, as `tests/runtime/inception_golden.rs` holds the CPU
/// backend in f32 to.
const GOLDEN_F32_FORWARD_TOLERANCE: f64 = 5e-4;

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The two backends side by side, with one arena buffer each at the same handle.
struct Pair {
    cpu: CpuBackend<f32>,
    gpu: CudaBackend,
    rng: SplitMix64,
    arena: Tensor,
    used: usize,
}

impl Pair {
    fn new(mut gpu: CudaBackend) -> Pair {
        let mut cpu = CpuBackend::<f32>::new();
        const ARENA: usize = 1 << 21;
        // A buffer before the arena, so the arena is not buffer 0.
        assert_eq!(cpu.alloc(3).unwrap(), gpu.alloc(3).unwrap());
        let arena = cpu.alloc(ARENA).unwrap();
        assert_eq!(arena, gpu.alloc(ARENA).unwrap());
        Pair {
            cpu,
            gpu,
            rng: SplitMix64(0x00c2_f0c0_da00),
            arena,
            used: 0,
        }
    }

    /// `len` values of the arena, at least one element after the last tensor, at a multiple of
    /// `align` elements (1: any offset).
    fn tensor(&mut self, len: usize, align: usize) -> Tensor {
        let start = (self.used + 1).next_multiple_of(align);
        self.used = start + len;
        self.arena.slice(start, len)
    }

    fn write(&mut self, t: Tensor, values: &[f32]) {
        self.cpu.write(t, values).unwrap();
        self.gpu.write(t, values).unwrap();
    }

    /// A tensor of values uniform in `[lo, hi)`, the same in both backends.
    fn random(&mut self, len: usize, lo: f64, hi: f64, align: usize) -> Tensor {
        let t = self.tensor(len, align);
        let v: Vec<f32> = (0..len).map(|_| self.rng.uniform(lo, hi) as f32).collect();
        self.write(t, &v);
        t
    }

    /// Makes the GPU's copy of `t` the CPU's, so the next op starts from identical inputs.
    fn sync_from_cpu(&mut self, t: Tensor) {
        let v = self.cpu.read(t).unwrap();
        self.gpu.write(t, &v).unwrap();
    }

    /// Asserts the two backends agree on `t` within [`OP_TOLERANCE`].
    fn check(&mut self, what: &str, t: Tensor) {
        let cpu = widen(&self.cpu.read(t).unwrap());
        let gpu = widen(&self.gpu.read(t).unwrap());
        let e = rel_error(&gpu, &cpu);
        println!("{what}: relative error {e:.2e}");
        assert!(
            e < OP_TOLERANCE,
            "{what}: CUDA is {e:.3e} from the CPU (bound {OP_TOLERANCE:e})"
        );
    }

    /// The `fc` the linear tests run: its shape, and random inputs, weights and bias.
    fn linear_case(&mut self) -> (LinearShape, [Tensor; 3]) {
        let s = LinearShape {
            batch: 3,
            inputs: 37,
            outputs: 10,
        };
        let x = self.random(s.batch * s.inputs, -1.0, 1.0, 1);
        let w = self.random(s.outputs * s.inputs, -0.5, 0.5, 1);
        let bias = self.random(s.outputs, -0.5, 0.5, 1);
        (s, [x, w, bias])
    }

    /// A tensor of zeros in both backends.
    fn zeros(&mut self, len: usize, align: usize) -> Tensor {
        let t = self.tensor(len, align);
        self.write(t, &vec![0.0; len]);
        t
    }

    /// A new tensor holding the magnitudes of the CPU's `t`, on the CPU only.
    fn magnitudes(&mut self, t: Tensor) -> Tensor {
        let v: Vec<f32> = self.cpu.read(t).unwrap().iter().map(|x| x.abs()).collect();
        let m = self.tensor(t.len, CONV_ALIGN);
        self.cpu.write(m, &v).unwrap();
        m
    }

    /// Asserts, element by element, that the GPU's `t`, a sum of `terms` products computed with
    /// TF32 inputs, is within [`tf32_bound`] of the CPU's f32 one; `magnitude` holds the same
    /// pass on the CPU over its inputs' magnitudes (Σ|x||w|).
    fn check_tf32(&mut self, what: &str, t: Tensor, magnitude: Tensor, terms: usize) {
        let cpu = self.cpu.read(t).unwrap();
        let gpu = self.gpu.read(t).unwrap();
        let magnitude = self.cpu.read(magnitude).unwrap();
        let bound = tf32_bound(terms);
        let mut worst = 0.0f64;
        for (j, ((&g, &c), &m)) in gpu.iter().zip(&cpu).zip(&magnitude).enumerate() {
            let (difference, allowed) = ((g as f64 - c as f64).abs(), bound * m as f64);
            assert!(
                difference <= allowed,
                "{what}[{j}]: CUDA {g} vs CPU {c}, {difference:.3e} apart where the TF32 bound \
                 allows {allowed:.3e}"
            );
            if allowed > 0.0 {
                worst = worst.max(difference / allowed);
            }
        }
        println!("{what}: at most {worst:.3} of the TF32 bound");
    }

    /// Runs `op` on both backends.
    fn run(
        &mut self,
        what: &str,
        op: impl Fn(&mut dyn Backend<Scalar = f32>) -> c2f_kernels::Result<()>,
    ) {
        op(&mut self.cpu).unwrap_or_else(|e| panic!("{what} on the CPU: {e}"));
        op(&mut self.gpu).unwrap_or_else(|e| panic!("{what} on CUDA: {e}"));
    }
}

/// Conv tensors sit at 16-byte-aligned offsets, as the network's parameters do at width 1.0.
const CONV_ALIGN: usize = 4;

#[test]
fn conv2d_matches_cpu() {
    if let Some(gpu) = cuda_or_skip("conv2d_matches_cpu") {
        check_conv2d(gpu);
    }
}

/// The same with algorithms picked by timing, which tries FFT and Winograd algorithms the
/// heuristic may never pick; it prints what it picked.
#[test]
fn conv2d_with_timed_algorithms_matches_cpu() {
    if let Some(mut gpu) = cuda_or_skip("conv2d_with_timed_algorithms_matches_cpu") {
        gpu.set_conv_algorithm_choice(AlgorithmChoice::Timed);
        let algorithms = check_conv2d(gpu);
        for (shape, algos) in algorithms {
            println!("  {shape:?}: {algos:?}");
        }
    }
}

/// Convolutions of the kinds the network has (1×1, 3×3 strided, 1×7, 7×1, 5×5), small, with
/// their names.
fn conv_shapes() -> Vec<(String, Conv2dShape)> {
    [
        (2, 5, 9, 11, 7, (3, 3), (2, 2), (0, 0)),
        (2, 8, 8, 8, 6, (1, 7), (1, 1), (0, 3)),
        (2, 8, 8, 8, 6, (7, 1), (1, 1), (3, 0)),
        (2, 16, 7, 7, 12, (1, 1), (1, 1), (0, 0)),
        (1, 3, 10, 10, 4, (5, 5), (1, 1), (2, 2)),
        (3, 4, 12, 12, 8, (3, 3), (1, 1), (1, 1)),
    ]
    .map(
        |(batch, in_channels, height, width, out_channels, kernel, stride, padding)| {
            let name =
                format!("conv {kernel:?}/{stride:?}/{padding:?} {in_channels}->{out_channels}");
            let s = Conv2dShape {
                batch,
                in_channels,
                height,
                width,
                out_channels,
                kernel,
                stride,
                padding,
            };
            (name, s)
        },
    )
    .to_vec()
}

/// Each convolution's three passes at [`conv_shapes`], against the CPU; returns the algorithms
/// the GPU used.
fn check_conv2d(gpu: CudaBackend) -> Vec<(Conv2dShape, ConvAlgorithms)> {
    let mut p = Pair::new(gpu);
    for (name, s) in conv_shapes() {
        let x = p.random(s.input_len(), -1.0, 1.0, CONV_ALIGN);
        let w = p.random(s.weight_len(), -0.5, 0.5, CONV_ALIGN);
        let y = p.random(s.output_len(), 1e3, 2e3, CONV_ALIGN);
        p.run(&name, |b| b.conv2d_forward(&s, x, w, y));
        p.check(&format!("{name} forward"), y);

        let dy = p.random(s.output_len(), -1.0, 1.0, CONV_ALIGN);
        for accumulate in [false, true] {
            // Large prior values when assigning: a backward that read them would be far off.
            let (lo, hi) = if accumulate { (-1.0, 1.0) } else { (1e3, 2e3) };
            let dx = p.random(s.input_len(), lo, hi, CONV_ALIGN);
            p.run(&name, |b| b.conv2d_backward_data(&s, dy, w, dx, accumulate));
            p.check(
                &format!("{name} backward data (accumulate {accumulate})"),
                dx,
            );
        }
        let dw = p.random(s.weight_len(), -1.0, 1.0, CONV_ALIGN);
        p.run(&name, |b| b.conv2d_backward_filter(&s, x, dy, dw));
        p.check(&format!("{name} backward filter (accumulates)"), dw);
    }
    p.gpu.conv_algorithms()
}

#[test]
fn batch_norm_matches_cpu() {
    let gpu = or_return!(cuda_or_skip("batch_norm_matches_cpu"));
    let mut p = Pair::new(gpu);
    let s = BatchNormShape {
        batch: 3,
        channels: 5,
        height: 4,
        width: 6,
    };
    for relu in [true, false] {
        let params = BatchNormParams {
            relu,
            ..BatchNormParams::default()
        };
        let c = s.channels;
        let bn = BnParams {
            gamma: p.random(c, 0.5, 1.5, 1),
            beta: p.random(c, -0.5, 0.5, 1),
            running_mean: p.random(c, -0.1, 0.1, 1),
            running_var: p.random(c, 0.8, 1.2, 1),
        };
        let saved = BnStats {
            mean: p.random(c, 5.0, 6.0, 1),
            invstd: p.random(c, 5.0, 6.0, 1),
        };
        let x = p.random(s.len(), -2.0, 3.0, 1);
        for mode in [BnMode::Train, BnMode::Inference] {
            let name = format!("batch norm {mode:?} relu {relu}");
            let y = p.random(s.len(), 1e3, 2e3, 1);
            p.run(&name, |b| {
                b.batch_norm_forward(&s, &params, mode, &bn, x, y, &saved)
            });
            p.check(&format!("{name} forward y"), y);
            for t in [bn.running_mean, bn.running_var, saved.mean, saved.invstd] {
                p.check(&format!("{name} forward stats"), t);
            }
            // The backward starts from the CPU's forward, so a ReLU mask cannot differ.
            for t in [y, bn.running_mean, bn.running_var, saved.mean, saved.invstd] {
                p.sync_from_cpu(t);
            }
            let dy = p.random(s.len(), -1.0, 1.0, 1);
            let dx = p.random(s.len(), 1e3, 2e3, 1);
            let dgamma = p.random(c, -1.0, 1.0, 1);
            let dbeta = p.random(c, -1.0, 1.0, 1);
            p.run(&name, |b| {
                b.batch_norm_backward(&s, &params, mode, &bn, &saved, x, y, dy, dx, dgamma, dbeta)
            });
            p.check(&format!("{name} backward dx"), dx);
            p.check(&format!("{name} backward dgamma"), dgamma);
            p.check(&format!("{name} backward dbeta"), dbeta);
        }
    }
}

#[test]
fn pools_and_channels_match_cpu() {
    let gpu = or_return!(cuda_or_skip("pools_and_channels_match_cpu"));
    let mut p = Pair::new(gpu);
    let s = PoolShape {
        batch: 2,
        channels: 3,
        height: 9,
        width: 9,
    };
    for params in [Pool2dParams::square(3, 2, 0), Pool2dParams::square(3, 2, 1)] {
        let name = format!("max pool {params:?}");
        let out = params.output_shape(&s).unwrap();
        let x = p.random(s.numel(), -1.0, 1.0, 1);
        let y = p.random(out.numel(), 1e3, 2e3, 1);
        let indices = p.cpu.alloc_index(out.numel()).unwrap();
        assert_eq!(indices, p.gpu.alloc_index(out.numel()).unwrap());
        p.run(&name, |b| b.max_pool_forward(&s, &params, x, y, indices));
        p.check(&format!("{name} forward"), y);
        // Each backend's own indices (random inputs have no ties, so they agree).
        let dy = p.random(out.numel(), -1.0, 1.0, 1);
        let dx = p.random(s.numel(), 1e3, 2e3, 1);
        p.run(&name, |b| b.max_pool_backward(&s, &params, indices, dy, dx));
        p.check(&format!("{name} backward"), dx);
        // Indices written from the host: one element of each output's window.
        let mut rng = SplitMix64(7);
        let chosen: Vec<i32> = (0..out.numel())
            .map(|i| {
                let (oy, ox) = ((i / out.width) % out.height, i % out.width);
                let mut pick = |o: usize, size: usize| {
                    let lo = (o * params.stride.0).saturating_sub(params.padding.0);
                    let hi = (o * params.stride.0 + params.kernel.0 - params.padding.0).min(size);
                    lo + rng.below((hi - lo) as u64) as usize
                };
                let iy = pick(oy, s.height);
                let ix = pick(ox, s.width);
                (iy * s.width + ix) as i32
            })
            .collect();
        p.cpu.write_index(indices, &chosen).unwrap();
        p.gpu.write_index(indices, &chosen).unwrap();
        p.run(&name, |b| b.max_pool_backward(&s, &params, indices, dy, dx));
        p.check(&format!("{name} backward, written indices"), dx);
    }
    for count_include_pad in [true, false] {
        let params = Pool2dParams {
            count_include_pad,
            ..Pool2dParams::square(3, 1, 1)
        };
        let name = format!("avg pool {params:?}");
        let out = params.output_shape(&s).unwrap();
        let x = p.random(s.numel(), -1.0, 1.0, 1);
        let y = p.random(out.numel(), 1e3, 2e3, 1);
        p.run(&name, |b| b.avg_pool_forward(&s, &params, x, y));
        p.check(&format!("{name} forward"), y);
        let dy = p.random(out.numel(), -1.0, 1.0, 1);
        let dx = p.random(s.numel(), 1e3, 2e3, 1);
        p.run(&name, |b| b.avg_pool_backward(&s, &params, dy, dx));
        p.check(&format!("{name} backward"), dx);
    }

    let g = PoolShape {
        batch: 2,
        channels: 6,
        height: 5,
        width: 7,
    };
    let x = p.random(g.numel(), -1.0, 1.0, 1);
    let y = p.random(g.planes(), 1e3, 2e3, 1);
    p.run("global avg pool", |b| b.global_avg_pool_forward(&g, x, y));
    p.check("global avg pool forward", y);
    let dy = p.random(g.planes(), -1.0, 1.0, 1);
    let dx = p.random(g.numel(), 1e3, 2e3, 1);
    p.run("global avg pool", |b| {
        b.global_avg_pool_backward(&g, dy, dx)
    });
    p.check("global avg pool backward", dx);

    let c = ChannelSlice {
        batch: 2,
        channels: 3,
        whole_channels: 8,
        offset: 2,
        height: 4,
        width: 5,
    };
    let part = p.random(c.part_len(), -1.0, 1.0, 1);
    let whole = p.random(c.whole_len(), -1.0, 1.0, 1);
    p.run("copy channels", |b| b.copy_channels(&c, part, whole));
    p.check("copy channels (the other channels kept)", whole);
    let out = p.random(c.part_len(), 1e3, 2e3, 1);
    p.run("slice channels", |b| b.slice_channels(&c, whole, out));
    p.check("slice channels", out);
}

#[test]
fn linear_and_memory_match_cpu() {
    let gpu = or_return!(cuda_or_skip("linear_and_memory_match_cpu"));
    let mut p = Pair::new(gpu);
    let (s, [x, w, bias]) = p.linear_case();
    let y = p.random(s.batch * s.outputs, 1e3, 2e3, 1);
    p.run("linear", |b| b.linear_forward(&s, x, w, bias, y));
    p.check("linear forward", y);
    let dy = p.random(s.batch * s.outputs, -1.0, 1.0, 1);
    let dx = p.random(s.batch * s.inputs, 1e3, 2e3, 1);
    let dw = p.random(s.outputs * s.inputs, -1.0, 1.0, 1);
    let db = p.random(s.outputs, -1.0, 1.0, 1);
    p.run("linear", |b| b.linear_backward(&s, x, w, dy, dx, dw, db));
    p.check("linear backward dx", dx);
    p.check("linear backward dw (accumulates)", dw);
    p.check("linear backward db (accumulates)", db);

    // fill, and write/read round trips at odd offsets.
    let t = p.random(1001, -1.0, 1.0, 1);
    p.run("fill", |b| b.fill(t.slice(3, 500), -2.5));
    p.check("fill", t);
    let v: Vec<f32> = (0..77).map(|i| i as f32 * 0.25 - 3.0).collect();
    p.gpu.write(t.slice(11, 77), &v).unwrap();
    assert_eq!(p.gpu.read(t.slice(11, 77)).unwrap(), v);
    assert_eq!(p.gpu.read(t.slice(5, 0)).unwrap(), Vec::<f32>::new());
    assert_eq!(p.gpu.allocated_bytes(), p.cpu.allocated_bytes());
}

/// TF32's unit roundoff: an f32 rounded to the nearest TF32 (10 stored mantissa bits) is within
/// a relative 2⁻¹¹ of it.
const TF32_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;
/// f32's, 2⁻²⁴.
const F32_UNIT_ROUNDOFF: f64 = 1.0 / 16_777_216.0;

/// How far, as a multiple of Σ|x||w|, a sum of `terms` products computed in TF32 may land from
/// the same sum computed by the CPU backend in f32. Each TF32 input is within a relative 2u of
/// its f32 value, u = 2⁻¹¹ being TF32's unit roundoff and the 2 allowing for a library that
/// truncates to TF32 instead of rounding, so each product is within (1 + 2u)² − 1; adding K
/// products in f32 in any order costs at most γ_K = K·2⁻²⁴ / (1 − K·2⁻²⁴) of Σ|x||w|. So the TF32
/// sum is within ((1 + 2u)² − 1 + γ_K)·Σ|x||w| of the exact one, the CPU's f32 sum within
/// γ_K·Σ|x||w|, and their two f32 outputs round by 2⁻²⁴ of at most Σ|x||w| each. Σ|x||w| is
/// itself the CPU's f32 sum of K nonnegative terms, which may fall short of the exact one by γ_K
/// of it: hence the last factor.
fn tf32_bound(terms: usize) -> f64 {
    let k = terms as f64;
    let gamma = k * F32_UNIT_ROUNDOFF / (1.0 - k * F32_UNIT_ROUNDOFF);
    let product = (1.0 + 2.0 * TF32_UNIT_ROUNDOFF).powi(2) - 1.0;
    (product + 2.0 * gamma + 2.0 * F32_UNIT_ROUNDOFF) * (1.0 + gamma)
}

/// With TF32 on, each convolution pass and the `fc`, forward and backward, against the CPU's
/// f32 run within [`tf32_bound`], element by element (poisoned outputs where a pass assigns,
/// zeros where it accumulates).
#[test]
fn tf32_convolutions_and_fc_match_cpu_within_the_tf32_bound() {
    let mut gpu = or_return!(cuda_or_skip("tf32_convolutions_and_fc_match_cpu"));
    gpu.set_precision(Precision::Tf32).unwrap();
    let mut p = Pair::new(gpu);
    for (name, s) in conv_shapes() {
        let taps = s.kernel.0 * s.kernel.1;
        let x = p.random(s.input_len(), -1.0, 1.0, CONV_ALIGN);
        let w = p.random(s.weight_len(), -0.5, 0.5, CONV_ALIGN);
        let dy = p.random(s.output_len(), -1.0, 1.0, CONV_ALIGN);
        let (x_abs, w_abs, dy_abs) = (p.magnitudes(x), p.magnitudes(w), p.magnitudes(dy));

        let y = p.random(s.output_len(), 1e3, 2e3, CONV_ALIGN);
        let y_abs = p.tensor(s.output_len(), CONV_ALIGN);
        p.run(&name, |b| b.conv2d_forward(&s, x, w, y));
        p.cpu.conv2d_forward(&s, x_abs, w_abs, y_abs).unwrap();
        p.check_tf32(&format!("{name} forward"), y, y_abs, s.in_channels * taps);

        let dx = p.random(s.input_len(), 1e3, 2e3, CONV_ALIGN);
        let dx_abs = p.tensor(s.input_len(), CONV_ALIGN);
        p.run(&name, |b| b.conv2d_backward_data(&s, dy, w, dx, false));
        p.cpu
            .conv2d_backward_data(&s, dy_abs, w_abs, dx_abs, false)
            .unwrap();
        let terms = s.out_channels * taps;
        p.check_tf32(&format!("{name} backward data"), dx, dx_abs, terms);

        let dw = p.zeros(s.weight_len(), CONV_ALIGN);
        let dw_abs = p.zeros(s.weight_len(), CONV_ALIGN);
        p.run(&name, |b| b.conv2d_backward_filter(&s, x, dy, dw));
        p.cpu
            .conv2d_backward_filter(&s, x_abs, dy_abs, dw_abs)
            .unwrap();
        let terms = s.batch * s.out_height() * s.out_width();
        p.check_tf32(&format!("{name} backward filter"), dw, dw_abs, terms);
    }

    let (s, [x, w, bias]) = p.linear_case();
    let dy = p.random(s.batch * s.outputs, -1.0, 1.0, 1);
    let [x_abs, w_abs, bias_abs, dy_abs] = [x, w, bias, dy].map(|t| p.magnitudes(t));
    let y = p.random(s.batch * s.outputs, 1e3, 2e3, 1);
    let y_abs = p.tensor(s.batch * s.outputs, 1);
    p.run("linear", |b| b.linear_forward(&s, x, w, bias, y));
    p.cpu
        .linear_forward(&s, x_abs, w_abs, bias_abs, y_abs)
        .unwrap();
    // The bias is one more term of each sum (a GEMM against ones on the GPU).
    p.check_tf32("linear forward", y, y_abs, s.inputs + 1);
    let dx = p.random(s.batch * s.inputs, 1e3, 2e3, 1);
    let [dw, db] = [s.outputs * s.inputs, s.outputs].map(|len| p.zeros(len, 1));
    let dx_abs = p.tensor(s.batch * s.inputs, 1);
    let [dw_abs, db_abs] = [s.outputs * s.inputs, s.outputs].map(|len| p.zeros(len, 1));
    p.run("linear", |b| b.linear_backward(&s, x, w, dy, dx, dw, db));
    p.cpu
        .linear_backward(&s, x_abs, w_abs, dy_abs, dx_abs, dw_abs, db_abs)
        .unwrap();
    p.check_tf32("linear backward dx", dx, dx_abs, s.outputs);
    p.check_tf32("linear backward dw", dw, dw_abs, s.batch);
    p.check_tf32("linear backward db", db, db_abs, s.batch);
}

/// The precision set on the backend reaches its cuDNN convolutions and cuBLAS GEMMs: FMA math
/// and the default math mode in f32, cuDNN's default math (TF32 allowed) and
/// `CUBLAS_TF32_TENSOR_OP_MATH` in tf32, and back, tensor-op math on bf16 activations, as the
/// emulator records them (a real driver records none: there only the rest is checked). f64 is
/// refused and changes nothing.
#[test]
fn emulator_precision_reaches_cudnn_and_cublas() {
    let mut gpu = or_return!(cuda_or_skip("emulator_precision_reaches_cudnn_and_cublas"));
    assert_eq!(gpu.precision(), Precision::F32, "the backend's default");
    let e = gpu.set_precision(Precision::F64).unwrap_err().to_string();
    assert!(
        e.contains("the CUDA backend computes in bf16, tf32 or f32"),
        "{e}"
    );
    assert_eq!(gpu.precision(), Precision::F32);
    let (_, conv) = conv_shapes()[0].clone();
    let [x, w, y] =
        [conv.input_len(), conv.weight_len(), conv.output_len()].map(|len| gpu.alloc(len).unwrap());
    let fc = LinearShape {
        batch: 2,
        inputs: 5,
        outputs: 3,
    };
    let [fx, fw, fb, fy] = [fc.batch * fc.inputs, fc.inputs * fc.outputs, fc.outputs, 6]
        .map(|len| gpu.alloc(len).unwrap());
    const FMA_MATH: i32 = 3;
    const TF32_TENSOR_OP_MATH: i32 = 3;
    let emulated = emulator_math_modes().is_some();
    for (precision, convolution, gemm) in [
        (Precision::Tf32, 0, TF32_TENSOR_OP_MATH),
        (Precision::F32, FMA_MATH, 0),
        (Precision::Tf32, 0, TF32_TENSOR_OP_MATH),
    ] {
        gpu.set_precision(precision).unwrap();
        assert_eq!(gpu.precision(), precision);
        let described = gpu.describe();
        assert!(
            described.starts_with(&format!("cuda {precision} (")),
            "{described}"
        );
        gpu.conv2d_forward(&conv, x, w, y).unwrap();
        gpu.linear_forward(&fc, fx, fw, fb, fy).unwrap();
        gpu.synchronize().unwrap();
        if let Some(math) = emulator_math_modes() {
            assert_eq!(math, EmulatedMath { convolution, gemm }, "{precision}");
        }
    }
    // bf16 activations: cuDNN's tensor-op math; the fc (in f32 on converted copies) on TF32.
    const TENSOR_OP_MATH: i32 = 1;
    gpu.set_precision(Precision::Bf16).unwrap();
    let [bx, by] =
        [conv.input_len(), conv.output_len()].map(|len| gpu.alloc_activation(len).unwrap());
    gpu.conv2d_forward(&conv, bx, w, by).unwrap();
    gpu.linear_forward(&fc, fx, fw, fb, fy).unwrap();
    gpu.synchronize().unwrap();
    if let Some(math) = emulator_math_modes() {
        let expected = EmulatedMath {
            convolution: TENSOR_OP_MATH,
            gemm: TF32_TENSOR_OP_MATH,
        };
        assert_eq!(math, expected, "bf16");
    }
    if !emulated {
        println!(
            "emulator_precision_reaches_cudnn_and_cublas: math types not seen (a real driver)"
        );
    }
}

#[test]
fn training_ops_match_cpu() {
    let gpu = or_return!(cuda_or_skip("training_ops_match_cpu"));
    let mut p = Pair::new(gpu);
    let drop = DropoutParams {
        p: 0.3,
        seed: 11,
        training: true,
    };
    let x = p.random(3001, -1.0, 1.0, 1);
    let y = p.random(3001, 1e3, 2e3, 1);
    let step = p.cpu.alloc_index(2).unwrap();
    assert_eq!(step, p.gpu.alloc_index(2).unwrap());
    // A step above 2³², so that both words of the slot count.
    for b in [&mut p.cpu as &mut dyn Backend<Scalar = f32>, &mut p.gpu] {
        b.write_index(step, &step_words((1 << 32) + 4)).unwrap();
    }
    p.run("dropout", |b| b.dropout_forward(&drop, step, x, y));
    p.check("dropout forward", y);
    p.run("dropout", |b| b.dropout_backward(&drop, step, y, x));
    p.check("dropout backward", x);

    let s = SoftmaxCeShape {
        batch: 5,
        classes: 13,
    };
    let logits = p.random(s.batch * s.classes, -3.0, 3.0, 1);
    let dlogits = p.random(s.batch * s.classes, 1e3, 2e3, 1);
    let labels_cpu = p.cpu.alloc_index(s.batch).unwrap();
    let labels_gpu = p.gpu.alloc_index(s.batch).unwrap();
    let predictions_cpu = p.cpu.alloc_index(s.batch).unwrap();
    let predictions_gpu = p.gpu.alloc_index(s.batch).unwrap();
    assert_eq!((labels_cpu, predictions_cpu), (labels_gpu, predictions_gpu));
    let labels = [3, 0, 12, 7, 7];
    p.cpu.write_index(labels_cpu, &labels).unwrap();
    p.gpu.write_index(labels_gpu, &labels).unwrap();
    // Poisoned: every value is written, the loss and the right answers.
    let stats = p.random(2, 1e3, 2e3, 1);
    for (b, labels, preds) in [
        (
            &mut p.cpu as &mut dyn Backend<Scalar = f32>,
            labels_cpu,
            predictions_cpu,
        ),
        (&mut p.gpu, labels_gpu, predictions_gpu),
    ] {
        b.softmax_cross_entropy(&s, logits, labels, 0.5, preds, dlogits, stats)
            .unwrap();
    }
    p.check("cross-entropy stats (loss, correct)", stats);
    p.check("cross-entropy dlogits", dlogits);

    let s = SigmoidBceShape {
        batch: 6,
        outputs: 40,
    };
    let logits = p.random(s.len(), -4.0, 4.0, 1);
    let dlogits = p.random(s.len(), 1e3, 2e3, 1);
    let targets = p.tensor(s.len(), 1);
    let bits: Vec<f32> = (0..s.len()).map(|i| ((i * 7 + i / 3) % 2) as f32).collect();
    p.write(targets, &bits);
    let predictions_cpu = p.cpu.alloc_index(s.len()).unwrap();
    let predictions_gpu = p.gpu.alloc_index(s.len()).unwrap();
    assert_eq!(predictions_cpu, predictions_gpu);
    let stats = p.random(2, 1e3, 2e3, 1);
    for b in [&mut p.cpu as &mut dyn Backend<Scalar = f32>, &mut p.gpu] {
        b.sigmoid_binary_cross_entropy(&s, logits, targets, 0.5, predictions_cpu, dlogits, stats)
            .unwrap();
    }
    p.check("sigmoid BCE stats (loss, correct)", stats);
    assert_eq!(
        p.gpu.read_index(predictions_gpu).unwrap(),
        p.cpu.read_index(predictions_cpu).unwrap(),
        "sigmoid BCE predictions"
    );
    p.check("sigmoid BCE dlogits", dlogits);

    let sgd = SgdParams::new(0.9, 1e-4);
    let weights = p.random(4099, -1.0, 1.0, 1);
    let grads = p.random(4099, -1.0, 1.0, 1);
    let momentum = p.random(4099, -0.1, 0.1, 1);
    let lr = p.tensor(1, 1);
    // A new rate each step, read from the slot.
    for rate in [0.05, 0.02] {
        p.write(lr, &[rate]);
        p.run("sgd", |b| b.sgd_step(&sgd, lr, weights, grads, momentum));
    }
    p.check("sgd weights", weights);
    p.check("sgd momentum", momentum);
}

#[test]
fn coarse2fine_ops_match_cpu() {
    let gpu = or_return!(cuda_or_skip("coarse2fine_ops_match_cpu"));
    let mut p = Pair::new(gpu);
    let x = p.random(999, -1.0, 1.0, 1);
    let y = p.random(999, -1.0, 1.0, 1);
    p.run("axpby", |b| b.axpby(100.0, x, 1.0, y));
    p.check("axpby", y);

    let s = BapShape {
        batch: 3,
        maps: 8,
        channels: 40,
        height: 5,
        width: 6,
    };
    let att = p.random(s.attention_len(), 0.0, 1.0, 1);
    let feat = p.random(s.features_len(), -1.0, 1.0, 1);
    let parts = p.random(s.parts_len(), 1e3, 2e3, 1);
    let norms = p.random(s.batch, 1e3, 2e3, 1);
    p.run("bap forward", |b| {
        b.bap_forward(&s, att, feat, parts, norms)
    });
    p.check("bap parts", parts);
    p.check("bap norms", norms);
    let dparts = p.random(s.parts_len(), -1.0, 1.0, 1);
    let datt = p.random(s.attention_len(), 1e3, 2e3, 1);
    let dfeat = p.random(s.features_len(), 1e3, 2e3, 1);
    p.sync_from_cpu(parts);
    p.sync_from_cpu(norms);
    p.run("bap backward", |b| {
        b.bap_backward(&s, att, feat, parts, norms, dparts, datt, dfeat)
    });
    p.check("bap d_attention", datt);
    p.check("bap d_features", dfeat);

    let cs = CenterLossShape {
        batch: 6,
        dim: 77,
        classes: 4,
    };
    let cp = CenterLossParams {
        lambda: 1.0,
        beta: 0.05,
        ..CenterLossParams::default()
    };
    let f = p.random(cs.features_len(), -1.0, 1.0, 1);
    let centers = p.random(cs.centers_len(), -1.0, 1.0, 1);
    let df = p.random(cs.features_len(), 1e3, 2e3, 1);
    let labels_cpu = p.cpu.alloc_index(cs.batch).unwrap();
    assert_eq!(labels_cpu, p.gpu.alloc_index(cs.batch).unwrap());
    for b in [&mut p.cpu as &mut dyn Backend<Scalar = f32>, &mut p.gpu] {
        b.write_index(labels_cpu, &[1, 3, 1, 0, 3, 3]).unwrap();
    }
    let loss = p.random(1, 1e3, 2e3, 1);
    let scales = p.tensor(2, 1);
    p.write(scales, &cp.scales(cs.batch).map(|v| v as f32));
    for b in [&mut p.cpu as &mut dyn Backend<Scalar = f32>, &mut p.gpu] {
        b.center_loss(&cs, &cp.update(), scales, f, labels_cpu, centers, df, loss)
            .unwrap();
    }
    p.check("center loss", loss);
    p.check("center loss d_features", df);
    p.check("center loss centers", centers);

    let ct = ConvTransposeParams {
        batch: 2,
        in_channels: 8,
        out_channels: 4,
        height: 9,
        width: 7,
        kernel_size: 4,
        stride: 2,
        padding: 1,
        output_padding: 0,
    };
    let cx = p.random(ct.input_len(), -1.0, 1.0, 1);
    let cw = p.random(ct.weight_len(), -0.5, 0.5, 1);
    let cb = p.random(ct.out_channels, -0.5, 0.5, 1);
    let cy = p.random(ct.output_len(), 1e3, 2e3, 1);
    p.run("conv transpose", |b| {
        b.conv_transpose_forward(&ct, cx, cw, cb, cy)
    });
    p.check("conv transpose y", cy);
    let cdy = p.random(ct.output_len(), -1.0, 1.0, 1);
    let cdx = p.random(ct.input_len(), 1e3, 2e3, 1);
    let cdw = p.random(ct.weight_len(), -1.0, 1.0, 1);
    let cdb = p.random(ct.out_channels, -1.0, 1.0, 1);
    p.run("conv transpose backward", |b| {
        b.conv_transpose_backward(&ct, cx, cw, cdy, cdx, cdw, cdb)
    });
    p.check("conv transpose dx", cdx);
    p.check("conv transpose d_weight (accumulates)", cdw);
    p.check("conv transpose d_bias (accumulates)", cdb);
}

#[test]
fn fine_branch_ops_match_cpu() {
    let gpu = or_return!(cuda_or_skip("fine_branch_ops_match_cpu"));
    let mut p = Pair::new(gpu);
    let x = p.random(777, -1.0, 1.0, 1);
    let y = p.random(777, 1e3, 2e3, 1);
    p.run("relu", |b| b.relu_forward(x, y));
    p.check("relu forward", y);
    let dy = p.random(777, -1.0, 1.0, 1);
    let dx = p.random(777, 1e3, 2e3, 1);
    p.run("relu backward", |b| b.relu_backward(y, dy, dx));
    p.check("relu backward", dx);

    let ms = MapShape {
        batch: 4,
        maps: 8,
        height: 17,
        width: 17,
    };
    let maps = p.random(ms.maps_len(), 0.0, 1.0, 1);
    let chosen = p.random(ms.map_len(), 1e3, 2e3, 1);
    let idx = p.cpu.alloc_index(ms.batch).unwrap();
    assert_eq!(idx, p.gpu.alloc_index(ms.batch).unwrap());
    for b in [&mut p.cpu as &mut dyn Backend<Scalar = f32>, &mut p.gpu] {
        b.write_index(idx, &[7, 0, 3, 3]).unwrap();
    }
    p.run("select map", |b| {
        b.select_map_forward(&ms, maps, idx, chosen)
    });
    p.check("select map", chosen);
    let dmaps = p.random(ms.maps_len(), -1.0, 1.0, 1);
    p.run("select map backward", |b| {
        b.select_map_backward(&ms, idx, chosen, dmaps, true)
    });
    p.check("select map backward (accumulate)", dmaps);
    let mean = p.random(ms.map_len(), 1e3, 2e3, 1);
    p.run("mean maps", |b| b.mean_maps_forward(&ms, maps, mean));
    p.check("mean maps", mean);

    let rs = ResizeShape {
        batch: 4,
        channels: 1,
        in_height: 17,
        in_width: 17,
        out_height: 75,
        out_width: 75,
    };
    let big = p.random(rs.out_len(), 1e3, 2e3, 1);
    p.run("resize", |b| b.resize_bilinear_forward(&rs, chosen, big));
    p.check("resize forward", big);
    let dsmall = p.random(rs.in_len(), 1e3, 2e3, 1);
    p.run("resize backward", |b| {
        b.resize_bilinear_backward(&rs, big, dsmall)
    });
    p.check("resize backward", dsmall);

    let ks = MaskShape {
        batch: 4,
        channels: 3,
        height: 75,
        width: 75,
    };
    let image = p.random(ks.image_len(), -1.0, 1.0, 1);
    let masked = p.random(ks.image_len(), 1e3, 2e3, 1);
    let u_max = p.random(ks.batch, 1e3, 2e3, 1);
    let argmax = p.cpu.alloc_index(ks.batch).unwrap();
    assert_eq!(argmax, p.gpu.alloc_index(ks.batch).unwrap());
    p.run("mask", |b| {
        b.mask_forward(&ks, big, image, masked, u_max, argmax)
    });
    p.check("mask forward", masked);
    p.check("mask u_max", u_max);
    assert_eq!(
        p.cpu.read_index(argmax).unwrap(),
        p.gpu.read_index(argmax).unwrap(),
        "mask argmax"
    );
    let dmasked = p.random(ks.image_len(), -1.0, 1.0, 1);
    let du = p.random(ks.map_len(), 1e3, 2e3, 1);
    p.run("mask backward", |b| {
        b.mask_backward(&ks, big, image, dmasked, u_max, argmax, du)
    });
    p.check("mask backward", du);
}

/// WS-DAN's augmentation ops: the kernels do the CPU's f32 arithmetic, so boxes, map indices,
/// crops and drops are the CPU backend's bit for bit.
#[test]
fn augment_ops_match_cpu() {
    let gpu = or_return!(cuda_or_skip("augment_ops_match_cpu"));
    let mut p = Pair::new(gpu);
    let s = AugmentShape {
        batch: 4,
        channels: 3,
        height: 45,
        width: 38,
        map_height: 17,
        map_width: 17,
    };
    let ms = MapShape {
        batch: 4,
        maps: 6,
        height: 17,
        width: 17,
    };
    let blobs = attention_blobs(&mut p.rng, &ms);
    let all = p.tensor(ms.maps_len(), 1);
    p.write(all, &blobs);
    let draws = p.random(4, 0.0, 1.0, 1);
    let picks = p.cpu.alloc_index(4).unwrap();
    assert_eq!(picks, p.gpu.alloc_index(4).unwrap());
    p.run("maps by mass", |b| b.maps_by_mass(&ms, all, draws, picks));
    let k = p.cpu.read_index(picks).unwrap();
    assert_eq!(k, p.gpu.read_index(picks).unwrap(), "map indices");
    let maps = p.random(s.map_len(), 1e3, 2e3, 1);
    for b in [&mut p.cpu as &mut dyn Backend<Scalar = f32>, &mut p.gpu] {
        b.write_index(picks, &k).unwrap();
        b.select_map_forward(&ms, all, picks, maps).unwrap();
    }
    let thresholds = p.random(4, 0.4, 0.6, 1);
    let boxes = p.cpu.alloc_index(16).unwrap();
    assert_eq!(boxes, p.gpu.alloc_index(16).unwrap());
    p.run("attention boxes", |b| {
        b.attention_boxes(&s, 0.1, maps, thresholds, boxes)
    });
    let cpu_boxes = p.cpu.read_index(boxes).unwrap();
    assert_eq!(cpu_boxes, p.gpu.read_index(boxes).unwrap(), "boxes");
    let whole = [0, 0, 45, 38];
    assert!(cpu_boxes.chunks(4).all(|b| b != whole), "{cpu_boxes:?}");
    let x = p.random(s.image_len(), -1.0, 1.0, 1);
    let y = p.random(s.image_len(), 1e3, 2e3, 1);
    let exact = |p: &mut Pair, what: &str| {
        let (cpu, gpu) = (p.cpu.read(y).unwrap(), p.gpu.read(y).unwrap());
        assert!(cpu.iter().all(|v| v.is_finite()), "{what}");
        let same = cpu
            .iter()
            .zip(&gpu)
            .all(|(c, g)| c.to_bits() == g.to_bits());
        assert!(same, "{what}: CUDA differs from the CPU");
    };
    p.run("crop resize", |b| b.crop_resize(&s, x, boxes, y));
    exact(&mut p, "crop resize");
    let y_again = p.cpu.read(y).unwrap();
    p.run("drop mask", |b| b.drop_mask(&s, maps, thresholds, x, y));
    exact(&mut p, "drop mask");
    assert_ne!(p.cpu.read(y).unwrap(), y_again);
}

/// Attention maps `[B, M, h, w]` as WS-DAN's: a blob of its own size and place in each, with
/// zeros around (so the boxes are smaller than the image) and masses that differ.
fn attention_blobs(rng: &mut SplitMix64, ms: &MapShape) -> Vec<f32> {
    let (h, w) = (ms.height, ms.width);
    let mut blobs = Vec::with_capacity(ms.maps_len());
    for _ in 0..ms.batch * ms.maps {
        let (cy, cx) = (rng.uniform(0.0, h as f64), rng.uniform(0.0, w as f64));
        let (spread, height) = (rng.uniform(5.0, 40.0), rng.uniform(0.2, 3.0));
        for i in 0..h {
            for j in 0..w {
                let d = (i as f64 - cy).powi(2) + (j as f64 - cx).powi(2);
                blobs.push((height * (-d / spread).exp() - 0.1).max(0.0) as f32);
            }
        }
    }
    blobs
}

/// WS-DAN's augmentation ops in bf16, maps, images, draws and thresholds all bf16 activations
/// as WS-DAN stores them: the kernels compute in f32 on the bf16 values they load and round
/// each crop or drop value once to bf16, so map indices and boxes are the CPU backend's f32
/// results on the same bf16-rounded values, and crops and drops the CPU's rounded to bf16, bit
/// for bit.
#[test]
fn augment_ops_match_cpu_in_bf16() {
    let mut gpu = or_return!(cuda_or_skip("augment_ops_match_cpu_in_bf16"));
    gpu.set_precision(Precision::Bf16).unwrap();
    let mut cpu = CpuBackend::<f32>::new();
    let (gpu, cpu) = (&mut gpu, &mut cpu);
    let s = AugmentShape {
        batch: 4,
        channels: 3,
        height: 45,
        width: 38,
        map_height: 17,
        map_width: 17,
    };
    let ms = MapShape {
        batch: 4,
        maps: 6,
        height: 17,
        width: 17,
    };
    let mut rng = SplitMix64(0x0bf1_6a06);
    let mut random = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
        (0..n).map(|_| rng.uniform(lo, hi) as f32).collect()
    };
    let (draws, thresholds, x) = (
        random(4, 0.0, 1.0),
        random(4, 0.4, 0.6),
        random(s.image_len(), -1.0, 1.0),
    );
    let all = bf16_on_both(gpu, cpu, &attention_blobs(&mut SplitMix64(0xb10b), &ms));
    let draws = bf16_on_both(gpu, cpu, &draws);
    let thresholds = bf16_on_both(gpu, cpu, &thresholds);
    let x = bf16_on_both(gpu, cpu, &x);
    let maps = bf16_on_both(gpu, cpu, &vec![0.0; s.map_len()]);
    let y = bf16_on_both(gpu, cpu, &vec![0.0; s.image_len()]);
    let [gpu_picks, gpu_boxes] = [4, 16].map(|n| gpu.alloc_index(n).unwrap());
    let [cpu_picks, cpu_boxes] = [4, 16].map(|n| cpu.alloc_index(n).unwrap());

    gpu.maps_by_mass(&ms, all.0, draws.0, gpu_picks).unwrap();
    cpu.maps_by_mass(&ms, all.1, draws.1, cpu_picks).unwrap();
    let k = cpu.read_index(cpu_picks).unwrap();
    assert_eq!(gpu.read_index(gpu_picks).unwrap(), k, "map indices");
    assert!(
        k.iter().any(|&i| i != k[0]),
        "one map picked for all: {k:?}"
    );
    gpu.select_map_forward(&ms, all.0, gpu_picks, maps.0)
        .unwrap();
    cpu.select_map_forward(&ms, all.1, cpu_picks, maps.1)
        .unwrap();

    gpu.attention_boxes(&s, 0.1, maps.0, thresholds.0, gpu_boxes)
        .unwrap();
    cpu.attention_boxes(&s, 0.1, maps.1, thresholds.1, cpu_boxes)
        .unwrap();
    let boxes = cpu.read_index(cpu_boxes).unwrap();
    assert_eq!(gpu.read_index(gpu_boxes).unwrap(), boxes, "boxes");
    let whole = [0, 0, 45, 38];
    assert!(boxes.chunks(4).all(|b| b != whole), "{boxes:?}");

    gpu.crop_resize(&s, x.0, gpu_boxes, y.0).unwrap();
    cpu.crop_resize(&s, x.1, cpu_boxes, y.1).unwrap();
    let crops = bf16_matches_cpu_rounded(gpu, cpu, y, "crop resize");
    gpu.drop_mask(&s, maps.0, thresholds.0, x.0, y.0).unwrap();
    cpu.drop_mask(&s, maps.1, thresholds.1, x.1, y.1).unwrap();
    let drops = bf16_matches_cpu_rounded(gpu, cpu, y, "drop mask");
    assert_ne!(crops, drops);
    assert!(drops.contains(&0.0), "nothing dropped");
}

/// A bf16 activation on the GPU holding `v` (rounded), and a CPU tensor of the values it holds.
fn bf16_on_both(gpu: &mut CudaBackend, cpu: &mut CpuBackend<f32>, v: &[f32]) -> (Tensor, Tensor) {
    let g = gpu.alloc_activation(v.len()).unwrap();
    gpu.write(g, v).unwrap();
    let c = cpu.alloc(v.len()).unwrap();
    cpu.write(c, &gpu.read(g).unwrap()).unwrap();
    (g, c)
}

/// Asserts that the GPU's bf16 `t` is the CPU's f32 `t` rounded to bf16 (to nearest even), bit
/// for bit; returns the GPU's values.
fn bf16_matches_cpu_rounded(
    gpu: &mut CudaBackend,
    cpu: &mut CpuBackend<f32>,
    (g, c): (Tensor, Tensor),
    what: &str,
) -> Vec<f32> {
    let got = gpu.read(g).unwrap();
    let expected = cpu.read(c).unwrap();
    assert!(expected.iter().all(|v| v.is_finite()), "{what}");
    let differ = got
        .iter()
        .zip(&expected)
        .filter(|(g, e)| g.to_bits() != half::bf16::from_f32(**e).to_f32().to_bits())
        .count();
    assert_eq!(
        differ, 0,
        "{what}: {differ} values differ from the CPU's rounded to bf16"
    );
    got
}

#[test]
fn operands_are_checked() {
    let mut gpu = or_return!(cuda_or_skip("operands_are_checked"));
    let buf = gpu.alloc(100).unwrap();
    let g = PoolShape {
        batch: 1,
        channels: 4,
        height: 2,
        width: 2,
    };
    // Output overlapping the input.
    let err = gpu
        .global_avg_pool_forward(&g, buf.slice(0, 16), buf.slice(15, 4))
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    // Outside the buffer.
    let outside = Tensor {
        buf: buf.buf,
        offset: 90,
        len: 16,
    };
    let err = gpu.read(outside).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    let err = gpu
        .read(Tensor {
            buf: 7,
            offset: 0,
            len: 1,
        })
        .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    // Wrong length for the shape.
    let err = gpu
        .global_avg_pool_forward(&g, buf.slice(0, 15), buf.slice(20, 4))
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    // Disjoint ranges of one buffer are fine.
    gpu.global_avg_pool_forward(&g, buf.slice(0, 16), buf.slice(16, 4))
        .unwrap();
    // An empty buffer.
    let empty = gpu.alloc(0).unwrap();
    assert_eq!(gpu.read(empty).unwrap(), Vec::<f32>::new());
    gpu.fill(empty, 1.0).unwrap();
}

// ----- The golden case -----

/// Each parameter's gradient norm.
fn grad_norms(graph: &Graph, grads: &[f64]) -> Vec<(String, f64)> {
    graph
        .params
        .entries()
        .iter()
        .map(|e| {
            let g = &grads[e.range()];
            (e.name.clone(), g.iter().map(|v| v * v).sum::<f64>().sqrt())
        })
        .collect()
}

#[test]
fn golden_case_matches_cpu_f32() {
    if let Some(gpu) = cuda_or_skip("golden_case_matches_cpu_f32") {
        check_golden_case(gpu);
    }
}

/// The same with every convolution's algorithms picked by timing, which may pick FFT and
/// Winograd ones with other rounding. On a GPU only: the emulator has one algorithm in effect
/// (`conv2d_with_timed_algorithms_matches_cpu` covers the timing there), and timing seventeen
/// candidates at width 1.0 would take it minutes.
#[test]
fn golden_case_with_timed_algorithms_matches_cpu_f32() {
    let test = "golden_case_with_timed_algorithms_matches_cpu_f32";
    let mut gpu = or_return!(cuda_or_skip(test));
    if gpu.gpu().is_emulator() {
        return println!("{test}: skipped: on the CPU emulator");
    }
    gpu.set_conv_algorithm_choice(AlgorithmChoice::Timed);
    check_golden_case(gpu);
}

/// The golden case on `gpu` against the CPU backend in f32 and PyTorch's float64 run; prints the
/// algorithms cuDNN used and every error, and names each check that is off.
fn check_golden_case(mut gpu: CudaBackend) {
    let graph = golden::graph();
    let mut gpu_net = golden::network(&mut gpu);
    let ours = golden::run(&mut gpu, &mut gpu_net);
    let mut cpu = CpuBackend::<f32>::new();
    let mut cpu_net = golden::network(&mut cpu);
    let reference = golden::run(&mut cpu, &mut cpu_net);
    println!("{}", gpu.describe());
    for (shape, algos) in gpu.conv_algorithms() {
        println!("  {shape:?}: {algos:?}");
    }

    let file = golden::file();
    let mut failures = Vec::new();
    let mut check = |what: &str, e: f64, bound: f64| {
        println!("{what}: relative error {e:.2e} (bound {bound:e})");
        if e.is_nan() || e >= bound {
            failures.push(format!("{what}: relative error {e:.3e}, bound {bound:e}"));
        }
    };
    for (what, o, r, bound) in [
        (
            "mixed_6e",
            &ours.mixed_6e,
            &reference.mixed_6e,
            FORWARD_TOLERANCE,
        ),
        ("logits", &ours.logits, &reference.logits, LOGITS_TOLERANCE),
    ] {
        check(&format!("{what} vs CPU f32"), rel_error(o, r), bound);
        check(
            &format!("{what} vs PyTorch f64"),
            rel_error(o, &floats(&file, what)),
            GOLDEN_F32_FORWARD_TOLERANCE,
        );
    }
    check(
        "loss vs PyTorch f64",
        rel_error(&[ours.loss], &floats(&file, "loss")),
        GOLDEN_F32_FORWARD_TOLERANCE,
    );
    check(
        "running statistics vs CPU f32",
        rel_error(&ours.running, &reference.running),
        FORWARD_TOLERANCE,
    );
    let norms = grad_norms(&graph, &ours.grads);
    let reference_norms = grad_norms(&graph, &reference.grads);
    let mut worst = (0.0f64, String::new());
    for ((name, o), (_, r)) in norms.iter().zip(&reference_norms) {
        let e = rel_error(&[*o], &[*r]);
        if e.is_nan() || e > worst.0 {
            worst = (e, name.clone());
        }
        if e.is_nan() || e >= GRADIENT_TOLERANCE {
            failures.push(format!(
                "grad norm of {name}: relative error {e:.3e} vs CPU f32"
            ));
        }
        let golden_norm = floats(&file, &format!("grad_norm/{name}"));
        let eg = rel_error(&[*o], &golden_norm);
        if eg.is_nan() || eg >= GRADIENT_TOLERANCE {
            failures.push(format!(
                "grad norm of {name}: relative error {eg:.3e} vs PyTorch f64"
            ));
        }
    }
    println!(
        "worst gradient norm vs CPU f32: {:.2e} ({})",
        worst.0, worst.1
    );
    println!(
        "whole gradient vs CPU f32: relative error {:.2e}",
        rel_error(&ours.grads, &reference.grads)
    );
    assert!(
        failures.is_empty(),
        "{} golden checks are off:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every algorithm is deterministic (cuDNN's chosen so, the kernels and GEMMs by design), so two
/// steps from the same state give the same bits; the second runs on the plans and launchers the
/// first made.
#[test]
fn golden_case_is_deterministic() {
    let mut gpu = or_return!(cuda_or_skip("golden_case_is_deterministic"));
    let mut net = golden::network(&mut gpu);
    let first = golden::run(&mut gpu, &mut net);
    let bytes = gpu.allocated_bytes();
    let second = golden::run(&mut gpu, &mut net);
    assert_eq!(gpu.allocated_bytes(), bytes, "the second step allocated");
    assert_bit_identical("mixed_6e", &first.mixed_6e, &second.mixed_6e);
    assert_bit_identical("logits", &first.logits, &second.logits);
    assert_bit_identical("gradients", &first.grads, &second.grads);
    assert_bit_identical("running statistics", &first.running, &second.running);
}

// ----- bf16 -----

/// In bf16 a buffer for activations stores bf16: written values are rounded to nearest even
/// (ties to the even neighbour, NaN kept), read back exactly, filled rounded, and counted at 2
/// bytes a value; an op given an operand in another storage than its kernel takes there
/// refuses it, naming both.
#[test]
fn bf16_buffers_round_on_write_and_refuse_f32_ops() {
    let mut gpu = or_return!(cuda_or_skip(
        "bf16_buffers_round_on_write_and_refuse_f32_ops"
    ));
    gpu.set_precision(Precision::Bf16).unwrap();
    let before = gpu.allocated_bytes();
    let t = gpu.alloc_activation(6).unwrap();
    assert_eq!(gpu.allocated_bytes() - before, 12);
    // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to 1 (even); 1 + 3·2⁻⁸ to 1 + 2⁻⁶ (even).
    let written = [
        1.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -2.5e-3,
        3.0e38,
        f32::NAN,
    ];
    gpu.write(t, &written).unwrap();
    let read = gpu.read(t).unwrap();
    assert_eq!(read[..3], [1.0, 1.0, 1.015_625]);
    for (i, (&w, &r)) in written.iter().zip(&read).enumerate().skip(3) {
        let expected = half::bf16::from_f32(w).to_f32();
        assert!(
            r.to_bits() == expected.to_bits() || (r.is_nan() && w.is_nan()),
            "element {i}: wrote {w}, read {r}, bf16 is {expected}"
        );
    }
    gpu.fill(t, 0.1).unwrap();
    assert_eq!(
        gpu.read(t).unwrap(),
        [half::bf16::from_f32(0.1).to_f32(); 6]
    );
    // f32 buffers stay f32 in bf16.
    let f = gpu.alloc(6).unwrap();
    gpu.write(f, &written).unwrap();
    assert_eq!(gpu.read(f).unwrap()[..5], written[..5]);
    // An op runs in its first activation's storage; an operand stored otherwise is refused.
    let err = gpu.axpby(1.0, t, 0.0, f).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("stored in f32, where the op takes bf16"),
        "{err}"
    );
    let [lr, momentum] = [1, 6].map(|len| gpu.alloc(len).unwrap());
    let err = gpu
        .sgd_step(&SgdParams::new(0.9, 0.0), lr, t, f, momentum)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("stored in bf16, where the op takes f32"),
        "{err}"
    );
}

/// One side of the bf16 op checks: the CUDA backend in bf16 and the CPU backend in f64 holding
/// the same values (the GPU's bf16 buffers rounded, the CPU's holding the rounded values), and
/// the CPU's magnitudes of each.
struct Bf16Pair {
    gpu: CudaBackend,
    cpu: CpuBackend<f64>,
    rng: SplitMix64,
}

/// A tensor in both backends: the GPU's, the CPU's, and the CPU's magnitudes of it.
#[derive(Clone, Copy)]
struct Both {
    gpu: Tensor,
    cpu: Tensor,
    abs: Tensor,
}

impl Bf16Pair {
    /// Random values in `[lo, hi)`, in a bf16 activation buffer (`activation`) or an f32 one;
    /// the CPU gets what the GPU's op sees: bf16-rounded values for activations, and for f32
    /// weights (`as_weights`) too, since the convolutions convert them first.
    fn random(
        &mut self,
        len: usize,
        (lo, hi): (f64, f64),
        activation: bool,
        as_weights: bool,
    ) -> Both {
        let v: Vec<f32> = (0..len).map(|_| self.rng.uniform(lo, hi) as f32).collect();
        let gpu = match activation {
            true => self.gpu.alloc_activation(len).unwrap(),
            false => self.gpu.alloc(len).unwrap(),
        };
        self.gpu.write(gpu, &v).unwrap();
        let seen: Vec<f64> = v
            .iter()
            .map(|&x| match activation || as_weights {
                true => half::bf16::from_f32(x).to_f64(),
                false => x as f64,
            })
            .collect();
        let [cpu, abs] = [(); 2].map(|_| self.cpu.alloc(len).unwrap());
        self.cpu.write(cpu, &seen).unwrap();
        let magnitudes: Vec<f64> = seen.iter().map(|x| x.abs()).collect();
        self.cpu.write(abs, &magnitudes).unwrap();
        Both { gpu, cpu, abs }
    }

    /// Asserts, element by element, that the GPU's `t` is within `relative·|r| + absolute·m` of
    /// the CPU's f64 value, `r` being the element of `rounded` (the value the GPU rounds to bf16
    /// last) and `m` of `t.abs` (the same pass over the inputs' magnitudes).
    fn check(&mut self, what: &str, t: Both, rounded: Tensor, relative: f64, absolute: f64) {
        let gpu = self.gpu.read(t.gpu).unwrap();
        let exact = self.cpu.read(t.cpu).unwrap();
        let sum = self.cpu.read(rounded).unwrap();
        let magnitude = self.cpu.read(t.abs).unwrap();
        let mut worst = 0.0f64;
        for (j, (((&g, &e), &s), &m)) in
            gpu.iter().zip(&exact).zip(&sum).zip(&magnitude).enumerate()
        {
            let allowed = relative * s.abs() + absolute * m + f64::MIN_POSITIVE;
            let difference = (g as f64 - e).abs();
            assert!(
                difference <= allowed,
                "{what}[{j}]: CUDA {g} vs CPU {e}, {difference:.3e} apart where {allowed:.3e} is \
                 allowed"
            );
            worst = worst.max(difference / allowed);
        }
        println!("{what}: at most {worst:.3} of its bound");
    }
}

/// bf16's unit roundoff: 8 significant bits, rounded to nearest.
const BF16_UNIT_ROUNDOFF: f64 = 1.0 / 512.0;

/// γ_K for a sum of `terms` products in f32.
fn f32_gamma(terms: usize) -> f64 {
    let k = terms as f64;
    k * F32_UNIT_ROUNDOFF / (1.0 - k * F32_UNIT_ROUNDOFF)
}

/// In bf16, each convolution pass (on bf16 copies of the f32 weights, its weight gradient added
/// from bf16 into the f32 gradient) and the `fc` (in f32 on converted copies of its input and
/// input gradient) against the CPU backend in f64 on the same bf16-rounded values, element by
/// element: a convolution's f32 sum of K products is within γ_K·Σ|x||w| of the exact one and is
/// rounded once to bf16 (2 unit roundoffs allowed: the f32 sum may round across a tie); the
/// weight gradient adds one more f32 rounding; the `fc` is [`tf32_bound`]'s (TF32 on in bf16),
/// its input gradient rounded once more to bf16.
#[test]
fn bf16_convolutions_and_fc_match_cpu_on_rounded_values() {
    let mut gpu = or_return!(cuda_or_skip(
        "bf16_convolutions_and_fc_match_cpu_on_rounded_values"
    ));
    gpu.set_precision(Precision::Bf16).unwrap();
    let mut p = Bf16Pair {
        gpu,
        cpu: CpuBackend::<f64>::new(),
        rng: SplitMix64(0xbf16),
    };
    let one_rounding = 2.0 * BF16_UNIT_ROUNDOFF;
    for (name, s) in conv_shapes() {
        let taps = s.kernel.0 * s.kernel.1;
        let x = p.random(s.input_len(), (-1.0, 1.0), true, false);
        let w = p.random(s.weight_len(), (-0.5, 0.5), false, true);
        let dy = p.random(s.output_len(), (-1.0, 1.0), true, false);

        let y = p.random(s.output_len(), (1e3, 2e3), true, false);
        p.gpu.conv2d_forward(&s, x.gpu, w.gpu, y.gpu).unwrap();
        p.cpu.conv2d_forward(&s, x.cpu, w.cpu, y.cpu).unwrap();
        p.cpu.conv2d_forward(&s, x.abs, w.abs, y.abs).unwrap();
        let gamma = 2.0 * f32_gamma(s.in_channels * taps);
        p.check(&format!("{name} forward"), y, y.cpu, one_rounding, gamma);

        for accumulate in [false, true] {
            let prior = if accumulate { (-1.0, 1.0) } else { (1e3, 2e3) };
            let dx = p.random(s.input_len(), prior, true, false);
            p.gpu
                .conv2d_backward_data(&s, dy.gpu, w.gpu, dx.gpu, accumulate)
                .unwrap();
            p.cpu
                .conv2d_backward_data(&s, dy.cpu, w.cpu, dx.cpu, accumulate)
                .unwrap();
            p.cpu
                .conv2d_backward_data(&s, dy.abs, w.abs, dx.abs, accumulate)
                .unwrap();
            // Accumulating, cuDNN rounds the prior value plus the sum once to bf16.
            let gamma = 2.0 * f32_gamma(s.out_channels * taps + 1);
            let what = format!("{name} backward data (accumulate {accumulate})");
            p.check(&what, dx, dx.cpu, one_rounding, gamma);
        }

        let dw = p.random(s.weight_len(), (-1.0, 1.0), false, false);
        let sum = p.cpu.alloc(s.weight_len()).unwrap();
        p.gpu
            .conv2d_backward_filter(&s, x.gpu, dy.gpu, dw.gpu)
            .unwrap();
        p.cpu
            .conv2d_backward_filter(&s, x.cpu, dy.cpu, sum)
            .unwrap();
        p.cpu
            .conv2d_backward_filter(&s, x.cpu, dy.cpu, dw.cpu)
            .unwrap();
        p.cpu
            .conv2d_backward_filter(&s, x.abs, dy.abs, dw.abs)
            .unwrap();
        let gamma = 2.0 * f32_gamma(s.batch * s.out_height() * s.out_width() + 1);
        p.check(
            &format!("{name} backward filter (accumulates)"),
            dw,
            sum,
            one_rounding,
            gamma,
        );
    }

    let s = LinearShape {
        batch: 3,
        inputs: 37,
        outputs: 10,
    };
    let x = p.random(s.batch * s.inputs, (-1.0, 1.0), true, false);
    let w = p.random(s.outputs * s.inputs, (-0.5, 0.5), false, false);
    let bias = p.random(s.outputs, (-0.5, 0.5), false, false);
    let dy = p.random(s.batch * s.outputs, (-1.0, 1.0), false, false);
    let y = p.random(s.batch * s.outputs, (1e3, 2e3), false, false);
    p.gpu
        .linear_forward(&s, x.gpu, w.gpu, bias.gpu, y.gpu)
        .unwrap();
    p.cpu
        .linear_forward(&s, x.cpu, w.cpu, bias.cpu, y.cpu)
        .unwrap();
    p.cpu
        .linear_forward(&s, x.abs, w.abs, bias.abs, y.abs)
        .unwrap();
    p.check("linear forward", y, y.cpu, 0.0, tf32_bound(s.inputs + 1));
    let dx = p.random(s.batch * s.inputs, (1e3, 2e3), true, false);
    let [dw, db] =
        [s.outputs * s.inputs, s.outputs].map(|len| p.random(len, (0.0, 0.0), false, false));
    p.gpu
        .linear_backward(&s, x.gpu, w.gpu, dy.gpu, dx.gpu, dw.gpu, db.gpu)
        .unwrap();
    p.cpu
        .linear_backward(&s, x.cpu, w.cpu, dy.cpu, dx.cpu, dw.cpu, db.cpu)
        .unwrap();
    p.cpu
        .linear_backward(&s, x.abs, w.abs, dy.abs, dx.abs, dw.abs, db.abs)
        .unwrap();
    p.check(
        "linear backward dx",
        dx,
        dx.cpu,
        one_rounding,
        2.0 * tf32_bound(s.outputs),
    );
    p.check("linear backward dw", dw, dw.cpu, 0.0, tf32_bound(s.batch));
    p.check("linear backward db", db, db.cpu, 0.0, tf32_bound(s.batch));
}

// ----- channels-last -----

/// The golden case with the network channels-last (NHWC) in f32: held to the CPU's NCHW run and
/// PyTorch's float64 one by the same bounds as the NCHW run, so the layout changes nothing
/// beyond f32 rounding.
#[test]
fn golden_case_channels_last_matches_cpu_f32() {
    let test = "golden_case_channels_last_matches_cpu_f32";
    let mut gpu = or_return!(cuda_or_skip(test));
    gpu.set_activation_layout(Layout::Nhwc);
    check_golden_case(gpu);
}

/// Each convolution pass at [`conv_shapes`] with channels-last data (KRSC filters transposed
/// from the KCRS weights, the weight gradient transposed back and added) against the CPU's NCHW
/// pass, element by element, in f32; outputs poisoned, and the accumulating passes on random
/// prior values.
#[test]
fn conv2d_channels_last_matches_cpu() {
    let test = "conv2d_channels_last_matches_cpu";
    let mut gpu = or_return!(cuda_or_skip(test));
    let mut cpu = CpuBackend::<f32>::new();
    let mut rng = SplitMix64(0x00c2_f04c);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    let nhwc = |v: &[f32], c: usize, hw: usize| Layout::Nchw.convert(Layout::Nhwc, v, c, hw);
    let nchw = |v: &[f32], c: usize, hw: usize| Layout::Nhwc.convert(Layout::Nchw, v, c, hw);
    for (name, s) in conv_shapes() {
        let (c, k) = (s.in_channels, s.out_channels);
        let (hw_in, hw_out) = (s.height * s.width, s.out_height() * s.out_width());
        let (x, w, dy) = (
            random(s.input_len()),
            random(s.weight_len()),
            random(s.output_len()),
        );
        let (dx_prior, dw_prior) = (random(s.input_len()), random(s.weight_len()));

        let mut on_cpu = |data: &[f32]| {
            let t = cpu.alloc(data.len()).unwrap();
            cpu.write(t, data).unwrap();
            t
        };
        let (cx, cw, cdy) = (on_cpu(&x), on_cpu(&w), on_cpu(&dy));
        let (cy, cdx, cdw) = (on_cpu(&dy), on_cpu(&dx_prior), on_cpu(&dw_prior));
        let cdx_assigned = on_cpu(&x);
        cpu.conv2d_forward(&s, cx, cw, cy).unwrap();
        cpu.conv2d_backward_data(&s, cdy, cw, cdx, true).unwrap();
        cpu.conv2d_backward_data(&s, cdy, cw, cdx_assigned, false)
            .unwrap();
        cpu.conv2d_backward_filter(&s, cx, cdy, cdw).unwrap();

        let mut laid_out = |data: &[f32]| {
            let t = gpu.alloc_activation_in(data.len(), Layout::Nhwc).unwrap();
            gpu.write(t, data).unwrap();
            t
        };
        let (gx, gdy) = (
            laid_out(&nhwc(&x, c, hw_in)),
            laid_out(&nhwc(&dy, k, hw_out)),
        );
        let gdx = laid_out(&nhwc(&dx_prior, c, hw_in));
        let gdx_assigned = laid_out(&vec![f32::NAN; s.input_len()]);
        let gy = laid_out(&vec![f32::NAN; s.output_len()]);
        let (gw, gdw) = (gpu.alloc(w.len()).unwrap(), gpu.alloc(w.len()).unwrap());
        gpu.write(gw, &w).unwrap();
        gpu.write(gdw, &dw_prior).unwrap();
        gpu.conv2d_forward(&s, gx, gw, gy).unwrap();
        gpu.conv2d_backward_data(&s, gdy, gw, gdx, true).unwrap();
        gpu.conv2d_backward_data(&s, gdy, gw, gdx_assigned, false)
            .unwrap();
        gpu.conv2d_backward_filter(&s, gx, gdy, gdw).unwrap();

        let mut read = |t| widen(&cpu.read(t).unwrap());
        for (what, got, want) in [
            ("forward", nchw(&gpu.read(gy).unwrap(), k, hw_out), read(cy)),
            (
                "backward data",
                nchw(&gpu.read(gdx_assigned).unwrap(), c, hw_in),
                read(cdx_assigned),
            ),
            (
                "backward data, accumulating",
                nchw(&gpu.read(gdx).unwrap(), c, hw_in),
                read(cdx),
            ),
            (
                "backward filter (accumulates)",
                gpu.read(gdw).unwrap(),
                read(cdw),
            ),
        ] {
            let e = rel_error(&widen(&got), &want);
            println!("{name} {what}: relative error {e:.2e}");
            assert!(
                e < OP_TOLERANCE,
                "{name} {what} channels-last: relative error {e:.3e}"
            );
        }
    }
}

/// NCHW into channels-last and back is exact, in f32 and into bf16; an op whose kernel indexes
/// NCHW refuses a channels-last operand, an op given two layouts refuses them, and the CPU
/// backend has no channels-last buffers.
#[test]
fn channels_last_converts_exactly_and_nchw_ops_refuse_it() {
    let test = "channels_last_converts_exactly_and_nchw_ops_refuse_it";
    let mut gpu = or_return!(cuda_or_skip(test));
    let s = PoolShape {
        batch: 2,
        channels: 5,
        height: 3,
        width: 7,
    };
    let (n, hw) = (s.numel(), s.hw());
    let mut rng = SplitMix64(20);
    let values: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
    let nchw = gpu.alloc(n).unwrap();
    let nhwc = gpu.alloc_activation_in(n, Layout::Nhwc).unwrap();
    let back = gpu.alloc(n).unwrap();
    gpu.write(nchw, &values).unwrap();
    gpu.fill(nhwc, f32::NAN).unwrap();
    gpu.fill(back, f32::NAN).unwrap();
    gpu.convert_layout(&s, nchw, nhwc).unwrap();
    gpu.convert_layout(&s, nhwc, back).unwrap();
    let want = Layout::Nchw.convert(Layout::Nhwc, &values, s.channels, hw);
    assert_bit_identical("NHWC", &gpu.read(nhwc).unwrap(), &want);
    assert_bit_identical("NCHW again", &gpu.read(back).unwrap(), &values);

    let err = gpu.convert_layout(&s, nchw, back).unwrap_err();
    assert!(err.to_string().contains("both are Nchw"), "{err}");
    let err = gpu.relu_forward(nhwc, back).unwrap_err();
    assert!(err.to_string().contains("channels-last (NHWC)"), "{err}");
    let p = Pool2dParams::square(3, 1, 1);
    let indices = gpu.alloc_index(n).unwrap();
    let err = gpu
        .max_pool_forward(&s, &p, nhwc, back, indices)
        .unwrap_err();
    assert!(err.to_string().contains("takes one layout"), "{err}");

    let mut bf16 = or_return!(cuda_or_skip(test));
    bf16.set_precision(Precision::Bf16).unwrap();
    assert_eq!(bf16.activation_layout(), Layout::Nhwc);
    let (from, to) = (bf16.alloc(n).unwrap(), bf16.alloc_activation(n).unwrap());
    let to_nhwc = bf16.alloc_activation_in(n, Layout::Nhwc).unwrap();
    bf16.write(from, &values).unwrap();
    bf16.write(to, &values).unwrap();
    bf16.convert_layout(&s, from, to_nhwc).unwrap();
    let rounded = bf16.read(to).unwrap();
    let want = Layout::Nchw.convert(Layout::Nhwc, &rounded, s.channels, hw);
    assert_bit_identical("NHWC bf16", &bf16.read(to_nhwc).unwrap(), &want);

    let mut cpu = CpuBackend::<f32>::new();
    let err = cpu.alloc_activation_in(4, Layout::Nhwc).unwrap_err();
    assert!(err.to_string().contains("keeps activations NCHW"), "{err}");
}
