//! A checkpointed model, rebuilt from its metadata and loaded on a backend, behind one
//! object-safe face ([`Predictor`]) for what `c2f eval`, `predict`, `localize` and `visualize`
//! do with it.

use std::path::Path;

use c2f_inception::backend::Backend;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::{Error, Result};

use crate::checkpoint::{self, CheckpointMeta};
use crate::data::loader::{ImageSource, Loader};
use crate::localize::{
    infer_images, localize, Attentive, ImageInference, LocalizationMetrics, LocalizeConfig,
};
use crate::model::Coarse2Fine;
use crate::train::{
    build_baseline, build_coarse2fine, build_coarse_only, build_wsdan, evaluate, Baseline,
    DeviceGraph, Evaluation, ModelKind, Trainee,
};
use crate::wsdan::WsDan;

/// Runs `work` on the model of the checkpoint at `path`, rebuilt from its metadata and loaded,
/// on the GPU `device` opens (once the metadata has been read), or on the CPU where it opens
/// none.
pub fn with_checkpoint<T>(
    path: &Path,
    device: impl FnOnce() -> Result<Option<CudaBackend>>,
    work: &mut dyn FnMut(&mut dyn Predictor, &CheckpointMeta) -> Result<T>,
) -> Result<T> {
    let meta = checkpoint::read_meta(path)?;
    match device()? {
        Some(mut b) => with_loaded(&mut b, path, &meta, work),
        None => with_loaded(&mut CpuBackend::<f32>::new(), path, &meta, work),
    }
}

/// Runs `work` on the model that `meta` (read from the checkpoint at `path`) describes, built
/// on `b` and loaded from the checkpoint.
pub fn with_loaded<B: Backend<Scalar = f32>, T>(
    b: &mut B,
    path: &Path,
    meta: &CheckpointMeta,
    work: &mut dyn FnMut(&mut dyn Predictor, &CheckpointMeta) -> Result<T>,
) -> Result<T> {
    let cfg = &meta.config;
    let Some(kind) = ModelKind::from_name(&meta.model) else {
        return Err(Error::File {
            path: path.display().to_string(),
            message: format!(
                "unknown model `{}` (known: {})",
                meta.model,
                ModelKind::names()
            ),
        });
    };
    match kind {
        ModelKind::Coarse2Fine => {
            let model = build_coarse2fine(b, cfg)?;
            load_and_run(b, model, path, meta, work)
        }
        ModelKind::CoarseOnly => {
            let model = build_coarse_only(b, cfg)?;
            load_and_run(b, model, path, meta, work)
        }
        ModelKind::WsDan => {
            let model = build_wsdan(b, cfg)?;
            load_and_run(b, model, path, meta, work)
        }
        ModelKind::Baseline => {
            let model = build_baseline(b, cfg)?;
            load_and_run(b, model, path, meta, work)
        }
    }
}

/// Fills `model` from the checkpoint at `path` and runs `work` on it.
fn load_and_run<B: Backend<Scalar = f32>, M: Trainee<B> + Attends<B>, T>(
    b: &mut B,
    mut model: M,
    path: &Path,
    meta: &CheckpointMeta,
    work: &mut dyn FnMut(&mut dyn Predictor, &CheckpointMeta) -> Result<T>,
) -> Result<T> {
    checkpoint::load(b, path, &model.state())?;
    let mut loaded = Loaded {
        b,
        model: &mut model,
        path,
    };
    work(&mut loaded, meta)
}

/// A loaded model on its backend, behind one object-safe face for the subcommands.
pub trait Predictor {
    fn evaluate(&mut self, test: &Loader, outputs: usize) -> Result<Evaluation>;
    fn probabilities(&mut self, images: &[f32]) -> Result<Vec<Vec<f64>>>;
    /// Localization metrics on `source` (Coarse2Fine, coarse-only and WS-DAN: they have
    /// attention maps).
    fn localize(
        &mut self,
        source: &dyn ImageSource,
        cfg: &LocalizeConfig,
    ) -> Result<(Vec<ImageInference>, LocalizationMetrics)>;
    /// Maps, predictions and boxes of images `indices` of `source` (Coarse2Fine, coarse-only
    /// and WS-DAN).
    fn infer_images(
        &mut self,
        source: &dyn ImageSource,
        indices: &[usize],
        cfg: &LocalizeConfig,
    ) -> Result<Vec<ImageInference>>;
}

/// What only a model with attention maps can do.
pub trait Attends<B: Backend<Scalar = f32>> {
    /// The model as one with attention maps, or an error naming `checkpoint` for a model
    /// without them.
    fn attentive(&mut self, checkpoint: &Path) -> Result<&mut dyn Attentive<B>>;
}

impl<B: Backend<Scalar = f32>> Attends<B> for Coarse2Fine {
    fn attentive(&mut self, _checkpoint: &Path) -> Result<&mut dyn Attentive<B>> {
        Ok(self)
    }
}

impl<B: Backend<Scalar = f32>> Attends<B> for WsDan {
    fn attentive(&mut self, _checkpoint: &Path) -> Result<&mut dyn Attentive<B>> {
        Ok(self)
    }
}

impl<B: Backend<Scalar = f32>> Attends<B> for Baseline {
    fn attentive(&mut self, checkpoint: &Path) -> Result<&mut dyn Attentive<B>> {
        Err(Error::File {
            path: checkpoint.display().to_string(),
            message: "a baseline checkpoint: localization and pictures need a Coarse2Fine, \
                      coarse-only or WS-DAN one (their attention maps)"
                .into(),
        })
    }
}

/// A model loaded from the checkpoint at `path`, on its backend.
pub struct Loaded<'a, B, M> {
    pub b: &'a mut B,
    pub model: &'a mut M,
    pub path: &'a Path,
}

impl<B: Backend<Scalar = f32>, M: Trainee<B> + Attends<B>> Predictor for Loaded<'_, B, M> {
    fn evaluate(&mut self, test: &Loader, outputs: usize) -> Result<Evaluation> {
        let mut graph = DeviceGraph::new("evaluation", true);
        evaluate(self.b, self.model, test, outputs, &mut graph)
    }

    fn probabilities(&mut self, images: &[f32]) -> Result<Vec<Vec<f64>>> {
        self.model.probabilities(self.b, images)
    }

    fn localize(
        &mut self,
        source: &dyn ImageSource,
        cfg: &LocalizeConfig,
    ) -> Result<(Vec<ImageInference>, LocalizationMetrics)> {
        localize(self.b, self.model.attentive(self.path)?, source, cfg)
    }

    fn infer_images(
        &mut self,
        source: &dyn ImageSource,
        indices: &[usize],
        cfg: &LocalizeConfig,
    ) -> Result<Vec<ImageInference>> {
        infer_images(
            self.b,
            self.model.attentive(self.path)?,
            source,
            indices,
            cfg,
        )
    }
}
