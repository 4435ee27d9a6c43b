//! The loaders a run reads its data through.

use std::sync::Arc;

use c2f_kernels::Result;

use crate::config::TrainConfig;
use crate::data::loader::{ImageSource, Loader, LoaderConfig};
use crate::data::transform::{TrainCrop, Transform};

/// The training loader: resize + random crop + flip, shuffled, the last partial batch dropped.
pub fn train_loader(cfg: &TrainConfig, train: Arc<dyn ImageSource>) -> Result<Loader> {
    let size = cfg.input_size as u32;
    let train_transform = Transform::Train {
        size,
        crop: TrainCrop::ResizeRandom {
            resize: size + size / 8,
        },
        hflip: true,
    };
    Loader::new(
        train,
        LoaderConfig {
            seed: cfg.seed,
            drop_last: true,
            cache: true,
            ..LoaderConfig::new(cfg.batch, train_transform)
        },
    )
}

pub fn test_loader(cfg: &TrainConfig, test: Arc<dyn ImageSource>) -> Result<Loader> {
    Loader::new(
        test,
        LoaderConfig {
            shuffle: false,
            cache: true,
            ..LoaderConfig::new(cfg.batch, Transform::test(cfg.input_size as u32))
        },
    )
}
