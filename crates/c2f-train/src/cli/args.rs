//! The command line's arguments: one struct per command. Flags that set a training config are
//! options over the [`crate::config::Preset`] the run starts from, so that their defaults have
//! one home, the library's presets.

use std::ops::Bound::{self, Excluded, Included};
use std::ops::RangeInclusive;
use std::path::PathBuf;

use c2f_inception::spec::MIN_INPUT;
use c2f_inception::Precision;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};

use super::values::{
    within, MAX_BATCH, MAX_EPOCHS, MAX_IMAGES, MAX_LOG_EVERY, MAX_MAPS, MAX_PIXEL_CAP,
};
use crate::config::{BnPolicy, CenterBanks, CenterRuleName, Schedule, WsDanCenters, WsDanPass};
use crate::data::image_io::DEFAULT_MAX_PIXELS;
use crate::data::synthetic::{max_classes, CLUTTER, OBJECT_SCALES, SIDES};

/// `c2f train`'s models when `--models` is not given: the main job.
const DEFAULT_MODELS: [&str; 3] = ["coarse2fine", "wsdan", "baseline"];

/// Learning rates: above 0, and at most 10, past which SGD only diverges.
const LEARNING_RATES: (Bound<f64>, Bound<f64>) = (Excluded(0.0), Included(10.0));

