//! The `c2f` binary: a TOML config file with command-line overrides, its unknown keys refused
//! naming the file and key; `c2f eval` and `c2f predict` on the checkpoint a run wrote; an
//! unreadable image skipped by `predict` with its path (status 1 when none is readable); the
//! coarse-only ablation trained beside the others and its checkpoint used by every command; an
//! unknown model name refused; data-parallel training refused where it cannot run; CelebA's
//! attributes trained, evaluated and predicted per attribute; the synthetic set's own seed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::train::{metrics, TINY_TRAIN};

pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `c2f` binary: cargo's, or `C2F_BIN` where the tests run without cargo (the GPU check
/// carries the binary beside them).
fn c2f_binary() -> PathBuf {
    std::env::var_os("C2F_BIN").map_or_else(|| env!("CARGO_BIN_EXE_c2f").into(), PathBuf::from)
}

pub(crate) fn c2f(args: &[&str]) -> Output {
    Command::new(c2f_binary()).args(args).output().unwrap()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `c2f` and asserts that it succeeded; its stdout and stderr.
pub(crate) fn c2f_ok(args: &[&str]) -> String {
    let out = c2f(args);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    log
}

/// Runs `c2f` and asserts that it failed; its stdout and stderr.
pub(crate) fn c2f_refused(args: &[&str]) -> String {
    let out = c2f(args);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    log
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn config_file_eval_and_predict() {
    train_eval_predict_localize_visualize("cpu", "run");
}

/// The same commands with `--device cuda:0` over the file's `cpu`: the CLI's whole GPU path,
/// training with cuDNN's algorithms picked by timing (`--cudnn-benchmark`).
#[test]
fn gpu_config_file_eval_and_predict() {
    if c2f_kernels::testing::gpu_or_skip("cli gpu_config_file_eval_and_predict").is_none() {
        return;
    }
    train_eval_predict_localize_visualize("cuda:0", "run_gpu");
}

/// A GPU that is there but cannot be used must not pass silently for a CPU machine: with NVRTC
/// needed (`C2F_FORCE_NVRTC=1`) and off the library path, a command without `--device` says so
/// on stderr and runs on the CPU, and `--device cuda:0` fails naming NVRTC. On the emulator only,
/// where no NVRTC sits on the system's own library path.
#[test]
fn emulator_unusable_gpu_warns_and_runs_on_the_cpu() {
    let test = "cli emulator_unusable_gpu_warns_and_runs_on_the_cpu";
    match c2f_kernels::testing::gpu_or_skip(test) {
        Some(gpu) if gpu.is_emulator() => {}
        Some(_) => return println!("{test}: skipped: not the CPU emulator"),
        None => return,
    }
    let without_nvrtc = std::env::split_paths(&std::env::var_os("LD_LIBRARY_PATH").unwrap())
        .filter(|dir| {
            !std::fs::read_dir(dir).is_ok_and(|mut files| {
                files.any(|f| {
                    f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with("libnvrtc"))
                })
            })
        })
        .collect::<Vec<_>>();
    let library_path = std::env::join_paths(without_nvrtc).unwrap();
    let dir = scratch("unusable_gpu");
    let run = |device: &[&str]| {
        let file = dir.join("up.safetensors");
        let mut args = vec!["pretrain-upsampler", "--size", "75", "--pairs", "16"];
        args.extend(["--epochs", "1", "--batch", "8", "--out", path(&file)]);
        args.extend(device);
        Command::new(c2f_binary())
            .args(args)
            .env("LD_LIBRARY_PATH", &library_path)
            .env("C2F_FORCE_NVRTC", "1")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("warning: CUDA device 0 is present but cannot be used")
            && log.contains("libnvrtc")
            && log.contains("held-out L2"),
        "{log}"
    );
    let out = run(&["--device", "cuda:0"]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("libnvrtc") && !log.contains("warning"),
        "{log}"
    );
}

/// A one-epoch run from a config file (with `--cudnn-benchmark`, which the CPU ignores, and
/// `no_cuda_graph`, which its metrics record), then `eval`, `predict`, `localize` and
/// `visualize` on its checkpoint, all on `device`.
fn train_eval_predict_localize_visualize(device: &str, name: &str) {
    let dir = scratch(name);
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        "device = \"cpu\"\nepochs = 5\nbatch = 4\nsize = 75\nwidth = 0.125\nmaps = 2\n\
         classes = 3\ntrain_images = 8\ntest_images = 6\nobject_scale = [0.6, 0.9]\n\
         no_progress = true\nmodels = \"coarse2fine\"\nmax_image_pixels = 100000000\n\
         no_cuda_graph = true\n",
    )
    .unwrap();
    let run_dir = dir.join("run");
    // The command line's --epochs 1 (and --device) override the file's 5 (and cpu).
    let log = c2f_ok(&[
        "train",
        "--config",
        path(&config),
        "--epochs",
        "1",
        "--device",
        device,
        "--cudnn-benchmark",
        "--run-dir",
        path(&run_dir),
    ]);
    assert!(
        log.contains("3 classes, 8 train / 6 test images of 75²"),
        "{log}"
    );
    assert!(log.contains("width 0.125, batch 4, 1 epochs"), "{log}");
    let on_gpu = log
        .lines()
        .any(|l| l.starts_with("device: ") && l.contains("(sm_"));
    assert_eq!(on_gpu, device != "cpu", "{log}");
    let timed = log.contains("cuDNN algorithms by timing");
    assert_eq!(timed, device != "cpu", "{log}");
    assert!(log.contains("| Coarse2Fine |"), "{log}");
    assert!(!log.contains("InceptionV3 baseline |"), "{log}");
    let records = metrics(&run_dir.join("coarse2fine"));
    assert_eq!(records[0]["cuda_graph"], false, "{:?}", records[0]);

    let checkpoint = run_dir.join("coarse2fine/checkpoint.safetensors");
    let log = c2f_ok(&["eval", path(&checkpoint), "--device", device]);
    assert!(
        log.contains("coarse2fine, epoch 1") && log.contains("average"),
        "{log}"
    );

    // Two images the synthetic set writes in the CUB layout, and a corrupt one.
    let files = synthetic_images(&dir, 2);
    let corrupt = dir.join("corrupt.jpg");
    std::fs::write(&corrupt, b"not a jpeg").unwrap();
    // A PNG header declaring 40000×40000 pixels: refused before decoding, by name.
    let bomb = dir.join("bomb.png");
    std::fs::write(&bomb, crate::common::datasets::bomb_png(40_000, 40_000)).unwrap();
    let predict = |args: &[&str]| {
        let head = [
            "predict",
            "--checkpoint",
            path(&checkpoint),
            "--device",
            device,
        ];
        c2f(&[&head[..], args].concat())
    };
    let out = predict(&[
        "--top",
        "2",
        path(&files[0]),
        path(&corrupt),
        path(&bomb),
        path(&files[1]),
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!("{}: skipped", corrupt.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{}: skipped: {}: image too large: 40000×40000 is 1600000000 pixels, above the \
             limit of 89478485",
            bomb.display(),
            bomb.display()
        )),
        "{log}"
    );
    // --max-image-pixels lowers the cap: the 75×75 images are refused too.
    let capped = text(&predict(&["--max-image-pixels", "5000", path(&files[0])]));
    assert!(
        capped.contains("75×75 is 5625 pixels, above the limit of 5000"),
        "{capped}"
    );
    for f in &files {
        assert!(log.contains(&f.display().to_string()), "{log}");
    }
    // No image readable: each one named, then a refusal naming them all, status 1.
    let missing = dir.join("missing.jpg");
    let out = predict(&[path(&corrupt), path(&missing)]);
    let refusal = text(&out);
    assert_eq!(out.status.code(), Some(1), "{refusal}");
    assert!(
        refusal.contains(&format!("{}: skipped", missing.display()))
            && refusal.contains(&format!(
                "c2f: {}, {}: no image could be read (2 given",
                corrupt.display(),
                missing.display()
            )),
        "{refusal}"
    );
    // Per image: the three predictions, each with two named classes and percentages.
    let names = c2f_train::data::synthetic::class_name;
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 6, "{log}");
    for line in lines {
        let hits = (0..3)
            .filter(|&c| line.contains(&format!("{} ", names(c))))
            .count();
        assert_eq!(hits, 2, "{line}");
        assert_eq!(line.matches('%').count(), 2, "{line}");
    }

    let (_, metrics) = localize_json(&checkpoint, device, &dir);
    assert!(metrics["accuracy"]["fine"].as_f64().is_some(), "{metrics}");
    two_pictures(&checkpoint, device, &dir);
}

