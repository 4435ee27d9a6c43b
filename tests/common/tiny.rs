//! A tiny Coarse2Fine (input 75, width 1/8, 3 classes, 2 maps, batch 2) with fixed random
//! weights on any f32 backend, and a small synthetic test split, for the localization and
//! picture tests.

use c2f_inception::backend::prelude::*;
use c2f_inception::init::golden_init;
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::testing::SplitMix64;
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
    let net = model.backbone();
    let mut params = vec![0.0; net.graph.params.total()];
    let mut buffers = vec![0.0; net.graph.buffers.total()];
    golden_init(&net.graph, &mut params, &mut buffers);
    b.write(net.params, &params).unwrap();
    b.write(net.buffers, &buffers).unwrap();
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

pub fn synthetic(len: usize) -> SyntheticSet {
    let cfg = SyntheticConfig {
        classes: 3,
        size: 80,
        ..SyntheticConfig::default()
    };
    SyntheticSet::new(cfg, Split::Test, len).unwrap()
}
