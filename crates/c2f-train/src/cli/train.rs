//! `c2f train`: the flags mapped onto a [`Preset`] and the data they name, then the models
//! `--models` names (Coarse2Fine, WS-DAN and the baseline by default) trained, alone or as one
//! rank of a data-parallel job, and their table printed.

use std::path::PathBuf;
use std::time::Instant;

use c2f_dist::collective::Collective;
use c2f_dist::launch::{LaunchInfo, Launcher};
use c2f_inception::backend::Backend;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::{AlgorithmChoice, CudaBackend};
use c2f_kernels::{Error, Result};

use super::args::TrainArgs;
use super::device::{choose_device, set_precision};
use super::distributed::{default_run_dir, join_job, launch_workers, no_cpu_ranks};
use crate::config::{
    Machine, Preset, RunOptions, TrainConfig, WsDanCenters, WsDanPass, WsDanPasses,
};
use crate::data::spec::{DataSpec, OpenedData};
use crate::train::{checkpoint_path, Accuracy, DataParallel, Evaluation, ModelKind, COARSE_FINE};
use crate::upsampler::{UpsamplerKind, UpsamplerWeights};

/// `c2f train`: checks the flags, then starts the workers (`--gpus`), or joins a launcher's job,
/// or trains alone.
pub(super) fn train(args: TrainArgs, argv: &[String]) -> Result<()> {
    let models = model_list(&args.models)?;
    let per_class = args.wsdan_centers == Some(WsDanCenters::PerClass);
    if per_class && args.dataset == "celeba" && models.contains(&ModelKind::WsDan) {
        return Err(Error::config(
            "--wsdan-centers",
            "per-class",
            "CelebA's attributes have no classes to keep WS-DAN's centers for: use per-part",
        ));
    }
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
        choose_device(args.device.as_deref())?
    };
    set_precision(cuda.as_mut(), args.compute.precision)?;
    if let (Some(b), true) = (cuda.as_mut(), args.cudnn_benchmark) {
        b.set_conv_algorithm_choice(AlgorithmChoice::Timed);
    }
    let leader = launch.rank == 0;
    let machine = if cuda.is_some() {
        Machine::Gpu
    } else {
        Machine::Cpu
    };
    let mut cfg = args.config(machine);
    let data = args.data_spec(cfg.seed);
    let opened = data.open(cfg.input_size, args.image_limit.max_image_pixels)?;
    if let (true, Some(report)) = (leader, opened.missing_report()) {
        eprintln!("{report}");
    }
    cfg.classes = opened.class_names.len();
    cfg.task = opened.task;
    let upsampler_weights = args.upsampler_weights();
    let run_dir = args.run_dir.clone().unwrap_or_else(default_run_dir);
    let defaults = RunOptions::new(&run_dir);
    let run = |model: &str| RunOptions {
        dir: run_dir.join(model),
        checkpoint_every: args.checkpoint_every.unwrap_or(defaults.checkpoint_every),
        resume: args.resume,
        eval_every: args.eval_every.unwrap_or(defaults.eval_every),
        progress: !args.no_progress,
        weights: args.weights.clone(),
        upsampler_weights: upsampler_weights.clone(),
        init_from: args
            .init_from
            .as_ref()
            .map(|dir| checkpoint_path(&dir.join(model))),
        stop_after: None,
        log_every: args.log_every.unwrap_or(defaults.log_every),
        cuda_graph: !args.no_cuda_graph,
    };
    let job = Job {
        cfg,
        data: opened,
        lr: args
            .lr
            .map_or(ModelRates::Preset(args.preset()), ModelRates::Given),
    };
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
        if let (Some(weights), None) = (&args.weights, args.width) {
            println!(
                "width 1.0: the width of the --weights file {}",
                weights.display()
            );
        }
    }
    match cuda {
        Some(mut b) => {
            let collective = nccl.as_mut().map(|c| c as &mut dyn Collective<CudaBackend>);
            job.run(&mut b, &models, run, collective)
        }
        None => job.run(&mut CpuBackend::<f32>::new(), &models, run, None),
    }
}

/// What `c2f train` trains on, and how.
struct Job {
    cfg: TrainConfig,
    data: OpenedData,
    lr: ModelRates,
}

/// The base learning rate each model of a job trains at.
enum ModelRates {
    /// `--lr`: this one for every model.
    Given(f64),
    /// No `--lr`: each model's own under the preset ([`Preset::lr`]).
    Preset(Preset),
}

impl ModelRates {
    fn of(&self, model: ModelKind) -> f64 {
        match *self {
            ModelRates::Given(lr) => lr,
            ModelRates::Preset(preset) => preset.lr(model),
        }
    }
}

