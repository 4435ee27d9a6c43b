//! What a training run is: [`TrainConfig`], filled from a named [`Preset`] sized for the
//! [`Machine`] it runs on, so that a library caller of [`crate::train::fit`] and `c2f train`
//! start from the same values; and [`RunOptions`], where and how a run keeps its files.

use std::path::PathBuf;

use c2f_inception::backend::{Backend, BnMode, Tensor};
use c2f_inception::network::SgdGroup;
use c2f_inception::table::TensorEntry;
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::sgd::{check_learning_rate, SgdParams};
use c2f_kernels::{Real, Result};
use serde::{Deserialize, Serialize};

use crate::task::Task;
use crate::train::ModelKind;
use crate::upsampler::{UpsamplerKind, UpsamplerWeights};

/// How the learning rate moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// WS-DAN's: ×0.9 every 2 epochs.
    Step,
    /// Cosine from the base rate to zero over the run, per step.
    Cosine,
}

/// How the centers enter the center loss and move (`--center-rule`; the kernel's
/// [`CenterRule`] says exactly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CenterRuleName {
    /// The paper's Eq. 2 and 3: the loss against the raw center, which moves as
    /// `c ← (1 − β)c + βf` once per sample.
    #[default]
    MovingAverage,
    /// The WS-DAN reimplementations': the loss against the normalised center ĉ, which moves by
    /// `β Σ (f − ĉ)`.
    Normalized,
}

impl From<CenterRuleName> for CenterRule {
    fn from(name: CenterRuleName) -> CenterRule {
        match name {
            CenterRuleName::MovingAverage => CenterRule::MovingAverage,
            CenterRuleName::Normalized => CenterRule::Normalized,
        }
    }
}

/// Whether the two passes pull their part features to one center bank or to one each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CenterBanks {
    /// One bank, `centers`: the paper's C center matrices, one per class, with Algorithm 1's
    /// center loss over both passes' features. The coarse pass's loss is taken against it and
    /// its features move it; then the fine pass's loss is taken against the moved bank and its
    /// features move it again (docs/method.md).
    #[default]
    Shared,
    /// `centers.coarse` and `centers.fine`, one per pass.
    Separate,
}

/// Which centers WS-DAN's attention regularisation pulls its part features to
/// (`--wsdan-centers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WsDanCenters {
    /// The paper's: one center per part, a bank `[1, M·N]` shared by every class (its M slices
    /// are the paper's c_k); needs no labels, so attribute models keep it.
    #[default]
    PerPart,
    /// The PyTorch reimplementation's: one `[M·N]` center per class, `[C, M·N]`.
    PerClass,
}

/// One of WS-DAN's three training passes (`--wsdan-passes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WsDanPass {
    /// The image itself: its maps choose the crop and the drop, and inference reads it.
    Raw,
    /// The attention crop, resized to the input.
    Crop,
    /// The image with the attention drop's region zeroed.
    Drop,
}

impl WsDanPass {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WsDanPass::Raw => "raw",
            WsDanPass::Crop => "crop",
            WsDanPass::Drop => "drop",
        }
    }
}

/// Which of WS-DAN's augmented passes a training step runs (the raw pass always runs): the
/// ablation of the paper's Table 3. A pass left out adds neither its loss nor its gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsDanPasses {
    pub crop: bool,
    pub drop: bool,
}

impl Default for WsDanPasses {
    /// The paper's: all three.
    fn default() -> Self {
        WsDanPasses {
            crop: true,
            drop: true,
        }
    }
}

impl WsDanPasses {
    /// The passes `--wsdan-passes` lists (its check refuses a list without `raw`).
    pub fn from_list(passes: &[WsDanPass]) -> WsDanPasses {
        WsDanPasses {
            crop: passes.contains(&WsDanPass::Crop),
            drop: passes.contains(&WsDanPass::Drop),
        }
    }
}

