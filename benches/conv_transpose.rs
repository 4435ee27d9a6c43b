//! ConvTranspose2d benchmarks. Always: the CPU reference (the CPU backend's op) at a small batch.
//! With a GPU: our kernels against cuDNN (backward-data for the forward, forward for dx,
//! backward-filter for d_weight) on the up-sampler `c2f train` builds, at B = 64, k = 4,
//! stride 2, padding 1, with the channels `c2f_train::upsampler::default_channels` gives: at
//! 299² three layers 1→8 (17→34), 8→8 (34→68), 8→1 (68→136), each layer alone and the chain's
//! forward; at 448² the chain's forward, 26→52→104→208. (The model then resizes bilinearly to
//! the input side: `benches/mask.rs`.) f32 against cuDNN in plain FMA (our arithmetic) and in
//! TF32 (PyTorch's default), bf16 against cuDNN with tensor cores. Target: 5× cuDNN.

mod common;

use c2f_baselines::conv_transpose::CudnnConvTranspose;
use c2f_kernels::conv_transpose::{
    backward_cpu, forward_cpu, ConvTransposeGpu, ConvTransposeParams,
};
use c2f_kernels::testing::bench_smoke;
use c2f_kernels::{Element, Gpu};
use c2f_train::upsampler::{attention_map_side, default_channels};
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::cudnn::CudnnDataType;
use cudarc::driver::CudaSlice;
use std::time::Duration;

const TARGET: f64 = 5.0;

/// An up-sampler layer: k = 4, stride 2, padding 1, doubling the side.
fn layer(batch: usize, cin: usize, cout: usize, side: usize) -> ConvTransposeParams {
    ConvTransposeParams {
        batch,
        in_channels: cin,
        out_channels: cout,
        height: side,
        width: side,
        kernel_size: 4,
        stride: 2,
        padding: 1,
        output_padding: 0,
    }
}

/// The batch of the GPU benches: 64, or 1 under `C2F_BENCH_SMOKE=1`.
fn gpu_batch() -> usize {
    if bench_smoke() {
        1
    } else {
        64
    }
}

/// The up-sampler `c2f train` builds for input side `input` at batch `b`: one map in, one
/// out, `default_channels` between, each layer doubling the side.
fn chain(b: usize, input: usize) -> Vec<ConvTransposeParams> {
    let side = attention_map_side(input).unwrap().0;
    let mut channels = vec![1];
    channels.extend(default_channels(side, input));
    channels.push(1);
    channels
        .windows(2)
        .enumerate()
        .map(|(i, pair)| layer(b, pair[0], pair[1], side << i))
        .collect()
}

/// The model's input sides the GPU groups time: two small ones in the smoke run, or
/// 299 (each layer and the chain) and 448 (the chain).
fn inputs() -> (usize, usize) {
    if bench_smoke() {
        (75, 107)
    } else {
        (299, 448)
    }
}

fn id(p: &ConvTransposeParams) -> String {
    format!(
        "B{}_{}to{}_{}to{}",
        p.batch,
        p.in_channels,
        p.out_channels,
        p.height,
        p.out_height()
    )
}

fn cpu(c: &mut Criterion) {
    // A CPU-sized batch: the CPU backend trains at small batch sizes.
    let p = layer(2, 8, 8, 34);
    let x = common::draw(p.input_len(), 1);
    let w = common::draw(p.weight_len(), 2);
    let bias = common::draw(p.out_channels, 3);
    let dy = common::draw(p.output_len(), 4);
    let mut y = vec![0.0f32; p.output_len()];
    let mut dx = vec![0.0f32; p.input_len()];
    let mut dw = vec![0.0f32; p.weight_len()];
    let mut db = vec![0.0f32; p.out_channels];
    let name = format!("forward_backward_{}", id(&p));
    common::bench_cpu(c, "conv_transpose_cpu_f32", &name, || {
        forward_cpu(&p, &x, [&w, &bias], &mut y).unwrap();
        backward_cpu(&p, [&x, &dy], &w, &mut dx, [&mut dw, &mut db]).unwrap();
    });
}

/// Device buffers of one layer: activations in `T`, parameters in f32 (ours) and in `T` (cuDNN).
struct Buffers<T: Element> {
    x: CudaSlice<T>,
    w: CudaSlice<f32>,
    w_t: CudaSlice<T>,
    bias: CudaSlice<f32>,
    y: CudaSlice<T>,
    dy: CudaSlice<T>,
    dx: CudaSlice<T>,
    dw: CudaSlice<f32>,
    dw_t: CudaSlice<T>,
    db: CudaSlice<f32>,
}

