//! The progress bar of an epoch.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting an epoch's images, so its rate is images/s.
pub(super) fn progress_bar(
    show: bool,
    steps: usize,
    done: usize,
    batch: usize,
    model: &str,
    epoch: usize,
) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((steps * batch) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{model} epoch {}", epoch + 1));
    bar.set_position((done * batch) as u64);
    bar
}
