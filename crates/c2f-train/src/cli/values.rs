//! The ranges the numeric flags take, checked as clap parses them, so that the command line and
//! a `--config` file (whose values go through the same parsers) are checked by one rule each;
//! and the reason a value was refused, for the error that names the flag or key.

use std::any::TypeId;
use std::fmt::Display;
use std::ops::{Bound, RangeBounds};
use std::str::FromStr;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Arg;

/// Epochs, and the warmups' lengths in epochs, at most: far beyond any run, and small enough
/// that a step count over the run cannot overflow.
pub(super) const MAX_EPOCHS: usize = 100_000;
/// `--log-every`'s bound: the device keeps one row of statistics per step in between.
pub(super) const MAX_LOG_EVERY: usize = 100_000;
/// The largest batch, global over the ranks: beyond it a batch's activations fill no GPU.
pub(super) const MAX_BATCH: usize = 4096;
/// Synthetic images per split, and up-sampler pairs per epoch, at most.
pub(super) const MAX_IMAGES: usize = 10_000_000;
/// The largest pixel cap `--max-image-pixels` takes: a terapixel, 3 TB once decoded to RGB,
/// more than any machine holds.
pub(super) const MAX_PIXEL_CAP: u64 = 1_000_000_000_000;
/// Attention maps M at most (the paper: 8, WS-DAN: 32).
pub(super) const MAX_MAPS: usize = 512;

/// A parser for a number of type `T` inside `range`: NaN, infinities, text that is not a `T`
/// (a fraction for a whole number, `-1` for an unsigned one) and values outside are refused
/// with a message stating the range.
pub(super) fn within<T, R>(
    range: R,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
    R: RangeBounds<T> + Clone + Send + Sync + 'static,
{
    move |text: &str| match text.trim().parse::<T>() {
        // NaN lies in no range: every comparison with it is false.
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(format!("must be {}", describe::<T>(&range))),
    }
}

/// `a whole number >= 1 and <= 100000`, `a number > 0 and <= 10`.
fn describe<T: FromStr + Display>(range: &impl RangeBounds<T>) -> String {
    // Whole-number types are the ones that do not read a fraction.
    let kind = if "0.5".parse::<T>().is_ok() {
        "a number"
    } else {
        "a whole number"
    };
    let ends = [
        match range.start_bound() {
            Bound::Included(v) => Some(format!(">= {v}")),
            Bound::Excluded(v) => Some(format!("> {v}")),
            Bound::Unbounded => None,
        },
        match range.end_bound() {
            Bound::Included(v) => Some(format!("<= {v}")),
            Bound::Excluded(v) => Some(format!("< {v}")),
            Bound::Unbounded => None,
        },
    ];
    let ends: Vec<String> = ends.into_iter().flatten().collect();
    match ends.is_empty() {
        true => kind.to_string(),
        false => format!("{kind} {}", ends.join(" and ")),
    }
}

/// Whether `arg` takes a number: its parser's type is one of the numeric ones the flags use.
pub fn takes_number(arg: &Arg) -> bool {
    let id = arg.get_value_parser().type_id();
    [
        TypeId::of::<usize>(),
        TypeId::of::<u64>(),
        TypeId::of::<f64>(),
        TypeId::of::<f32>(),
    ]
    .iter()
    .any(|t| id == *t)
}

/// Why clap refused a value: the parser's message, or the values an enumerated flag takes.
pub(super) fn reason(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("must be one of {}", valid.join(", "));
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_string()
}

/// The flag (`--epochs`) and value of an error that refused a value, if it is one.
pub(super) fn value_error(e: &clap::Error) -> Option<(String, String)> {
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue)?;
    // A flag with no value at all (`--lr` last) is a usage error, not a refused value.
    if value.is_empty() && e.kind() == ErrorKind::InvalidValue {
        return None;
    }
    // clap names the flag with its value's name: `--epochs <EPOCHS>`.
    let flag = arg.split(' ').next().unwrap_or_default().to_string();
    Some((flag, value))
}