impl<T: Element> Buffers<T> {
    fn new(gpu: &Gpu, p: &ConvTransposeParams) -> Buffers<T> {
        let to_t = |v: Vec<f32>| v.into_iter().map(T::from_f32).collect::<Vec<T>>();
        let w = common::draw(p.weight_len(), 6);
        Buffers {
            x: gpu.upload(&to_t(common::draw(p.input_len(), 5))).unwrap(),
            w_t: gpu.upload(&to_t(w.clone())).unwrap(),
            w: gpu.upload(&w).unwrap(),
            bias: gpu.upload(&common::draw(p.out_channels, 7)).unwrap(),
            y: gpu.alloc_zeros(p.output_len()).unwrap(),
            dy: gpu.upload(&to_t(common::draw(p.output_len(), 8))).unwrap(),
            dx: gpu.alloc_zeros(p.input_len()).unwrap(),
            dw: gpu.alloc_zeros(p.weight_len()).unwrap(),
            dw_t: gpu.alloc_zeros(p.weight_len()).unwrap(),
            db: gpu.alloc_zeros(p.out_channels).unwrap(),
        }
    }
}

/// Minimum traffic of the forward: read x and the parameters, write y.
fn forward_bytes<T>(p: &ConvTransposeParams) -> usize {
    std::mem::size_of::<T>() * (p.input_len() + p.output_len())
        + 4 * (p.weight_len() + p.out_channels)
}

/// Minimum traffic of dx: read dy and the weight, write dx.
fn grad_input_bytes<T>(p: &ConvTransposeParams) -> usize {
    std::mem::size_of::<T>() * (p.input_len() + p.output_len()) + 4 * p.weight_len()
}

/// Minimum traffic of d_weight and d_bias: read x and dy, read and write the two gradients.
fn grad_params_bytes<T>(p: &ConvTransposeParams) -> usize {
    std::mem::size_of::<T>() * (p.input_len() + p.output_len())
        + 8 * (p.weight_len() + p.out_channels)
}

/// The cuDNN baseline, or why it is skipped.
fn baseline<T: Element + CudnnDataType>(
    gpu: &Gpu,
    p: ConvTransposeParams,
    tensor_ops: bool,
    group: &str,
) -> Option<CudnnConvTranspose<T>> {
    if !c2f_kernels::cudnn_raw::available() {
        println!("{group}: cuDNN baseline skipped: libcudnn could not be loaded");
        return None;
    }
    match CudnnConvTranspose::<T>::new(gpu, p, tensor_ops) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("{group}: cuDNN baseline skipped for {}: {e}", id(&p));
            None
        }
    }
}

/// Our three kernels on one layer, each against its cuDNN counterpart in every `(tensor_ops,
/// label)` math of `baselines`.
fn gpu_layer<T: Element + CudnnDataType>(
    c: &mut Criterion,
    gpu: &Gpu,
    p: ConvTransposeParams,
    baselines: &[(bool, &str)],
) {
    let mut group = common::GpuGroup::new(c, gpu, format!("conv_transpose_gpu_{}", T::SUFFIX));
    let name = id(&p);
    let mut buf = Buffers::<T>::new(gpu, &p);
    let mut ours = ConvTransposeGpu::<T>::new(gpu, p).unwrap();
    let bytes = [
        forward_bytes::<T>(&p),
        grad_input_bytes::<T>(&p),
        grad_params_bytes::<T>(&p),
    ];

    let fwd = group.bench(&format!("forward_{name}"), bytes[0], || {
        ours.forward(&buf.x, [&buf.w, &buf.bias], &mut buf.y)
            .unwrap()
    });
    let dx = group.bench(&format!("grad_input_{name}"), bytes[1], || {
        ours.backward_input(&buf.w, &buf.dy, &mut buf.dx).unwrap()
    });
    let dw = group.bench(&format!("grad_params_{name}"), bytes[2], || {
        ours.backward_params([&buf.x, &buf.dy], [&mut buf.dw, &mut buf.db])
            .unwrap()
    });
    for &(tensor_ops, label) in baselines {
        let Some(mut cudnn) = baseline::<T>(gpu, p, tensor_ops, &group.name) else {
            continue;
        };
        // Each of ours against the cuDNN call that computes the same: `(ours's name and
        // seconds, cuDNN's call)`.
        let vs = |(ours, secs): (&str, f64), call: &str, extra: &str| {
            let base = format!("cudnn_{label}_{}_{name}", call.replace('-', "_"));
            let what = format!("{ours}_{name} vs cuDNN {label} {call}{extra}");
            (base, what, secs)
        };
        let (base, what, secs) = vs(("forward", fwd), "backward-data", "");
        group.baseline(&base, (&what, secs, TARGET), bytes[0], || {
            cudnn.forward(&buf.x, &buf.w_t, &mut buf.y).unwrap()
        });
        let (base, what, secs) = vs(("grad_input", dx), "forward", "");
        group.baseline(&base, (&what, secs, TARGET), bytes[1], || {
            cudnn
                .backward_input(&buf.dy, &buf.w_t, &mut buf.dx)
                .unwrap()
        });
        let (base, what, secs) = vs(("grad_params", dw), "backward-filter", " (no bias)");
        group.baseline(&base, (&what, secs, TARGET), bytes[2], || {
            cudnn
                .backward_weight(&buf.x, &buf.dy, &mut buf.dw_t)
                .unwrap()
        });
    }
}

