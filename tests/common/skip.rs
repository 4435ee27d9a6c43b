//! Skipping a test from inside it.

/// The value in an `Option`, or a return from the calling test when there is none: for the
/// `*_or_skip` helpers, which have already said why the test is skipped.
macro_rules! or_return {
    ($opt:expr) => {
        match $opt {
            Some(value) => value,
            None => return,
        }
    };
}

pub(crate) use or_return;
