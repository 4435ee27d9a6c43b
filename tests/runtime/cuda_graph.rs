//! An InceptionV3 training step on the CUDA backend captured into a CUDA graph once and replayed
//! (`CudaBackend::capture`, `replay`): the same bits, parameters, statistics and outputs, as the
//! same steps run op by op; what a capture cannot hold refused with an error naming the op; and
//! a replay refused where the graph's addresses would no longer hold. Without a GPU (or cuDNN
//! and cuBLAS) each test prints `skipped: ...` and passes, unless `C2F_REQUIRE_GPU=1`.

use c2f_inception::backend::{prelude::*, BnMode, LinearShape, Tensor};
use c2f_inception::cpu::conv::Conv2dShape;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::CudaBackend;
use c2f_inception::init::golden_init;
use c2f_inception::network::{Network, SgdGroup};
use c2f_inception::spec::Depth;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::testing::{assert_bit_identical, SplitMix64};
use c2f_kernels::{Error, Result};

use crate::common::graph::graph;
use crate::common::skip::or_return;

const BATCH: usize = 4;
const CLASSES: usize = 3;
/// Steps after the warm-up: run op by op on one backend, replayed on the other.
const STEPS: usize = 3;
/// The loss is `GRADIENT_SCALE · ‖logits‖² / 2`, whose gradient the step computes on the device
/// (the backend's cross-entropy reads its loss on the host, which a graph cannot hold).
const GRADIENT_SCALE: f64 = 0.25;
const SGD: SgdParams = SgdParams {
    momentum: 0.9,
    weight_decay: 1e-4,
    grad_scale: 1.0,
};
const LEARNING_RATE: f32 = 0.01;

/// A network with the slot its SGD reads the learning rate from.
pub(crate) struct TrainNet {
    net: Network,
    lr: Tensor,
}

impl std::ops::Deref for TrainNet {
    type Target = Network;
    fn deref(&self) -> &Network {
        &self.net
    }
}

/// The network on `b` from the golden initialiser, dropout on at a fixed step, and its rate.
pub(crate) fn network(b: &mut CudaBackend) -> TrainNet {
    // The runtime tests' small network: 75² input, width 0.125.
    let graph = graph(75, 0.125, Depth::Full { classes: CLASSES });
    let mut params = vec![0.0f32; graph.params.total()];
    let mut buffers = vec![0.0f32; graph.buffers.total()];
    golden_init(&graph, &mut params, &mut buffers);
    let mut net = Network::new(b, graph, BATCH).unwrap();
    b.write(net.params, &params).unwrap();
    b.write(net.buffers, &buffers).unwrap();
    net.dropout.seed = 11;
    net.set_dropout_step(b, 3).unwrap();
    let lr = b.alloc(1).unwrap();
    b.write(lr, &[LEARNING_RATE]).unwrap();
    TrainNet { net, lr }
}

/// Images for step `step`, the same on every call.
pub(crate) fn images(net: &Network, step: u64) -> Vec<f32> {
    let mut rng = SplitMix64(0x1a9e + step);
    (0..net.input().len)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect()
}

/// One training step, every op on the device: forward in training mode, the loss's gradient
/// into the output gradient, backward, SGD.
pub(crate) fn train_step(b: &mut CudaBackend, train: &mut TrainNet) -> Result<()> {
    let (net, lr) = (&mut train.net, train.lr);
    net.zero_grads(b)?;
    net.forward(b, BnMode::Train)?;
    b.axpby(GRADIENT_SCALE, net.output(), 0.0, net.output_grad())?;
    net.backward(b, BnMode::Train, false)?;
    net.sgd_step(b, &SgdGroup { params: SGD, lr })
}

/// A backend with its network, after one step run op by op (what a capture needs made first).
pub(crate) fn warmed_up(test: &str) -> Option<(CudaBackend, TrainNet)> {
    let mut b = cuda_or_skip(test)?;
    let mut net = network(&mut b);
    b.write(net.input(), &images(&net, 0)).unwrap();
    train_step(&mut b, &mut net).unwrap();
    Some((b, net))
}