/// The whole chain's forward, each layer's output feeding the next, against cuDNN's.
fn gpu_chain<T: Element + CudnnDataType>(
    c: &mut Criterion,
    gpu: &Gpu,
    layers: &[ConvTransposeParams],
    baselines: &[(bool, &str)],
) {
    let mut group = common::GpuGroup::new(c, gpu, format!("conv_transpose_gpu_{}", T::SUFFIX));
    let mut convs: Vec<_> = layers
        .iter()
        .map(|&p| ConvTransposeGpu::<T>::new(gpu, p).unwrap())
        .collect();
    let bufs: Vec<_> = layers.iter().map(|p| Buffers::<T>::new(gpu, p)).collect();
    // acts[i] is layer i's input; acts[i + 1] its output.
    let mut acts: Vec<CudaSlice<T>> = std::iter::once(layers[0].input_len())
        .chain(layers.iter().map(|p| p.output_len()))
        .map(|n| gpu.alloc_zeros(n).unwrap())
        .collect();
    let bytes: usize = layers.iter().map(forward_bytes::<T>).sum();
    let name = format!(
        "chain_B{}_{}to{}",
        layers[0].batch,
        layers[0].height,
        layers[layers.len() - 1].out_height()
    );
    let ours = group.bench(&format!("forward_{name}"), bytes, || {
        for (i, conv) in convs.iter_mut().enumerate() {
            let (input, output) = acts.split_at_mut(i + 1);
            conv.forward(&input[i], [&bufs[i].w, &bufs[i].bias], &mut output[0])
                .unwrap();
        }
    });
    for &(tensor_ops, label) in baselines {
        let Some(mut cudnns) = layers
            .iter()
            .map(|&p| baseline::<T>(gpu, p, tensor_ops, &group.name))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let what = format!("forward_{name} vs cuDNN {label}");
        group.baseline(
            &format!("cudnn_{label}_forward_{name}"),
            (&what, ours, TARGET),
            bytes,
            || {
                for (i, cudnn) in cudnns.iter_mut().enumerate() {
                    let (input, output) = acts.split_at_mut(i + 1);
                    cudnn
                        .forward(&input[i], &bufs[i].w_t, &mut output[0])
                        .unwrap();
                }
            },
        );
    }
}

fn gpu_dtype<T: Element + CudnnDataType>(c: &mut Criterion, gpu: &Gpu, baselines: &[(bool, &str)]) {
    let (small, large) = inputs();
    let layers = chain(gpu_batch(), small);
    for &p in &layers {
        gpu_layer::<T>(c, gpu, p, baselines);
    }
    gpu_chain::<T>(c, gpu, &layers, baselines);
    gpu_chain::<T>(c, gpu, &chain(gpu_batch(), large), baselines);
}

fn gpu(c: &mut Criterion) {
    let Some(gpu) = common::gpu_or_skip("conv_transpose GPU benches") else {
        return;
    };
    // f32 against cuDNN in plain FMA (our arithmetic) and in TF32 (PyTorch's default).
    gpu_dtype::<f32>(c, &gpu, &[(false, "fma"), (true, "tf32")]);
    gpu_dtype::<half::bf16>(c, &gpu, &[(true, "tensor_op")]);
}

criterion_group! {
    name = benches;
    // Many kernels: shorter windows than criterion's defaults keep the run to a few minutes.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = cpu, gpu
}
criterion_main!(benches);