#[derive(Parser)]
#[command(
    name = "c2f",
    about = "Coarse2Fine fine-grained classification: train, evaluate, predict, localize, visualize",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train Coarse2Fine, WS-DAN and the plain InceptionV3 baseline, or the models --models names
    /// (by default on the built-in synthetic fine-grained set), and print their test accuracies.
    #[command(args_override_self = true)]
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint on the test split of the data it was trained on.
    Eval(EvalArgs),
    /// Classify images with a checkpoint: the top classes, with names, per prediction.
    Predict(PredictArgs),
    /// Pretrain the learnable up-sampler on synthetic (map, up-sampled map) pairs, as the paper
    /// does before Coarse2Fine training; `c2f train --upsampler FILE` starts from the result.
    PretrainUpsampler(PretrainArgs),
    /// Weakly-supervised localization with a Coarse2Fine, coarse-only or WS-DAN checkpoint on
    /// its test split (a dataset with boxes): ACoL accuracy, GT-known accuracy, mean IoU, as a
    /// table and JSON.
    Localize(LocalizeArgs),
    /// Pictures of what a Coarse2Fine, coarse-only or WS-DAN checkpoint looks at: attention heat
    /// maps, the up-sampled mean map, predicted and true boxes, top-3 predictions; one PNG per
    /// image and a contact sheet.
    Visualize(VisualizeArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A TOML file holding any of these flags by name (`epochs = 30`, `object_scale = [0.5,
    /// 0.8]`, `no_ortho_init = true`); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub compute: Compute,
    /// On a GPU, pick each convolution's cuDNN algorithms by timing them when its shape is first
    /// met (PyTorch's `cudnn.benchmark`), not by cuDNN's heuristic: often faster, but two runs
    /// may then differ in their last bits. Ignored on the CPU.
    #[arg(long)]
    pub cudnn_benchmark: bool,
    /// The models to train, in order, comma-separated: `coarse2fine`, `coarse-only` (Coarse2Fine
    /// without its fine pass: attention, BAP, center loss and the coarse head, trained alone),
    /// `wsdan` (WS-DAN, Hu et al. 2019: attention-guided crop and drop), `baseline` (the plain
    /// InceptionV3); `both` is `coarse2fine,baseline`.
    #[arg(
        long,
        num_args = 1..,
        value_delimiter = ',',
        default_values = DEFAULT_MODELS
    )]
    pub models: Vec<String>,
    /// `synthetic` (built in), or a dataset on disk under --data-root: cub, aircraft, cars,
    /// dogs, inat2017, or celeba (multi-label attributes: a sigmoid binary cross-entropy head
    /// and each attribute's accuracy, the paper's Table 9).
    #[arg(long, default_value = "synthetic")]
    pub dataset: String,
    /// The dataset's folder (for every dataset but `synthetic`).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// CelebA: the attributes to predict, as `list_attr_celeba.txt` names them, comma- or
    /// space-separated (default: all 40). The paper's six: Attractive,High_Cheekbones,Male,
    /// Mouth_Slightly_Open,Smiling,Wearing_Lipstick.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub attributes: Option<Vec<String>>,
    /// Epochs (default: 16 on the CPU, 40 on a GPU; the paper: 200).
    #[arg(long, value_parser = within(1..=MAX_EPOCHS))]
    pub epochs: Option<usize>,
    /// Batch size (default: 16 on the CPU, 64 on a GPU).
    #[arg(long, value_parser = within(1..=MAX_BATCH))]
    pub batch: Option<usize>,
    /// Input side (default: 96 on the CPU, 299 on a GPU).
    #[arg(long, value_parser = within(sizes()))]
    pub size: Option<usize>,
    /// Backbone width multiplier (default: 0.25 on the CPU, 1.0 on a GPU or with --weights).
    #[arg(long, value_parser = within((Excluded(0.0), Included(4.0))))]
    pub width: Option<f64>,
    /// Coarse2Fine's attention maps M (default: 8, the paper's).
    #[arg(long, value_parser = within(1..=MAX_MAPS))]
    pub maps: Option<usize>,
    /// WS-DAN's attention maps M (default: 32, WS-DAN's).
    #[arg(long, value_parser = within(1..=MAX_MAPS))]
    pub wsdan_maps: Option<usize>,
    /// WS-DAN's attention regularisation: `per-part`, the paper's one center per part (a bank
    /// shared by every class), or `per-class`, the PyTorch reimplementation's (default:
    /// per-part).
    #[arg(long, value_enum)]
    pub wsdan_centers: Option<WsDanCenters>,
    /// WS-DAN's training passes, comma-separated: `raw` (always), `crop`, `drop` (default: all
    /// three, the paper's; fewer is the ablation of its Table 3).
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
    pub wsdan_passes: Option<Vec<WsDanPass>>,
    /// Synthetic set: classes (the first N spot patterns, pairwise close; default: 5).
    #[arg(long, value_parser = within(2..=max_classes()))]
    pub classes: Option<usize>,
    /// Synthetic set: training images (default: 1200).
    #[arg(long, value_parser = within(1..=MAX_IMAGES))]
    pub train_images: Option<usize>,
    /// Synthetic set: test images (default: 400).
    #[arg(long, value_parser = within(1..=MAX_IMAGES))]
    pub test_images: Option<usize>,
    /// Synthetic set: the object's extent as a fraction of the image side, drawn from [LO, HI]
    /// (default: 0.6 0.9; smaller is harder: a spot is then a pixel or two at 96²).
    #[arg(long, num_args = 2, value_names = ["LO", "HI"], value_parser = within(OBJECT_SCALES))]
    pub object_scale: Option<Vec<f32>>,
    /// Synthetic set: background clutter, distractor spots included (0 = none, 1 = full;
    /// default: 0.5).
    #[arg(long, value_parser = within(CLUTTER))]
    pub clutter: Option<f32>,
    /// Base learning rate, for every model trained (default from scratch: each model's tuned
    /// rate, 0.005 for coarse2fine and wsdan, 0.02 for coarse-only and baseline; 1e-3 with
    /// --weights, WS-DAN's).
    #[arg(long, value_parser = within(LEARNING_RATES))]
    pub lr: Option<f64>,
    /// The classifiers' learning rate over --lr (default: 0.005 from scratch, where the
    /// backbone's rate would make the classifiers' logits jump: they read 100× the unit-norm
    /// part features; 1 with --weights, as WS-DAN).
    #[arg(long, value_parser = within((Excluded(0.0), Included(1000.0))))]
    pub classifier_lr_scale: Option<f64>,
    /// Learning-rate schedule (default: cosine from scratch; with --weights WS-DAN's step,
    /// ×0.9 every 2 epochs).
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Epochs over which the learning rate rises linearly from zero (default: 2 from scratch;
    /// 0 with --weights).
    #[arg(long, value_parser = within(0.0..=MAX_EPOCHS as f64))]
    pub warmup_epochs: Option<f64>,
    /// SGD momentum (default: 0.9, the paper's).
    #[arg(long, value_parser = within(0.0..1.0))]
    pub momentum: Option<f64>,
    /// SGD weight decay (default: 1e-5, the paper's).
    #[arg(long, value_parser = within(0.0..=1.0))]
    pub weight_decay: Option<f64>,
    /// BatchNorm while training (default: train).
    #[arg(long, value_enum)]
    pub bn: Option<BnPolicy>,
    /// Center loss weight λ (default: 0.3 from scratch, where the full weight pulls every
    /// image's part features together before they tell the classes apart in about one run in
    /// four (docs/experiments.md); 1 with --weights, the paper's).
    #[arg(long, value_parser = within(0.0..=100.0))]
    pub lambda: Option<f64>,
    /// Center moving-average rate β (default: 0.05).
    #[arg(long, value_parser = within((Excluded(0.0), Included(1.0))))]
    pub beta: Option<f64>,
    /// How the centers enter the center loss and move: `moving-average`, the paper's Eq. 2 and
    /// 3 (raw centers from zero, `c ← (1 − β)c + βf` per sample), or `normalized`, the WS-DAN
    /// reimplementations' (the loss against c/‖c‖) (default: moving-average with --weights;
    /// normalized from scratch, which learnt more seeds of the synthetic set).
    #[arg(long, value_enum)]
    pub center_rule: Option<CenterRuleName>,
    /// `shared`: one center bank for both passes, the paper's C center matrices; `separate`: one
    /// bank per pass (default: shared with --weights; separate from scratch).
    #[arg(long, value_enum)]
    pub center_banks: Option<CenterBanks>,
    /// Epochs over which λ rises linearly from zero (default: 3 from scratch, where a full
    /// center loss at the start can pull every image's part features to one point; 0 with
    /// --weights, as in the paper).
    #[arg(long, value_parser = within(0.0..=MAX_EPOCHS as f64))]
    pub center_warmup_epochs: Option<f64>,
    /// Seed of everything random: the synthetic set, the data order and augmentation, the
    /// attention start and the fine branch's map choice (default: 0).
    #[arg(long, value_parser = within(0u64..))]
    pub seed: Option<u64>,
    /// Synthetic set: draw the images from this seed instead of --seed, so that the training's
    /// randomness and the data can be varied apart.
    #[arg(long, value_parser = within(0u64..))]
    pub data_seed: Option<u64>,
    /// Start the attention conv from a plain uniform draw instead of orthonormal rows (the
    /// paper's Table 8 ablation).
    #[arg(long)]
    pub no_ortho_init: bool,
    /// The fine branch's up-sampler: `learnable` (the paper's transposed convolutions, from a
    /// fresh start), `pretrained` (the learnable one pretrained on interpolation pairs, as the
    /// paper does: shipped in c2f for 299² and 448², else pretrained at the run's start),
    /// `bilinear` (fixed interpolation, the paper's comparison), or a FILE from
    /// `c2f pretrain-upsampler` to start the learnable one from (default: pretrained with
    /// --weights, else learnable).
    #[arg(long)]
    pub upsampler: Option<String>,
    /// Start the backbone from InceptionV3 weights with torchvision's names (width 1.0;
    /// `tools/export_torchvision_weights.py` writes the ImageNet ones).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Start from the final state of an earlier run: DIR is its --run-dir, and each model starts
    /// from DIR/<model>/checkpoint.safetensors (same shapes; fresh momentum, this run's data,
    /// schedule and epochs). With --upsampler FILE, that file then replaces the up-sampler: the
    /// two-stage recipe in docs/experiments.md.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "resume"])]
    pub init_from: Option<PathBuf>,
    /// Where checkpoints and metrics go, one folder per model (default: runs/run-<time>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its checkpoints.
    #[arg(long, requires = "run_dir")]
    pub resume: bool,
    /// Also checkpoint every N steps (0, the default: only at each epoch's end).
    #[arg(long, value_parser = within(0u64..))]
    pub checkpoint_every: Option<u64>,
    /// Evaluate on the test split every N epochs (default: 1; 0: only after the last).
    #[arg(long, value_parser = within(0..=MAX_EPOCHS))]
    pub eval_every: Option<usize>,
    /// Read the losses back from the device every N steps (default: 1): fewer host syncs;
    /// the epoch sums are the same, a divergence is found up to N−1 steps late.
    #[arg(long, value_parser = within(1..=MAX_LOG_EVERY))]
    pub log_every: Option<usize>,
    /// Run every training step and evaluation batch op by op instead of capturing each into a
    /// CUDA graph after a warm-up and replaying it (the same numbers; per-layer NVTX ranges in
    /// a profile need it). Ignored on the CPU, which has no graphs.
    #[arg(long)]
    pub no_cuda_graph: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Data-parallel training on these GPUs, one worker process each: `0,1,2,3` or `all`
    /// (docs/distributed.md). --batch is the global batch, split evenly over them. Under
    /// torchrun, srun or mpirun leave it out: each process is a rank already.
    #[arg(long)]
    pub gpus: Option<String>,
    /// How the ranks of a multi-process job exchange NCCL's id: `tcp` (rank 0 serves it on the
    /// master address), `tcp:HOST[:PORT]`, or `file:PATH` on a filesystem all nodes share.
    #[arg(long, default_value = "tcp")]
    pub rendezvous: String,
    /// Rank 0's `HOST[:PORT]` for the TCP rendezvous (default: MASTER_ADDR and MASTER_PORT).
    #[arg(long)]
    pub master: Option<String>,
    #[command(flatten)]
    pub image_limit: ImageLimit,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The checkpoint (`<run-dir>/<model>/checkpoint.safetensors`).
    pub checkpoint: PathBuf,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub compute: Compute,
    #[command(flatten)]
    pub image_limit: ImageLimit,
}

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// The Coarse2Fine input side the up-sampler is for (default: 96 on the CPU, 299 on a GPU).
    #[arg(long, value_parser = within(sizes()))]
    pub size: Option<usize>,
    /// Training pairs per epoch (the paper: 60,000).
    #[arg(long, default_value_t = 60_000, value_parser = within(1..=MAX_IMAGES))]
    pub pairs: usize,
    /// Epochs (the paper: 100).
    #[arg(long, default_value_t = 100, value_parser = within(1..=MAX_EPOCHS))]
    pub epochs: usize,
    #[arg(long, default_value_t = 32, value_parser = within(1..=MAX_BATCH))]
    pub batch: usize,
    /// Default: 0.05 at input 75, falling with the attention map's cells (0.0016 at 299).
    #[arg(long, value_parser = within(LEARNING_RATES))]
    pub lr: Option<f64>,
    /// Seed of the generated pairs.
    #[arg(long, default_value_t = 0, value_parser = within(0u64..))]
    pub seed: u64,
    /// Where the weights go (rewritten atomically after every epoch).
    #[arg(long, default_value = "upsampler.safetensors")]
    pub out: PathBuf,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(clap::Args)]