/// What the bit-for-bit comparison covers.
pub(crate) fn state(b: &mut CudaBackend, net: &Network) -> [(&'static str, Vec<f32>); 5] {
    [
        ("parameters", net.params),
        ("gradients", net.grads),
        ("momentum", net.momentum),
        ("running statistics", net.buffers),
        ("logits", net.output()),
    ]
    .map(|(what, t)| (what, b.read(t).unwrap()))
}

#[test]
fn gpu_replayed_training_steps_equal_eager_ones_bit_for_bit() {
    let test = "cuda_graph gpu_replayed_training_steps_equal_eager_ones_bit_for_bit";
    let (mut eager, mut eager_net) = or_return!(warmed_up(test));
    let (mut replayed, mut replayed_net) = or_return!(warmed_up(test));
    let after_warm_up = state(&mut replayed, &replayed_net);
    let step = replayed
        .capture(|b| train_step(b, &mut replayed_net))
        .unwrap();
    // Nothing ran: the state is the warm-up's, bit for bit.
    same_bits(&state(&mut replayed, &replayed_net), &after_warm_up);
    for i in 1..=STEPS as u64 {
        // A new batch each step, written outside the graph, which reads it.
        eager
            .write(eager_net.input(), &images(&eager_net, i))
            .unwrap();
        replayed
            .write(replayed_net.input(), &images(&replayed_net, i))
            .unwrap();
        train_step(&mut eager, &mut eager_net).unwrap();
        replayed.replay(&step).unwrap();
    }
    let (eager_state, replayed_state) = (
        state(&mut eager, &eager_net),
        state(&mut replayed, &replayed_net),
    );
    same_bits(&replayed_state, &eager_state);
    for (what, values) in &eager_state {
        assert!(values.iter().all(|v| v.is_finite()), "{what} is not finite");
    }
    assert!(
        eager_state[0].1 != after_warm_up[0].1,
        "the parameters did not move"
    );
}

/// Asserts that two [`state`]s have the same bits.
pub(crate) fn same_bits(a: &[(&str, Vec<f32>)], b: &[(&str, Vec<f32>)]) {
    for ((what, a), (_, b)) in a.iter().zip(b) {
        assert_bit_identical(what, a, b);
    }
}

/// Ops to capture.
type Ops = dyn FnOnce(&mut CudaBackend) -> Result<()>;

/// The op of a capture of `work`, which must fail with [`Error::Capture`].
fn refused_op(b: &mut CudaBackend, work: impl FnOnce(&mut CudaBackend) -> Result<()>) -> String {
    match b.capture(work) {
        Err(Error::Capture { op, .. }) => op,
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("captured"),
    }
}

#[test]
fn gpu_capture_refuses_host_work_and_allocations_naming_the_op() {
    let test = "cuda_graph gpu_capture_refuses_host_work_and_allocations_naming_the_op";
    let (mut b, mut net) = or_return!(warmed_up(test));
    let logits = net.output();
    let labels = b.alloc_index(BATCH).unwrap();
    b.write_index(labels, &[0, 2, 1, 2]).unwrap();
    let spare = b.alloc(64).unwrap();
    let (x, y) = (spare.slice(0, 32), spare.slice(32, 32));
    let conv = Conv2dShape {
        batch: 1,
        in_channels: 2,
        height: 4,
        width: 4,
        out_channels: 1,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (0, 0),
    };
    let cases: Vec<(String, Box<Ops>)> = vec![
        (
            format!("reading the {logits}"),
            Box::new(move |b| b.read(logits).map(drop)),
        ),
        (
            format!("writing the {x}"),
            Box::new(move |b| b.write(x, &[1.0; 32])),
        ),
        (
            format!("reading the {labels}"),
            Box::new(move |b| b.read_index(labels).map(drop)),
        ),
        (
            "allocating a buffer of 8 f32 values".into(),
            Box::new(move |b| b.alloc(8).map(drop)),
        ),
        // ReLU is no op of the network, so its launcher is first made here.
        (
            "making a c2f_kernels::relu::ReluGpu<f32>".into(),
            Box::new(move |b| b.relu_forward(x, y)),
        ),
        (
            format!("planning the {conv} in f32"),
            Box::new(move |b| b.conv2d_forward(&conv, x, spare.slice(40, 18), y.slice(0, 4))),
        ),
        (
            "synchronising the stream".into(),
            Box::new(move |b| b.synchronize()),
        ),
    ];
    for (expected, work) in cases {
        // The refused op after one the graph holds.
        let op = refused_op(&mut b, |b| {
            b.fill(y, 2.0)?;
            work(b)
        });
        assert_eq!(op, expected);
        // The backend works on, the fill not run.
        assert_ne!(
            b.read(y).unwrap(),
            vec![2.0; 32],
            "{expected}: the fill ran"
        );
    }

    // Replays: not on another backend, and not after a scratch buffer the graph uses was
    // replaced (the fc's vector of ones, by a larger batch).
    let step = b.capture(|b| train_step(b, &mut net)).unwrap();
    let (mut other, _) = or_return!(warmed_up(test));
    let op = |e: Error| match e {
        Error::Capture { op, reason } => format!("{op}: {reason}"),
        e => panic!("refused otherwise: {e}"),
    };
    let e = op(other.replay(&step).unwrap_err());
    assert!(e.contains("captured on another backend"), "{e}");
    b.replay(&step).unwrap();
    let wide = LinearShape {
        batch: 2 * BATCH,
        inputs: 2,
        outputs: 2,
    };
    let fc = |i: usize, n: usize| spare.slice(i, n);
    b.linear_forward(&wide, fc(0, 16), fc(16, 4), fc(20, 2), fc(24, 16))
        .unwrap();
    let e = op(b.replay(&step).unwrap_err());
    assert!(e.contains("capture them again"), "{e}");
    let again = b.capture(|b| train_step(b, &mut net)).unwrap();
    b.replay(&again).unwrap();
    assert!(b.read(logits).unwrap().iter().all(|v| v.is_finite()));
}