/// WS-DAN's attention maps M in a config from before WS-DAN was a model: the paper's 32.
fn default_wsdan_maps() -> usize {
    WSDAN_MAPS
}

/// WS-DAN's attention maps M, the paper's.
pub const WSDAN_MAPS: usize = 32;

/// A checkpoint's config from before the center rule and banks were chosen by flag was trained
/// with the normalised rule and a bank per pass.
fn legacy_center_rule() -> CenterRuleName {
    CenterRuleName::Normalized
}

fn legacy_center_banks() -> CenterBanks {
    CenterBanks::Separate
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
    pub fn mode(self) -> BnMode {
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
    /// The center rule: the paper's moving average, or the WS-DAN reimplementations'.
    #[serde(default = "legacy_center_rule")]
    pub center_rule: CenterRuleName,
    /// One center bank for both passes (the paper's C center matrices) or one per pass.
    #[serde(default = "legacy_center_banks")]
    pub center_banks: CenterBanks,
    /// λ rises linearly from zero over this many epochs (per step). From scratch, a full
    /// center loss at the start pulls every image's part features to the same point before
    /// they tell the classes apart, and training can stay there (docs/experiments.md); 0: none
    /// (the paper).
    #[serde(default)]
    pub center_warmup_epochs: f64,
    pub seed: u64,
    /// The fine branch's up-sampler: learnable (the paper) or fixed bilinear (its comparison).
    pub upsampler: UpsamplerKind,
    /// The attention conv starts from orthonormal rows (SVD, the paper's Algorithm 1); `false`
    /// keeps the plain uniform start, the ablation of the paper's Table 8.
    pub ortho_init: bool,
    /// WS-DAN's attention maps M (Coarse2Fine's are `maps`).
    #[serde(default = "default_wsdan_maps")]
    pub wsdan_maps: usize,
    /// WS-DAN's center bank: one center per part (the paper) or per class.
    #[serde(default)]
    pub wsdan_centers: WsDanCenters,
    /// WS-DAN's augmented passes in training (a config from before the flag: both).
    #[serde(default)]
    pub wsdan_passes: WsDanPasses,
}

/// What a [`Preset`] is sized for: the run's length, batch, resolution and backbone width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// 16 epochs of batch 16 at 96², width 0.25 (1.0 with pretrained weights): the demo learns
    /// in minutes on a CPU.
    Cpu,
    /// 40 epochs of batch 64 at 299², width 1.0 (torchvision's InceptionV3).
    Gpu,
}

/// A named starting point for a [`TrainConfig`]; `c2f train` maps its flags onto one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `c2f train`'s: training from scratch, on the built-in synthetic set by default. SGD at
    /// each model's own base rate ([`Preset::lr`]) with a cosine schedule after 2 epochs of
    /// warmup, the classifiers at 0.005× (they
    /// read 100× the unit-norm part features), λ = 0.3 rising over 3 epochs (at full weight
    /// from the start the center loss merges the classes' centers in about one run in four),
    /// and the WS-DAN reimplementations' center rule with a bank per pass: from scratch the
    /// paper's rule averaged 87.9% over seeds 0-5 where this one averaged 93.1%
    /// (docs/experiments.md).
    FromScratchDemo,
    /// `c2f train --weights`: the paper's setting, fine-tuning pretrained weights with the
    /// paper's (WS-DAN's) optimiser, lr 1e-3 ×0.9 every 2 epochs, no warmup, λ = 1, and the
    /// paper's center rule (Eq. 2 and 3) on one bank for both passes; width 1.0 on any machine,
    /// the only width torchvision's weights fit.
    Paper,
}

