//! The Coarse2Fine model and the trainer (c2f-train): the model's gradients, the whole-step
//! PyTorch golden, training, attributes, the GPU step, interpolation, up-sampler pretraining
//! and where a run's up-sampler starts, localization, pictures, the `c2f` binary, and the
//! WS-DAN model.
//!
//! One test binary for the area, a module per op or concern: Cargo finds `tests/<area>/main.rs`
//! by itself, so a new module needs only its `mod` line here.

#[path = "../common"]
mod common {
    pub mod celeba;
    pub mod datasets;
    pub mod recorded;
    pub mod tiny;
    pub mod train;
}

mod c2f_golden;
mod cli;
mod cli_precision;
mod cli_values;
mod crash;
mod interpolate;
mod localize;
mod model;
mod nvtx;
mod pretrain;
mod train;
mod train_attributes;
mod train_gpu;
mod upsampler_start;
mod visualize;
mod wsdan;
mod wsdan_golden;
