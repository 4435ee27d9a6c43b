//! The training loop for Coarse2Fine and for the plain InceptionV3 baseline, on any f32 backend:
//! SGD with momentum and weight decay, WS-DAN's step schedule (×0.9 every 2 epochs) or cosine,
//! BatchNorm in train, frozen or eval mode, checkpoints written atomically every N steps and at
//! each epoch's end, `--resume` that continues a run exactly (bit-identical on the CPU), metrics
//! as JSON lines and CSV, a progress bar, and test-set top-1 for the coarse, fine and averaged
//! predictions.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use c2f_dist::centers::CenterSync;
use c2f_dist::collective::{plan_buckets, Collective, Reduce, DEFAULT_BUCKET_BYTES};
use c2f_dist::shard::ShardPlan;
use c2f_inception::backend::{Backend, BnMode, IndexTensor, Tensor};
use c2f_inception::init::{counter_uniform, golden_init};
use c2f_inception::network::{Network, SgdRule};
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::table::TensorEntry;
use c2f_inception::weights::{self, LoadOptions};
use c2f_kernels::center_loss::CenterLossParams;
use c2f_kernels::rng::{splitmix64_output, SplitMix64};
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, network_state, CheckpointMeta, Named};
use crate::data::loader::{Batch, Epoch, ImageSource, Loader, LoaderConfig, Prefetched, Skipped};
use crate::data::spec::{DataSpec, OpenedData};
use crate::data::transform::{TrainCrop, Transform};
use crate::model::{
    attribute_targets, orthogonal_attention, Coarse2Fine, Coarse2FineConfig, Grads, Task,
    FEATURE_SCALE,
};
use crate::upsampler::{
    attention_map_side, default_channels, init_range, load_into, UpsamplerKind,
};

/// How the learning rate moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// WS-DAN's: ×0.9 every 2 epochs.
    Step,
    /// Cosine from the base rate to zero over the run, per step.
    Cosine,
}

/// What BatchNorm does during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BnPolicy {
    /// Batch statistics, running statistics updated, weights and biases learnt.
    Train,
    /// Running statistics used and kept; weights and biases learnt (PyTorch's `model.eval()`
    /// BN while training).
    Eval,
    /// Running statistics used and kept; weights and biases fixed (fine-tuning's frozen BN).
    Frozen,
}

impl BnPolicy {
    fn mode(self) -> BnMode {
        match self {
            BnPolicy::Train => BnMode::Train,
            BnPolicy::Eval | BnPolicy::Frozen => BnMode::Inference,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub input_size: usize,
    pub width: f64,
    /// Classes, or attributes for [`Task::Attributes`].
    pub classes: usize,
    /// Single-label classes or multi-label attributes (CelebA).
    #[serde(default)]
    pub task: Task,
    pub maps: usize,
    pub lr: f64,
    /// The classifiers' learning rate over `lr`. They read 100× the unit-norm part features
    /// (the baseline: pooled features of norm about √channels), so a rate that suits a
    /// backbone trained from scratch makes their logits jump; fine-tuning (WS-DAN) uses 1.
    pub classifier_lr_scale: f64,
    pub schedule: Schedule,
    /// The learning rate rises linearly from zero over this many epochs (per step) before the
    /// schedule takes over; 0: none (the paper, fine-tuning).
    #[serde(default)]
    pub warmup_epochs: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub bn: BnPolicy,
    /// Center loss weight λ and moving-average rate β.
    pub center_lambda: f64,
    pub center_beta: f64,
    /// λ rises linearly from zero over this many epochs (per step). From scratch, a full
    /// center loss at the start pulls every image's part features to the same point before
    /// they tell the classes apart, and training can stay there (README); 0: none (the paper).
    #[serde(default)]
    pub center_warmup_epochs: f64,
    pub seed: u64,
    /// The fine branch's up-sampler: learnable (the paper) or fixed bilinear (its comparison).
    pub upsampler: UpsamplerKind,
    /// The attention conv starts from orthonormal rows (SVD, the paper's Algorithm 1); `false`
    /// keeps the plain uniform start, the ablation of the paper's Table 8.
    pub ortho_init: bool,
}

impl Default for TrainConfig {
    /// The paper's setting on CUB-200-2011: 299² input, InceptionV3 (width 1), M = 8 maps,
    /// batch 64, WS-DAN's optimiser (lr 1e-3 ×0.9 every 2 epochs, momentum 0.9, weight decay
    /// 1e-5), λ = 1, β = 0.05, BatchNorm training, the orthogonal attention start.
    fn default() -> Self {
        TrainConfig {
            epochs: 200,
            batch: 64,
            input_size: 299,
            width: 1.0,
            classes: 200,
            task: Task::Classes,
            maps: 8,
            lr: 1e-3,
            classifier_lr_scale: 1.0,
            schedule: Schedule::Step,
            warmup_epochs: 0.0,
            momentum: 0.9,
            weight_decay: 1e-5,
            bn: BnPolicy::Train,
            center_lambda: 1.0,
            center_beta: 0.05,
            center_warmup_epochs: 0.0,
            seed: 0,
            upsampler: UpsamplerKind::Learnable,
            ortho_init: true,
        }
    }
}

impl TrainConfig {
    fn center_loss(&self) -> CenterLossParams {
        CenterLossParams {
            lambda: self.center_lambda,
            beta: self.center_beta,
        }
    }

    /// Each parameter tensor's SGD hyper-parameters at base rate `lr`: the classifiers (`fc*`)
    /// at `lr × classifier_lr_scale`, frozen BatchNorm weights and biases not at all, the rest
    /// at `lr`.
    pub fn sgd_rule(&self, lr: f64) -> impl Fn(&TensorEntry) -> Option<SgdParams> + '_ {
        move |e: &TensorEntry| {
            let bn = e.name.ends_with(".bn.weight") || e.name.ends_with(".bn.bias");
            if bn && self.bn == BnPolicy::Frozen {
                return None;
            }
            let scale = if e.name.starts_with("fc") {
                self.classifier_lr_scale
            } else {
                1.0
            };
            Some(SgdParams::new(lr * scale, self.momentum, self.weight_decay))
        }
    }

    /// The learning rate of step `step` of `epoch`, of `steps_per_epoch`.
    pub fn learning_rate(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        let warmup = warmup_fraction(self.warmup_epochs, epoch, step, steps_per_epoch);
        warmup
            * match self.schedule {
                Schedule::Step => self.lr * 0.9f64.powi((epoch / 2) as i32),
                Schedule::Cosine => {
                    let total = (self.epochs * steps_per_epoch).max(1) as f64;
                    let t = (epoch * steps_per_epoch + step) as f64;
                    0.5 * self.lr * (1.0 + (std::f64::consts::PI * t / total).cos())
                }
            }
    }

    /// The center loss weight λ at step `step` of `epoch`, of `steps_per_epoch`.
    pub fn center_lambda_at(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        self.center_lambda
            * warmup_fraction(self.center_warmup_epochs, epoch, step, steps_per_epoch)
    }
}

/// How far a linear warmup over `epochs` epochs is at step `step` of `epoch`: (steps so far,
/// this one included) / (warmup steps), at most 1; 1 throughout when `epochs` is 0.
fn warmup_fraction(epochs: f64, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
    let length = epochs * steps_per_epoch as f64;
    if length <= 0.0 {
        return 1.0;
    }
    (((epoch * steps_per_epoch + step + 1) as f64) / length).min(1.0)
}

/// Where and how a run keeps its files, beside what it trains.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// `checkpoint.safetensors`, `metrics.jsonl` and `metrics.csv` go here.
    pub dir: PathBuf,
    /// Also checkpoint every this many steps (0: only at each epoch's end).
    pub checkpoint_every: u64,
    /// Continue from the checkpoint in `dir` instead of starting afresh.
    pub resume: bool,
    /// Test-set evaluation every this many epochs (0: only after the last).
    pub eval_every: usize,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Start the backbone from torchvision-named InceptionV3 weights.
    pub weights: Option<PathBuf>,
    /// Start Coarse2Fine's learnable up-sampler from `c2f pretrain-upsampler`'s file.
    pub upsampler_weights: Option<PathBuf>,
    /// Start from the final state of an earlier run of the same model (its checkpoint), with
    /// fresh momentum ([`start_from_checkpoint`]); `upsampler_weights` then replaces its
    /// up-sampler.
    pub init_from: Option<PathBuf>,
    /// Stop after this many steps in all, as a crash would (after any checkpoint due at that
    /// step): for testing `resume`.
    pub stop_after: Option<u64>,
}

