//! Coarse2Fine as a [`Trainee`], with or without its fine pass (the coarse-only ablation): its
//! step, its gradient buffers and center banks, and how a fresh model is built and initialised
//! from a [`TrainConfig`].

use c2f_inception::backend::{Backend, BnMode, Tensor};
use c2f_inception::network::SgdRule;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::Result;

use super::fit::build_and_fit;
use super::init::{init_backbone, start_from_checkpoint, uniform_heads};
use super::models::ModelKind;
use super::parallel::DataParallel;
use super::trainee::{write_batch, BatchShare, GradsReady, StepStats, Trainee};
use super::Evaluation;
use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::Batch;
use crate::data::spec::OpenedData;
use crate::model::{
    orthogonal_attention, Coarse2Fine, Coarse2FineConfig, Grads, COARSE_STATS, FINE_STATS,
};
use crate::pass::PassStat;
use crate::pretrain::{start_upsampler, upsampler_origin};
use crate::state::Named;
use crate::task::Task;
use crate::upsampler::{attention_map_side, default_channels, UpsamplerOrigin};

impl<B: Backend<Scalar = f32>> Trainee<B> for Coarse2Fine {
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    fn loss_terms(&self) -> &'static [&'static str] {
        if self.has_fine_pass() {
            &["coarse", "fine", "center_coarse", "center_fine"]
        } else {
            &["coarse", "center_coarse"]
        }
    }

    fn stats(&self) -> StepStats {
        let (head, center) = (PassStat::HeadLoss, PassStat::CenterLoss);
        let losses = if self.has_fine_pass() {
            vec![
                head.at(COARSE_STATS),
                head.at(FINE_STATS),
                center.at(COARSE_STATS),
                center.at(FINE_STATS),
            ]
        } else {
            vec![head.at(COARSE_STATS), center.at(COARSE_STATS)]
        };
        StepStats {
            tensor: self.stats,
            losses,
            correct: PassStat::Correct.at(COARSE_STATS),
        }
    }

    fn state(&self) -> Vec<Named> {
        Coarse2Fine::state(self)
    }

    fn write_step_inputs(
        &mut self,
        b: &mut B,
        batch: &Batch,
        draw: &mut SplitMix64,
        _step: u64,
        share: &BatchShare,
    ) -> Result<()> {
        let buffers = (self.input(), self.labels(), self.targets());
        write_batch(b, batch, self.config.task, buffers)?;
        if let Some(chosen_maps) = self.chosen_maps() {
            let maps = self.config.maps as u64;
            let chosen: Vec<i32> = (0..share.global).map(|_| draw.below(maps) as i32).collect();
            b.write_index(chosen_maps, &chosen[share.slice.clone()])?;
        }
        Ok(())
    }

    fn step(&mut self, b: &mut B, mode: BnMode, ready: &mut GradsReady<'_, B>) -> Result<()> {
        self.zero_grads(b)?;
        self.forward_backward_reporting(b, mode, &mut |b, grads: Grads| {
            let (buffer, from) = grads.buffer();
            ready(b, buffer, from)
        })
    }

    fn grads(&self) -> Vec<Tensor> {
        vec![self.backbone().grads, self.grads]
    }

    fn center_banks(&self) -> Vec<Tensor> {
        Coarse2Fine::center_banks(self)
    }

    fn set_center_lambda(&mut self, b: &mut B, lambda: f64) -> Result<()> {
        Self::set_center_lambda(self, b, lambda)
    }

    fn sgd_step(&mut self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        self.sgd_step_by(b, rule)
    }

    fn eval_input(&self) -> Tensor {
        self.input()
    }

    fn infer(&mut self, b: &mut B) -> Result<()> {
        Coarse2Fine::infer(self, b)
    }

    fn eval_logits(&self) -> Vec<Tensor> {
        self.logits()
    }

    fn outputs(&self) -> usize {
        self.config.classes
    }

    fn task(&self) -> Task {
        self.config.task
    }

    fn upsampler_origin(&self, cfg: &TrainConfig, run: &RunOptions) -> Option<UpsamplerOrigin> {
        upsampler_origin(cfg, run).filter(|_| self.has_fine_pass())
    }
}

