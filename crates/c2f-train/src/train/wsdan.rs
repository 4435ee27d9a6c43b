//! WS-DAN as a [`Trainee`]: its step with the augmentation's choices drawn, its gradient
//! buffers and center bank, and how a fresh model is built and initialised from a
//! [`TrainConfig`].

use c2f_inception::backend::{Backend, BnMode, Tensor};
use c2f_inception::network::SgdRule;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::Result;

use super::init::{init_backbone, start_from_checkpoint, uniform_heads};
use super::models::ModelKind;
use super::trainee::{write_batch, BatchShare, GradsReady, StepStats, Trainee};
use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::Batch;
use crate::state::Named;
use crate::task::Task;
use crate::wsdan::{
    Augmentation, Grads, MapChoice, WsDan, WsDanConfig, CROP_THRESHOLDS, DROP_THRESHOLDS,
};

/// The center loss is one term whichever bank it uses: a per-part bank has one center, so the
/// trainer's spread of the class centers (its `center_*` terms) does not apply.
const LOSS_TERMS: [&str; 4] = ["raw", "crop", "drop", "center"];

impl<B: Backend<Scalar = f32>> Trainee<B> for WsDan {
    fn name(&self) -> &'static str {
        ModelKind::WsDan.name()
    }

    fn loss_terms(&self) -> &'static [&'static str] {
        &LOSS_TERMS
    }

    fn head_names(&self) -> [&'static str; 2] {
        ModelKind::WsDan.head_names()
    }

    fn stats(&self) -> StepStats {
        let (losses, correct) = WsDan::stat_slots();
        StepStats {
            tensor: self.stats,
            losses: losses.to_vec(),
            correct,
        }
    }

    fn state(&self) -> Vec<Named> {
        WsDan::state(self)
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
        self.write_choices(b, &draw_augmentation(draw, share))
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
        vec![self.center_bank()]
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
        WsDan::infer(self, b)
    }

    /// After inference the raw and the refined logits.
    fn eval_logits(&self) -> Vec<Tensor> {
        self.logits()[..2].to_vec()
    }

    fn outputs(&self) -> usize {
        self.config.classes
    }

    fn task(&self) -> Task {
        self.config.task
    }
}

/// A step's augmentation choices, drawn for the whole global batch (every sample's crop-map
/// draw, then every drop-map draw, every θ_c, every θ_d) and cut to `share`'s slice, so that
/// data-parallel ranks together draw what one worker does.
pub fn draw_augmentation(draw: &mut SplitMix64, share: &BatchShare) -> Augmentation {
    let mut slice = |(lo, hi): (f64, f64)| -> Vec<f64> {
        draw.uniform_vec(share.global, lo, hi)[share.slice.clone()].to_vec()
    };
    Augmentation {
        crop_maps: MapChoice::ByMass(slice((0.0, 1.0))),
        drop_maps: MapChoice::ByMass(slice((0.0, 1.0))),
        crop_thresholds: slice(CROP_THRESHOLDS),
        drop_thresholds: slice(DROP_THRESHOLDS),
    }
}

/// The WS-DAN model of a training config, unitialised.
pub fn build_wsdan<B: Backend>(b: &mut B, cfg: &TrainConfig) -> Result<WsDan> {
    WsDan::new(
        b,
        WsDanConfig {
            input_size: cfg.input_size,
            width: cfg.width,
            classes: cfg.classes,
            task: cfg.task,
            maps: cfg.wsdan_maps,
            centers: cfg.wsdan_centers,
            passes: cfg.wsdan_passes,
            center_loss: cfg.center_loss(),
            batch: cfg.batch,
        },
    )
}

/// Initialises a fresh WS-DAN model: from [`RunOptions::init_from`]'s checkpoint, or the
/// backbone as [`init_backbone`] starts it and the heads drawn uniform by fan-in (the
/// classifier 100× smaller), the attention BN's weight 1 and bias 0 and its running statistics
/// 0 and 1, the center bank at zero.
pub fn init_wsdan<B: Backend<Scalar = f32>>(
    b: &mut B,
    model: &WsDan,
    run: &RunOptions,
) -> Result<()> {
    if let Some(path) = &run.init_from {
        return start_from_checkpoint(b, &model.state(), path, ModelKind::WsDan.name());
    }
    init_backbone(b, model.backbone(), run.weights.as_deref())?;
    let mut heads = uniform_heads(model.head_table());
    for (name, value) in [("attention.bn.weight", 1.0), ("attention.bn.bias", 0.0)] {
        let e = model.head_table().get(name).expect("the model declares it");
        heads[e.range()].fill(value);
    }
    b.write(model.params, &heads)?;
    for stat in model.running_stats() {
        let fresh = if stat.name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        b.fill(stat.tensor, fresh)?;
    }
    b.fill(model.center_bank(), 0.0)
}