impl Job {
    /// Trains on `b`, alone or as one rank of the job `collective` joins (then only rank 0
    /// prints).
    fn run<B: Backend<Scalar = f32>>(
        &self,
        b: &mut B,
        models: &[ModelKind],
        run: impl Fn(&str) -> RunOptions,
        mut collective: Option<&mut dyn Collective<B>>,
    ) -> Result<()> {
        let leader = collective.as_ref().is_none_or(|c| c.rank() == 0);
        if leader {
            println!("device: {}", b.describe());
        }
        let mut rows = Vec::new();
        for &model in models {
            let start = Instant::now();
            let mut dp = collective.as_mut().map(|c| DataParallel::new(&mut **c));
            let options = run(model.name());
            let cfg = TrainConfig {
                lr: self.lr.of(model),
                ..self.cfg.clone()
            };
            let trained = model.trainer()(b, &cfg, &options, &self.data, dp.as_mut())?;
            if let Some(evaluation) = trained {
                rows.push(Row {
                    label: model.label(),
                    heads: model.head_names(),
                    evaluation,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
        }
        if leader {
            print_table(&rows, &self.data.class_names);
        }
        Ok(())
    }
}

/// The models `--models` names, each once, in order; `both` is Coarse2Fine and the baseline.
/// An unknown name is refused, naming the known ones.
fn model_list(names: &[String]) -> Result<Vec<ModelKind>> {
    let mut models = Vec::new();
    for name in names.iter().map(|n| n.trim()) {
        let kinds = match (name, ModelKind::from_name(name)) {
            ("both", _) => vec![ModelKind::Coarse2Fine, ModelKind::Baseline],
            (_, Some(kind)) => vec![kind],
            (_, None) => {
                return Err(Error::config(
                    "--models",
                    name,
                    format!(
                        "unknown model (the models: {}; both: coarse2fine,baseline)",
                        ModelKind::names()
                    ),
                ))
            }
        };
        for kind in kinds {
            if !models.contains(&kind) {
                models.push(kind);
            }
        }
    }
    Ok(models)
}

/// A model's row in the results table: its label, what its two heads are called, its
/// evaluation and its time.
pub(super) struct Row<'a> {
    pub label: &'a str,
    pub heads: [&'a str; 2],
    pub evaluation: Evaluation,
    pub seconds: f64,
}

/// The models' accuracies (for attributes, their mean), then for attributes one row per
/// attribute and model (`names` are the attributes'). The two heads' columns are named by the
/// two-head rows' heads (`coarse / raw` where Coarse2Fine's and WS-DAN's meet).
pub(super) fn print_table(rows: &[Row<'_>], names: &[String]) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let cells = |a: &Accuracy| {
        format!(
            "{} | {} | {}",
            pct(Some(a.coarse)),
            pct(a.fine),
            pct(a.average)
        )
    };
    let mut heads: Vec<[&str; 2]> = rows
        .iter()
        .filter(|r| r.evaluation.accuracy.fine.is_some())
        .map(|r| r.heads)
        .collect();
    heads.sort();
    heads.dedup();
    if heads.is_empty() {
        heads.push(COARSE_FINE);
    }
    let column = |k: usize| heads.iter().map(|h| h[k]).collect::<Vec<_>>().join(" / ");
    let header = format!("{} | {} | average", column(0), column(1));
    println!("\n| model | {header} | time |");
    println!("| --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {:.0} s |",
            r.label,
            cells(&r.evaluation.accuracy),
            r.seconds
        );
    }
    if rows.iter().all(|r| r.evaluation.per_attribute.is_empty()) {
        return;
    }
    println!("\n| attribute | model | {header} |");
    println!("| --- | --- | --- | --- | --- |");
    for (a, attribute) in names.iter().enumerate() {
        for r in rows {
            if let Some(acc) = r.evaluation.per_attribute.get(a) {
                println!("| {attribute} | {} | {} |", r.label, cells(acc));
            }
        }
    }
}

impl TrainArgs {
    /// The flags that depend on each other or on a file, refused naming the flag before anything
    /// runs (each number's own range is its parser's, [`super::values`]).
    pub(super) fn check(&self) -> Result<()> {
        if let Some([lo, hi]) = self.object_scale.as_deref() {
            if lo > hi {
                return Err(Error::config(
                    "--object-scale",
                    format!("{lo} {hi}"),
                    "LO must not exceed HI",
                ));
            }
        }
        if let Some(weights) = &self.weights {
            // The weights decide the width: torchvision's InceptionV3, width 1.0.
            if let Some(width) = self.width.filter(|&w| w != 1.0) {
                return Err(Error::config(
                    "--width",
                    width,
                    format!(
                        "conflicts with --weights {}: the weights fit width 1.0 only",
                        weights.display()
                    ),
                ));
            }
            std::fs::File::open(weights).map_err(|e| {
                Error::config("--weights", weights.display(), format!("cannot open: {e}"))
            })?;
        }
        if let Some(passes) = self.wsdan_passes.as_deref() {
            if !passes.contains(&WsDanPass::Raw) {
                let listed: Vec<&str> = passes.iter().map(|p| p.name()).collect();
                return Err(Error::config(
                    "--wsdan-passes",
                    listed.join(","),
                    "the raw pass always runs (its maps make the crop and the drop, and \
                     inference reads it): list raw, then crop and/or drop",
                ));
            }
        }
        if self.dataset != "synthetic" && self.data_root.is_none() {
            return Err(Error::config(
                "--dataset",
                &self.dataset,
                "needs --data-root, the dataset's folder (or leave --dataset out for the \
                 built-in synthetic set)",
            ));
        }
        Ok(())
    }

    /// The [`Preset`] the flags ask for: with `--weights` the paper's (fine-tuning), else the
    /// from-scratch demo.
    fn preset(&self) -> Preset {
        if self.weights.is_some() {
            Preset::Paper
        } else {
            Preset::FromScratchDemo
        }
    }

    /// The training config: the [`Preset`] the flags ask for (`--weights`: the paper's,
    /// fine-tuning; else the from-scratch demo) on `machine`, with each flag given overriding
    /// its value. The classes and task are the data's, set once it is opened.
    pub fn config(&self, machine: Machine) -> TrainConfig {
        let base = self.preset().config(machine);
        TrainConfig {
            epochs: self.epochs.unwrap_or(base.epochs),
            batch: self.batch.unwrap_or(base.batch),
            input_size: self.size.unwrap_or(base.input_size),
            width: self.width.unwrap_or(base.width),
            maps: self.maps.unwrap_or(base.maps),
            lr: self.lr.unwrap_or(base.lr),
            classifier_lr_scale: self.classifier_lr_scale.unwrap_or(base.classifier_lr_scale),
            schedule: self.schedule.unwrap_or(base.schedule),
            warmup_epochs: self.warmup_epochs.unwrap_or(base.warmup_epochs),
            momentum: self.momentum.unwrap_or(base.momentum),
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            bn: self.bn.unwrap_or(base.bn),
            center_lambda: self.lambda.unwrap_or(base.center_lambda),
            center_beta: self.beta.unwrap_or(base.center_beta),
            center_rule: self.center_rule.unwrap_or(base.center_rule),
            center_banks: self.center_banks.unwrap_or(base.center_banks),
            center_warmup_epochs: self
                .center_warmup_epochs
                .unwrap_or(base.center_warmup_epochs),
            seed: self.seed.unwrap_or(base.seed),
            upsampler: match self.upsampler.as_deref() {
                Some("bilinear") => UpsamplerKind::FixedBilinear,
                _ => base.upsampler,
            },
            ortho_init: base.ortho_init && !self.no_ortho_init,
            wsdan_maps: self.wsdan_maps.unwrap_or(base.wsdan_maps),
            wsdan_centers: self.wsdan_centers.unwrap_or(base.wsdan_centers),
            wsdan_passes: self
                .wsdan_passes
                .as_deref()
                .map_or(base.wsdan_passes, WsDanPasses::from_list),
            ..base
        }
    }

    /// What replaces the learnable up-sampler's fresh start: `--upsampler FILE`, or the
    /// pretrained one for `--upsampler pretrained` and, the paper's setting, by default with
    /// `--weights`; nothing for `learnable` (a fresh start) and `bilinear`.
    pub fn upsampler_weights(&self) -> Option<UpsamplerWeights> {
        match self.upsampler.as_deref() {
            Some("learnable" | "bilinear") => None,
            Some("pretrained") => Some(UpsamplerWeights::Pretrained),
            Some(file) => Some(UpsamplerWeights::File(PathBuf::from(file))),
            None => self.weights.as_ref().map(|_| UpsamplerWeights::Pretrained),
        }
    }

    /// What the run trains on: the synthetic demo set (its images drawn from `--data-seed`, else
    /// the run's `seed`) with each of its flags given overriding it, or a dataset on disk.
    fn data_spec(&self, seed: u64) -> DataSpec {
        if self.dataset != "synthetic" {
            return DataSpec::Files {
                dataset: self.dataset.clone(),
                root: self.data_root.clone().expect("checked by TrainArgs::check"),
                attributes: self.attributes.clone(),
            };
        }
        let mut spec = DataSpec::synthetic_demo(self.data_seed.unwrap_or(seed));
        if let DataSpec::Synthetic {
            classes,
            train_images,
            test_images,
            object_scale,
            clutter,
            ..
        } = &mut spec
        {
            *classes = self.classes.unwrap_or(*classes);
            *train_images = self.train_images.unwrap_or(*train_images);
            *test_images = self.test_images.unwrap_or(*test_images);
            if let Some(scale) = &self.object_scale {
                *object_scale = (scale[0], scale[1]);
            }
            *clutter = self.clutter.unwrap_or(*clutter);
        }
        spec
    }
}
