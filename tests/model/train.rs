//! The trainer end to end on tiny synthetic sets (CPU): both models train and report test
//! accuracies, write their metrics and checkpoints; a resumed run is bit-identical to an
//! uninterrupted one; a non-finite loss stops the run naming the step and term and keeps the
//! last good checkpoint; frozen BatchNorm stays fixed; the schedules; a tiny model fits 16
//! images; the loss falls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::train::{metrics, synthetic_spec};
use c2f_inception::backend::prelude::*;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::weights::read_checked;
use c2f_train::checkpoint;
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::data::loader::ImageSource;
use c2f_train::data::spec::{DataSpec, OpenedData};
use c2f_train::state::Named;
use c2f_train::train::{
    build_baseline, build_coarse2fine, center_spread, checkpoint_path, init_coarse2fine,
    train_baseline, train_coarse2fine, Accuracy, BnPolicy, DataParallel, Evaluation, ModelKind,
    RunOptions, Schedule, TrainConfig, Trainee,
};
use c2f_train::upsampler::{UpsamplerOrigin, UpsamplerWeights};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("train_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A tiny model with the paper's optimiser settings (`TrainConfig::default`).
fn tiny_config(epochs: usize, batch: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch,
        input_size: 75,
        width: 0.125,
        classes: 3,
        maps: 2,
        seed: 1,
        ..TrainConfig::default()
    }
}

fn synthetic(train_images: usize, test_images: usize) -> OpenedData {
    let spec = synthetic_spec(train_images, test_images, 3, (0.6, 0.9));
    spec.open(75, DEFAULT_MAX_PIXELS).unwrap()
}

fn run_options(dir: &Path) -> RunOptions {
    RunOptions::new(dir.to_path_buf())
}

type Trainer = fn(
    &mut CpuBackend<f32>,
    &TrainConfig,
    &RunOptions,
    &OpenedData,
    Option<&mut DataParallel<'_, CpuBackend<f32>>>,
) -> c2f_kernels::Result<Option<Evaluation>>;

/// Trains on `data`'s training set and evaluates on `test` (by default its test set).
fn try_train(
    trainer: Trainer,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    test: &Arc<dyn ImageSource>,
) -> c2f_kernels::Result<Option<Evaluation>> {
    let data = OpenedData {
        test: test.clone(),
        ..data.clone()
    };
    trainer(&mut CpuBackend::<f32>::new(), cfg, run, &data, None)
}

fn train(
    trainer: Trainer,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
) -> Option<Accuracy> {
    try_train(trainer, cfg, run, data, &data.test)
        .unwrap()
        .map(|e| e.accuracy)
}

fn is_fraction_of_six(v: f64) -> bool {
    (0..=6).any(|k| (v - k as f64 / 6.0).abs() < 1e-12)
}