impl RunOptions {
    /// Files in `dir`; no mid-epoch checkpoints, evaluation every epoch, no progress bar, a
    /// fresh start.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            dir: dir.into(),
            checkpoint_every: 0,
            resume: false,
            eval_every: 1,
            progress: false,
            weights: None,
            upsampler_weights: None,
            init_from: None,
            stop_after: None,
        }
    }
}

/// Test-set accuracy (fractions): top-1 for classes, the mean over the attributes for
/// attributes; the baseline has only `coarse`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub coarse: f64,
    pub fine: Option<f64>,
    pub average: Option<f64>,
}

/// What [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub accuracy: Accuracy,
    /// [`Task::Attributes`]: each attribute's accuracy, in the data's order (the paper's
    /// Table 9); empty for classes.
    pub per_attribute: Vec<Accuracy>,
}

/// One training step's outcome.
pub struct StepResult {
    /// The loss terms, in [`Trainee::LOSS_TERMS`] order.
    pub losses: Vec<f64>,
    /// The (coarse) head's right answers: samples classified right, or for attributes right
    /// (sample, attribute) answers.
    pub correct: usize,
}

/// Which part of a step's global batch this process's batch is: all of it for one worker,
/// slice `rank` of `world` for a data-parallel rank (`c2f_dist::shard::ShardPlan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchShare {
    pub global: usize,
    pub slice: Range<usize>,
    pub rank: usize,
    pub world: usize,
}

impl BatchShare {
    /// One worker's: the whole batch.
    pub fn whole(batch: usize) -> BatchShare {
        BatchShare {
            global: batch,
            slice: 0..batch,
            rank: 0,
            world: 1,
        }
    }
}

/// Called during a step's backward as gradients become complete: `ready(b, buffer, from)` says
/// that [`Trainee::grads`]`[buffer]` holds its final values from element `from` to its end, so
/// a data-parallel rank can start all-reducing that part while backward goes on.
pub type GradsReady<'a, B> = dyn FnMut(&mut B, usize, usize) -> Result<()> + 'a;

/// A model the loop can train, evaluate and checkpoint.
pub trait Trainee<B: Backend<Scalar = f32>> {
    /// The model's name in checkpoints and metrics.
    const NAME: &'static str;
    /// The names of the loss terms [`Trainee::step`] returns.
    const LOSS_TERMS: &'static [&'static str];
    /// Every tensor a checkpoint holds.
    fn state(&self) -> Vec<Named>;
    /// Forward and backward of one batch (gradients zeroed first); `step` counts all steps.
    /// Random choices per sample are drawn from `draw` for the whole global batch and `share`'s
    /// slice is used, so data-parallel ranks together do what one worker does. `ready` hears
    /// of each part of the gradients as it becomes complete.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        b: &mut B,
        batch: &Batch,
        draw: &mut SplitMix64,
        step: u64,
        mode: BnMode,
        share: &BatchShare,
        ready: &mut GradsReady<'_, B>,
    ) -> Result<StepResult>;
    /// The gradient buffers [`Trainee::step`] fills, all-reduced between the ranks before SGD.
    fn grads(&self) -> Vec<Tensor>;
    /// State each rank's step updates from its own samples, which must then be made the same
    /// on every rank (Coarse2Fine's center banks, `c2f_dist::centers`), in the order of the
    /// `center_*` loss terms.
    fn center_banks(&self) -> Vec<Tensor> {
        Vec::new()
    }
    /// The center loss weight λ of the coming steps (its warmup); models without one ignore it.
    fn set_center_lambda(&mut self, _lambda: f64) {}
    /// One SGD step, each parameter tensor with the hyper-parameters `rule` gives it.
    fn sgd_step(&mut self, b: &mut B, rule: &SgdRule<'_>) -> Result<()>;
    /// Class probabilities `[B·C]` (attributes: each one's probability `[B·A]`) per head
    /// (coarse, then fine if any) for a full batch of images.
    fn probabilities(&mut self, b: &mut B, images: &[f32]) -> Result<Vec<Vec<f64>>>;
    /// What the heads predict.
    fn task(&self) -> Task;
}

