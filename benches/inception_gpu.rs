//! InceptionV3 forward+backward+SGD on the CUDA backend, images per second at batch 64, 299² and
//! 448², up to Mixed_6e and full (1000 classes): in f32 with cuDNN's heuristic algorithm choice
//! and with timed choice (`_timed`), in tf32 with the heuristic, and in bf16 (`c2f train`'s
//! default on a GPU; channels-last) both ways and replayed from a CUDA graph (`_graph`, with the
//! heuristic, as `c2f train` runs); each row's name ends in its precision.
//! `tools/torch_baseline.py` times PyTorch on the same card in the same GPU check; the target is
//! parity with its fp32 figure, the timed rows' peer being its fp32 + `cudnn.benchmark` one, the
//! tf32 rows' its tf32 one and the bf16 rows' its AMP one. Prints `NETBENCH` lines (images/s,
//! ms/step, memory the backend holds), and for each network an `OPBENCH` line with the share of
//! the step its cuDNN convolutions take alone (forward, backward-data, backward-filter at every
//! layer's shape), the rest being our kernels; without a GPU it says so.

use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::conv::Conv2dShape;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::AlgorithmChoice::{self, Heuristic, Timed};
use c2f_inception::cuda::CudaBackend;
use c2f_inception::network::{Network, SgdGroup};
use c2f_inception::spec::{Depth, InceptionConfig, Op};
use c2f_inception::Precision::{self, Bf16, Tf32, F32};
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::testing::bench_smoke;
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "common/golden_net.rs"]
mod golden_net;
#[path = "common/net.rs"]
mod net;
use golden_net::golden_network;
use net::{captured, network_shapes, time_steps, time_training_step};

fn case(
    c: &mut Criterion,
    batch: usize,
    size: usize,
    depth: Depth,
    name: &str,
    (precision, choice, graph): (Precision, AlgorithmChoice, bool),
) {
    let Some(mut b) = cuda_or_skip(&format!("inception_gpu {name}")) else {
        return;
    };
    b.set_precision(precision).unwrap();
    b.set_conv_algorithm_choice(choice);
    let config = InceptionConfig {
        input_size: size,
        width: 1.0,
        depth,
    };
    let (mut net, loss_grad) = golden_network(&mut b, config, batch, 3);
    let lr = b.alloc(1).unwrap();
    b.write(lr, &[1e-4]).unwrap();
    let sgd = SgdGroup {
        params: SgdParams::new(0.9, 1e-5),
        lr,
    };
    let group = format!("inception_gpu_{precision}");
    let eager = |b: &mut CudaBackend| {
        net.forward(b, BnMode::Train).unwrap();
        b.axpby(1.0, loss_grad, 0.0, net.output_grad()).unwrap();
        net.zero_grads(b).unwrap();
        net.backward(b, BnMode::Train, false).unwrap();
        net.sgd_step(b, &sgd).unwrap();
    };
    let step = match graph {
        true => {
            let replay = captured(&mut b, eager);
            time_training_step(c, &group, name, batch, &mut b, replay)
        }
        false => time_training_step(c, &group, name, batch, &mut b, eager),
    };
    let mut convolutions = convolutions_of(&net, &mut b);
    let convs = time_steps(&mut b, &mut convolutions);
    println!(
        "OPBENCH\t{name}\t{}\tcuDNN convolutions alone\t{:.1} ms/step\t{:.0}% of the step",
        b.describe(),
        convs * 1e3,
        100.0 * convs / step
    );
}

/// The convolutions of one training step of `net` and nothing else: each layer's forward, then
/// in reverse its backward-filter and (but for the first layer's, which the step skips too)
/// backward-data, on the network's own inputs and weights, into scratch outputs.
fn convolutions_of(net: &Network, b: &mut CudaBackend) -> impl FnMut(&mut CudaBackend) {
    let layers: Vec<(Conv2dShape, Tensor, Tensor, Tensor)> = net
        .graph
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Conv { conv, input, .. } => {
                let conv = &net.graph.convs[*conv];
                Some((
                    net.conv_shape(conv, *input),
                    net.activation(*input),
                    net.param(conv.weight),
                    net.grad(conv.weight),
                ))
            }
            _ => None,
        })
        .collect();
    let most = |len: fn(&Conv2dShape) -> usize| layers.iter().map(|l| len(&l.0)).max().unwrap();
    // In the network's layout, as the activations the convolutions read.
    let layout = b.activation_layout();
    let out = b
        .alloc_activation_in(most(Conv2dShape::output_len), layout)
        .unwrap();
    let d_in = b
        .alloc_activation_in(most(Conv2dShape::input_len), layout)
        .unwrap();
    move |b| {
        for (s, x, w, _) in &layers {
            b.conv2d_forward(s, *x, *w, out.slice(0, s.output_len()))
                .unwrap();
        }
        for (i, (s, x, w, dw)) in layers.iter().enumerate().rev() {
            let dy = out.slice(0, s.output_len());
            b.conv2d_backward_filter(s, *x, dy, *dw).unwrap();
            if i > 0 {
                b.conv2d_backward_data(s, dy, *w, d_in.slice(0, s.input_len()), false)
                    .unwrap();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let (batch, sizes) = network_shapes();
    for size in sizes {
        // Timed algorithm choice is the peer of PyTorch's fp32 + cudnn.benchmark rows; tf32 is
        // timed with the heuristic only, as `c2f train --precision tf32` runs; bf16 both ways, the
        // timed rows being the peer of PyTorch's AMP + channels_last + cudnn.benchmark; bf16
        // replayed from a CUDA graph as `c2f train` runs. The smoke run takes the bf16 rows
        // with the heuristic and Mixed_6e's graph row: the others run the same code with
        // another precision (the backend's tests cover each), algorithm choice
        // (`conv2d_with_timed_algorithms_matches_cpu`) or depth, and each row costs the
        // emulator a minute.
        let rows = [
            (F32, Heuristic, false, ""),
            (F32, Timed, false, "_timed"),
            (Tf32, Heuristic, false, ""),
            (Bf16, Heuristic, false, ""),
            (Bf16, Timed, false, "_timed"),
            (Bf16, Heuristic, true, "_graph"),
        ];
        let smoke = bench_smoke();
        for (precision, choice, graph, suffix) in rows {
            for (depth, net) in [
                (Depth::Mixed6e, "mixed6e"),
                (Depth::Full { classes: 1000 }, "full"),
            ] {
                let full = depth != Depth::Mixed6e;
                if smoke && (precision != Bf16 || choice == Timed || (graph && full)) {
                    continue;
                }
                let name = format!("{net}_b{batch}_{size}_{precision}{suffix}");
                case(c, batch, size, depth, &name, (precision, choice, graph));
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