#[test]
fn both_models_train_and_write_metrics_and_checkpoints() {
    // 6 test images with batch 4: the last test batch is short and padded.
    let data = synthetic(8, 6);
    let cfg = tiny_config(2, 4);
    let dir = scratch("both");
    let c2f = train(
        train_coarse2fine,
        &cfg,
        &run_options(&dir.join("c2f")),
        &data,
    )
    .unwrap();
    for v in [c2f.coarse, c2f.fine.unwrap(), c2f.average.unwrap()] {
        assert!(is_fraction_of_six(v), "accuracy {v} is not k/6");
    }
    let base = train(train_baseline, &cfg, &run_options(&dir.join("base")), &data).unwrap();
    assert!(is_fraction_of_six(base.coarse), "accuracy {}", base.coarse);
    assert_eq!((base.fine, base.average), (None, None));

    let lines = metrics(&dir.join("c2f"));
    assert_eq!(lines.len(), 2);
    for (k, line) in lines.iter().enumerate() {
        assert_eq!(line["model"], "coarse2fine");
        assert_eq!(line["epoch"], k + 1);
        assert_eq!(line["step"], 2 * (k + 1));
        let terms: f64 = ["coarse", "fine", "center_coarse", "center_fine"]
            .iter()
            .map(|t| line[format!("loss_{t}")].as_f64().unwrap())
            .sum();
        let loss = line["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        assert!((terms - loss).abs() < 1e-9 * loss, "{terms} vs {loss}");
        assert!(is_fraction_of_six(line["test_average"].as_f64().unwrap()));
        assert!(line["images_per_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(lines[1]["test_coarse"].as_f64().unwrap(), c2f.coarse);
    let csv = std::fs::read_to_string(dir.join("c2f/metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("model,epoch,step,lr,loss,loss_coarse,"));
    assert_eq!(
        rows[0].split(',').count(),
        rows[2].split(',').count(),
        "{csv}"
    );
    assert_eq!(metrics(&dir.join("base"))[1]["model"], "baseline");

    // The last record's center spreads are those of the center bank the checkpoint holds, one
    // shared by both passes.
    let mut cpu = CpuBackend::<f32>::new();
    let state = Trainee::<CpuBackend<f32>>::state(&build_coarse2fine(&mut cpu, &cfg).unwrap());
    let saved = tensors(&checkpoint_path(&dir.join("c2f")), &state);
    let centers = &saved.iter().find(|(n, _)| *n == "centers").unwrap().1;
    let expected = center_spread(centers, cfg.classes).unwrap();
    assert!(expected > 0.0, "centers: spread {expected}");
    for pass in ["coarse", "fine"] {
        assert_eq!(
            lines[1][format!("center_spread_{pass}")],
            expected,
            "{pass}"
        );
    }

    // The checkpoint holds the run's state and where it stands.
    let meta = checkpoint::read_meta(&checkpoint_path(&dir.join("c2f"))).unwrap();
    assert_eq!((meta.epoch, meta.batch_in_epoch, meta.step), (2, 0, 4));
    assert_eq!(meta.config, cfg);
    assert_eq!(meta.class_names, data.class_names);
    assert_eq!(meta.data, data.spec);
    assert_eq!(meta.upsampler, Some(UpsamplerOrigin::Fresh));
    let base_meta = checkpoint::read_meta(&checkpoint_path(&dir.join("base"))).unwrap();
    assert_eq!(base_meta.upsampler, None);

    // The same run directory again without `resume` is refused, not overwritten.
    let err = try_train(
        train_coarse2fine,
        &cfg,
        &run_options(&dir.join("c2f")),
        &data,
        &data.test,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("--resume"),
        "{err}"
    );
}

/// The center spread on banks whose answer is known: one point for every class, orthogonal unit
/// centers, the same scaled, and a bank still at zero.
#[test]
fn center_spread_of_known_banks() {
    let same: Vec<f32> = [0.3f32, -1.0, 2.0].repeat(4);
    assert_eq!(center_spread(&same, 4), Some(0.0));
    let mut orthogonal = vec![0.0f32; 4 * 5];
    for k in 0..4 {
        orthogonal[k * 5 + k] = 1.0;
    }
    let spread = center_spread(&orthogonal, 4).unwrap();
    assert!((spread - 0.75).abs() < 1e-15, "{spread}");
    let scaled: Vec<f32> = orthogonal.iter().map(|v| 0.125 * v).collect();
    assert_eq!(center_spread(&scaled, 4), Some(spread));
    assert_eq!(center_spread(&[0.0; 12], 4), None);
}

/// Trains `epochs` uninterrupted, and again stopped after `stop` steps and resumed (a fresh
/// model object, as a new process has); the two final checkpoints must be the same bytes.
fn assert_resume_is_exact(trainer: Trainer, name: &str, stop: u64) {
    let data = synthetic(12, 4);
    // Warmups make the rate and λ depend on where in the run a step is.
    let cfg = TrainConfig {
        warmup_epochs: 1.5,
        center_warmup_epochs: 1.0,
        ..tiny_config(2, 4)
    };
    let whole = scratch(&format!("{name}_whole"));
    let parts = scratch(&format!("{name}_parts"));
    let every = RunOptions {
        checkpoint_every: 1,
        eval_every: 0,
        ..run_options(&whole)
    };
    train(trainer, &cfg, &every, &data);
    let first = RunOptions {
        dir: parts.clone(),
        stop_after: Some(stop),
        ..every.clone()
    };
    assert_eq!(train(trainer, &cfg, &first, &data), None);
    let meta = checkpoint::read_meta(&checkpoint_path(&parts)).unwrap();
    assert_eq!(meta.step, stop);
    let rest = RunOptions {
        dir: parts.clone(),
        resume: true,
        ..every
    };
    // The same run on other data (here larger objects: the same names and labels) is refused.
    let other = match data.spec.clone() {
        DataSpec::Synthetic {
            classes,
            train_images,
            test_images,
            seed,
            clutter,
            ..
        } => DataSpec::Synthetic {
            classes,
            train_images,
            test_images,
            seed,
            object_scale: (0.8, 0.9),
            clutter,
        },
        files => files,
    };
    let err = try_train(
        trainer,
        &cfg,
        &rest,
        &other.open(75, DEFAULT_MAX_PIXELS).unwrap(),
        &data.test,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot resume") && err.contains("[0.8,0.9] in this run"),
        "{err}"
    );
    train(trainer, &cfg, &rest, &data);
    let a = std::fs::read(checkpoint_path(&whole)).unwrap();
    let b = std::fs::read(checkpoint_path(&parts)).unwrap();
    assert!(a == b, "{name}: the resumed run's checkpoint differs");
    // The metrics of the epoch that was cut are the uninterrupted run's too.
    let loss = |dir: &Path| metrics(dir).last().unwrap()["loss"].clone();
    assert_eq!(loss(&whole), loss(&parts));
}

#[test]
fn resumed_coarse2fine_is_bit_identical() {
    // 3 steps per epoch: stopped in the middle of the second epoch.
    assert_resume_is_exact(train_coarse2fine, "c2f", 4);
}

#[test]
fn resumed_baseline_is_bit_identical() {
    assert_resume_is_exact(train_baseline, "baseline", 2);
}

#[test]
fn resumed_wsdan_is_bit_identical() {
    // Its augmentation's draws come from the run's generator, which the checkpoint keeps.
    assert_resume_is_exact(ModelKind::WsDan.trainer(), "wsdan", 4);
}

#[test]
fn checkpoint_of_another_shape_is_refused_naming_tensor() {
    let data = synthetic(4, 4);
    let cfg = tiny_config(1, 4);
    let dir = scratch("shape");
    train(train_coarse2fine, &cfg, &run_options(&dir), &data);
    let mut cpu = CpuBackend::<f32>::new();
    let wider = TrainConfig { maps: 3, ..cfg };
    let model = build_coarse2fine(&mut cpu, &wider).unwrap();
    let state = Trainee::<CpuBackend<f32>>::state(&model);
    let err = checkpoint::load(&mut cpu, &checkpoint_path(&dir), &state)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("attention.weight is [2,"),
        "{err}"
    );
    // A state with a tensor the file lacks.
    let mut more = Trainee::<CpuBackend<f32>>::state(&build_coarse2fine(&mut cpu, &cfg).unwrap());
    more.push(Named {
        name: "extra.weight".into(),
        shape: vec![1],
        tensor: cpu.alloc(1).unwrap(),
    });
    let err = checkpoint::load(&mut cpu, &checkpoint_path(&dir), &more)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing (1): extra.weight"), "{err}");
}

/// `RunOptions::init_from`: a fresh model takes an earlier run's final state with zero
/// momentum, an up-sampler file then replaces the up-sampler, a checkpoint of the other model is
/// refused, and the new run trains on other data.
#[test]
fn a_run_starts_from_an_earlier_runs_checkpoint() {
    let data = synthetic(8, 4);
    let cfg = tiny_config(1, 4);
    let dir = scratch("init_from");
    train(
        train_coarse2fine,
        &cfg,
        &run_options(&dir.join("first")),
        &data,
    );
    train(train_baseline, &cfg, &run_options(&dir.join("base")), &data);
    let first = checkpoint_path(&dir.join("first"));
    let mut cpu = CpuBackend::<f32>::new();
    let model = build_coarse2fine(&mut cpu, &cfg).unwrap();
    let state = Trainee::<CpuBackend<f32>>::state(&model);
    let expected: Vec<(&str, &[usize])> = state
        .iter()
        .map(|n| (n.name.as_str(), n.shape.as_slice()))
        .collect();
    let saved = read_checked(&first, &expected, |_| false, "test")
        .unwrap()
        .values;
    // A file with other up-sampler values.
    let upsampler_file = dir.join("upsampler.safetensors");
    let mut other = cpu.read(model.params).unwrap();
    other.iter_mut().for_each(|v| *v = 0.25 - *v);
    c2f_train::upsampler::save(&upsampler_file, model.head_table(), &other).unwrap();
    for with_upsampler in [false, true] {
        let run = RunOptions {
            init_from: Some(first.clone()),
            upsampler_weights: with_upsampler
                .then(|| UpsamplerWeights::File(upsampler_file.clone())),
            ..run_options(&dir.join("unused"))
        };
        init_coarse2fine(&mut cpu, &model, &cfg, &run).unwrap();
        let heads = model.head_table();
        for (n, values) in state.iter().zip(&saved) {
            let got = cpu.read(n.tensor).unwrap();
            let upsampler = heads
                .get(&n.name)
                .filter(|e| with_upsampler && e.name.starts_with("upsampler."));
            let want: Vec<f32> = match upsampler {
                Some(e) => other[e.range()].to_vec(),
                None if n.name.starts_with("momentum.") => vec![0.0; values.len()],
                None => values.clone(),
            };
            assert!(
                got == want,
                "{} (up-sampler file: {with_upsampler})",
                n.name
            );
        }
    }
    let run = RunOptions {
        init_from: Some(checkpoint_path(&dir.join("base"))),
        ..run_options(&dir.join("unused"))
    };
    let err = init_coarse2fine(&mut cpu, &model, &cfg, &run)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a baseline checkpoint cannot start a coarse2fine run"),
        "{err}"
    );
    // The second stage may train on other data.
    let larger = synthetic_spec(8, 4, 3, (0.8, 0.9));
    let run = RunOptions {
        init_from: Some(first),
        ..run_options(&dir.join("second"))
    };
    assert!(train(
        train_coarse2fine,
        &cfg,
        &run,
        &larger.open(75, DEFAULT_MAX_PIXELS).unwrap()
    )
    .is_some());
}

#[test]
fn non_finite_loss_stops_naming_step_and_keeps_the_checkpoint() {
    let data = synthetic(12, 4);
    let cfg = TrainConfig {
        lr: 1e30,
        ..tiny_config(3, 4)
    };
    let dir = scratch("nan");
    let run = RunOptions {
        checkpoint_every: 1,
        ..run_options(&dir)
    };
    let mut cpu = CpuBackend::<f32>::new();
    let err = try_train(train_baseline, &cfg, &run, &data, &data.test)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("loss term `ce` is") && err.contains("at step"),
        "{err}"
    );
    // The kept checkpoint is whole and holds only finite values.
    let meta = checkpoint::read_meta(&checkpoint_path(&dir)).unwrap();
    assert!(meta.step >= 1, "{meta:?}");
    let model = build_baseline(&mut cpu, &cfg).unwrap();
    checkpoint::load(
        &mut cpu,
        &checkpoint_path(&dir),
        &Trainee::<CpuBackend<f32>>::state(&model),
    )
    .unwrap();
    let params = cpu.read(model.net.params).unwrap();
    assert!(params.iter().all(|v| v.is_finite()));
}

fn tensors(path: &Path, state: &[Named]) -> Vec<(String, Vec<f32>)> {
    let expected: Vec<(&str, &[usize])> = state
        .iter()
        .map(|n| (n.name.as_str(), n.shape.as_slice()))
        .collect();
    let file = read_checked(path, &expected, |_| false, "test").unwrap();
    state
        .iter()
        .map(|n| n.name.clone())
        .zip(file.values)
        .collect()
}

#[test]
fn frozen_batch_norm_keeps_its_weights_and_statistics() {
    let data = synthetic(8, 4);
    let cfg = TrainConfig {
        bn: BnPolicy::Frozen,
        lr: 0.01,
        ..tiny_config(1, 4)
    };
    let dir = scratch("frozen");
    let run = RunOptions {
        stop_after: Some(1),
        checkpoint_every: 1,
        ..run_options(&dir)
    };
    let mut cpu = CpuBackend::<f32>::new();
    let model = build_coarse2fine(&mut cpu, &cfg).unwrap();
    let state = Trainee::<CpuBackend<f32>>::state(&model);
    train(train_coarse2fine, &cfg, &run, &data);
    // The fresh start: BN weights drawn in [0.8, 1.2), statistics 0 and 1.
    let after = tensors(&checkpoint_path(&dir), &state);
    c2f_train::train::init_coarse2fine(&mut cpu, &model, &cfg, &run).unwrap();
    let (mut frozen, mut moved) = (0, 0);
    for (n, (name, values)) in state.iter().zip(&after) {
        let before = cpu.read(n.tensor).unwrap();
        let bn = name.contains(".bn.") && !name.starts_with("momentum.");
        if bn {
            assert_eq!(&before, values, "{name} changed");
            frozen += 1;
        } else if name.ends_with(".conv.weight") && !name.starts_with("momentum.") {
            assert_ne!(&before, values, "{name} did not learn");
            moved += 1;
        }
    }
    assert!(
        frozen > 100 && moved > 50,
        "{frozen} BN tensors, {moved} convs"
    );
}

#[test]
fn schedules() {
    let step = tiny_config(10, 4);
    let lr = |c: &TrainConfig, e, s| c.learning_rate(e, s, 5);
    assert_eq!(lr(&step, 0, 3), 1e-3);
    assert_eq!(lr(&step, 1, 4), 1e-3);
    assert!((lr(&step, 2, 0) - 0.9e-3).abs() < 1e-18);
    assert!((lr(&step, 5, 2) - 0.81e-3).abs() < 1e-18);
    let cosine = TrainConfig {
        schedule: Schedule::Cosine,
        ..step
    };
    assert_eq!(lr(&cosine, 0, 0), 1e-3);
    // Half-way (step 25 of 50) is half the rate; step 12 of 50, (1 + cos(12π/50))/2 of it.
    assert!((lr(&cosine, 5, 0) - 0.5e-3).abs() < 1e-15);
    let twelve = 0.5e-3 * (1.0 + (std::f64::consts::PI * 12.0 / 50.0).cos());
    assert!((lr(&cosine, 2, 2) - twelve).abs() < 1e-15);
    assert!(lr(&cosine, 9, 4) > 0.0 && lr(&cosine, 9, 4) < 1e-5);

    // A 1.5-epoch warmup (7.5 steps of 5) scales the schedule by (steps so far, this one
    // included) / 7.5 up to 1; the center loss's warmup does the same to λ on its own.
    let warm = TrainConfig {
        warmup_epochs: 1.5,
        center_lambda: 2.0,
        center_warmup_epochs: 0.5,
        ..cosine.clone()
    };
    assert!((lr(&warm, 0, 0) - lr(&cosine, 0, 0) / 7.5).abs() < 1e-18);
    assert!((lr(&warm, 1, 1) - lr(&cosine, 1, 1) * 7.0 / 7.5).abs() < 1e-18);
    assert_eq!(lr(&warm, 1, 2), lr(&cosine, 1, 2));
    assert_eq!(lr(&warm, 6, 3), lr(&cosine, 6, 3));
    let lambda = |c: &TrainConfig, e, s| c.center_lambda_at(e, s, 5);
    assert_eq!(lambda(&warm, 0, 0), 2.0 / 2.5);
    assert_eq!(lambda(&warm, 0, 1), 2.0 * 2.0 / 2.5);
    assert_eq!(lambda(&warm, 0, 2), 2.0);
    assert_eq!(lambda(&warm, 3, 4), 2.0);
    assert_eq!(lambda(&cosine, 0, 0), cosine.center_lambda);
}

/// The center loss's warmup reaches the model: over a first epoch that is a thousandth of the
/// warmup, the center terms are a few thousandths of what they are at full λ.
#[test]
fn center_loss_warmup_weights_the_center_terms() {
    let data = synthetic(12, 4);
    let center_terms = |center_warmup_epochs: f64, name: &str| {
        let cfg = TrainConfig {
            center_warmup_epochs,
            ..tiny_config(1, 4)
        };
        let dir = scratch(name);
        train(train_coarse2fine, &cfg, &run_options(&dir), &data);
        let line = &metrics(&dir)[0];
        ["loss_center_coarse", "loss_center_fine"].map(|k| line[k].as_f64().unwrap())
    };
    let full = center_terms(0.0, "center_full");
    let warming = center_terms(1000.0, "center_warming");
    for (w, f) in warming.iter().zip(&full) {
        assert!(
            *f > 0.0 && *w > 0.0 && *w < 0.01 * f,
            "{warming:?} vs {full:?}"
        );
    }
}

#[test]
fn tiny_model_fits_sixteen_images_and_its_loss_falls() {
    let data = synthetic(16, 4);
    // From scratch the backbone wants a rate that would make the classifiers' logits jump
    // (they read 100× the unit-norm part features): theirs is 200× smaller.
    let cfg = TrainConfig {
        lr: 0.02,
        classifier_lr_scale: 0.005,
        schedule: Schedule::Cosine,
        ..tiny_config(120, 16)
    };
    let dir = scratch("fit16");
    let run = RunOptions {
        eval_every: 0,
        ..run_options(&dir)
    };
    // Evaluated on its own training images (test transform, running statistics).
    let acc = try_train(train_coarse2fine, &cfg, &run, &data, &data.train)
        .unwrap()
        .unwrap();
    let lines = metrics(&dir);
    let loss = |k: usize| lines[k]["loss"].as_f64().unwrap();
    let train_acc = |k: usize| lines[k]["train_acc"].as_f64().unwrap();
    assert!(
        loss(119) < 0.5 * loss(0),
        "loss {} -> {}",
        loss(0),
        loss(119)
    );
    assert_eq!(train_acc(119), 1.0, "last epoch's training accuracy");
    // Inference (running statistics, no augmentation) on the same images is not held to 100%:
    // the running statistics lag the batch statistics the model fitted with.
    assert!(acc.accuracy.coarse >= 0.75, "{acc:?}");
}

/// Reading the step statistics back every 2 or 3 steps (3 steps an epoch: a read at the epoch's
/// end before the count is full, or one per epoch) gives each epoch's losses and training
/// accuracy bit for bit as reading them every step, and the same checkpoint.
#[test]
fn log_every_keeps_the_epoch_sums() {
    let data = synthetic(12, 4);
    let cfg = TrainConfig {
        warmup_epochs: 1.5,
        ..tiny_config(2, 4)
    };
    let run_with = |log_every: usize| {
        let dir = scratch(&format!("log_every_{log_every}"));
        let run = RunOptions {
            log_every,
            eval_every: 0,
            ..run_options(&dir)
        };
        train(train_coarse2fine, &cfg, &run, &data);
        let lines: Vec<serde_json::Value> = metrics(&dir)
            .into_iter()
            .map(|mut line| {
                line.as_object_mut().unwrap().remove("images_per_s");
                line
            })
            .collect();
        (lines, std::fs::read(checkpoint_path(&dir)).unwrap())
    };
    let (every_step, checkpoint) = run_with(1);
    assert_eq!(every_step.len(), 2);
    assert!(every_step.iter().all(|l| l["loss"].as_f64().unwrap() > 0.0));
    for log_every in [2, 3] {
        let (lines, bytes) = run_with(log_every);
        assert_eq!(lines, every_step, "--log-every {log_every}");
        assert!(
            bytes == checkpoint,
            "--log-every {log_every}: checkpoint differs"
        );
    }
}
