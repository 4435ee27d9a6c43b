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
mod values;
mod visualize;

use c2f_kernels::{nvtx, Error, Result};
use clap::{CommandFactory, FromArgMatches};

use args::{Cli, Command};
pub use values::takes_number;

/// Runs the command `std::env::args()` names; on an error, prints it and exits with status 1.
pub fn main() {
    if let Err(e) = run(std::env::args().collect()) {
        eprintln!("c2f: {e}");
        std::process::exit(1);
    }
}

/// Runs the command `argv` (the program's name first) names.
pub fn run(argv: Vec<String>) -> Result<()> {
    let (cli, argv) = parse(argv)?;
    if cli.command.compute().nvtx {
        nvtx::enable()?;
    }
    match cli.command {
        Command::Train(args) => train::train(*args, &argv),
        Command::Eval(args) => eval::eval(args),
        Command::Predict(args) => predict::predict(args),
        Command::PretrainUpsampler(args) => pretrain::pretrain(args),
        Command::Localize(args) => localize::localize(args),
        Command::Visualize(args) => visualize::visualize(args),
    }
}

/// `argv` parsed and checked before anything runs: a `--config` file's keys merged in (the
/// merged command line is returned beside), every number in its flag's range, the flags that
/// depend on each other agreeing. A refused value is an [`Error::Config`] naming the flag, or an
/// [`Error::File`] naming the config file and key. `--help` and `--version` print and exit;
/// clap's other usage errors (an unknown flag, a missing value) print as clap words them and
/// exit with status 1.
pub fn parse(argv: Vec<String>) -> Result<(Cli, Vec<String>)> {
    let argv = config_file::with_config_file(argv)?;
    let cli = command()
        .try_get_matches_from(&argv)
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(usage_error)?;
    if let Command::Train(args) = &cli.command {
        args.check()?;
    }
    Ok((cli, argv))
}

/// The command line's clap command, with every number-taking flag also taking a value that
/// starts with `-` (`--lr -1`, `--lr -inf`), so that its range check, not a "no such flag"
/// error, answers.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommands(|command| {
        command.mut_args(|arg| match takes_number(&arg) {
            true => arg.allow_hyphen_values(true),
            false => arg,
        })
    })
}

/// A value clap refused as an [`Error::Config`] naming the flag; any other usage error printed
/// by clap, and the process ended (status 0 for `--help` and `--version`, else 1).
fn usage_error(e: clap::Error) -> Error {
    if let Some((flag, value)) = values::value_error(&e) {
        return Error::config(&flag, value, values::reason(&e));
    }
    let _ = e.print();
    std::process::exit(if e.use_stderr() { 1 } else { 0 })
}