impl<B: Backend<Scalar = f32>> Trainee<B> for Coarse2Fine {
    const NAME: &'static str = "coarse2fine";
    const LOSS_TERMS: &'static [&'static str] = &["coarse", "fine", "center_coarse", "center_fine"];

    fn state(&self) -> Vec<Named> {
        Coarse2Fine::state(self)
    }

    fn step(
        &mut self,
        b: &mut B,
        batch: &Batch,
        draw: &mut SplitMix64,
        _step: u64,
        mode: BnMode,
        share: &BatchShare,
        ready: &mut GradsReady<'_, B>,
    ) -> Result<StepResult> {
        b.write(self.input(), &batch.images)?;
        b.write_index(self.labels(), &batch.labels)?;
        let targets = attribute_targets(&batch.attributes);
        if self.config.task == Task::Attributes {
            b.write(self.targets(), &targets)?;
        }
        let maps = self.config.maps as u64;
        let chosen: Vec<i32> = (0..share.global).map(|_| draw.below(maps) as i32).collect();
        b.write_index(self.chosen_maps(), &chosen[share.slice.clone()])?;
        self.zero_grads(b)?;
        // Buffer indices as in `grads`: the backbone's, then the heads'.
        let l = self.forward_backward_reporting(b, mode, &mut |b, grads| match grads {
            Grads::Backbone(from) => ready(b, 0, from),
            Grads::Heads(from) => ready(b, 1, from),
        })?;
        Ok(StepResult {
            losses: vec![l.coarse, l.fine, l.center_coarse, l.center_fine],
            correct: self.config.task.count_correct(
                b,
                self.predictions().0,
                &batch.labels,
                &targets,
            )?,
        })
    }

    fn grads(&self) -> Vec<Tensor> {
        vec![self.backbone().grads, self.grads]
    }

    fn center_banks(&self) -> Vec<Tensor> {
        let (coarse, fine) = self.centers();
        vec![coarse, fine]
    }

    fn set_center_lambda(&mut self, lambda: f64) {
        self.config.center_loss.lambda = lambda;
    }

    fn sgd_step(&mut self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        self.sgd_step_by(b, rule)
    }

    fn probabilities(&mut self, b: &mut B, images: &[f32]) -> Result<Vec<Vec<f64>>> {
        b.write(self.input(), images)?;
        self.infer(b)?;
        let (coarse, fine) = self.logits();
        let (task, outputs) = (self.config.task, self.config.classes);
        Ok(vec![
            task.probabilities(&b.read(coarse)?, outputs),
            task.probabilities(&b.read(fine)?, outputs),
        ])
    }

    fn task(&self) -> Task {
        self.config.task
    }
}

/// The plain InceptionV3 baseline: global average pool, dropout, `fc`, cross-entropy (or
/// per-attribute binary cross-entropy).
pub struct Baseline {
    pub net: Network,
    labels: IndexTensor,
    targets: Tensor,
    predictions: IndexTensor,
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
            classes: cfg.classes,
            task: cfg.task,
        })
    }
}

impl<B: Backend<Scalar = f32>> Trainee<B> for Baseline {
    const NAME: &'static str = "baseline";
    const LOSS_TERMS: &'static [&'static str] = &["ce"];

    fn state(&self) -> Vec<Named> {
        network_state(&self.net)
    }

    fn step(
        &mut self,
        b: &mut B,
        batch: &Batch,
        _draw: &mut SplitMix64,
        step: u64,
        mode: BnMode,
        share: &BatchShare,
        ready: &mut GradsReady<'_, B>,
    ) -> Result<StepResult> {
        b.write(self.net.input(), &batch.images)?;
        b.write_index(self.labels, &batch.labels)?;
        let targets = attribute_targets(&batch.attributes);
        if self.task == Task::Attributes {
            b.write(self.targets, &targets)?;
        }
        // A mask per rank and step (a rank's samples sit at other positions than in one
        // worker's batch, so its masks cannot be that worker's anyway; PyTorch DDP's ranks also
        // draw their own). One worker: the step itself.
        self.net.dropout.step = step * share.world as u64 + share.rank as u64;
        self.net.dropout.training = true;
        self.net.zero_grads(b)?;
        self.net.forward(b, mode)?;
        let loss = self.task.loss(
            b,
            self.net.batch,
            self.classes,
            self.net.output(),
            self.labels,
            self.targets,
            self.predictions,
            self.net.output_grad(),
        )?;
        self.net
            .backward_reporting(b, mode, false, &mut |b, from| ready(b, 0, from))?;
        Ok(StepResult {
            losses: vec![loss],
            correct: self
                .task
                .count_correct(b, self.predictions, &batch.labels, &targets)?,
        })
    }

    fn grads(&self) -> Vec<Tensor> {
        vec![self.net.grads]
    }

    fn sgd_step(&mut self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        self.net.sgd_step_by(b, rule)
    }

    fn probabilities(&mut self, b: &mut B, images: &[f32]) -> Result<Vec<Vec<f64>>> {
        b.write(self.net.input(), images)?;
        self.net.dropout.training = false;
        self.net.forward(b, BnMode::Inference)?;
        Ok(vec![self
            .task
            .probabilities(&b.read(self.net.output())?, self.classes)])
    }

    fn task(&self) -> Task {
        self.task
    }
}

/// The per-head probability rows of sample `i`, plus their average when there are two heads:
/// the coarse, fine and average predictions the paper reports.
pub fn prediction_rows(heads: &[Vec<f64>], i: usize, classes: usize) -> Vec<Vec<f64>> {
    let mut rows: Vec<Vec<f64>> = heads
        .iter()
        .map(|p| p[i * classes..][..classes].to_vec())
        .collect();
    if let [coarse, fine] = rows.as_slice() {
        let average = coarse
            .iter()
            .zip(fine)
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        rows.push(average);
    }
    rows
}

