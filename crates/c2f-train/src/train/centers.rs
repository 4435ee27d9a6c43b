//! Whether the class centers have merged: the center banks' spread, its metrics columns, and
//! the warning a run prints once when they have.

/// A metrics column per center bank: `center_spread_coarse` for the `center_coarse` term.
pub(super) fn spread_columns(loss_terms: &[&str]) -> Vec<String> {
    loss_terms
        .iter()
        .filter(|t| t.starts_with("center_"))
        .map(|t| format!("center_spread_{}", &t["center_".len()..]))
        .collect()
}

/// A [`center_spread`] below which the class centers count as merged. On the synthetic set with
/// the defaults, seed 0's run (94%) stays above 0.09 once the center loss has its full weight
/// and the other seeds that learn end at 0.23–0.30; seed 3's, which stays at chance, falls to
/// 0.008 in its third epoch and stays below 0.005.
pub const MERGED_SPREAD: f64 = 0.01;

/// How far apart the class centers of a `[classes, len]` bank are: the mean squared distance of
/// the classes' centers from their mean, over their mean squared norm (1 − 1/classes for
/// orthogonal centers of one norm, 0 when they coincide). In runs that learn the synthetic set
/// it ends near 0.25; when the part features stop telling the classes apart, every center moves
/// to the same point and it falls towards 0 (docs/experiments.md). `None` while every center is zero.
pub fn center_spread(bank: &[f32], classes: usize) -> Option<f64> {
    let len = bank.len() / classes;
    let mut mean = vec![0.0f64; len];
    for center in bank.chunks_exact(len) {
        for (m, &v) in mean.iter_mut().zip(center) {
            *m += v as f64 / classes as f64;
        }
    }
    let (mut spread, mut norm) = (0.0, 0.0);
    for center in bank.chunks_exact(len) {
        for (&m, &v) in mean.iter().zip(center) {
            spread += (v as f64 - m).powi(2);
            norm += (v as f64).powi(2);
        }
    }
    (norm > 0.0).then(|| spread / norm)
}

/// The warning that the class centers have merged, given once per run.
#[derive(Default)]
pub(super) struct MergedCenters {
    warned: bool,
}

impl MergedCenters {
    /// Warns, unless it has already, when `spread` (of metrics column `column`, at the end of
    /// `epoch`) is below [`MERGED_SPREAD`].
    pub(super) fn check(&mut self, model: &str, epoch: usize, column: &str, spread: Option<f64>) {
        if let Some(v) = spread.filter(|&v| !self.warned && v < MERGED_SPREAD) {
            eprintln!(
                "warning: {model} epoch {}: the class centers have merged ({column} {v:.4} < \
                 {MERGED_SPREAD}): the part features do not tell the classes apart; runs in \
                 this state learn late or not at all (docs/experiments.md); if the test accuracy \
                 stays at chance, try another --seed",
                epoch + 1
            );
            self.warned = true;
        }
    }
}