impl Preset {
    /// The base learning rate of `model` under this preset. From scratch each model keeps the
    /// rate that won its row of one tuning protocol (docs/experiments.md, "Equal tuning"):
    /// 0.005 for Coarse2Fine and WS-DAN, whose two or three cross-entropies add their gradients
    /// into one backbone, and 0.02 for the single-loss coarse-only model and the baseline.
    /// Fine-tuning takes the paper's (WS-DAN's) 1e-3 for every model.
    pub fn lr(self, model: ModelKind) -> f64 {
        match (self, model) {
            (Preset::Paper, _) => 1e-3,
            (Preset::FromScratchDemo, ModelKind::Coarse2Fine | ModelKind::WsDan) => 0.005,
            (Preset::FromScratchDemo, ModelKind::CoarseOnly | ModelKind::Baseline) => 0.02,
        }
    }

    /// The preset on `machine`, for the 200 classes of CUB-200-2011 (a run sets its data's), at
    /// Coarse2Fine's base rate (a run of another model sets its own, [`Preset::lr`]).
    /// Both presets share M = 8 maps (WS-DAN's 32, one center per part), momentum 0.9, weight
    /// decay 1e-5, β = 0.05, BatchNorm training, the learnable up-sampler and the orthogonal
    /// attention start.
    pub fn config(self, machine: Machine) -> TrainConfig {
        let (epochs, batch, input_size, width) = match (machine, self) {
            (Machine::Cpu, Preset::FromScratchDemo) => (16, 16, 96, 0.25),
            (Machine::Cpu, Preset::Paper) => (16, 16, 96, 1.0),
            (Machine::Gpu, _) => (40, 64, 299, 1.0),
        };
        let (classifier_lr_scale, schedule, warmup_epochs, center_lambda, center_warmup) =
            match self {
                Preset::FromScratchDemo => (0.005, Schedule::Cosine, 2.0, 0.3, 3.0),
                Preset::Paper => (1.0, Schedule::Step, 0.0, 1.0, 0.0),
            };
        let (center_rule, center_banks) = match self {
            Preset::FromScratchDemo => (CenterRuleName::Normalized, CenterBanks::Separate),
            Preset::Paper => (CenterRuleName::MovingAverage, CenterBanks::Shared),
        };
        TrainConfig {
            epochs,
            batch,
            input_size,
            width,
            classes: 200,
            task: Task::Classes,
            maps: 8,
            lr: self.lr(ModelKind::Coarse2Fine),
            classifier_lr_scale,
            schedule,
            warmup_epochs,
            momentum: 0.9,
            weight_decay: 1e-5,
            bn: BnPolicy::Train,
            center_lambda,
            center_beta: 0.05,
            center_rule,
            center_banks,
            center_warmup_epochs: center_warmup,
            seed: 0,
            upsampler: UpsamplerKind::Learnable,
            ortho_init: true,
            wsdan_maps: WSDAN_MAPS,
            wsdan_centers: WsDanCenters::PerPart,
            wsdan_passes: WsDanPasses::default(),
        }
    }
}

impl Default for TrainConfig {
    /// The paper's setting on CUB-200-2011 in full: [`Preset::Paper`] on a GPU, for the
    /// paper's 200 epochs.
    fn default() -> Self {
        TrainConfig {
            epochs: 200,
            ..Preset::Paper.config(Machine::Gpu)
        }
    }
}

/// The learning rates SGD reads, in the backend's memory, so that a step captured into a CUDA
/// graph replays at each step's rate: the base rate, then the classifiers' (× the config's
/// `classifier_lr_scale`). The host writes them before each step ([`Self::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearningRates {
    slots: Tensor,
}

impl LearningRates {
    pub fn new<B: Backend>(b: &mut B) -> Result<Self> {
        Ok(LearningRates { slots: b.alloc(2)? })
    }

    /// Writes the rates of base rate `lr` under `cfg` (a host write, before the step).
    pub fn write<B: Backend>(&self, b: &mut B, cfg: &TrainConfig, lr: f64) -> Result<()> {
        let rates = [lr, lr * cfg.classifier_lr_scale];
        rates.iter().try_for_each(|&r| check_learning_rate(r))?;
        b.write(self.slots, &rates.map(B::Scalar::from_f64))
    }
}

