//! `c2f`, the command line: train, evaluate and apply Coarse2Fine. With no dataset argument,
//! `c2f train` trains on the built-in synthetic fine-grained set, Coarse2Fine and then the plain
//! InceptionV3 baseline, and ends with a table of their test accuracies. On a machine without a
//! GPU it runs on the CPU at a small width and resolution.
//!
//! [`args`] holds the arguments; each command has its own module; the binary only calls
//! [`main`].

pub mod args;
pub mod config_file;
mod device;
mod distributed;
mod eval;
mod localize;
mod predict;
mod pretrain;
mod train;
mod visualize;

use c2f_kernels::Result;
use clap::Parser;

use args::{Cli, Command};

/// Runs the command `std::env::args()` names; on an error, prints it and exits with status 1.
pub fn main() {
    if let Err(e) = run(std::env::args().collect()) {
        eprintln!("c2f: {e}");
        std::process::exit(1);
    }
}

/// Runs the command `argv` (the program's name first) names.
pub fn run(argv: Vec<String>) -> Result<()> {
    let argv = config_file::with_config_file(argv)?;
    match Cli::parse_from(&argv).command {
        Command::Train(args) => train::train(*args, &argv),
        Command::Eval(args) => eval::eval(args),
        Command::Predict(args) => predict::predict(args),
        Command::PretrainUpsampler(args) => pretrain::pretrain(args),
        Command::Localize(args) => localize::localize(args),
        Command::Visualize(args) => visualize::visualize(args),
    }
}
