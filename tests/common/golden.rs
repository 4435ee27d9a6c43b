//! The golden case of `tools/make_golden.py`, shared by the tests that run it on a backend:
//! torchvision's InceptionV3 (width 1.0, 10 classes) in train mode on a batch of 2 × 3 × 107 ×
//! 107, every value from the shared counter-based initialiser, dropout off, labels [3, 7].

use c2f_inception::backend::{prelude::*, BnMode};
use c2f_inception::init::{counter_uniform, golden_init};
use c2f_inception::network::Network;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_kernels::Real;
use safetensors::SafeTensors;

pub use super::recorded::floats;

pub const LABELS: [usize; 2] = [3, 7];
pub const CLASSES: usize = 10;

/// `tests/data/inception_golden.safetensors`.
pub fn file() -> SafeTensors<'static> {
    static BYTES: &[u8] = include_bytes!("../data/inception_golden.safetensors");
    SafeTensors::deserialize(BYTES).expect("tests/data/inception_golden.safetensors is readable")
}

pub fn graph() -> Graph {
    Graph::new(InceptionConfig {
        input_size: 107,
        width: 1.0,
        depth: Depth::Full { classes: CLASSES },
    })
    .unwrap()
}

/// The golden network on `b`, with dropout off as in the golden run.
pub fn network<B: Backend>(b: &mut B) -> Network {
    let mut net = Network::new(b, graph(), LABELS.len()).unwrap();
    net.dropout.p = 0.0;
    net
}

/// What one train-mode step of the golden case produced, widened to f64.
pub struct Run {
    pub mixed_6e: Vec<f64>,
    pub logits: Vec<f64>,
    pub loss: f64,
    pub grads: Vec<f64>,
    pub running: Vec<f64>,
}

fn widen<R: Real>(v: &[R]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}

fn narrow<R: Real>(v: &[f32]) -> Vec<R> {
    v.iter().map(|&x| R::from_f64(x as f64)).collect()
}

/// Mean softmax cross-entropy of `logits [B, C]` against [`LABELS`] and its gradient, in f64.
fn cross_entropy(logits: &[f64]) -> (f64, Vec<f64>) {
    let batch = LABELS.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; logits.len()];
    for (b, &label) in LABELS.iter().enumerate() {
        let row = &logits[b * CLASSES..][..CLASSES];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += (sum.ln() + max - row[label]) / batch;
        for c in 0..CLASSES {
            let p = (row[c] - max).exp() / sum;
            grad[b * CLASSES + c] = (p - if c == label { 1.0 } else { 0.0 }) / batch;
        }
    }
    (loss, grad)
}

/// One forward and backward of the golden case on `net`, from the initial state (parameters,
/// running statistics and input written afresh, gradients zeroed).
pub fn run<B: Backend>(b: &mut B, net: &mut Network) -> Run {
    let graph = net.graph.clone();
    let mut params = vec![0.0f32; graph.params.total()];
    let mut buffers = vec![0.0f32; graph.buffers.total()];
    golden_init(&graph, &mut params, &mut buffers);
    let mut image = vec![0.0f32; net.input().len];
    counter_uniform("input", -1.0, 1.0, &mut image);
    b.write(net.params, &narrow(&params)).unwrap();
    b.write(net.buffers, &narrow(&buffers)).unwrap();
    b.write(net.input(), &narrow(&image)).unwrap();
    net.zero_grads(b).unwrap();
    net.forward(b, BnMode::Train).unwrap();
    let mixed_6e = widen(&net.read_activation(b, graph.mixed_6e).unwrap());
    let logits = widen(&b.read(net.output()).unwrap());
    let (loss, dlogits) = cross_entropy(&logits);
    let dlogits: Vec<B::Scalar> = dlogits.iter().map(|&v| B::Scalar::from_f64(v)).collect();
    b.write(net.output_grad(), &dlogits).unwrap();
    net.backward(b, BnMode::Train, false).unwrap();
    Run {
        mixed_6e,
        logits,
        loss,
        grads: widen(&b.read(net.grads).unwrap()),
        running: widen(&b.read(net.buffers).unwrap()),
    }
}
