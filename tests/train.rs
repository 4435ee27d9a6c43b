//! The trainer end to end on a tiny synthetic set: both models train an epoch and report
//! accuracies that are fractions of the test set, with finite losses all along.

use std::sync::Arc;

use c2f_inception::cpu::CpuBackend;
use c2f_kernels::center_loss::CenterLossParams;
use c2f_train::data::loader::ImageSource;
use c2f_train::data::synthetic::{Split, SyntheticConfig, SyntheticSet};
use c2f_train::train::{learning_rate, train_baseline, train_coarse2fine, TrainConfig};

fn setup() -> (TrainConfig, Arc<dyn ImageSource>, Arc<dyn ImageSource>) {
    let cfg = TrainConfig {
        epochs: 1,
        batch: 4,
        input_size: 75,
        width: 0.125,
        classes: 3,
        maps: 2,
        lr: 1e-3,
        momentum: 0.9,
        weight_decay: 1e-5,
        center_loss: CenterLossParams {
            lambda: 1.0,
            beta: 0.05,
        },
        seed: 1,
        ortho_init: true,
    };
    let data = SyntheticConfig {
        classes: 3,
        size: 75,
        ..SyntheticConfig::default()
    };
    let train: Arc<dyn ImageSource> =
        Arc::new(SyntheticSet::new(data.clone(), Split::Train, 8).unwrap());
    // 6 test images: the last batch is short and padded.
    let test: Arc<dyn ImageSource> = Arc::new(SyntheticSet::new(data, Split::Test, 6).unwrap());
    (cfg, train, test)
}

fn is_fraction_of_six(v: f64) -> bool {
    (0..=6).any(|k| (v - k as f64 / 6.0).abs() < 1e-12)
}

#[test]
fn both_models_train_and_report_test_accuracy() {
    let (cfg, train, test) = setup();
    let mut cpu = CpuBackend::<f32>::new();
    let c2f = train_coarse2fine(&mut cpu, &cfg, train.clone(), test.clone()).unwrap();
    for v in [c2f.coarse, c2f.fine.unwrap(), c2f.average.unwrap()] {
        assert!(is_fraction_of_six(v), "accuracy {v} is not k/6");
    }
    let base = train_baseline(&mut cpu, &cfg, train, test).unwrap();
    assert!(is_fraction_of_six(base.coarse), "accuracy {}", base.coarse);
    assert_eq!((base.fine, base.average), (None, None));
}

#[test]
fn schedule_is_ws_dan_s() {
    assert_eq!(learning_rate(1e-3, 0), 1e-3);
    assert_eq!(learning_rate(1e-3, 1), 1e-3);
    assert!((learning_rate(1e-3, 2) - 0.9e-3).abs() < 1e-18);
    assert!((learning_rate(1e-3, 5) - 0.81e-3).abs() < 1e-18);
}
