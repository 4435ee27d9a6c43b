//! `c2f eval`: a checkpoint's accuracy on the test split of the data it was trained on.

use std::time::Instant;

use c2f_kernels::Result;

use super::args::EvalArgs;
use super::device::open_device;
use super::train::{print_table, Row};
use crate::predictor::with_checkpoint;
use crate::train::{format_accuracy, test_loader, ModelKind, COARSE_FINE};

pub(super) fn eval(args: EvalArgs) -> Result<()> {
    with_checkpoint(
        &args.checkpoint,
        || open_device(args.device.as_deref(), args.compute.precision),
        &mut |model, meta| {
            let opened = meta
                .data
                .open(meta.config.input_size, args.image_limit.max_image_pixels)?;
            if let Some(report) = opened.missing_report() {
                eprintln!("{report}");
            }
            let loader = test_loader(&meta.config, opened.test)?;
            let start = Instant::now();
            let evaluation = model.evaluate(&loader, meta.config.classes)?;
            let heads = ModelKind::from_name(&meta.model).map_or(COARSE_FINE, |k| k.head_names());
            println!(
                "{} ({}, epoch {}) on {}: {}",
                args.checkpoint.display(),
                meta.model,
                meta.epoch,
                opened.description,
                format_accuracy(&evaluation.accuracy, heads)
            );
            let row = Row {
                label: meta.model.as_str(),
                heads,
                evaluation,
                seconds: start.elapsed().as_secs_f64(),
            };
            print_table(&[row], &meta.class_names);
            Ok(())
        },
    )
}
