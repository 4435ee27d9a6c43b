//! `c2f pretrain-upsampler`: the learnable up-sampler pretrained on synthetic pairs.

use c2f_inception::cpu::CpuBackend;
use c2f_kernels::Result;

use super::args::PretrainArgs;
use super::device::open_device;
use crate::pretrain::{pretrain_upsampler, print_epochs, PretrainConfig};

pub(super) fn pretrain(args: PretrainArgs) -> Result<()> {
    let cuda = open_device(args.device.as_deref(), args.compute.precision)?;
    let cfg = PretrainConfig {
        pairs: args.pairs,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        output: Some(args.out.clone()),
        ..PretrainConfig::new(args.size.unwrap_or(if cuda.is_some() { 299 } else { 96 }))
    };
    let report = match cuda {
        Some(mut b) => pretrain_upsampler(&mut b, &cfg, &mut print_epochs)?,
        None => pretrain_upsampler(&mut CpuBackend::<f32>::new(), &cfg, &mut print_epochs)?,
    };
    println!(
        "held-out L2: {:.5} untrained, {:.5} after {} epochs; weights in {}",
        report.initial_held_out,
        report.final_held_out(),
        cfg.epochs,
        args.out.display()
    );
    Ok(())
}
