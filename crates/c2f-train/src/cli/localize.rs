//! `c2f localize`: weakly-supervised localization metrics of a checkpoint with attention maps.

use c2f_inception::weights::write_atomically;
use c2f_kernels::Result;

use super::args::LocalizeArgs;
use super::device::open_device;
use crate::localize::{LocalizeConfig, Region};
use crate::predictor::with_checkpoint;

pub(super) fn localize(args: LocalizeArgs) -> Result<()> {
    let cfg = LocalizeConfig {
        threshold: args.threshold,
        box_filter: args.box_filter,
        region: if args.tight_box {
            Region::AllAbove
        } else {
            Region::LargestComponent
        },
        limit: args.limit,
    };
    with_checkpoint(
        &args.checkpoint,
        || open_device(args.device.as_deref(), args.compute.precision),
        &mut |model, meta| {
            let test = meta
                .data
                .open(meta.config.input_size, args.image_limit.max_image_pixels)?
                .test;
            let (_, metrics) = model.localize(test.as_ref(), &cfg)?;
            println!("{}", metrics.table());
            let json = args
                .json
                .clone()
                .unwrap_or_else(|| args.checkpoint.with_file_name("localization.json"));
            write_atomically(&json, metrics.to_json().as_bytes())?;
            println!("metrics written to {}", json.display());
            Ok(())
        },
    )
}