/// The index of the largest value (the first of equal ones).
pub fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

/// The training loader: resize + random crop + flip, shuffled, the last partial batch dropped.
pub fn train_loader(cfg: &TrainConfig, train: Arc<dyn ImageSource>) -> Result<Loader> {
    let size = cfg.input_size as u32;
    let train_transform = Transform::Train {
        size,
        crop: TrainCrop::ResizeRandom {
            resize: size + size / 8,
        },
        hflip: true,
    };
    Loader::new(
        train,
        LoaderConfig {
            seed: cfg.seed,
            drop_last: true,
            cache: true,
            ..LoaderConfig::new(cfg.batch, train_transform)
        },
    )
}

pub fn test_loader(cfg: &TrainConfig, test: Arc<dyn ImageSource>) -> Result<Loader> {
    Loader::new(
        test,
        LoaderConfig {
            shuffle: false,
            cache: true,
            ..LoaderConfig::new(cfg.batch, Transform::test(cfg.input_size as u32))
        },
    )
}

/// A batch's images, padded to the model's fixed batch size by repeating the last image; the
/// padding's predictions are not counted.
pub fn padded_images(images: &[f32], n: usize, batch: usize) -> Vec<f32> {
    let image = images.len() / n;
    let mut out = images.to_vec();
    while out.len() < batch * image {
        out.extend_from_slice(&images[images.len() - image..]);
    }
    out
}

/// The accuracy of every head (and of the average of two) on the test loader: top-1 for
/// classes; for attributes each attribute's (probability above ½ against its target) and
/// their mean.
pub fn evaluate<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    model: &mut M,
    test: &Loader,
    outputs: usize,
) -> Result<Evaluation> {
    let batch_size = test.config().batch_size;
    let task = model.task();
    let answers = task.answers_per_image(outputs);
    // right[head][answer]: head 0 coarse, 1 fine, 2 average.
    let (mut right, mut total) = (vec![vec![0usize; answers]; 3], 0);
    let mut epoch = test.epoch(0);
    for batch in &mut epoch {
        let n = batch.labels.len();
        let heads = model.probabilities(b, &padded_images(&batch.images, n, batch_size))?;
        for i in 0..n {
            for (k, row) in prediction_rows(&heads, i, outputs).iter().enumerate() {
                match task {
                    Task::Classes => {
                        right[k][0] += (argmax(row) == batch.labels[i] as usize) as usize
                    }
                    Task::Attributes => {
                        for ((r, &p), &t) in right[k].iter_mut().zip(row).zip(&batch.attributes[i])
                        {
                            *r += ((p > 0.5) == t) as usize;
                        }
                    }
                }
            }
        }
        total += n;
    }
    let two = M::LOSS_TERMS.len() > 1;
    let fraction = |count: usize| count as f64 / total.max(1) as f64;
    let accuracy_of = |pick: &dyn Fn(&[usize]) -> f64| Accuracy {
        coarse: pick(&right[0]),
        fine: two.then(|| pick(&right[1])),
        average: two.then(|| pick(&right[2])),
    };
    let mean = |counts: &[usize]| counts.iter().map(|&c| fraction(c)).sum::<f64>() / answers as f64;
    Ok(Evaluation {
        accuracy: accuracy_of(&mean),
        per_attribute: match task {
            Task::Classes => Vec::new(),
            Task::Attributes => (0..answers)
                .map(|a| accuracy_of(&|counts: &[usize]| fraction(counts[a])))
                .collect(),
        },
    })
}

/// A fingerprint of a training set: its size and every sample's name, label and attributes,
/// hashed. A run resumes only on the data it started with.
pub fn dataset_fingerprint(source: &dyn ImageSource) -> String {
    let mut h = splitmix64_output(0xc2f, source.len() as u64);
    for i in 0..source.len() {
        for byte in source.name(i).bytes() {
            h = splitmix64_output(h, byte as u64);
        }
        h = splitmix64_output(h, source.label(i) as u64);
        for &a in source.attributes(i) {
            h = splitmix64_output(h, a as u64);
        }
    }
    format!("{:016x}:{}", h, source.len())
}

/// Starting values for a fresh run: the shared counter-based draw for the backbone (or the
/// weights file), fresh BatchNorm statistics, and the heads' own ranges.
pub fn init_backbone<B: Backend<Scalar = f32>>(
    b: &mut B,
    net: &Network,
    weights_file: Option<&Path>,
) -> Result<()> {
    let mut params = vec![0.0; net.graph.params.total()];
    let mut buffers = vec![0.0; net.graph.buffers.total()];
    golden_init(&net.graph, &mut params, &mut buffers);
    // Fresh BatchNorm statistics, as a new torchvision model has.
    for e in net.graph.buffers.entries() {
        let fill = if e.name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        buffers[e.range()].fill(fill);
    }
    if let Some(path) = weights_file {
        let options = LoadOptions { skip_fc: true };
        weights::load(path, &net.graph, &mut params, &mut buffers, options)?;
    }
    b.write(net.params, &params)?;
    b.write(net.buffers, &buffers)
}

/// The uniform range a head parameter starts from: ±1/sqrt(fan_in), except the up-sampler's
/// own ([`init_range`]), and the classifiers 100× smaller, because they see 100× the unit-norm
/// part features and should start with logits of order one.
fn head_range(name: &str, shape: &[usize]) -> (f64, f64) {
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f64).sqrt();
    if name.starts_with("upsampler.") {
        init_range(name, shape)
    } else if name.starts_with("fc_") {
        (-bound / FEATURE_SCALE, bound / FEATURE_SCALE)
    } else {
        (-bound, bound)
    }
}

/// The Coarse2Fine model of a config, unitialised.
pub fn build_coarse2fine<B: Backend>(b: &mut B, cfg: &TrainConfig) -> Result<Coarse2Fine> {
    let map_side = attention_map_side(cfg.input_size)?.0;
    Coarse2Fine::with_upsampler(
        b,
        Coarse2FineConfig {
            input_size: cfg.input_size,
            width: cfg.width,
            classes: cfg.classes,
            task: cfg.task,
            maps: cfg.maps,
            upsampler_channels: default_channels(map_side, cfg.input_size),
            center_loss: cfg.center_loss(),
            batch: cfg.batch,
        },
        cfg.upsampler,
    )
}

