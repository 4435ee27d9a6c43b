//! `c2f`: train, evaluate and apply Coarse2Fine. With no dataset argument, `c2f train` trains on
//! the built-in synthetic fine-grained set, Coarse2Fine and then the plain InceptionV3 baseline,
//! and ends with a table of their test accuracies. On a machine without a GPU it runs on the CPU
//! at a small width and resolution.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use c2f_dist::collective::Collective;
use c2f_dist::launch::{parse_master, LaunchInfo, Launcher};
use c2f_dist::nccl::{unique_id, NcclCollective};
use c2f_dist::rendezvous::{exchange_id, remove_rendezvous_file, Rendezvous, DEFAULT_TIMEOUT};
use c2f_dist::workers::{parse_gpus, run_workers, WorkerCommand};
use c2f_dist::DistError;
use c2f_inception::backend::Backend;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::{AlgorithmChoice, CudaBackend};
use c2f_inception::weights::write_atomically;
use c2f_kernels::device::device_count;
use c2f_kernels::{Error, Result};
use c2f_train::checkpoint::{self, CheckpointMeta};
use c2f_train::data::loader::FileSource;
use c2f_train::data::spec::{DataSpec, OpenedData};
use c2f_train::data::ImageSource;
use c2f_train::data::Sample;
use c2f_train::localize::{
    infer_images, localize, ImageInference, LocalizationMetrics, LocalizeConfig, Region,
};
use c2f_train::model::{Coarse2Fine, Task};
use c2f_train::pretrain::{pretrain_upsampler, print_epochs, PretrainConfig};
use c2f_train::train::Baseline;
use c2f_train::train::{
    build_baseline, build_coarse2fine, checkpoint_path, evaluate, format_accuracy, padded_images,
    prediction_rows, test_loader, train_baseline, train_coarse2fine, Accuracy, BnPolicy,
    DataParallel, Evaluation, RunOptions, Schedule, TrainConfig, Trainee,
};
use c2f_train::upsampler::{attention_map_side, UpsamplerKind};
use c2f_train::visualize::{write_pictures, VisualizeConfig};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "c2f",
    about = "Coarse2Fine fine-grained classification: train, evaluate, predict, localize, visualize",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train Coarse2Fine and the plain InceptionV3 baseline (by default on the built-in
    /// synthetic fine-grained set) and print their test accuracies.
    #[command(args_override_self = true)]
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint on the test split of the data it was trained on.
    Eval(EvalArgs),
    /// Classify images with a checkpoint: the top classes, with names, per prediction.
    Predict(PredictArgs),
    /// Pretrain the learnable up-sampler on synthetic (map, up-sampled map) pairs, as the paper
    /// does before Coarse2Fine training; `c2f train --upsampler FILE` starts from the result.
    PretrainUpsampler(PretrainArgs),
    /// Weakly-supervised localization with a Coarse2Fine checkpoint on its test split (a
    /// dataset with boxes): ACoL accuracy, GT-known accuracy, mean IoU, as a table and JSON.
    Localize(LocalizeArgs),
    /// Pictures of what a Coarse2Fine checkpoint looks at: attention heat maps, the up-sampled
    /// mask, predicted and true boxes, top-3 predictions; one PNG per image and a contact sheet.
    Visualize(VisualizeArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Models {
    /// Coarse2Fine, then the plain InceptionV3 baseline.
    Both,
    Coarse2fine,
    Baseline,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML file holding any of these flags by name (`epochs = 30`, `object_scale = [0.5,
    /// 0.8]`, `no_ortho_init = true`); flags on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
    /// On a GPU, pick each convolution's cuDNN algorithms by timing them when its shape is first
    /// met (PyTorch's `cudnn.benchmark`), not by cuDNN's heuristic: often faster, but two runs
    /// may then differ in their last bits. Ignored on the CPU.
    #[arg(long)]
    cudnn_benchmark: bool,
    /// Which models to train.
    #[arg(long, value_enum, default_value = "both")]
    models: Models,
    /// `synthetic` (built in), or a dataset on disk under --data-root: cub, aircraft, cars,
    /// dogs, inat2017, or celeba (multi-label attributes: a sigmoid binary cross-entropy head
    /// and each attribute's accuracy, the paper's Table 9).
    #[arg(long, default_value = "synthetic")]
    dataset: String,
    /// The dataset's folder (for every dataset but `synthetic`).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// CelebA: the attributes to predict, as `list_attr_celeba.txt` names them, comma- or
    /// space-separated (default: all 40). The paper's six: Attractive,High_Cheekbones,Male,
    /// Mouth_Slightly_Open,Smiling,Wearing_Lipstick.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    attributes: Option<Vec<String>>,
    /// Epochs (default: 16 on the CPU, 40 on a GPU; the paper: 200).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (default: 16 on the CPU, 64 on a GPU).
    #[arg(long)]
    batch: Option<usize>,
    /// Input side (default: 96 on the CPU, 299 on a GPU).
    #[arg(long)]
    size: Option<usize>,
    /// Backbone width multiplier (default: 0.25 on the CPU, 1.0 on a GPU).
    #[arg(long)]
    width: Option<f64>,
    /// Attention maps M (the paper: 8; WS-DAN: 32).
    #[arg(long, default_value_t = 8)]
    maps: usize,
    /// Synthetic set: classes (the first N spot patterns, pairwise close).
    #[arg(long, default_value_t = 5)]
    classes: usize,
    /// Synthetic set: training images.
    #[arg(long, default_value_t = 1200)]
    train_images: usize,
    /// Synthetic set: test images.
    #[arg(long, default_value_t = 400)]
    test_images: usize,
    /// Synthetic set: the object's extent as a fraction of the image side, drawn from [LO, HI]
    /// (smaller is harder: a spot is then a pixel or two at 96²).
    #[arg(long, num_args = 2, value_names = ["LO", "HI"], default_values_t = [0.6, 0.9])]
    object_scale: Vec<f32>,
    /// Synthetic set: background clutter, distractor spots included (0 = none, 1 = full).
    #[arg(long, default_value_t = 0.5)]
    clutter: f32,
    /// Base learning rate (default: 0.02 from scratch; 1e-3 with --weights, WS-DAN's).
    #[arg(long)]
    lr: Option<f64>,
    /// The classifiers' learning rate over --lr (default: 0.005 from scratch, where the
    /// backbone's rate would make the classifiers' logits jump: they read 100× the unit-norm
    /// part features; 1 with --weights, as WS-DAN).
    #[arg(long)]
    classifier_lr_scale: Option<f64>,
    /// Learning-rate schedule (default: cosine from scratch; with --weights WS-DAN's step,
    /// ×0.9 every 2 epochs).
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Epochs over which the learning rate rises linearly from zero (default: 2 from scratch;
    /// 0 with --weights).
    #[arg(long, value_parser = epochs_fraction, allow_negative_numbers = true)]
    warmup_epochs: Option<f64>,
    /// SGD momentum (the paper: 0.9).
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// SGD weight decay (the paper: 1e-5).
    #[arg(long, default_value_t = 1e-5)]
    weight_decay: f64,
    /// BatchNorm while training.
    #[arg(long, value_enum, default_value = "train")]
    bn: BnPolicy,
    /// Center loss weight λ (default: 0.3 from scratch, where the full weight pulls every
    /// image's part features together before they tell the classes apart in about one run in
    /// four (README, Seeds); 1 with --weights, the paper's).
    #[arg(long)]
    lambda: Option<f64>,
    /// Center moving-average rate β.
    #[arg(long, default_value_t = 0.05)]
    beta: f64,
    /// Epochs over which λ rises linearly from zero (default: 3 from scratch, where a full
    /// center loss at the start can pull every image's part features to one point; 0 with
    /// --weights, as in the paper).
    #[arg(long, value_parser = epochs_fraction, allow_negative_numbers = true)]
    center_warmup_epochs: Option<f64>,
    /// Seed of everything random: the synthetic set, the data order and augmentation, the
    /// attention start and the fine branch's map choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Synthetic set: draw the images from this seed instead of --seed, so that the training's
    /// randomness and the data can be varied apart.
    #[arg(long)]
    data_seed: Option<u64>,
    /// Start the attention conv from a plain uniform draw instead of orthonormal rows (the
    /// paper's Table 8 ablation).
    #[arg(long)]
    no_ortho_init: bool,
    /// The fine branch's up-sampler: `learnable` (the paper's transposed convolutions, from a
    /// fresh start), `bilinear` (fixed interpolation, the paper's comparison), or a FILE from
    /// `c2f pretrain-upsampler` to start the learnable one from.
    #[arg(long, default_value = "learnable")]
    upsampler: String,
    /// Start the backbone from InceptionV3 weights with torchvision's names (width 1.0;
    /// `tools/export_torchvision_weights.py` writes the ImageNet ones).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Start from the final state of an earlier run: DIR is its --run-dir, and each model starts
    /// from DIR/<model>/checkpoint.safetensors (same shapes; fresh momentum, this run's data,
    /// schedule and epochs). With --upsampler FILE, that file then replaces the up-sampler: the
    /// two-stage recipe in the README.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "resume"])]
    init_from: Option<PathBuf>,
    /// Where checkpoints and metrics go, one folder per model (default: runs/run-<time>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its checkpoints.
    #[arg(long, requires = "run_dir")]
    resume: bool,
    /// Also checkpoint every N steps (0: only at each epoch's end).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Evaluate on the test split every N epochs (0: only after the last).
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Data-parallel training on these GPUs, one worker process each: `0,1,2,3` or `all`
    /// (docs/distributed.md). --batch is the global batch, split evenly over them. Under
    /// torchrun, srun or mpirun leave it out: each process is a rank already.
    #[arg(long)]
    gpus: Option<String>,
    /// How the ranks of a multi-process job exchange NCCL's id: `tcp` (rank 0 serves it on the
    /// master address), `tcp:HOST[:PORT]`, or `file:PATH` on a filesystem all nodes share.
    #[arg(long, default_value = "tcp")]
    rendezvous: String,
    /// Rank 0's `HOST[:PORT]` for the TCP rendezvous (default: MASTER_ADDR and MASTER_PORT).
    #[arg(long)]
    master: Option<String>,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The checkpoint (`<run-dir>/<model>/checkpoint.safetensors`).
    checkpoint: PathBuf,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
}

#[derive(clap::Args)]
struct PretrainArgs {
    /// The Coarse2Fine input side the up-sampler is for (default: 96 on the CPU, 299 on a GPU).
    #[arg(long)]
    size: Option<usize>,
    /// Training pairs per epoch (the paper: 60,000).
    #[arg(long, default_value_t = 60_000)]
    pairs: usize,
    /// Epochs (the paper: 100).
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Seed of the generated pairs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the weights go (rewritten atomically after every epoch).
    #[arg(long, default_value = "upsampler.safetensors")]
    out: PathBuf,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
}

#[derive(clap::Args)]
struct LocalizeArgs {
    /// The Coarse2Fine checkpoint (`<run-dir>/coarse2fine/checkpoint.safetensors`).
    checkpoint: PathBuf,
    /// Threshold as a fraction of the filtered map's range, min to max (0: its minimum).
    #[arg(long, default_value_t = 0.1)]
    threshold: f64,
    /// Box-filter side in input pixels (default: one attention-map cell).
    #[arg(long)]
    box_filter: Option<usize>,
    /// The tight box around every pixel above the threshold (WS-DAN's code), instead of the box
    /// around the largest connected region.
    #[arg(long)]
    tight_box: bool,
    /// Only the first N test images.
    #[arg(long)]
    limit: Option<usize>,
    /// Where the metrics go as JSON (default: localization.json beside the checkpoint).
    #[arg(long)]
    json: Option<PathBuf>,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
}

#[derive(clap::Args)]
struct VisualizeArgs {
    /// The Coarse2Fine checkpoint (`<run-dir>/coarse2fine/checkpoint.safetensors`).
    checkpoint: PathBuf,
    /// Test-split images to draw, by index (default: the first --count).
    #[arg(long, value_delimiter = ',')]
    index: Vec<usize>,
    /// How many of the first test images to draw when no --index is given.
    #[arg(long, default_value_t = 12)]
    count: usize,
    /// The folder the PNGs go to.
    #[arg(long, default_value = "attention-pictures")]
    out: PathBuf,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Coarse,
    Fine,
    Average,
    All,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// The checkpoint (`<run-dir>/<model>/checkpoint.safetensors`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// JPEG or PNG images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Which prediction to print (Coarse2Fine has all three; the baseline only coarse).
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// How many classes to list per prediction (an attribute model lists every attribute).
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
}

fn main() {
    let result =
        with_config_file(std::env::args().collect()).and_then(|argv| {
            match Cli::parse_from(&argv).command {
                Command::Train(args) => train(*args, &argv),
                Command::Eval(args) => eval(args),
                Command::Predict(args) => predict(args),
                Command::PretrainUpsampler(args) => pretrain(args),
                Command::Localize(args) => localize_command(args),
                Command::Visualize(args) => visualize(args),
            }
        });
    if let Err(e) = result {
        eprintln!("c2f: {e}");
        std::process::exit(1);
    }
}

/// A finite, non-negative number of epochs (a warmup's length may be a fraction of one).
fn epochs_fraction(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{text}` is not a number of epochs (finite, 0 or more)"
        )),
    }
}

/// For `c2f train --config FILE`: the command line with the file's keys put in front of the
/// user's flags as flags (so the user's come later and win), each key checked against the
/// flags `train` has.
fn with_config_file(argv: Vec<String>) -> Result<Vec<String>> {
    let position = argv.iter().position(|a| a == "--config");
    let path = match position {
        Some(i) if argv.get(1).map(String::as_str) == Some("train") => match argv.get(i + 1) {
            Some(p) => PathBuf::from(p),
            None => return Ok(argv),
        },
        _ => return Ok(argv),
    };
    let file_error = |message: String| Error::File {
        path: path.display().to_string(),
        message,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| file_error(format!("cannot read: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| file_error(format!("not valid TOML: {e}")))?;
    let command = Cli::command();
    let train = command.find_subcommand("train").expect("train exists");
    let known: Vec<String> = train
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| l.replace('-', "_")))
        .filter(|l| l != "config" && l != "help")
        .collect();
    let mut flags = Vec::new();
    for (key, value) in &table {
        if !known.contains(key) {
            return Err(file_error(format!(
                "unknown key `{key}` (known: {})",
                known.join(", ")
            )));
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(file_error(format!("`{key}`: unsupported value {other}"))),
        };
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                flags.push(flag);
                for item in items {
                    flags.push(scalar(item)?);
                }
            }
            v => {
                flags.push(flag);
                flags.push(scalar(v)?);
            }
        }
    }
    let mut out = argv[..2].to_vec();
    out.extend(flags);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

/// The GPU asked for, or the first one when none was named and one can be opened.
fn open_device(device: Option<&str>) -> Result<Option<CudaBackend>> {
    match device {
        Some("cpu") => Ok(None),
        Some(d) => {
            let ordinal = d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    Error::Shape(format!("unknown device {d:?}: use `cpu` or `cuda:N`"))
                })?;
            Ok(Some(CudaBackend::open(ordinal)?))
        }
        None => match CudaBackend::open(0) {
            Ok(b) => Ok(Some(b)),
            // No driver or no device is the CPU machine's normal case; a GPU that is there but
            // cannot be used (a missing cuDNN, cuBLAS or NVRTC) must not pass silently as one.
            Err(e) => {
                if device_count().unwrap_or(0) > 0 {
                    eprintln!(
                        "warning: CUDA device 0 is present but cannot be used, so this runs on \
                         the CPU: {e}\n  CUDA libraries from Python wheels (PyTorch's): \
                         eval \"$(tools/cuda-libs.sh)\"; --device cuda:0 makes this an error"
                    );
                }
                Ok(None)
            }
        },
    }
}

/// Multi-process training runs one process per GPU, with NCCL between them.
fn no_cpu_ranks() -> Error {
    Error::Shape(
        "data-parallel training across processes needs one GPU per rank (NCCL); with --device \
         cpu train in one process (without --gpus or a launcher's WORLD_SIZE > 1)"
            .into(),
    )
}

/// `--gpus`: this same command once per GPU, without `--gpus` (and without `--config`, whose
/// keys `argv` already holds), with one run folder for all; each worker reads its rank from the
/// environment. Fails naming the first rank that failed.
fn launch_workers(args: &TrainArgs, spec: &str, argv: &[String]) -> Result<()> {
    if args.device.as_deref() == Some("cpu") {
        return Err(no_cpu_ranks());
    }
    if LaunchInfo::from_env(None)?.launcher != Launcher::Single {
        return Err(DistError::Launch(
            "--gpus starts its own workers, but this process was started by a launcher \
             (torchrun, srun or mpirun variables are set); leave --gpus out"
                .into(),
        )
        .into());
    }
    let gpus = parse_gpus(spec, device_count()?)?;
    let mut worker_args = Vec::new();
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--gpus" | "--config" => {
                rest.next();
            }
            a if a.starts_with("--gpus=") => {}
            a => worker_args.push(a.into()),
        }
    }
    if args.run_dir.is_none() {
        worker_args.push("--run-dir".into());
        worker_args.push(default_run_dir().into_os_string());
    }
    let program = std::env::current_exe().map_err(|e| {
        Error::Shape(format!(
            "cannot find this program to start the workers: {e}"
        ))
    })?;
    let port = match &args.master {
        Some(m) => Some(parse_master(m, "--master")?.port),
        None => None,
    };
    println!("c2f: one worker per GPU, GPUs {gpus:?}");
    let command = WorkerCommand {
        program,
        args: worker_args,
        env: Vec::new(),
    };
    Ok(run_workers(&command, &gpus, port)?)
}

/// Joins the job `launch` describes as its rank on `b`'s GPU: rank 0's NCCL id through the
/// rendezvous, then the communicator.
fn join_job(b: &CudaBackend, launch: &LaunchInfo, rendezvous: &str) -> Result<NcclCollective> {
    let rendezvous = match rendezvous {
        "tcp" => Rendezvous::Tcp(launch.master.clone().ok_or_else(|| {
            DistError::Launch("the TCP rendezvous needs rank 0's address (--master)".into())
        })?),
        spec => Rendezvous::parse(spec)?,
    };
    let id = match launch.rank {
        0 => Some(unique_id()?),
        _ => None,
    };
    let id = exchange_id(
        &rendezvous,
        launch.rank,
        launch.world_size,
        id.as_ref(),
        DEFAULT_TIMEOUT,
    )?;
    let nccl = NcclCollective::new(b, launch.rank, launch.world_size, &id)?;
    if launch.rank == 0 {
        // Every rank has read it: the communicator is up.
        remove_rendezvous_file(&rendezvous)?;
    }
    Ok(nccl)
}

fn default_run_dir() -> PathBuf {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("runs/run-{now}"))
}

fn train(args: TrainArgs, argv: &[String]) -> Result<()> {
    if let Some(spec) = &args.gpus {
        return launch_workers(&args, spec, argv);
    }
    let launch = LaunchInfo::from_env(args.master.as_deref())?;
    let mut nccl = None;
    let mut cuda = if launch.world_size > 1 {
        if args.device.as_deref() == Some("cpu") {
            return Err(no_cpu_ranks());
        }
        let b = CudaBackend::open(launch.device)?;
        nccl = Some(join_job(&b, &launch, &args.rendezvous)?);
        Some(b)
    } else if launch.launcher != Launcher::Single && args.device.is_none() {
        // A launcher's world of one: its GPU.
        Some(CudaBackend::open(launch.device)?)
    } else {
        open_device(args.device.as_deref())?
    };
    if let (Some(b), true) = (cuda.as_mut(), args.cudnn_benchmark) {
        b.set_conv_algorithm_choice(AlgorithmChoice::Timed);
    }
    let leader = launch.rank == 0;
    let gpu = cuda.is_some();
    let data = if args.dataset == "synthetic" {
        DataSpec::Synthetic {
            classes: args.classes,
            train_images: args.train_images,
            test_images: args.test_images,
            seed: args.data_seed.unwrap_or(args.seed),
            object_scale: (args.object_scale[0], args.object_scale[1]),
            clutter: args.clutter,
        }
    } else {
        let root = args
            .data_root
            .clone()
            .ok_or_else(|| Error::Shape(format!("--dataset {} needs --data-root", args.dataset)))?;
        DataSpec::Files {
            dataset: args.dataset.clone(),
            root,
            attributes: args.attributes.clone(),
        }
    };
    let input_size = args.size.unwrap_or(if gpu { 299 } else { 96 });
    let opened = data.open(input_size)?;
    // Fine-tuning pretrained weights takes WS-DAN's optimiser settings; training from scratch
    // (the synthetic demo) takes the ones that learn it in the CPU budget (README).
    let fine_tune = args.weights.is_some();
    let cfg = TrainConfig {
        epochs: args.epochs.unwrap_or(if gpu { 40 } else { 16 }),
        batch: args.batch.unwrap_or(if gpu { 64 } else { 16 }),
        input_size,
        width: args.width.unwrap_or(if gpu { 1.0 } else { 0.25 }),
        classes: opened.class_names.len(),
        task: opened.task,
        maps: args.maps,
        lr: args.lr.unwrap_or(if fine_tune { 1e-3 } else { 0.02 }),
        classifier_lr_scale: args.classifier_lr_scale.unwrap_or(if fine_tune {
            1.0
        } else {
            0.005
        }),
        schedule: args.schedule.unwrap_or(if fine_tune {
            Schedule::Step
        } else {
            Schedule::Cosine
        }),
        warmup_epochs: args
            .warmup_epochs
            .unwrap_or(if fine_tune { 0.0 } else { 2.0 }),
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        bn: args.bn,
        center_lambda: args.lambda.unwrap_or(if fine_tune { 1.0 } else { 0.3 }),
        center_beta: args.beta,
        center_warmup_epochs: args.center_warmup_epochs.unwrap_or(if fine_tune {
            0.0
        } else {
            3.0
        }),
        seed: args.seed,
        upsampler: if args.upsampler == "bilinear" {
            UpsamplerKind::FixedBilinear
        } else {
            UpsamplerKind::Learnable
        },
        ortho_init: !args.no_ortho_init,
    };
    let upsampler_weights = match args.upsampler.as_str() {
        "learnable" | "bilinear" => None,
        file => Some(PathBuf::from(file)),
    };
    let run_dir = args.run_dir.clone().unwrap_or_else(default_run_dir);
    let run = |model: &str| RunOptions {
        dir: run_dir.join(model),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        eval_every: args.eval_every,
        progress: !args.no_progress,
        weights: args.weights.clone(),
        upsampler_weights: upsampler_weights.clone(),
        init_from: args
            .init_from
            .as_ref()
            .map(|dir| checkpoint_path(&dir.join(model))),
        stop_after: None,
    };
    let job = Job { cfg, data: opened };
    if leader {
        println!(
            "{} of {}²; width {}, batch {}{}, {} epochs; checkpoints and metrics in {}",
            job.data.description,
            job.cfg.input_size,
            job.cfg.width,
            job.cfg.batch,
            match launch.world_size {
                1 => String::new(),
                n => format!(" over {n} ranks"),
            },
            job.cfg.epochs,
            run_dir.display()
        );
    }
    match cuda {
        Some(mut b) => {
            let collective = nccl.as_mut().map(|c| c as &mut dyn Collective<CudaBackend>);
            job.run(&mut b, args.models, run, collective)
        }
        None => job.run(&mut CpuBackend::<f32>::new(), args.models, run, None),
    }
}

/// What `c2f train` trains on, and how.
struct Job {
    cfg: TrainConfig,
    data: OpenedData,
}

impl Job {
    /// Trains on `b`, alone or as one rank of the job `collective` joins (then only rank 0
    /// prints).
    fn run<B: Backend<Scalar = f32>>(
        &self,
        b: &mut B,
        models: Models,
        run: impl Fn(&str) -> RunOptions,
        mut collective: Option<&mut dyn Collective<B>>,
    ) -> Result<()> {
        let leader = collective.as_ref().is_none_or(|c| c.rank() == 0);
        if leader {
            println!("device: {}", b.describe());
        }
        let mut rows: Vec<(&str, Evaluation, f64)> = Vec::new();
        let mut args = |b: &mut B, name: &str, trainer: Trainer<B>| -> Result<Option<Evaluation>> {
            let mut dp = collective.as_mut().map(|c| DataParallel::new(&mut **c));
            trainer(b, &self.cfg, &run(name), &self.data, dp.as_mut())
        };
        if models != Models::Baseline {
            let start = Instant::now();
            if let Some(acc) = args(b, "coarse2fine", train_coarse2fine::<B>)? {
                rows.push(("Coarse2Fine", acc, start.elapsed().as_secs_f64()));
            }
        }
        if models != Models::Coarse2fine {
            let start = Instant::now();
            if let Some(acc) = args(b, "baseline", train_baseline::<B>)? {
                rows.push(("InceptionV3 baseline", acc, start.elapsed().as_secs_f64()));
            }
        }
        if leader {
            print_table(&rows, &self.data.class_names);
        }
        Ok(())
    }
}

type Trainer<B> = fn(
    &mut B,
    &TrainConfig,
    &RunOptions,
    &OpenedData,
    Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>>;

/// The models' accuracies (for attributes, their mean), then for attributes one row per
/// attribute and model (`names` are the attributes').
fn print_table(rows: &[(&str, Evaluation, f64)], names: &[String]) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let cells = |a: &Accuracy| {
        format!(
            "{} | {} | {}",
            pct(Some(a.coarse)),
            pct(a.fine),
            pct(a.average)
        )
    };
    println!("\n| model | coarse | fine | average | time |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, e, secs) in rows {
        println!("| {name} | {} | {secs:.0} s |", cells(&e.accuracy));
    }
    if rows.iter().all(|(_, e, _)| e.per_attribute.is_empty()) {
        return;
    }
    println!("\n| attribute | model | coarse | fine | average |");
    println!("| --- | --- | --- | --- | --- |");
    for (a, attribute) in names.iter().enumerate() {
        for (name, e, _) in rows {
            if let Some(acc) = e.per_attribute.get(a) {
                println!("| {attribute} | {name} | {} |", cells(acc));
            }
        }
    }
}

/// A checkpointed model, rebuilt from its metadata and loaded, ready to predict.
fn with_checkpoint<T>(
    path: &Path,
    device: Option<&str>,
    work: &mut dyn FnMut(&mut dyn Predictor, &CheckpointMeta) -> Result<T>,
) -> Result<T> {
    let meta = checkpoint::read_meta(path)?;
    match open_device(device)? {
        Some(mut b) => load_and(&mut b, path, &meta, work),
        None => load_and(&mut CpuBackend::<f32>::new(), path, &meta, work),
    }
}

fn load_and<B: Backend<Scalar = f32>, T>(
    b: &mut B,
    path: &Path,
    meta: &CheckpointMeta,
    work: &mut dyn FnMut(&mut dyn Predictor, &CheckpointMeta) -> Result<T>,
) -> Result<T> {
    let cfg = &meta.config;
    match meta.model.as_str() {
        "coarse2fine" => {
            let mut model = build_coarse2fine(b, cfg)?;
            checkpoint::load(b, path, &Trainee::<B>::state(&model))?;
            work(
                &mut Loaded {
                    b,
                    model: &mut model,
                },
                meta,
            )
        }
        "baseline" => {
            let mut model = build_baseline(b, cfg)?;
            checkpoint::load(b, path, &Trainee::<B>::state(&model))?;
            work(
                &mut Loaded {
                    b,
                    model: &mut model,
                },
                meta,
            )
        }
        other => Err(Error::File {
            path: path.display().to_string(),
            message: format!("unknown model `{other}`"),
        }),
    }
}

/// A loaded model on its backend, behind one object-safe face for the subcommands.
trait Predictor {
    fn evaluate(&mut self, test: &c2f_train::data::Loader, outputs: usize) -> Result<Evaluation>;
    fn probabilities(&mut self, images: &[f32]) -> Result<Vec<Vec<f64>>>;
    /// Localization metrics on `source` (Coarse2Fine only: it has attention maps).
    fn localize(
        &mut self,
        source: &dyn ImageSource,
        cfg: &LocalizeConfig,
    ) -> Result<(Vec<ImageInference>, LocalizationMetrics)>;
    /// Maps, predictions and boxes of images `indices` of `source` (Coarse2Fine only).
    fn infer_images(
        &mut self,
        source: &dyn ImageSource,
        indices: &[usize],
        cfg: &LocalizeConfig,
    ) -> Result<Vec<ImageInference>>;
}

/// What only a model with attention maps can do.
trait Attends<B: Backend<Scalar = f32>> {
    fn coarse2fine(&mut self) -> Result<&mut Coarse2Fine>;
}

impl<B: Backend<Scalar = f32>> Attends<B> for Coarse2Fine {
    fn coarse2fine(&mut self) -> Result<&mut Coarse2Fine> {
        Ok(self)
    }
}

impl<B: Backend<Scalar = f32>> Attends<B> for Baseline {
    fn coarse2fine(&mut self) -> Result<&mut Coarse2Fine> {
        Err(Error::Shape(
            "this is a baseline checkpoint: localization and pictures need a Coarse2Fine one \
             (its attention maps)"
                .into(),
        ))
    }
}

struct Loaded<'a, B, M> {
    b: &'a mut B,
    model: &'a mut M,
}

impl<B: Backend<Scalar = f32>, M: Trainee<B> + Attends<B>> Predictor for Loaded<'_, B, M> {
    fn evaluate(&mut self, test: &c2f_train::data::Loader, outputs: usize) -> Result<Evaluation> {
        evaluate(self.b, self.model, test, outputs)
    }

    fn probabilities(&mut self, images: &[f32]) -> Result<Vec<Vec<f64>>> {
        self.model.probabilities(self.b, images)
    }

    fn localize(
        &mut self,
        source: &dyn ImageSource,
        cfg: &LocalizeConfig,
    ) -> Result<(Vec<ImageInference>, LocalizationMetrics)> {
        localize(self.b, self.model.coarse2fine()?, source, cfg)
    }

    fn infer_images(
        &mut self,
        source: &dyn ImageSource,
        indices: &[usize],
        cfg: &LocalizeConfig,
    ) -> Result<Vec<ImageInference>> {
        infer_images(self.b, self.model.coarse2fine()?, source, indices, cfg)
    }
}

fn pretrain(args: PretrainArgs) -> Result<()> {
    let cuda = open_device(args.device.as_deref())?;
    let cfg = PretrainConfig {
        pairs: args.pairs,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        output: Some(args.out.clone()),
        ..PretrainConfig::new(args.size.unwrap_or(if cuda.is_some() { 299 } else { 96 }))
    };
    let report = match cuda {
        Some(mut b) => pretrain_upsampler(&mut b, &cfg, &mut print_epochs)?,
        None => pretrain_upsampler(&mut CpuBackend::<f32>::new(), &cfg, &mut print_epochs)?,
    };
    println!(
        "held-out L2: {:.5} untrained, {:.5} after {} epochs; weights in {}",
        report.initial_held_out,
        report.final_held_out(),
        cfg.epochs,
        args.out.display()
    );
    Ok(())
}

fn localize_command(args: LocalizeArgs) -> Result<()> {
    let cfg = LocalizeConfig {
        threshold: args.threshold,
        box_filter: args.box_filter,
        region: if args.tight_box {
            Region::AllAbove
        } else {
            Region::LargestComponent
        },
        limit: args.limit,
    };
    with_checkpoint(
        &args.checkpoint,
        args.device.as_deref(),
        &mut |model, meta| {
            let test = meta.data.open(meta.config.input_size)?.test;
            let (_, metrics) = model.localize(test.as_ref(), &cfg)?;
            println!("{}", metrics.table());
            let json = args
                .json
                .clone()
                .unwrap_or_else(|| args.checkpoint.with_file_name("localization.json"));
            write_atomically(&json, metrics.to_json().as_bytes())?;
            println!("metrics written to {}", json.display());
            Ok(())
        },
    )
}

fn visualize(args: VisualizeArgs) -> Result<()> {
    with_checkpoint(
        &args.checkpoint,
        args.device.as_deref(),
        &mut |model, meta| {
            let test = meta.data.open(meta.config.input_size)?.test;
            let indices: Vec<usize> = if args.index.is_empty() {
                (0..args.count.min(test.len())).collect()
            } else {
                args.index.clone()
            };
            if let Some(&bad) = indices.iter().find(|&&i| i >= test.len()) {
                return Err(Error::Shape(format!(
                    "--index {bad}: the test split has {} images",
                    test.len()
                )));
            }
            let results =
                model.infer_images(test.as_ref(), &indices, &LocalizeConfig::default())?;
            let map_side = attention_map_side(meta.config.input_size)?;
            let paths = write_pictures(
                &args.out,
                &results,
                meta.config.input_size as u32,
                map_side,
                &meta.class_names,
                &VisualizeConfig::default(),
            )?;
            println!(
                "{} pictures in {}, the contact sheet: {}",
                paths.len() - 1,
                args.out.display(),
                paths
                    .last()
                    .map_or(String::new(), |p| p.display().to_string())
            );
            Ok(())
        },
    )
}

fn eval(args: EvalArgs) -> Result<()> {
    with_checkpoint(
        &args.checkpoint,
        args.device.as_deref(),
        &mut |model, meta| {
            let opened = meta.data.open(meta.config.input_size)?;
            let loader = test_loader(&meta.config, opened.test)?;
            let start = Instant::now();
            let evaluation = model.evaluate(&loader, meta.config.classes)?;
            println!(
                "{} ({}, epoch {}) on {}: {}",
                args.checkpoint.display(),
                meta.model,
                meta.epoch,
                opened.description,
                format_accuracy(&evaluation.accuracy)
            );
            let row = (
                meta.model.as_str(),
                evaluation,
                start.elapsed().as_secs_f64(),
            );
            print_table(&[row], &meta.class_names);
            Ok(())
        },
    )
}

fn predict(args: PredictArgs) -> Result<()> {
    with_checkpoint(
        &args.checkpoint,
        args.device.as_deref(),
        &mut |model, meta| {
            let cfg = &meta.config;
            let samples: Vec<Sample> = args
                .images
                .iter()
                .enumerate()
                .map(|(i, path)| Sample {
                    id: i as u64,
                    path: path.clone(),
                    label: 0,
                    bbox: None,
                    is_train: false,
                    crop_bottom: 0,
                })
                .collect();
            let loader = test_loader(cfg, Arc::new(FileSource::new(samples)))?;
            let names = ["coarse", "fine", "average"];
            for (i, path) in args.images.iter().enumerate() {
                // One image at a time: an unreadable one is reported and the rest still run.
                let batch = match loader.load_batch(&[i], 0) {
                    Ok(batch) => batch,
                    Err(e) => {
                        eprintln!("{}: skipped: {e}", path.display());
                        continue;
                    }
                };
                let heads = model.probabilities(&padded_images(&batch.images, 1, cfg.batch))?;
                println!("{}", path.display());
                for (k, row) in prediction_rows(&heads, 0, cfg.classes).iter().enumerate() {
                    let wanted = match args.mode {
                        Mode::All => true,
                        Mode::Coarse => k == 0,
                        Mode::Fine => k == 1,
                        Mode::Average => k == 2,
                    };
                    if !wanted {
                        continue;
                    }
                    // Classes: the most likely; attributes: each one's probability, in order.
                    let mut ranked: Vec<usize> = (0..row.len()).collect();
                    let shown = match cfg.task {
                        Task::Classes => {
                            ranked.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                            args.top
                        }
                        Task::Attributes => row.len(),
                    };
                    let top: Vec<String> = ranked
                        .iter()
                        .take(shown)
                        .map(|&c| format!("{} {:.1}%", meta.class_names[c], 100.0 * row[c]))
                        .collect();
                    println!("  {:<8} {}", names[k], top.join(", "));
                }
            }
            Ok(())
        },
    )
}
