//! A tiny Coarse2Fine (input 75, width 1/8, 3 classes, 2 maps, batch 2) with fixed random
//! weights on any f32 backend, and a small synthetic test split, for the localization and
//! picture tests; and the golden tests' backbone draw on any backend, which the model tests
//! start from.

use c2f_inception::backend::{prelude::*, IndexTensor, Tensor};
use c2f_inception::init::golden_init;
use c2f_inception::network::Network;
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::testing::SplitMix64;
use c2f_kernels::Real;
use c2f_train::data::synthetic::{Split, SyntheticConfig, SyntheticSet};
use c2f_train::model::{CenterBanks, Coarse2Fine, Coarse2FineConfig, Task};

/// The up-sampler's weights are made positive: on the non-negative attention maps the
/// up-sampled map then has a positive maximum and a box is found.
pub fn tiny_model<B: Backend<Scalar = f32>>(b: &mut B) -> Coarse2Fine {
    let model = Coarse2Fine::new(
        b,
        Coarse2FineConfig {
            input_size: 75,
            width: 0.125,
            classes: 3,
            task: Task::Classes,
            maps: 2,
            upsampler_channels: vec![4, 4],
            center_loss: CenterLossParams {
                lambda: 1.0,
                beta: 0.05,
                rule: CenterRule::MovingAverage,
            },
            center_banks: CenterBanks::Shared,
            batch: 2,
        },
    )
    .unwrap();
    golden_backbone(b, model.backbone());
    let mut rng = SplitMix64(2);
    let mut heads: Vec<f32> = (0..model.params.len)
        .map(|_| rng.uniform(-0.3, 0.3) as f32)
        .collect();
    for e in model.head_table().entries() {
        if e.name.starts_with("upsampler.") {
            for v in &mut heads[e.range()] {
                *v = v.abs();
            }
        }
    }
    b.write(model.params, &heads).unwrap();
    model
}

/// Writes the golden tests' draw of `net`'s parameters and running statistics
/// ([`golden_init`]) on any backend.
pub fn golden_backbone<B: Backend>(b: &mut B, net: &Network) {
    let mut params = vec![0.0f32; net.graph.params.total()];
    let mut buffers = vec![0.0f32; net.graph.buffers.total()];
    golden_init(&net.graph, &mut params, &mut buffers);
    let scalars = |v: &[f32]| -> Vec<B::Scalar> {
        v.iter().map(|&x| B::Scalar::from_f64(x as f64)).collect()
    };
    b.write(net.params, &scalars(&params)).unwrap();
    b.write(net.buffers, &scalars(&buffers)).unwrap();
}

/// `n` draws uniform in `[lo, hi)` from `rng`, in `R`.
pub fn uniform<R: Real>(rng: &mut SplitMix64, n: usize, lo: f64, hi: f64) -> Vec<R> {
    (0..n).map(|_| R::from_f64(rng.uniform(lo, hi))).collect()
}

/// Writes a batch's `labels`, and for [`Task::Attributes`] its 0/1 `targets`, into a model's
/// `(labels, targets)` buffers.
pub fn write_answers<B: Backend>(
    b: &mut B,
    (labels, targets): (IndexTensor, Tensor),
    task: Task,
    (label_values, target_values): (&[i32], &[f64]),
) {
    b.write_index(labels, label_values).unwrap();
    if task == Task::Attributes {
        let values: Vec<B::Scalar> = target_values
            .iter()
            .map(|&t| B::Scalar::from_f64(t))
            .collect();
        b.write(targets, &values).unwrap();
    }
}

pub fn synthetic(len: usize) -> SyntheticSet {
    let cfg = SyntheticConfig {
        classes: 3,
        size: 80,
        ..SyntheticConfig::default()
    };
    SyntheticSet::new(cfg, Split::Test, len).unwrap()
}