/// Fills a fresh model's state from the checkpoint of an earlier run of the same model and
/// shapes, then zeroes its momentum: a new run, with its own data, schedule and epochs, that
/// starts where that one ended.
pub fn start_from_checkpoint<B: Backend<Scalar = f32>>(
    b: &mut B,
    state: &[Named],
    path: &Path,
    model: &str,
) -> Result<()> {
    let meta = checkpoint::read_meta(path)?;
    if meta.model != model {
        return Err(file_error(
            path,
            format!("a {} checkpoint cannot start a {model} run", meta.model),
        ));
    }
    checkpoint::load(b, path, state)?;
    for n in state.iter().filter(|n| n.name.starts_with("momentum.")) {
        b.fill(n.tensor, 0.0)?;
    }
    Ok(())
}

/// Initialises a fresh Coarse2Fine model: from [`RunOptions::init_from`]'s checkpoint, or its
/// parameters drawn (the center banks at zero); then the up-sampler from
/// [`RunOptions::upsampler_weights`], if given.
pub fn init_coarse2fine<B: Backend<Scalar = f32>>(
    b: &mut B,
    model: &Coarse2Fine,
    cfg: &TrainConfig,
    run: &RunOptions,
) -> Result<()> {
    let mut heads = match &run.init_from {
        Some(path) => {
            start_from_checkpoint(b, &model.state(), path, "coarse2fine")?;
            b.read(model.params)?
        }
        None => {
            init_backbone(b, model.backbone(), run.weights.as_deref())?;
            drawn_heads(model, cfg)?
        }
    };
    if let Some(path) = &run.upsampler_weights {
        load_into(path, model.head_table(), &mut heads)?;
    }
    b.write(model.params, &heads)
}

/// A fresh draw of the heads' parameters: uniform by fan-in, the attention conv's rows
/// orthonormal unless `cfg.ortho_init` is off.
fn drawn_heads(model: &Coarse2Fine, cfg: &TrainConfig) -> Result<Vec<f32>> {
    let mut heads = vec![0.0f32; model.params.len];
    for e in model.head_table().entries() {
        let (lo, hi) = head_range(&e.name, &e.shape);
        counter_uniform(&e.name, lo, hi, &mut heads[e.range()]);
    }
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
        Some(path) => start_from_checkpoint(b, &Trainee::<B>::state(model), path, "baseline"),
        None => init_backbone(b, &model.net, run.weights.as_deref()),
    }
}

/// One rank's part in a data-parallel job (docs/distributed.md): the collective that joins it
/// to the other ranks, and the size of the buckets its gradients are all-reduced in.
pub struct DataParallel<'a, B: Backend<Scalar = f32>> {
    pub collective: &'a mut dyn Collective<B>,
    pub bucket_bytes: usize,
}

