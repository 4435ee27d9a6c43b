//! InceptionV3 forward+backward+SGD on the CUDA backend, images per second at batch 64, 299² and
//! 448², up to Mixed_6e and full (1000 classes), f32. `tools/torch_baseline.py` times PyTorch on
//! the same card in the same GPU check; the target is parity with its fp32 figure. Prints
//! `NETBENCH` lines (images/s, ms/step, memory the backend holds); without a GPU it says so.

use c2f_inception::backend::{Backend, BnMode};
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::init::golden_init;
use c2f_inception::network::Network;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::testing::SplitMix64;
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "common/net.rs"]
mod net;
use net::{network_shapes, time_training_step};

fn case(c: &mut Criterion, batch: usize, size: usize, depth: Depth, name: &str) {
    let Some(mut b) = cuda_or_skip(&format!("inception_gpu {name}")) else {
        return;
    };
    let graph = Graph::new(InceptionConfig {
        input_size: size,
        width: 1.0,
        depth,
    })
    .unwrap();
    let mut params = vec![0.0; graph.params.total()];
    let mut buffers = vec![0.0; graph.buffers.total()];
    golden_init(&graph, &mut params, &mut buffers);
    let mut net = Network::new(&mut b, graph, batch).unwrap();
    b.write(net.params, &params).unwrap();
    b.write(net.buffers, &buffers).unwrap();
    let mut rng = SplitMix64(3);
    let image: Vec<f32> = (0..net.input().len)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    b.write(net.input(), &image).unwrap();
    let grad: Vec<f32> = (0..net.output_grad().len)
        .map(|_| rng.uniform(-1e-3, 1e-3) as f32)
        .collect();
    let sgd = SgdParams::new(1e-4, 0.9, 1e-5);
    // Backward reuses the output gradient's memory: each step copies it in on the device.
    let loss_grad = b.alloc(grad.len()).unwrap();
    b.write(loss_grad, &grad).unwrap();
    time_training_step(c, "inception_gpu_f32", name, batch, &mut b, |b| {
        net.forward(b, BnMode::Train).unwrap();
        b.axpby(1.0, loss_grad, 0.0, net.output_grad()).unwrap();
        net.zero_grads(b).unwrap();
        net.backward(b, BnMode::Train, false).unwrap();
        net.sgd_step(b, &sgd).unwrap();
    });
}

fn bench(c: &mut Criterion) {
    let (batch, sizes) = network_shapes();
    for size in sizes {
        let mixed6e = format!("mixed6e_b{batch}_{size}");
        case(c, batch, size, Depth::Mixed6e, &mixed6e);
        let full = format!("full_b{batch}_{size}");
        case(c, batch, size, Depth::Full { classes: 1000 }, &full);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
