//! The models the trainer knows, by the names their checkpoints, run folders and metrics carry
//! (`c2f train --models`).

use c2f_inception::backend::Backend;
use c2f_kernels::Result;

use super::baseline::train_baseline;
use super::coarse2fine::{train_coarse2fine, train_coarse_only};
use super::evaluate::Evaluation;
use super::parallel::DataParallel;
use crate::config::{RunOptions, TrainConfig};
use crate::data::spec::OpenedData;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Coarse2Fine,
    /// Coarse2Fine without its fine pass: what the fine pass must beat.
    CoarseOnly,
    /// The plain InceptionV3.
    Baseline,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [
        ModelKind::Coarse2Fine,
        ModelKind::CoarseOnly,
        ModelKind::Baseline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Coarse2Fine => "coarse2fine",
            ModelKind::CoarseOnly => "coarse-only",
            ModelKind::Baseline => "baseline",
        }
    }

    /// The model's row in the results table.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::Coarse2Fine => "Coarse2Fine",
            ModelKind::CoarseOnly => "Coarse-only ablation",
            ModelKind::Baseline => "InceptionV3 baseline",
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

    /// Builds, initialises (or resumes) and trains the model: see [`train_coarse2fine`].
    pub fn train<B: Backend<Scalar = f32>>(
        self,
        b: &mut B,
        cfg: &TrainConfig,
        run: &RunOptions,
        data: &OpenedData,
        dp: Option<&mut DataParallel<'_, B>>,
    ) -> Result<Option<Evaluation>> {
        match self {
            ModelKind::Coarse2Fine => train_coarse2fine(b, cfg, run, data, dp),
            ModelKind::CoarseOnly => train_coarse_only(b, cfg, run, data, dp),
            ModelKind::Baseline => train_baseline(b, cfg, run, data, dp),
        }
    }
}