impl<'a, B: Backend<Scalar = f32>> DataParallel<'a, B> {
    /// With PyTorch DDP's bucket size, 25 MiB.
    pub fn new(collective: &'a mut dyn Collective<B>) -> Self {
        DataParallel {
            collective,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    /// This rank's share of the global batch `cfg.batch`; an error unless it splits evenly.
    pub fn plan(&self, cfg: &TrainConfig) -> Result<ShardPlan> {
        Ok(ShardPlan::new(cfg.batch, self.world_size(), self.rank())?)
    }
}

/// `cfg` with the batch this process's model runs at: the global batch over the ranks.
pub fn rank_config<B: Backend<Scalar = f32>>(
    cfg: &TrainConfig,
    dp: Option<&DataParallel<'_, B>>,
) -> Result<TrainConfig> {
    Ok(match dp {
        Some(dp) => TrainConfig {
            batch: dp.plan(cfg)?.local_batch(),
            ..cfg.clone()
        },
        None => cfg.clone(),
    })
}

/// Builds, initialises (or resumes) and trains Coarse2Fine; the test accuracy at the end, or
/// `None` when [`RunOptions::stop_after`] stopped it. With `dp`, as one rank of a data-parallel
/// job (rank 0 initialises, [`fit`] broadcasts; the other ranks return `None`).
#[allow(clippy::too_many_arguments)]
pub fn train_coarse2fine<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>> {
    let mut model = build_coarse2fine(b, &rank_config(cfg, dp.as_deref())?)?;
    if !run.resume && dp.as_ref().is_none_or(|dp| dp.rank() == 0) {
        init_coarse2fine(b, &model, cfg, run)?;
    }
    fit(b, &mut model, cfg, run, data, dp)
}

/// The same for the baseline.
#[allow(clippy::too_many_arguments)]
pub fn train_baseline<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>> {
    let mut model = build_baseline(b, &rank_config(cfg, dp.as_deref())?)?;
    if !run.resume && dp.as_ref().is_none_or(|dp| dp.rank() == 0) {
        init_baseline(b, &model, run)?;
    }
    fit(b, &mut model, cfg, run, data, dp)
}

/// The metrics files of a run: one JSON object per line, and the same as CSV.
struct Metrics {
    jsonl: fs::File,
    csv: fs::File,
    columns: Vec<String>,
}

impl Metrics {
    fn open(dir: &Path, loss_terms: &[&str]) -> Result<Metrics> {
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| file_error(&path, format!("cannot open: {e}")))
        };
        let mut columns: Vec<String> = ["model", "epoch", "step", "lr", "loss"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        columns.extend(loss_terms.iter().map(|t| format!("loss_{t}")));
        columns.extend(spread_columns(loss_terms));
        columns.extend(
            [
                "train_acc",
                "test_coarse",
                "test_fine",
                "test_average",
                "images_per_s",
                "skipped",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let mut csv = open("metrics.csv")?;
        let empty = csv.metadata().map(|m| m.len() == 0).unwrap_or(true);
        if empty {
            writeln!(csv, "{}", columns.join(","))
                .map_err(|e| file_error(&dir.join("metrics.csv"), e.to_string()))?;
        }
        Ok(Metrics {
            jsonl: open("metrics.jsonl")?,
            csv,
            columns,
        })
    }

    /// Appends one record (a JSON object with exactly [`Self::columns`]).
    fn append(&mut self, dir: &Path, record: &serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(record).expect("a JSON value serialises");
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|c| match &record[c] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        writeln!(self.jsonl, "{line}")
            .and_then(|_| writeln!(self.csv, "{}", cells.join(",")))
            .map_err(|e| file_error(dir, format!("cannot append metrics: {e}")))
    }
}

/// A metrics column per center bank: `center_spread_coarse` for the `center_coarse` term.
fn spread_columns(loss_terms: &[&str]) -> Vec<String> {
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
/// to the same point and it falls towards 0 (README, Seeds). `None` while every center is zero.
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

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The checkpoint file of a run directory.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// Checks that a checkpoint fits this run: same model, same data (its spec, and the training
/// set's fingerprint: the synthetic set's names and labels do not show its object sizes or
/// clutter, the spec does), same config but for the number of epochs (a resumed run may be
/// extended).
fn check_resumable(
    meta: &CheckpointMeta,
    model: &str,
    cfg: &TrainConfig,
    data: &DataSpec,
    fingerprint: &str,
) -> Result<()> {
    let mut problems = Vec::new();
    if meta.model != model {
        problems.push(format!("it is a {} run, not {model}", meta.model));
    }
    if &meta.data != data {
        problems.push(format!(
            "it was trained on {:?}, this run is on {data:?}",
            meta.data
        ));
    }
    if meta.dataset != fingerprint {
        problems.push("the training set differs from the one it was trained on".to_string());
    }
    let theirs = TrainConfig {
        epochs: cfg.epochs,
        ..meta.config.clone()
    };
    if &theirs != cfg {
        problems.push(format!(
            "its config {:?} differs from this run's {cfg:?}",
            meta.config
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "cannot resume: {}",
            problems.join("; ")
        )))
    }
}

/// An epoch's batches: the loader's own epoch for one worker, this rank's slices of the global
/// batches for a data-parallel rank.
enum EpochBatches {
    Whole(Epoch),
    Slices(Prefetched),
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match self {
            EpochBatches::Whole(epoch) => epoch.next().map(Ok),
            EpochBatches::Slices(slices) => slices.next(),
        }
    }
}

impl EpochBatches {
    /// The images skipped as unreadable (a rank's slices skip none: one is an error).
    fn finish(self) -> Vec<Skipped> {
        match self {
            EpochBatches::Whole(epoch) => epoch.finish().skipped,
            EpochBatches::Slices(_) => Vec::new(),
        }
    }
}

/// What a data-parallel rank adds to the loop: the collective, the center banks' sync, a
/// small buffer for all-reducing each step's loss terms and correct count, and each gradient
/// buffer's buckets.
struct RankStep<'d, 'a, B: Backend<Scalar = f32>> {
    dp: &'d mut DataParallel<'a, B>,
    centers: Option<CenterSync>,
    stats: Tensor,
    buckets: Vec<GradBuckets>,
}

/// One gradient buffer split into buckets (ascending), all-reduced last bucket first as
/// backward completes them.
struct GradBuckets {
    grads: Tensor,
    plan: Vec<Range<usize>>,
    /// How many buckets, counted from the last, this step has started.
    started: usize,
}

impl<'d, 'a, B: Backend<Scalar = f32>> RankStep<'d, 'a, B> {
    /// Gives every rank rank 0's state (fresh weights, or the checkpoint all ranks loaded).
    fn new<M: Trainee<B>>(b: &mut B, dp: &'d mut DataParallel<'a, B>, model: &M) -> Result<Self> {
        for t in model.state() {
            dp.collective.broadcast(b, t.tensor)?;
        }
        let banks = model.center_banks();
        let centers = if banks.is_empty() {
            None
        } else {
            Some(CenterSync::new(b, &banks)?)
        };
        let bucket_bytes = dp.bucket_bytes;
        let buckets = model
            .grads()
            .into_iter()
            .map(|grads| {
                Ok(GradBuckets {
                    grads,
                    plan: plan_buckets(grads.len, bucket_bytes)?,
                    started: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(RankStep {
            dp,
            centers,
            stats: b.alloc(M::LOSS_TERMS.len() + 1)?,
            buckets,
        })
    }

    /// Starts the mean all-reduce of every bucket of gradient buffer `buffer` that lies at or
    /// above `from`, now complete, not started yet.
    fn grads_ready(&mut self, b: &mut B, buffer: usize, from: usize) -> Result<()> {
        let g = &mut self.buckets[buffer];
        while let Some(bucket) = g
            .plan
            .len()
            .checked_sub(g.started + 1)
            .map(|k| g.plan[k].clone())
            .filter(|bucket| bucket.start >= from)
        {
            let part = g.grads.slice(bucket.start, bucket.len());
            self.dp.collective.start_all_reduce(b, part, Reduce::Mean)?;
            g.started += 1;
        }
        Ok(())
    }

    /// Before the step's forward.
    fn before_step(&self, b: &mut B) -> Result<()> {
        match &self.centers {
            Some(centers) => centers.before_step(b),
            None => Ok(()),
        }
    }

    /// The global batch's loss terms (the mean of the ranks' means over equal shares) and
    /// correct count, the same on every rank.
    fn global(&mut self, b: &mut B, out: StepResult) -> Result<StepResult> {
        let mut values: Vec<f32> = out.losses.iter().map(|&l| l as f32).collect();
        values.push(out.correct as f32);
        b.write(self.stats, &values)?;
        self.dp.collective.all_reduce(b, self.stats, Reduce::Sum)?;
        let sums = b.read(self.stats)?;
        let world = self.dp.world_size() as f64;
        let (correct, losses) = sums.split_last().expect("the loss terms and the count");
        Ok(StepResult {
            losses: losses.iter().map(|&l| l as f64 / world).collect(),
            correct: correct.round() as usize,
        })
    }

    /// Between backward and SGD: the gradients' mean over the ranks (any bucket backward did
    /// not report is started now, then all are waited for), and the center banks' summed
    /// updates.
    fn after_backward(&mut self, b: &mut B) -> Result<()> {
        for buffer in 0..self.buckets.len() {
            self.grads_ready(b, buffer, 0)?;
            self.buckets[buffer].started = 0;
        }
        self.dp.collective.wait_started(b)?;
        match &self.centers {
            Some(centers) => centers.after_step(self.dp.collective, b),
            None => Ok(()),
        }
    }

    fn barrier(&mut self, b: &mut B) -> Result<()> {
        self.dp.collective.barrier(b)
    }
}

/// What only rank 0 (or the one worker) keeps: the metrics files and the test loader.
struct Report {
    metrics: Metrics,
    test: Loader,
}

/// [`fit`] as one rank of a data-parallel job when `dp` is given: the model must run at the
/// batch [`rank_config`] gives. Each rank trains on its slice of every global batch, the
/// gradients are averaged and the center banks synced between backward and SGD, so the ranks
/// take one worker's steps; rank 0's state is broadcast first. Only rank 0 logs, draws the
/// progress bar, evaluates and writes metrics and checkpoints (the others wait at a barrier)
/// and returns the accuracy; the others return `None`. Logged losses and training accuracy are
/// the global batch's.
#[allow(clippy::too_many_arguments)]
pub fn fit<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    model: &mut M,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>> {
    let plan = dp.as_deref().map(|dp| dp.plan(cfg)).transpose()?;
    let leader = plan.is_none_or(|p| p.rank == 0);
    let world = plan.map_or(1, |p| p.world);
    let share = match plan {
        None => BatchShare::whole(cfg.batch),
        Some(p) => BatchShare {
            global: cfg.batch,
            slice: p.slice_of(cfg.batch),
            rank: p.rank,
            world: p.world,
        },
    };
    if leader {
        fs::create_dir_all(&run.dir).map_err(|e| file_error(&run.dir, e.to_string()))?;
    }
    let ckpt = checkpoint_path(&run.dir);
    let train_loader = train_loader(cfg, data.train.clone())?;
    let test_loader = if leader {
        Some(test_loader(
            &rank_config(cfg, dp.as_deref())?,
            data.test.clone(),
        )?)
    } else {
        None
    };
    let fingerprint = dataset_fingerprint(train_loader.source().as_ref());
    let state = model.state();
    let terms = M::LOSS_TERMS.len();
    let mut meta = CheckpointMeta {
        format: checkpoint::FORMAT,
        model: M::NAME.to_string(),
        config: cfg.clone(),
        epoch: 0,
        batch_in_epoch: 0,
        step: 0,
        rng: cfg.seed ^ 0xc2f,
        // The loss terms' sums, then correct predictions and images.
        epoch_sums: vec![0.0; terms + 2],
        data: data.spec.clone(),
        dataset: fingerprint.clone(),
        class_names: data.class_names.clone(),
    };
    if run.resume {
        let saved = checkpoint::load(b, &ckpt, &state)?;
        check_resumable(&saved, M::NAME, cfg, &data.spec, &fingerprint)
            .map_err(|e| file_error(&ckpt, e.to_string()))?;
        meta = CheckpointMeta {
            config: cfg.clone(),
            ..saved
        };
        if leader {
            println!(
                "{}: resumed from {} at epoch {}, batch {} (step {})",
                M::NAME,
                ckpt.display(),
                meta.epoch,
                meta.batch_in_epoch,
                meta.step
            );
        }
    } else if ckpt.exists() {
        return Err(file_error(
            &ckpt,
            "a checkpoint is already there: pass --resume to continue that run, or choose \
             another --run-dir",
        ));
    }
    let mut ranked = match dp {
        Some(dp) => Some(RankStep::new(b, dp, model)?),
        None => None,
    };
    let mut report = match test_loader {
        Some(test) => Some(Report {
            metrics: Metrics::open(&run.dir, M::LOSS_TERMS)?,
            test,
        }),
        None => None,
    };
    let mode = cfg.bn.mode();
    let steps_per_epoch = train_loader.batches_per_epoch();
    let mut draw = SplitMix64(meta.rng);
    let mut last_evaluation = None;
    let mut warned_merged = false;
    let mut last_good: Option<(usize, u64)> = None;
    for epoch in meta.epoch..cfg.epochs {
        let first_batch = meta.batch_in_epoch;
        let start = Instant::now();
        let bar = progress_bar(
            run.progress && leader,
            steps_per_epoch,
            first_batch,
            cfg.batch,
            M::NAME,
            epoch,
        );
        let mut loader_epoch = match plan {
            None => EpochBatches::Whole(train_loader.epoch_from(epoch as u64, first_batch)),
            Some(plan) => {
                let order = train_loader.order(epoch as u64);
                let mut slices = plan.rank_batches(&order, true);
                slices.drain(..first_batch.min(slices.len()));
                EpochBatches::Slices(train_loader.load_batches(epoch as u64, slices))
            }
        };
        let mut lr = cfg.learning_rate(epoch, first_batch, steps_per_epoch);
        let mut images_this_run = 0usize;
        for (k, batch) in (&mut loader_epoch).enumerate() {
            let batch = batch?;
            let batch_index = first_batch + k;
            lr = cfg.learning_rate(epoch, batch_index, steps_per_epoch);
            model.set_center_lambda(cfg.center_lambda_at(epoch, batch_index, steps_per_epoch));
            if let Some(r) = &ranked {
                r.before_step(b)?;
            }
            let mut out = model.step(
                b,
                &batch,
                &mut draw,
                meta.step,
                mode,
                &share,
                &mut |b, buffer, from| match &mut ranked {
                    Some(r) => r.grads_ready(b, buffer, from),
                    None => Ok(()),
                },
            )?;
            if let Some(r) = &mut ranked {
                out = r.global(b, out)?;
            }
            if let Some((term, value)) = M::LOSS_TERMS
                .iter()
                .zip(&out.losses)
                .find(|(_, v)| !v.is_finite())
            {
                let kept = match last_good {
                    Some((e, s)) => format!(
                        "the last good checkpoint, {} (epoch {e}, step {s}), is kept",
                        ckpt.display()
                    ),
                    None => "no checkpoint was written in this run".to_string(),
                };
                return Err(Error::Shape(format!(
                    "{}: loss term `{term}` is {value} at step {} (epoch {}, batch {batch_index}); \
                     stopped, {kept}",
                    M::NAME,
                    meta.step + 1,
                    epoch + 1
                )));
            }
            if let Some(r) = &mut ranked {
                r.after_backward(b)?;
            }
            model.sgd_step(b, &cfg.sgd_rule(lr))?;
            meta.step += 1;
            for (sum, v) in meta.epoch_sums.iter_mut().zip(&out.losses) {
                *sum += v;
            }
            let images = batch.labels.len() * world;
            meta.epoch_sums[terms] += out.correct as f64;
            meta.epoch_sums[terms + 1] += images as f64;
            images_this_run += images;
            bar.inc(images as u64);
            meta.batch_in_epoch = batch_index + 1;
            meta.rng = draw.0;
            if run.checkpoint_every > 0 && meta.step.is_multiple_of(run.checkpoint_every) {
                if leader {
                    checkpoint::save(b, &ckpt, &state, &meta)?;
                }
                last_good = Some((epoch, meta.step));
                if let Some(r) = &mut ranked {
                    r.barrier(b)?;
                }
            }
            if run.stop_after == Some(meta.step) {
                bar.finish_and_clear();
                return Ok(None);
            }
        }
        bar.finish_and_clear();
        let skipped = loader_epoch.finish();
        let seconds = start.elapsed().as_secs_f64();
        if let Some(report) = &mut report {
            let last = epoch + 1 == cfg.epochs;
            let due = run.eval_every > 0 && (epoch + 1).is_multiple_of(run.eval_every);
            let evaluation = if last || due {
                Some(evaluate(b, model, &report.test, cfg.classes)?)
            } else {
                None
            };
            let accuracy = evaluation.as_ref().map(|e| e.accuracy);
            let batches = (meta.batch_in_epoch).max(1) as f64;
            let mean: Vec<f64> = meta.epoch_sums[..terms]
                .iter()
                .map(|s| s / batches)
                .collect();
            let total: f64 = mean.iter().sum();
            let answers = cfg.task.answers_per_image(cfg.classes) as f64;
            let train_acc =
                meta.epoch_sums[terms] / (answers * meta.epoch_sums[terms + 1]).max(1.0);
            let mut record = serde_json::json!({
                "model": M::NAME,
                "epoch": epoch + 1,
                "step": meta.step,
                "lr": lr,
                "loss": total,
                "train_acc": train_acc,
                "test_coarse": accuracy.map(|a| a.coarse),
                "test_fine": accuracy.and_then(|a| a.fine),
                "test_average": accuracy.and_then(|a| a.average),
                "images_per_s": images_this_run as f64 / seconds,
                "skipped": skipped.len(),
            });
            for (term, v) in M::LOSS_TERMS.iter().zip(&mean) {
                record[format!("loss_{term}")] = serde_json::json!(v);
            }
            if model.task() == Task::Classes {
                // Warned of once λ is at full weight: during its warmup a run that goes on to
                // learn can dip this low for an epoch.
                let full_lambda = (epoch + 1) as f64 >= cfg.center_warmup_epochs;
                for (column, bank) in spread_columns(M::LOSS_TERMS)
                    .iter()
                    .zip(model.center_banks())
                {
                    let spread = center_spread(&b.read(bank)?, cfg.classes);
                    record[column] = serde_json::json!(spread);
                    let merged = |v: &f64| full_lambda && !warned_merged && *v < MERGED_SPREAD;
                    if let Some(v) = spread.filter(merged) {
                        eprintln!(
                            "warning: {} epoch {}: the class centers have merged \
                                 ({column} {v:.4} < {MERGED_SPREAD}): the part features do \
                                 not tell the classes apart; runs in this state learn late \
                                 or not at all (README, Seeds); if the test accuracy stays \
                                 at chance, try another --seed",
                            M::NAME,
                            epoch + 1
                        );
                        warned_merged = true;
                    }
                }
            }
            // Each attribute's accuracy, by name (JSON lines only: the CSV keeps fixed columns).
            if let Some(e) = evaluation.as_ref().filter(|e| !e.per_attribute.is_empty()) {
                let by_name: serde_json::Map<String, serde_json::Value> = data
                    .class_names
                    .iter()
                    .zip(&e.per_attribute)
                    .map(|(name, a)| (name.clone(), serde_json::json!(a)))
                    .collect();
                record["test_attributes"] = serde_json::Value::Object(by_name);
            }
            report.metrics.append(&run.dir, &record)?;
            let test_part =
                accuracy.map_or(String::new(), |a| format!("  test {}", format_accuracy(&a)));
            println!(
                "{:<11} epoch {:>3}  loss {total:.4}  train {:.1}%  lr {lr:.2e}  {:.1} img/s{}{test_part}",
                M::NAME,
                epoch + 1,
                100.0 * train_acc,
                images_this_run as f64 / seconds,
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("  {} unreadable images skipped", skipped.len())
                },
            );
            for s in &skipped {
                eprintln!("  skipped {}: {}", s.name, s.message);
            }
            last_evaluation = evaluation.or(last_evaluation);
        }
        meta.epoch = epoch + 1;
        meta.batch_in_epoch = 0;
        meta.epoch_sums.iter_mut().for_each(|s| *s = 0.0);
        if leader {
            checkpoint::save(b, &ckpt, &state, &meta)?;
        }
        last_good = Some((epoch + 1, meta.step));
        if let Some(r) = &mut ranked {
            r.barrier(b)?;
        }
    }
    match (last_evaluation, &report) {
        (Some(a), _) => Ok(Some(a)),
        // A resumed run that had already finished its epochs: evaluate what it holds.
        (None, Some(report)) => evaluate(b, model, &report.test, cfg.classes).map(Some),
        (None, None) => Ok(None),
    }
}

/// `coarse 41.0% fine 38.5% average 43.0%`, or the one number of the baseline.
pub fn format_accuracy(a: &Accuracy) -> String {
    match (a.fine, a.average) {
        (Some(f), Some(avg)) => format!(
            "coarse {:.1}% fine {:.1}% average {:.1}%",
            100.0 * a.coarse,
            100.0 * f,
            100.0 * avg
        ),
        _ => format!("{:.1}%", 100.0 * a.coarse),
    }
}

/// A bar counting an epoch's images, so its rate is images/s.
fn progress_bar(
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
