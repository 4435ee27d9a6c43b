//! The small training runs the trainer's and the data-parallel tests share: a tiny
//! configuration (and the `c2f train` flags of one), the 3-class synthetic set, and the metrics
//! a run writes.

#![allow(dead_code)] // each test binary uses a part

use std::path::Path;

use c2f_inception::backend::Backend;
use c2f_inception::network::SgdGroup;
use c2f_kernels::sgd::SgdParams;
use c2f_train::data::spec::DataSpec;
use c2f_train::train::{LearningRates, TrainConfig};

/// `c2f train` for one epoch of a tiny model on the CPU.
pub const TINY_TRAIN: [&str; 14] = [
    "train",
    "--device",
    "cpu",
    "--epochs",
    "1",
    "--batch",
    "4",
    "--size",
    "75",
    "--width",
    "0.125",
    "--maps",
    "2",
    "--no-progress",
];

/// One epoch of batch 4 on 75² inputs, width 1/8, 3 classes, 2 maps; the rest by default.
pub fn tiny_config(lr: f64, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch: 4,
        input_size: 75,
        width: 0.125,
        classes: 3,
        maps: 2,
        lr,
        seed,
        ..TrainConfig::default()
    }
}

/// The synthetic set of 3 classes, objects `object_scale` of the side, clutter 0.5.
pub fn synthetic_spec(
    train_images: usize,
    test_images: usize,
    seed: u64,
    object_scale: (f32, f32),
) -> DataSpec {
    DataSpec::Synthetic {
        classes: 3,
        train_images,
        test_images,
        seed,
        object_scale,
        clutter: 0.5,
    }
}

/// Every line of a run's `metrics.jsonl`.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `cfg`'s learning rates at its base rate `cfg.lr`, written into `b` (the slots SGD reads).
pub fn rates_at<B: Backend>(b: &mut B, cfg: &TrainConfig) -> LearningRates {
    let rates = LearningRates::new(b).unwrap();
    rates.write(b, cfg, cfg.lr).unwrap();
    rates
}

/// One SGD group at rate `lr` (written into a slot of `b`), momentum and weight decay.
pub fn sgd_group<B: Backend>(b: &mut B, lr: f64, momentum: f64, weight_decay: f64) -> SgdGroup {
    let slot = b.alloc(1).unwrap();
    b.write(slot, &[c2f_kernels::Real::from_f64(lr)]).unwrap();
    SgdGroup {
        params: SgdParams::new(momentum, weight_decay),
        lr: slot,
    }
}