pub struct LocalizeArgs {
    /// The checkpoint (`<run-dir>/<model>/checkpoint.safetensors`): Coarse2Fine, coarse-only or
    /// WS-DAN (whose box is its refinement crop's: the threshold, box filter and region flags do
    /// not apply to it).
    pub checkpoint: PathBuf,
    /// Threshold as a fraction of the filtered map's range, min to max (0: its minimum).
    #[arg(long, default_value_t = 0.1, value_parser = within(0.0..=1.0))]
    pub threshold: f64,
    /// Box-filter side in input pixels (default: one attention-map cell).
    #[arg(long, value_parser = within(sizes_from(1)))]
    pub box_filter: Option<usize>,
    /// The tight box around every pixel above the threshold (WS-DAN's code), instead of the box
    /// around the largest connected region.
    #[arg(long)]
    pub tight_box: bool,
    /// Only the first N test images.
    #[arg(long, value_parser = within(1usize..))]
    pub limit: Option<usize>,
    /// Where the metrics go as JSON (default: localization.json beside the checkpoint).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub compute: Compute,
    #[command(flatten)]
    pub image_limit: ImageLimit,
}

#[derive(clap::Args)]
pub struct VisualizeArgs {
    /// The checkpoint (`<run-dir>/<model>/checkpoint.safetensors`): Coarse2Fine, coarse-only or
    /// WS-DAN.
    pub checkpoint: PathBuf,
    /// Test-split images to draw, by index (default: the first --count).
    #[arg(long, value_delimiter = ',', value_parser = within(0usize..))]
    pub index: Vec<usize>,
    /// How many of the first test images to draw when no --index is given.
    #[arg(long, default_value_t = 12, value_parser = within(1usize..))]
    pub count: usize,
    /// The folder the PNGs go to.
    #[arg(long, default_value = "attention-pictures")]
    pub out: PathBuf,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub compute: Compute,
    #[command(flatten)]
    pub image_limit: ImageLimit,
}