impl Coarse2Fine {
    /// Which of the trainer's models this is.
    pub fn kind(&self) -> ModelKind {
        if self.has_fine_pass() {
            ModelKind::Coarse2Fine
        } else {
            ModelKind::CoarseOnly
        }
    }
}

/// The model config of a training config: the up-sampler's channels for its input size.
fn model_config(cfg: &TrainConfig) -> Result<Coarse2FineConfig> {
    let map_side = attention_map_side(cfg.input_size)?.0;
    Ok(Coarse2FineConfig {
        input_size: cfg.input_size,
        width: cfg.width,
        classes: cfg.classes,
        task: cfg.task,
        maps: cfg.maps,
        upsampler_channels: default_channels(map_side, cfg.input_size),
        center_loss: cfg.center_loss(),
        center_banks: cfg.center_banks,
        batch: cfg.batch,
    })
}

/// The Coarse2Fine model of a config, unitialised.
pub fn build_coarse2fine<B: Backend>(b: &mut B, cfg: &TrainConfig) -> Result<Coarse2Fine> {
    Coarse2Fine::with_upsampler(b, model_config(cfg)?, cfg.upsampler)
}

/// The coarse-only model of a config, unitialised: [`Coarse2Fine::coarse_only`].
pub fn build_coarse_only<B: Backend>(b: &mut B, cfg: &TrainConfig) -> Result<Coarse2Fine> {
    Coarse2Fine::coarse_only(b, model_config(cfg)?)
}

/// Initialises a fresh Coarse2Fine or coarse-only model: from [`RunOptions::init_from`]'s
/// checkpoint, or its parameters drawn (the center banks at zero); then Coarse2Fine's
/// up-sampler as [`RunOptions::upsampler_weights`] says ([`start_upsampler`]; the coarse-only
/// model has none).
pub fn init_coarse2fine<B: Backend<Scalar = f32>>(
    b: &mut B,
    model: &Coarse2Fine,
    cfg: &TrainConfig,
    run: &RunOptions,
) -> Result<()> {
    let mut heads = match &run.init_from {
        Some(path) => {
            start_from_checkpoint(b, &model.state(), path, model.kind().name())?;
            b.read(model.params)?
        }
        None => {
            init_backbone(b, model.backbone(), run.weights.as_deref())?;
            drawn_heads(model, cfg)?
        }
    };
    if let Some(origin) = Trainee::<B>::upsampler_origin(model, cfg, run) {
        start_upsampler(b, &origin, cfg.input_size, model.head_table(), &mut heads)?;
    }
    b.write(model.params, &heads)
}

/// A fresh draw of the heads' parameters: uniform by fan-in ([`uniform_heads`]), the attention
/// conv's rows orthonormal unless `cfg.ortho_init` is off.
fn drawn_heads(model: &Coarse2Fine, cfg: &TrainConfig) -> Result<Vec<f32>> {
    let mut heads = uniform_heads(model.head_table());
    if cfg.ortho_init {
        let attention = model
            .head_table()
            .get("attention.weight")
            .expect("the model declares it");
        let (maps, channels) = (attention.shape[0], attention.shape[1]);
        heads[attention.range()].copy_from_slice(&orthogonal_attention(maps, channels, cfg.seed)?);
    }
    Ok(heads)
}

/// Builds, initialises (or resumes) and trains Coarse2Fine; the test accuracy at the end, or
/// `None` when [`RunOptions::stop_after`] stopped it. With `dp`, as one rank of a data-parallel
/// job (rank 0 initialises, [`fit`] broadcasts; the other ranks return `None`).
pub fn train_coarse2fine<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>> {
    let init = |b: &mut B, model: &Coarse2Fine| init_coarse2fine(b, model, cfg, run);
    build_and_fit(b, cfg, run, data, dp, build_coarse2fine, init)
}
