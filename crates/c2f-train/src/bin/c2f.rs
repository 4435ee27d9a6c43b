//! `c2f`: train Coarse2Fine. With no dataset argument, `c2f train` trains on the built-in
//! synthetic fine-grained set, Coarse2Fine and then the plain InceptionV3 baseline, and ends
//! with a table of their test accuracies. On a machine without a GPU it runs on the CPU at a
//! small width and resolution.

use std::sync::Arc;
use std::time::Instant;

use c2f_inception::backend::Backend;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::center_loss::CenterLossParams;
use c2f_train::data::loader::ImageSource;
use c2f_train::data::synthetic::{Split, SyntheticConfig, SyntheticSet};
use c2f_train::train::{train_baseline, train_coarse2fine, Accuracy, TrainConfig};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "c2f",
    about = "Coarse2Fine fine-grained classification",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train on the built-in synthetic fine-grained set: Coarse2Fine, then the baseline.
    Train(TrainArgs),
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
    /// `cpu`, or `cuda:N`. Default: the GPU when one can be opened, else the CPU.
    #[arg(long)]
    device: Option<String>,
    /// Which models to train.
    #[arg(long, value_enum, default_value = "both")]
    models: Models,
    /// Epochs (default: 12 on the CPU, 40 on a GPU).
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
    /// Attention maps M (the paper: 8).
    #[arg(long, default_value_t = 8)]
    maps: usize,
    /// Synthetic classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Synthetic training images.
    #[arg(long, default_value_t = 1200)]
    train_images: usize,
    /// Synthetic test images.
    #[arg(long, default_value_t = 400)]
    test_images: usize,
    /// Base learning rate (×0.9 every 2 epochs; WS-DAN's 1e-3).
    #[arg(long, default_value_t = 0.001)]
    lr: f64,
    /// Center loss weight λ.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start the attention conv from a plain uniform draw instead of orthonormal rows (the
    /// paper's Table 8 ablation).
    #[arg(long)]
    no_ortho_init: bool,
}

fn main() {
    let cli = Cli::parse();
    let Command::Train(args) = cli.command;
    if let Err(e) = train(args) {
        eprintln!("c2f: {e}");
        std::process::exit(1);
    }
}

fn train(args: TrainArgs) -> c2f_kernels::Result<()> {
    let cuda = match args.device.as_deref() {
        Some("cpu") => None,
        Some(d) => {
            let ordinal = d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| c2f_kernels::Error::Shape(format!("unknown device {d:?}")))?;
            Some(CudaBackend::open(ordinal)?)
        }
        None => CudaBackend::open(0).ok(),
    };
    let gpu = cuda.is_some();
    let cfg = TrainConfig {
        epochs: args.epochs.unwrap_or(if gpu { 40 } else { 12 }),
        batch: args.batch.unwrap_or(if gpu { 64 } else { 16 }),
        input_size: args.size.unwrap_or(if gpu { 299 } else { 96 }),
        width: args.width.unwrap_or(if gpu { 1.0 } else { 0.25 }),
        classes: args.classes,
        maps: args.maps,
        lr: args.lr,
        momentum: 0.9,
        weight_decay: 1e-5,
        center_loss: CenterLossParams {
            lambda: args.lambda,
            beta: 0.05,
        },
        seed: args.seed,
        ortho_init: !args.no_ortho_init,
    };
    let data = SyntheticConfig {
        classes: args.classes,
        size: cfg.input_size as u32,
        seed: args.seed,
        ..SyntheticConfig::default()
    };
    let train_set: Arc<dyn ImageSource> = Arc::new(SyntheticSet::new(
        data.clone(),
        Split::Train,
        args.train_images,
    )?);
    let test_set: Arc<dyn ImageSource> =
        Arc::new(SyntheticSet::new(data, Split::Test, args.test_images)?);
    match cuda {
        Some(mut b) => run(&mut b, &cfg, args.models, train_set, test_set),
        None => run(
            &mut CpuBackend::<f32>::new(),
            &cfg,
            args.models,
            train_set,
            test_set,
        ),
    }
}

fn run<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    models: Models,
    train_set: Arc<dyn ImageSource>,
    test_set: Arc<dyn ImageSource>,
) -> c2f_kernels::Result<()> {
    println!(
        "synthetic fine-grained set: {} classes, {} train / {} test images of {}²; {} on {}",
        cfg.classes,
        train_set.len(),
        test_set.len(),
        cfg.input_size,
        format_args!(
            "width {}, batch {}, {} epochs",
            cfg.width, cfg.batch, cfg.epochs
        ),
        b.describe()
    );
    let mut rows: Vec<(&str, Accuracy, f64)> = Vec::new();
    if models != Models::Baseline {
        let start = Instant::now();
        let acc = train_coarse2fine(b, cfg, train_set.clone(), test_set.clone())?;
        rows.push(("Coarse2Fine", acc, start.elapsed().as_secs_f64()));
    }
    if models != Models::Coarse2fine {
        let start = Instant::now();
        let acc = train_baseline(b, cfg, train_set, test_set)?;
        rows.push(("InceptionV3 baseline", acc, start.elapsed().as_secs_f64()));
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!("\n| model | coarse | fine | average | train time |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, acc, secs) in rows {
        println!(
            "| {name} | {} | {} | {} | {secs:.0} s |",
            pct(Some(acc.coarse)),
            pct(acc.fine),
            pct(acc.average)
        );
    }
    Ok(())
}
