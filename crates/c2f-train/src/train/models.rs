//! The models the trainer knows, by the names their checkpoints, run folders and metrics carry
//! (`c2f train --models`).

use c2f_inception::backend::Backend;
use c2f_kernels::Result;

use super::baseline::train_baseline;
use super::coarse2fine::{build_coarse_only, init_coarse2fine, train_coarse2fine};
use super::evaluate::{Evaluation, COARSE_FINE, RAW_REFINED};
use super::fit::build_and_fit;
use super::parallel::DataParallel;
use super::wsdan::{build_wsdan, init_wsdan};
use crate::config::{RunOptions, TrainConfig};
use crate::data::spec::OpenedData;
use crate::model::Coarse2Fine;
use crate::wsdan::WsDan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Coarse2Fine,
    /// Coarse2Fine without its fine pass: what the fine pass must beat.
    CoarseOnly,
    /// WS-DAN (Hu et al. 2019), the method the paper compares with ([`crate::wsdan`]).
    WsDan,
    /// The plain InceptionV3.
    Baseline,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Coarse2Fine,
        ModelKind::CoarseOnly,
        ModelKind::WsDan,
        ModelKind::Baseline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Coarse2Fine => "coarse2fine",
            ModelKind::CoarseOnly => "coarse-only",
            ModelKind::WsDan => "wsdan",
            ModelKind::Baseline => "baseline",
        }
    }

    /// The model's row in the results table.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::Coarse2Fine => "Coarse2Fine",
            ModelKind::CoarseOnly => "Coarse-only ablation",
            ModelKind::WsDan => "WS-DAN",
            ModelKind::Baseline => "InceptionV3 baseline",
        }
    }

    /// What a two-head model's predictions are called: Coarse2Fine's coarse and fine,
    /// WS-DAN's raw and refined.
    pub fn head_names(self) -> [&'static str; 2] {
        match self {
            ModelKind::WsDan => RAW_REFINED,
            _ => COARSE_FINE,
        }
    }

    /// The model of a name, if it is one's.
    pub fn from_name(name: &str) -> Option<ModelKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        Self::ALL.map(ModelKind::name).join(", ")
    }

    /// What builds, initialises (or resumes) and trains the model: see [`train_coarse2fine`].
    pub fn trainer<B: Backend<Scalar = f32>>(self) -> Trainer<B> {
        match self {
            ModelKind::Coarse2Fine => train_coarse2fine,
            ModelKind::CoarseOnly => |b, cfg, run, data, dp| {
                let init = |b: &mut B, model: &Coarse2Fine| init_coarse2fine(b, model, cfg, run);
                build_and_fit(b, cfg, run, data, dp, build_coarse_only, init)
            },
            ModelKind::WsDan => |b, cfg, run, data, dp| {
                let init = |b: &mut B, model: &WsDan| init_wsdan(b, model, run);
                build_and_fit(b, cfg, run, data, dp, build_wsdan, init)
            },
            ModelKind::Baseline => train_baseline,
        }
    }
}

/// A model's trainer: the test accuracy at the end, or `None` where the run stopped early or
/// on a data-parallel rank other than 0.
pub type Trainer<B> = fn(
    &mut B,
    &TrainConfig,
    &RunOptions,
    &OpenedData,
    Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>>;
