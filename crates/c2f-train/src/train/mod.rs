//! The training loop for Coarse2Fine, its coarse-only ablation, WS-DAN and the plain
//! InceptionV3 baseline, on any f32 backend: SGD with momentum and weight decay, WS-DAN's step
//! schedule (×0.9 every 2 epochs) or cosine, BatchNorm in train, frozen or eval mode,
//! checkpoints written atomically every N steps and at each epoch's end, `--resume` that
//! continues a run exactly (bit-identical on the CPU), metrics as JSON lines and CSV, a progress
//! bar, and test-set top-1 for the coarse, fine and averaged predictions (WS-DAN's raw, refined
//! and averaged).
//!
//! [`fit`] is the loop; a model takes part through [`Trainee`] ([`coarse2fine`], which is also
//! the coarse-only model's, [`wsdan`] and [`baseline`]), and [`models`] names them;
//! [`parallel`] makes it one rank of a data-parallel job. The config and its presets live in
//! [`crate::config`], and are re-exported here with the rest of the loop's interface.

pub mod baseline;
mod centers;
pub mod coarse2fine;
pub mod evaluate;
mod fit;
pub mod graph;
pub mod init;
pub mod loaders;
mod metrics;
pub mod models;
pub mod parallel;
mod progress;
pub mod resume;
pub mod trainee;
pub mod wsdan;

pub use baseline::{build_baseline, init_baseline, train_baseline, Baseline};
pub use centers::{center_spread, MERGED_SPREAD};
pub use coarse2fine::{build_coarse2fine, build_coarse_only, init_coarse2fine, train_coarse2fine};
pub use evaluate::{
    argmax, batch_probabilities, evaluate, format_accuracy, padded_images, prediction_rows,
    Accuracy, Evaluation, COARSE_FINE, RAW_REFINED,
};
pub use fit::fit;
pub use graph::DeviceGraph;
pub use init::{init_backbone, start_from_checkpoint};
pub use loaders::{test_loader, train_loader};
pub use models::{ModelKind, Trainer};
pub use parallel::{rank_config, DataParallel};
pub use resume::{checkpoint_path, dataset_fingerprint};
pub use trainee::{BatchShare, GradsReady, StepStats, Trainee};
pub use wsdan::{build_wsdan, draw_augmentation, init_wsdan};

pub use crate::config::{
    BnPolicy, LearningRates, Machine, Preset, RunOptions, Schedule, TrainConfig,
};
