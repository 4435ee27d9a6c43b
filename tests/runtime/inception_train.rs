//! Training with the runtime on the CPU: the whole network's gradient (dropout included) against
//! finite differences in f64, and a tiny network fitting a fixed batch with cross-entropy and
//! SGD through the backend's own ops.

use c2f_inception::backend::{prelude::*, BnMode, IndexTensor, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::golden_init;
use c2f_inception::network::{sgd_step_by_table, Network, SgdGroup};
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::table::TensorTable;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::softmax_ce::SoftmaxCeShape;
use c2f_kernels::testing::{rel_error, SplitMix64};
use c2f_kernels::Real;

const CLASSES: usize = 3;
const BATCH: usize = 4;

fn tiny_graph() -> Graph {
    Graph::new(InceptionConfig {
        input_size: 75,
        width: 0.125,
        depth: Depth::Full { classes: CLASSES },
    })
    .unwrap()
}

struct Setup<R: Real> {
    cpu: CpuBackend<R>,
    net: Network,
    labels: IndexTensor,
    predictions: IndexTensor,
    /// The cross-entropy's `[loss, correct]`.
    stats: Tensor,
    dlogits_shape: SoftmaxCeShape,
}

fn setup<R: Real>(seed: u64) -> Setup<R> {
    let graph = tiny_graph();
    let mut params = vec![0.0f32; graph.params.total()];
    let mut buffers = vec![0.0f32; graph.buffers.total()];
    golden_init(&graph, &mut params, &mut buffers);
    let mut cpu = CpuBackend::<R>::new();
    let net = Network::new(&mut cpu, graph, BATCH).unwrap();
    let widen = |v: &[f32]| v.iter().map(|&x| R::from_f64(x as f64)).collect::<Vec<R>>();
    cpu.write(net.params, &widen(&params)).unwrap();
    cpu.write(net.buffers, &widen(&buffers)).unwrap();
    let mut rng = SplitMix64(seed);
    let image: Vec<R> = (0..net.input().len)
        .map(|_| R::from_f64(rng.uniform(-1.0, 1.0)))
        .collect();
    cpu.write(net.input(), &image).unwrap();
    let labels = cpu.alloc_index(BATCH).unwrap();
    cpu.write_index(labels, &[0, 2, 1, 2]).unwrap();
    let predictions = cpu.alloc_index(BATCH).unwrap();
    let stats = cpu.alloc(2).unwrap();
    Setup {
        stats,
        cpu,
        net,
        labels,
        predictions,
        dlogits_shape: SoftmaxCeShape {
            batch: BATCH,
            classes: CLASSES,
        },
    }
}

/// Forward in `mode`, cross-entropy into the output gradient; returns the loss.
fn loss<R: Real>(s: &mut Setup<R>, mode: BnMode) -> f64 {
    s.net.forward(&mut s.cpu, mode).unwrap();
    s.cpu
        .softmax_cross_entropy(
            &s.dlogits_shape,
            s.net.output(),
            s.labels,
            1.0,
            s.predictions,
            s.net.output_grad(),
            s.stats,
        )
        .unwrap();
    s.cpu.read(s.stats).unwrap()[0].to_f64()
}

#[test]
fn network_gradient_matches_finite_differences() {
    // Inference-mode BN keeps the running statistics fixed, so every forward computes the same
    // function; dropout stays on, with a fixed mask.
    let mode = BnMode::Inference;
    let mut s = setup::<f64>(1);
    s.net.dropout.seed = 5;
    s.net.set_dropout_step(&mut s.cpu, 2).unwrap();
    loss(&mut s, mode);
    s.net.zero_grads(&mut s.cpu).unwrap();
    s.net.backward(&mut s.cpu, mode, true).unwrap();
    let grads = s.cpu.read(s.net.grads).unwrap();
    let params = s.cpu.read(s.net.params).unwrap();
    let mut rng = SplitMix64(9);
    let (mut analytic, mut numeric) = (Vec::new(), Vec::new());
    let h = 1e-5;
    let probes: Vec<usize> = (s.net.graph.params.entries().iter().step_by(7))
        .map(|e| e.offset + rng.below(e.len() as u64) as usize)
        .collect();
    for i in probes {
        let mut probe = params.clone();
        probe[i] = params[i] + h;
        s.cpu.write(s.net.params, &probe).unwrap();
        let up = loss(&mut s, mode);
        probe[i] = params[i] - h;
        s.cpu.write(s.net.params, &probe).unwrap();
        let down = loss(&mut s, mode);
        analytic.push(grads[i]);
        numeric.push((up - down) / (2.0 * h));
    }
    let e = rel_error(&analytic, &numeric);
    assert!(
        e < 1e-4,
        "network gradient vs finite differences: {e:.3e} over {} entries",
        analytic.len()
    );
}

#[test]
fn tiny_network_fits_a_fixed_batch() {
    let mut s = setup::<f32>(2);
    let lr = s.cpu.alloc(1).unwrap();
    s.cpu.write(lr, &[0.01]).unwrap();
    let sgd = SgdGroup {
        params: SgdParams::new(0.9, 1e-5),
        lr,
    };
    let first = loss(&mut s, BnMode::Train);
    let mut last = first;
    for step in 0..40 {
        s.net.set_dropout_step(&mut s.cpu, step).unwrap();
        s.net.zero_grads(&mut s.cpu).unwrap();
        last = loss(&mut s, BnMode::Train);
        s.net.backward(&mut s.cpu, BnMode::Train, false).unwrap();
        s.net.sgd_step(&mut s.cpu, &sgd).unwrap();
    }
    assert!(
        last < 0.2 * first,
        "loss went from {first:.4} to {last:.4} in 40 steps"
    );
}

/// Two passes through one backbone (Coarse2Fine's coarse and fine passes): a network made with
/// `sharing` reads the same parameters and adds its parameter gradients to the same buffer.
#[test]
fn shared_backbone_accumulates_both_passes() {
    let mut s = setup::<f64>(3);
    let mut fine = s.net.sharing(&mut s.cpu).unwrap();
    assert_eq!(
        (fine.params, fine.grads, fine.buffers),
        (s.net.params, s.net.grads, s.net.buffers)
    );
    let image = s.cpu.read(s.net.input()).unwrap();
    s.cpu.write(fine.input(), &image).unwrap();
    let mode = BnMode::Inference;
    // One pass alone.
    loss(&mut s, mode);
    // Read before backward, which reuses the output gradient's memory once it has read it.
    let d = s.cpu.read(s.net.output_grad()).unwrap();
    s.net.zero_grads(&mut s.cpu).unwrap();
    s.net.backward(&mut s.cpu, mode, false).unwrap();
    let once = s.cpu.read(s.net.grads).unwrap();
    // The same input through the fine network, its backward on top of the first.
    fine.dropout = s.net.dropout;
    fine.forward(&mut s.cpu, mode).unwrap();
    assert_eq!(
        s.cpu.read(fine.output()).unwrap(),
        s.cpu.read(s.net.output()).unwrap()
    );
    s.cpu.write(fine.output_grad(), &d).unwrap();
    fine.backward(&mut s.cpu, mode, false).unwrap();
    let twice = s.cpu.read(s.net.grads).unwrap();
    let doubled: Vec<f64> = once.iter().map(|g| 2.0 * g).collect();
    assert!(rel_error(&twice, &doubled) < 1e-12);
}

/// A NaN hyper-parameter equals no other, itself included: the walk over the table's runs must
/// still take every tensor once, and the NaN is then refused by the SGD op, where it used to
/// stall the walk on its first tensor and panic on an index below zero. A NaN rate in the slot
/// (`--lr nan`) is refused by the op too.
#[test]
fn sgd_by_table_takes_every_tensor_once_whatever_the_rule() {
    let mut table = TensorTable::default();
    for (name, len) in [("a", 3), ("b", 2), ("c", 4)] {
        table.push(name, vec![len]);
    }
    let n = table.total();
    let mut b = CpuBackend::<f32>::new();
    let [params, grads, momentum] = [0, 1, 2].map(|_| b.alloc(n).unwrap());
    b.write(params, &vec![1.0; n]).unwrap();
    b.write(grads, &vec![0.5; n]).unwrap();
    let lr = b.alloc(1).unwrap();
    let step = |b: &mut CpuBackend<f32>, rate: f32, weight_decay: f64| {
        b.write(lr, &[rate])?;
        let hyper = SgdParams::new(0.0, weight_decay);
        let rule = |_: &_| Some(SgdGroup { params: hyper, lr });
        sgd_step_by_table(b, &table, [params, grads, momentum], &rule)
    };
    step(&mut b, 0.1, 0.0).unwrap();
    let after = b.read(params).unwrap();
    assert!(after.iter().all(|&v| (v - 0.95).abs() < 1e-6), "{after:?}");
    let err = step(&mut b, 0.1, f64::NAN).unwrap_err().to_string();
    assert!(err.contains("weight decay"), "{err}");
    let err = step(&mut b, f32::NAN, 0.0).unwrap_err().to_string();
    assert!(err.contains("learning rate"), "{err}");
}
