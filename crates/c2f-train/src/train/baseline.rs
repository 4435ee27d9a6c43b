//! The plain InceptionV3 baseline as a [`Trainee`], and how a fresh one is built and
//! initialised.

use c2f_inception::backend::{Backend, BnMode, IndexTensor, Tensor};
use c2f_inception::network::{Network, SgdRule};
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_kernels::nvtx;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::Result;

use super::fit::build_and_fit;
use super::init::{init_backbone, start_from_checkpoint};
use super::models::ModelKind;
use super::parallel::DataParallel;
use super::trainee::{write_batch, BatchShare, GradsReady, StepStats, Trainee};
use super::Evaluation;
use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::Batch;
use crate::data::spec::OpenedData;
use crate::state::{network_state, Named};
use crate::task::Task;

/// The plain InceptionV3 baseline: global average pool, dropout, `fc`, cross-entropy (or
/// per-attribute binary cross-entropy).
pub struct Baseline {
    pub net: Network,
    labels: IndexTensor,
    targets: Tensor,
    predictions: IndexTensor,
    /// The step's `[loss, right answers]`.
    stats: Tensor,
    classes: usize,
    task: Task,
}

impl Baseline {
    pub fn new<B: Backend>(b: &mut B, cfg: &TrainConfig) -> Result<Baseline> {
        let graph = Graph::new(InceptionConfig {
            input_size: cfg.input_size,
            width: cfg.width,
            depth: Depth::Full {
                classes: cfg.classes,
            },
        })?;
        Ok(Baseline {
            net: Network::new(b, graph, cfg.batch)?,
            labels: b.alloc_index(cfg.batch)?,
            targets: b.alloc(cfg.task.targets_len(cfg.batch, cfg.classes))?,
            predictions: b.alloc_index(cfg.task.predictions_len(cfg.batch, cfg.classes))?,
            stats: b.alloc(2)?,
            classes: cfg.classes,
            task: cfg.task,
        })
    }
}

impl<B: Backend<Scalar = f32>> Trainee<B> for Baseline {
    fn name(&self) -> &'static str {
        ModelKind::Baseline.name()
    }

    fn loss_terms(&self) -> &'static [&'static str] {
        &["ce"]
    }

    fn stats(&self) -> StepStats {
        StepStats {
            tensor: self.stats,
            losses: vec![0],
            correct: 1,
        }
    }

    fn state(&self) -> Vec<Named> {
        network_state(&self.net)
    }

    fn write_step_inputs(
        &mut self,
        b: &mut B,
        batch: &Batch,
        _draw: &mut SplitMix64,
        step: u64,
        share: &BatchShare,
    ) -> Result<()> {
        let buffers = (self.net.input(), self.labels, self.targets);
        write_batch(b, batch, self.task, buffers)?;
        // A mask per rank and step (a rank's samples sit at other positions than in one
        // worker's batch, so its masks cannot be that worker's anyway; PyTorch DDP's ranks also
        // draw their own). One worker: the step itself.
        self.net.dropout.training = true;
        let dropout_step = step * share.world as u64 + share.rank as u64;
        self.net.set_dropout_step(b, dropout_step)
    }

    fn step(&mut self, b: &mut B, mode: BnMode, ready: &mut GradsReady<'_, B>) -> Result<()> {
        self.net.zero_grads(b)?;
        nvtx::within("backbone forward", || self.net.forward(b, mode))?;
        let loss_range = nvtx::range("loss");
        self.task.loss(
            b,
            self.net.batch,
            self.classes,
            (self.net.output(), self.labels, self.targets),
            self.predictions,
            self.net.output_grad(),
            self.stats,
        )?;
        drop(loss_range);
        let _backward = nvtx::range("backbone backward");
        self.net
            .backward_reporting(b, mode, false, &mut |b, from| ready(b, 0, from))
    }

    fn grads(&self) -> Vec<Tensor> {
        vec![self.net.grads]
    }

    fn sgd_step(&mut self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        self.net.sgd_step_by(b, rule)
    }

    fn eval_input(&self) -> Tensor {
        self.net.input()
    }

    fn infer(&mut self, b: &mut B) -> Result<()> {
        self.net.dropout.training = false;
        self.net.forward(b, BnMode::Inference)
    }

    fn eval_logits(&self) -> Vec<Tensor> {
        vec![self.net.output()]
    }

    fn outputs(&self) -> usize {
        self.classes
    }

    fn task(&self) -> Task {
        self.task
    }
}

pub fn build_baseline<B: Backend>(b: &mut B, cfg: &TrainConfig) -> Result<Baseline> {
    Baseline::new(b, cfg)
}

/// Initialises a fresh baseline: from [`RunOptions::init_from`]'s checkpoint, or the backbone
/// drawn (or from [`RunOptions::weights`]).
pub fn init_baseline<B: Backend<Scalar = f32>>(
    b: &mut B,
    model: &Baseline,
    run: &RunOptions,
) -> Result<()> {
    match &run.init_from {
        Some(path) => {
            let name = ModelKind::Baseline.name();
            start_from_checkpoint(b, &Trainee::<B>::state(model), path, name)
        }
        None => init_backbone(b, &model.net, run.weights.as_deref()),
    }
}

/// The same for the baseline.
pub fn train_baseline<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>> {
    let init = |b: &mut B, model: &Baseline| init_baseline(b, model, run);
    build_and_fit(b, cfg, run, data, dp, build_baseline, init)
}
