//! `c2f predict`: the top classes (or every attribute) a checkpoint predicts for images.

use std::sync::Arc;

use c2f_kernels::{Error, Result};

use super::args::{Mode, PredictArgs};
use super::device::open_device;
use crate::data::loader::FileSource;
use crate::data::Sample;
use crate::predictor::with_checkpoint;
use crate::task::Task;
use crate::train::{padded_images, prediction_rows, test_loader, ModelKind, COARSE_FINE};

pub(super) fn predict(args: PredictArgs) -> Result<()> {
    with_checkpoint(
        &args.checkpoint,
        || open_device(args.device.as_deref(), args.compute.precision),
        &mut |model, meta| {
            let cfg = &meta.config;
            let samples: Vec<Sample> = args
                .images
                .iter()
                .enumerate()
                .map(|(i, path)| Sample {
                    id: i as u64,
                    path: path.clone(),
                    label: 0,
                    bbox: None,
                    is_train: false,
                    crop_bottom: 0,
                })
                .collect();
            let loader = test_loader(
                cfg,
                Arc::new(
                    FileSource::new(samples).with_max_pixels(args.image_limit.max_image_pixels),
                ),
            )?;
            let [first, second] =
                ModelKind::from_name(&meta.model).map_or(COARSE_FINE, |k| k.head_names());
            let names = [first, second, "average"];
            let mut read = 0;
            for (i, path) in args.images.iter().enumerate() {
                // One image at a time: an unreadable one is reported and the rest still run.
                let batch = match loader.load_batch(&[i], 0) {
                    Ok(batch) => batch,
                    Err(e) => {
                        eprintln!("{}: skipped: {e}", path.display());
                        continue;
                    }
                };
                read += 1;
                let heads = model.probabilities(&padded_images(&batch.images, 1, cfg.batch))?;
                println!("{}", path.display());
                for (k, row) in prediction_rows(&heads, 0, cfg.classes).iter().enumerate() {
                    let wanted = match args.mode {
                        Mode::All => true,
                        Mode::Coarse => k == 0,
                        Mode::Fine => k == 1,
                        Mode::Average => k == 2,
                    };
                    if !wanted {
                        continue;
                    }
                    // Classes: the most likely; attributes: each one's probability, in order.
                    let mut ranked: Vec<usize> = (0..row.len()).collect();
                    let shown = match cfg.task {
                        Task::Classes => {
                            ranked.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                            args.top
                        }
                        Task::Attributes => row.len(),
                    };
                    let top: Vec<String> = ranked
                        .iter()
                        .take(shown)
                        .map(|&c| format!("{} {:.1}%", meta.class_names[c], 100.0 * row[c]))
                        .collect();
                    println!("  {:<8} {}", names[k], top.join(", "));
                }
            }
            if read == 0 {
                let paths: Vec<String> = args
                    .images
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                return Err(Error::Data {
                    path: paths.join(", "),
                    line: None,
                    message: format!(
                        "no image could be read ({} given; each one's reason is above)",
                        paths.len()
                    ),
                });
            }
            Ok(())
        },
    )
}
