//! The InceptionV3 a network bench times, the same on every backend: the golden test's
//! initialisation, a random input batch and a loss gradient to feed backward.

use c2f_inception::backend::{prelude::*, Tensor};
use c2f_inception::init::golden_init;
use c2f_inception::network::Network;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_kernels::testing::SplitMix64;

/// InceptionV3 of `config` for `batch` images on `b`: parameters and buffers from the golden
/// initialiser, the input uniform in `[-1, 1)`, and the loss gradient (uniform in
/// `[-1e-3, 1e-3)`, in a tensor of its own) that each step copies into the network's output
/// gradient, since backward reuses that memory. Both are drawn from `seed`.
pub fn golden_network<B: Backend<Scalar = f32>>(
    b: &mut B,
    config: InceptionConfig,
    batch: usize,
    seed: u64,
) -> (Network, Tensor) {
    let graph = Graph::new(config).unwrap();
    let mut params = vec![0.0; graph.params.total()];
    let mut buffers = vec![0.0; graph.buffers.total()];
    golden_init(&graph, &mut params, &mut buffers);
    let net = Network::new(b, graph, batch).unwrap();
    b.write(net.params, &params).unwrap();
    b.write(net.buffers, &buffers).unwrap();
    let mut rng = SplitMix64(seed);
    let image: Vec<f32> = (0..net.input().len)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    b.write(net.input(), &image).unwrap();
    let grad: Vec<f32> = (0..net.output_grad().len)
        .map(|_| rng.uniform(-1e-3, 1e-3) as f32)
        .collect();
    // Stored as the output gradient is: the logits' f32, Mixed_6e's as activations are.
    let loss_grad = match config.depth {
        Depth::Mixed6e => b.alloc_activation(grad.len()).unwrap(),
        Depth::Full { .. } => b.alloc(grad.len()).unwrap(),
    };
    b.write(loss_grad, &grad).unwrap();
    (net, loss_grad)
}
