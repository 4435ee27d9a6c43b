//! `c2f visualize`: pictures of what a checkpoint with attention maps looks at.

use c2f_kernels::{Error, Result};

use super::args::VisualizeArgs;
use super::device::open_device;
use crate::localize::LocalizeConfig;
use crate::predictor::with_checkpoint;
use crate::upsampler::attention_map_side;
use crate::visualize::{write_pictures, VisualizeConfig};

pub(super) fn visualize(args: VisualizeArgs) -> Result<()> {
    with_checkpoint(
        &args.checkpoint,
        || open_device(args.device.as_deref(), args.compute.precision),
        &mut |model, meta| {
            let test = meta
                .data
                .open(meta.config.input_size, args.image_limit.max_image_pixels)?
                .test;
            let indices: Vec<usize> = if args.index.is_empty() {
                (0..args.count.min(test.len())).collect()
            } else {
                args.index.clone()
            };
            if let Some(&bad) = indices.iter().find(|&&i| i >= test.len()) {
                return Err(Error::config(
                    "--index",
                    bad,
                    format!("the test split has {} images", test.len()),
                ));
            }
            let results =
                model.infer_images(test.as_ref(), &indices, &LocalizeConfig::default())?;
            let map_side = attention_map_side(meta.config.input_size)?;
            let paths = write_pictures(
                &args.out,
                &results,
                meta.config.input_size as u32,
                map_side,
                &meta.class_names,
                &VisualizeConfig::default(),
            )?;
            println!(
                "{} pictures in {}, the contact sheet: {}",
                paths.len() - 1,
                args.out.display(),
                paths
                    .last()
                    .map_or(String::new(), |p| p.display().to_string())
            );
            Ok(())
        },
    )
}