impl TrainConfig {
    pub fn center_loss(&self) -> CenterLossParams {
        CenterLossParams {
            lambda: self.center_lambda,
            beta: self.center_beta,
            rule: self.center_rule.into(),
        }
    }

    /// Each parameter tensor's SGD group, its rate read from `rates`: the classifiers (`fc*`)
    /// at the base rate × `classifier_lr_scale`, frozen BatchNorm weights and biases not at all,
    /// the rest at the base rate.
    pub fn sgd_rule(&self, rates: &LearningRates) -> impl Fn(&TensorEntry) -> Option<SgdGroup> {
        let (bn, params) = (self.bn, SgdParams::new(self.momentum, self.weight_decay));
        let [base, classifier] = [0, 1].map(|i| rates.slots.slice(i, 1));
        move |e: &TensorEntry| {
            let bn_tensor = e.name.ends_with(".bn.weight") || e.name.ends_with(".bn.bias");
            if bn_tensor && bn == BnPolicy::Frozen {
                return None;
            }
            let lr = if e.name.starts_with("fc") {
                classifier
            } else {
                base
            };
            Some(SgdGroup { params, lr })
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
    /// What replaces Coarse2Fine's learnable up-sampler after the heads' start
    /// ([`crate::pretrain::upsampler_origin`]).
    pub upsampler_weights: Option<UpsamplerWeights>,
    /// Start from the final state of an earlier run of the same model (its checkpoint), with
    /// fresh momentum ([`crate::train::start_from_checkpoint`]); `upsampler_weights` then replaces its
    /// up-sampler.
    pub init_from: Option<PathBuf>,
    /// Stop after this many steps in all, as a crash would (after any checkpoint due at that
    /// step): for testing `resume`.
    pub stop_after: Option<u64>,
    /// Read the steps' losses and right answers back every this many steps (≥ 1): they stay
    /// on the device in between, one row per step, so the epoch sums are the same.
    pub log_every: usize,
    /// Capture the training step into a CUDA graph after a warm-up step and replay it (on a
    /// backend that can: the CUDA one); `false` runs every step op by op.
    pub cuda_graph: bool,
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
            log_every: 1,
            cuda_graph: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_choose_the_center_rule_and_banks() {
        let paper = Preset::Paper.config(Machine::Gpu);
        assert_eq!(
            (paper.center_rule, paper.center_banks),
            (CenterRuleName::MovingAverage, CenterBanks::Shared)
        );
        assert_eq!(paper.center_loss().rule, CenterRule::MovingAverage);
        assert_eq!(TrainConfig::default().center_rule, paper.center_rule);
        let demo = Preset::FromScratchDemo.config(Machine::Cpu);
        assert_eq!(
            (demo.center_rule, demo.center_banks),
            (CenterRuleName::Normalized, CenterBanks::Separate)
        );
        assert_eq!(demo.center_loss().rule, CenterRule::Normalized);
    }

    #[test]
    fn from_scratch_each_model_takes_its_tuned_rate() {
        let demo = Preset::FromScratchDemo;
        assert_eq!(demo.config(Machine::Cpu).lr, 0.005);
        let rates: Vec<f64> = ModelKind::ALL.iter().map(|&m| demo.lr(m)).collect();
        assert_eq!(rates, [0.005, 0.02, 0.005, 0.02]);
        assert!(ModelKind::ALL.iter().all(|&m| Preset::Paper.lr(m) == 1e-3));
    }

    #[test]
    fn a_config_from_before_the_center_flags_reads_as_the_old_rule() {
        let mut json = serde_json::to_value(TrainConfig::default()).unwrap();
        let fields = json.as_object_mut().unwrap();
        fields.remove("center_rule");
        fields.remove("center_banks");
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            (old.center_rule, old.center_banks),
            (CenterRuleName::Normalized, CenterBanks::Separate)
        );
    }
}