/// Which prediction `predict` prints: WS-DAN's raw and refined ones are its coarse and fine.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    #[value(alias = "raw")]
    Coarse,
    #[value(alias = "refined")]
    Fine,
    Average,
    All,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// The checkpoint (`<run-dir>/<model>/checkpoint.safetensors`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JPEG or PNG images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Which prediction to print (Coarse2Fine has all three; WS-DAN its raw, refined and
    /// average, also spelt raw and refined; the baseline only coarse).
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// How many classes to list per prediction (an attribute model lists every attribute).
    #[arg(long, default_value_t = 5, value_parser = within(1usize..))]
    pub top: usize,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub compute: Compute,
    #[command(flatten)]
    pub image_limit: ImageLimit,
}

/// How every command that runs a model computes.
impl Command {
    /// The flags every command takes on how it computes.
    pub fn compute(&self) -> &Compute {
        match self {
            Command::Train(a) => &a.compute,
            Command::Eval(a) => &a.compute,
            Command::Predict(a) => &a.compute,
            Command::PretrainUpsampler(a) => &a.compute,
            Command::Localize(a) => &a.compute,
            Command::Visualize(a) => &a.compute,
        }
    }
}

#[derive(clap::Args)]
pub struct Compute {
    /// `bf16`: activations in bf16 on tensor cores, f32 master weights; `tf32`: f32 tensors,
    /// with cuDNN's convolutions and cuBLAS's GEMMs on TF32 tensor cores (PyTorch's default for
    /// convolutions); `f32`: TF32 off. Default: bf16 on a GPU, f32 on the CPU, its only one.
    #[arg(long, value_parser = precisions())]
    pub precision: Option<Precision>,
    /// Name each layer, pass and phase of the work with NVTX ranges, so that an Nsight Systems
    /// timeline (`nsys profile --trace=cuda,nvtx`) reads by layer. Needs NVIDIA's
    /// libnvtx3interop.so.1 on the loader's path (`eval "$(tools/cuda-libs.sh)"`). Off, the
    /// ranges cost nothing.
    #[arg(long)]
    pub nvtx: bool,
}

/// The cap on image size of every command that reads images.
#[derive(clap::Args)]
pub struct ImageLimit {
    /// Refuse an image whose header declares more pixels (width × height) than this, before
    /// decoding it: a dataset's is skipped and named, like a corrupt one. The default is
    /// Pillow's MAX_IMAGE_PIXELS.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_parser = within(1..=MAX_PIXEL_CAP))]
    pub max_image_pixels: u64,
}

/// A parser for [`Precision::CHOICES`] by name, which lists them in the help and in the error
/// for any other value.
fn precisions() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(Precision::CHOICES.map(Precision::name))
        .map(|name| Precision::from_name(&name).expect("a name of Precision::CHOICES"))
}

/// Input sides: InceptionV3's smallest to the synthetic set's largest.
fn sizes() -> RangeInclusive<usize> {
    sizes_from(MIN_INPUT)
}

/// From `lo` pixels to the largest input side.
fn sizes_from(lo: usize) -> RangeInclusive<usize> {
    lo..=*SIDES.end() as usize
}