/// `c2f predict` of one image with `checkpoint` on the CPU: its prediction lines.
pub(crate) fn predictions_on_cpu(checkpoint: &Path, image: &Path) -> Vec<String> {
    let log = c2f_ok(&[
        "predict",
        "--checkpoint",
        path(checkpoint),
        "--device",
        "cpu",
        path(image),
    ]);
    let lines = log.lines().filter(|l| l.starts_with("  "));
    lines.map(str::to_string).collect()
}

/// `n` images the synthetic set writes in the CUB layout under `dir`.
pub(crate) fn synthetic_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    let images = dir.join("images");
    let spec = c2f_train::data::synthetic::SyntheticConfig {
        classes: 3,
        size: 75,
        ..Default::default()
    };
    c2f_train::data::synthetic::write_cub_layout(&images, &spec, n, 0).unwrap();
    std::fs::read_to_string(images.join("images.txt"))
        .unwrap()
        .lines()
        .map(|l| images.join("images").join(l.split_once(' ').unwrap().1))
        .collect()
}

/// Localization of `checkpoint`'s test split (the synthetic set's has boxes) on `device`: the
/// table, which it checks, and the JSON file, written into `dir`.
pub(crate) fn localize_json(
    checkpoint: &Path,
    device: &str,
    dir: &Path,
) -> (String, serde_json::Value) {
    let json = dir.join("loc.json");
    let log = c2f_ok(&[
        "localize",
        path(checkpoint),
        "--device",
        device,
        "--json",
        path(&json),
    ]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let mean_iou = metrics["mean_iou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mean_iou), "{metrics}");
    assert!(log.contains("GT-known"), "{log}");
    (log, metrics)
}

/// Pictures of two of `checkpoint`'s test images and the contact sheet, on `device`, into
/// `dir`: three decodable PNGs.
pub(crate) fn two_pictures(checkpoint: &Path, device: &str, dir: &Path) {
    let pictures = dir.join("pictures");
    c2f_ok(&[
        "visualize",
        path(checkpoint),
        "--device",
        device,
        "--count",
        "2",
        "--out",
        path(&pictures),
    ]);
    let pngs: Vec<PathBuf> = std::fs::read_dir(&pictures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pngs.len(), 3, "{pngs:?}");
    for png in &pngs {
        let img = image::open(png).unwrap();
        assert!(
            img.width() >= 200 && img.height() >= 200,
            "{}",
            png.display()
        );
    }
}

#[test]
fn pretrained_and_bilinear_upsamplers_train() {
    let dir = scratch("upsampler");
    let file = dir.join("up.safetensors");
    let out = c2f(&[
        "pretrain-upsampler",
        "--device",
        "cpu",
        "--size",
        "75",
        "--pairs",
        "64",
        "--epochs",
        "2",
        "--batch",
        "16",
        "--out",
        path(&file),
    ]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("held-out L2") && file.exists(), "{log}");
    let synthetic = [
        "--models",
        "coarse2fine",
        "--classes",
        "3",
        "--train-images",
        "4",
        "--test-images",
        "4",
    ];
    let tiny = [&TINY_TRAIN[..], &synthetic].concat();
    for (name, upsampler) in [("pretrained", path(&file)), ("bilinear", "bilinear")] {
        let run_dir = dir.join(name);
        let mut args = tiny.to_vec();
        args.extend(["--upsampler", upsampler, "--run-dir", path(&run_dir)]);
        let out = c2f(&args);
        let log = text(&out);
        assert!(out.status.success(), "{name}: {log}");
        assert!(log.contains("| Coarse2Fine |"), "{name}: {log}");
    }
    // The bilinear model has no up-sampler parameters in its checkpoint.
    let meta =
        c2f_train::checkpoint::read_meta(&dir.join("bilinear/coarse2fine/checkpoint.safetensors"))
            .unwrap();
    assert_eq!(
        meta.config.upsampler,
        c2f_train::upsampler::UpsamplerKind::FixedBilinear
    );
    // A file for another up-sampler is refused, naming the file.
    let wrong = dir.join("wrong.safetensors");
    std::fs::write(&wrong, b"garbage").unwrap();
    let mut args = tiny.to_vec();
    let run_dir = dir.join("wrong");
    args.extend(["--upsampler", path(&wrong), "--run-dir", path(&run_dir)]);
    let out = c2f(&args);
    let log = text(&out);
    assert!(!out.status.success());
    assert!(log.contains("wrong.safetensors"), "{log}");
}

/// `c2f train` of [`TINY_TRAIN`]'s model for one epoch on 8 training and 6 test images of the
/// synthetic set's first 3 classes into `run_dir`, with `args`: its output.
pub(crate) fn train_tiny_synthetic(run_dir: &Path, args: &[&str]) -> String {
    let synthetic = [
        "--classes",
        "3",
        "--train-images",
        "8",
        "--test-images",
        "6",
        "--run-dir",
        path(run_dir),
    ];
    c2f_ok(&[&TINY_TRAIN[..], &synthetic, args].concat())
}

/// The one epoch's metrics record of `model` in `run_dir`, whose loss terms `terms` are each
/// positive and sum to its loss.
pub(crate) fn only_record(run_dir: &Path, model: &str, terms: &[&str]) -> serde_json::Value {
    let metrics = crate::common::train::metrics(&run_dir.join(model));
    assert_eq!(metrics.len(), 1);
    let record = metrics[0].clone();
    assert_eq!(record["model"], model);
    let values: Vec<f64> = terms
        .iter()
        .map(|t| record[format!("loss_{t}")].as_f64().unwrap())
        .collect();
    let total = record["loss"].as_f64().unwrap();
    assert!(values.iter().all(|&v| v > 0.0), "{record}");
    assert!(
        (values.iter().sum::<f64>() - total).abs() < 1e-9,
        "{record}"
    );
    record
}

/// `--models coarse-only,both`: the coarse-only ablation, then Coarse2Fine and the baseline,
/// each in its folder and its row, in that order; the coarse-only row and metrics have no fine
/// or averaged accuracy; its checkpoint serves `eval`, `predict`, `localize` and `visualize`
/// with its one prediction.
#[test]
fn coarse_only_trains_and_serves_every_command() {
    let dir = scratch("coarse_only");
    let run_dir = dir.join("run");
    let log = train_tiny_synthetic(&run_dir, &["--models", "coarse-only,both"]);
    let rows: Vec<&str> = log.lines().filter(|l| l.starts_with("| ")).collect();
    let labels: Vec<&str> = rows[2..]
        .iter()
        .map(|r| r.split(" | ").next().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "| Coarse-only ablation",
            "| Coarse2Fine",
            "| InceptionV3 baseline"
        ],
        "{log}"
    );
    assert!(rows[2].contains("% | - | - | "), "{log}");
    let record = only_record(&run_dir, "coarse-only", &["coarse", "center_coarse"]);
    assert!(record["test_coarse"].as_f64().is_some(), "{record}");
    assert!(
        record["test_fine"].is_null() && record["loss_fine"].is_null(),
        "{record}"
    );

    let checkpoint = run_dir.join("coarse-only/checkpoint.safetensors");
    let log = c2f_ok(&["eval", path(&checkpoint), "--device", "cpu"]);
    // One accuracy, not Coarse2Fine's `coarse … fine … average …`.
    let first = log.lines().next().unwrap();
    assert!(
        first.contains("(coarse-only, epoch 1)") && first.ends_with('%'),
        "{log}"
    );
    assert!(!first.contains("average"), "{log}");
    assert!(
        log.contains("| coarse-only | ") && log.contains(" | - | - | "),
        "{log}"
    );

    let lines = predictions_on_cpu(&checkpoint, &synthetic_images(&dir, 1)[0]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("  coarse ") && lines[0].matches('%').count() == 3,
        "{lines:?}"
    );

    let (log, metrics) = localize_json(&checkpoint, "cpu", &dir);
    let top1 = log.lines().find(|l| l.starts_with("top-1")).unwrap_or("");
    assert!(top1.ends_with("%         -         -"), "{log}");
    assert!(metrics["accuracy"]["fine"].is_null(), "{metrics}");
    two_pictures(&checkpoint, "cpu", &dir);
}

/// An unknown model name is refused before any data is made, naming it and every model.
#[test]
fn unknown_model_is_refused_listing_the_models() {
    let out = c2f(&["train", "--models", "coarse2fine,ws-dan"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("--models ws-dan: unknown model")
            && log.contains("coarse2fine, coarse-only, wsdan, baseline"),
        "{log}"
    );
    assert!(!log.contains("train / "), "data was made: {log}");
}

#[test]
fn unknown_config_key_is_refused_naming_file_and_key() {
    let dir = scratch("bad_key");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "epochs = 1\nlearning_rate = 0.1\n").unwrap();
    let out = c2f(&["train", "--config", path(&config)]);
    let log = text(&out);
    assert!(!out.status.success());
    assert!(
        log.contains(&config.display().to_string()) && log.contains("unknown key `learning_rate`"),
        "{log}"
    );
}

/// `c2f train` with `vars` added to its environment (and torchrun's, SLURM's and OpenMPI's
/// rank variables removed, in case the test itself runs under one).
fn c2f_with_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(c2f_binary());
    for v in [
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NTASKS",
    ] {
        command.env_remove(v);
    }
    command
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

/// Arguments, environment, and what the error must say.
type Refusal<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Multi-process training is refused clearly where it cannot run: on the CPU (with --gpus or
/// as a launcher's rank), on a GPU that does not exist, and without rank 0's address; each
/// before any data is made.
#[test]
fn data_parallel_misuse_is_refused() {
    let cases: [Refusal; 4] = [
        (
            &["train", "--gpus", "0", "--device", "cpu"],
            &[],
            "needs one GPU per rank",
        ),
        (&["train", "--gpus", "7,9"], &[], "GPU 7 does not exist"),
        (
            &["train", "--device", "cpu"],
            &[
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            "needs one GPU per rank",
        ),
        (
            &["train"],
            &[("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")],
            "set MASTER_ADDR",
        ),
    ];
    for (args, vars, expected) in cases {
        let out = c2f_with_env(args, vars);
        let log = text(&out);
        assert!(!out.status.success(), "{args:?} {vars:?}: {log}");
        assert!(log.contains(expected), "{args:?} {vars:?}: {log}");
        assert!(!log.contains("train / "), "{args:?}: data was made: {log}");
    }
}

#[test]
fn celeba_attributes_train_eval_and_predict() {
    let dir = scratch("celeba");
    let root = dir.join("celeba");
    crate::common::celeba::write_faces(&root, 8, 4);
    let run_dir = dir.join("run");
    let celeba = [
        "--dataset",
        "celeba",
        "--data-root",
        path(&root),
        "--attributes",
        "Striped,Red",
        "--run-dir",
        path(&run_dir),
    ];
    let log = c2f_ok(&[&TINY_TRAIN[..], &celeba].concat());
    assert!(
        log.contains("celeba at") && log.contains("2 attributes, 8 train / 4 test images"),
        "{log}"
    );
    // The per-attribute table, in the asked order, for the three models.
    for row in [
        "| Striped | Coarse2Fine |",
        "| Striped | WS-DAN |",
        "| Striped | InceptionV3 baseline |",
        "| Red | Coarse2Fine |",
    ] {
        assert!(log.contains(row), "{row}: {log}");
    }
    assert!(log.find("| Striped |") < log.find("| Red |"), "{log}");

    let checkpoint = run_dir.join("coarse2fine/checkpoint.safetensors");
    let log = c2f_ok(&["eval", path(&checkpoint), "--device", "cpu"]);
    assert!(log.contains("| Red | coarse2fine |"), "{log}");

    // Every attribute with its probability, for each of the three predictions.
    let lines = predictions_on_cpu(&checkpoint, &root.join("img_align_celeba/000001.jpg"));
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in lines {
        assert!(line.contains("Striped ") && line.contains("Red "), "{line}");
        assert_eq!(line.matches('%').count(), 2, "{line}");
    }

    // The attributes from a config file, as a TOML list, in its order.
    let config = dir.join("celeba.toml");
    std::fs::write(
        &config,
        "attributes = [\"Red\", \"Striped\"]\nmodels = \"baseline\"\n",
    )
    .unwrap();
    let listed_dir = dir.join("listed");
    let listed = [
        "--config",
        path(&config),
        "--dataset",
        "celeba",
        "--data-root",
        path(&root),
        "--run-dir",
        path(&listed_dir),
    ];
    let log = c2f_ok(&[&TINY_TRAIN[..], &listed].concat());
    assert!(log.contains("2 attributes"), "{log}");
    let (red, striped) = (
        log.find("| Red | InceptionV3 baseline |"),
        log.find("| Striped | InceptionV3 baseline |"),
    );
    assert!(red.is_some() && red < striped, "{log}");

    // CelebA has no boxes to localize, and the pictures show top classes, which an attribute
    // model has not: both say so.
    let log = c2f_refused(&["localize", path(&checkpoint), "--device", "cpu"]);
    assert!(log.contains("localization needs bounding boxes"), "{log}");
    let pictures = dir.join("pictures");
    let log = c2f_refused(&[
        "visualize",
        path(&checkpoint),
        "--device",
        "cpu",
        "--out",
        path(&pictures),
    ]);
    assert!(log.contains("this one predicts attributes"), "{log}");
}

#[test]
fn data_seed_varies_the_data_apart_from_the_training() {
    let dir = scratch("data_seed");
    let run_dir = dir.join("run");
    let args = [
        "--models",
        "baseline",
        "--classes",
        "3",
        "--train-images",
        "4",
        "--test-images",
        "4",
        "--seed",
        "3",
        "--data-seed",
        "5",
        "--run-dir",
        path(&run_dir),
    ];
    c2f_ok(&[&TINY_TRAIN[..], &args].concat());
    let meta =
        c2f_train::checkpoint::read_meta(&run_dir.join("baseline/checkpoint.safetensors")).unwrap();
    assert_eq!(meta.config.seed, 3);
    match meta.data {
        c2f_train::data::spec::DataSpec::Synthetic { seed, .. } => assert_eq!(seed, 5),
        other => panic!("{other:?}"),
    }
}

/// Flags out of range and a dataset without its folder are refused before anything runs, with
/// status 1 and a message naming the flag, not as a shape error or a dump of an internal value.
#[test]
fn bad_flags_are_refused_naming_the_flag() {
    let per_class_attributes = [
        "train",
        "--dataset",
        "celeba",
        "--data-root",
        "/nonexistent",
        "--wsdan-centers",
        "per-class",
    ];
    let cases: [(&[&str], &str); 5] = [
        (&["train", "--batch", "0"], "--batch 0"),
        (&["train", "--maps", "0"], "--maps 0"),
        (&["train", "--width", "0"], "--width 0"),
        (&["train", "--dataset", "cub"], "needs --data-root"),
        (
            &per_class_attributes,
            "--wsdan-centers per-class: CelebA's attributes",
        ),
    ];
    for (args, expected) in cases {
        let out = c2f(args);
        let log = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {log}");
        assert!(log.contains(expected), "{args:?}: {log}");
        assert!(
            !log.contains("shape error") && !log.contains(" { "),
            "{args:?}: {log}"
        );
        assert!(!log.contains("train / "), "{args:?}: data was made: {log}");
    }
}

/// `--nvtx`, as a flag or a config file's key, loads NVIDIA's NVTX library before anything
/// runs; where the loader cannot find it, the command stops naming the flag and the library.
#[test]
fn nvtx_without_its_library_is_refused_naming_it() {
    let dir = scratch("nvtx_refused");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(&config, "nvtx = true\n").unwrap();
    let no_library = [("LD_LIBRARY_PATH", path(&dir))];
    let checkpoint = dir.join("missing.safetensors");
    for args in [
        &["eval", "--nvtx", path(&checkpoint)][..],
        &["train", "--config", path(&config), "--device", "cpu"],
    ] {
        let out = c2f_with_env(args, &no_library);
        let err = text(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("--nvtx needs") && err.contains("libnvtx3interop.so.1"),
            "{args:?}: {err}"
        );
    }
}
