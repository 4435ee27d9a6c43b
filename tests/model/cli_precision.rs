//! `--precision`: an unknown value refused listing the allowed ones by every command and in a
//! config file; tf32 and bf16 refused on the CPU by every command and through a config file,
//! before anything is written; the precision recorded in a run's checkpoint and metrics; a
//! checkpoint of another precision evaluated and resumed. On a GPU (the emulator included):
//! bf16 by default, recorded; Coarse2Fine, WS-DAN and the baseline trained in it, their
//! checkpoints evaluated on the CPU and on the GPU in each precision; the up-sampler pretrained
//! in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::cli::{c2f_ok, c2f_refused, path, scratch};
use crate::common::train::TINY_TRAIN;
use c2f_inception::weights::{read_checked, write_tensors};
use c2f_inception::Precision;
use c2f_kernels::Error;
use c2f_train::checkpoint::read_meta;
use c2f_train::cli::parse;

/// Each command with its required arguments, reading `checkpoint` where it takes one.
fn commands(checkpoint: &str, out: &Path) -> Vec<Vec<String>> {
    let out = path(out);
    [
        vec!["train", "--run-dir", out, "--epochs", "1"],
        vec!["eval", checkpoint],
        vec!["predict", "--checkpoint", checkpoint, "missing.jpg"],
        vec!["localize", checkpoint, "--json", out],
        vec!["visualize", checkpoint, "--out", out],
        vec![
            "pretrain-upsampler",
            "--out",
            out,
            "--size",
            "75",
            "--pairs",
            "8",
        ],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(String::from).collect())
    .collect()
}

#[test]
fn unknown_precision_is_refused_listing_the_allowed_ones() {
    for command in commands("ck.safetensors", Path::new("out")) {
        let argv: Vec<String> = ["c2f"]
            .iter()
            .map(|s| s.to_string())
            .chain(command)
            .chain(["--precision".into(), "fp16".into()])
            .collect();
        match parse(argv.clone()) {
            Err(Error::Config {
                key,
                value,
                message,
            }) => {
                assert_eq!((key.as_str(), value.as_str()), ("--precision", "fp16"));
                assert_eq!(message, "must be one of bf16, tf32, f32", "{argv:?}");
            }
            Err(e) => panic!("{argv:?}: {e}"),
            Ok(_) => panic!("{argv:?}: accepted"),
        }
    }
    let dir = scratch("precision_unknown");
    let config = dir.join("run.toml");
    std::fs::write(&config, "precision = \"fp16\"\n").unwrap();
    let argv = ["c2f", "train", "--config", path(&config)].map(String::from);
    let e = parse(argv.to_vec()).err().expect("refused").to_string();
    assert_eq!(
        e,
        format!(
            "{}: `precision` = fp16: must be one of bf16, tf32, f32",
            config.display()
        )
    );
}

/// A one-epoch Coarse2Fine run on the CPU in `dir`/run: its checkpoint.
fn tiny_cpu_run(dir: &Path, extra: &[&str]) -> (PathBuf, String) {
    let run = dir.join("run");
    let mut args = TINY_TRAIN.to_vec();
    args.extend(["--models", "coarse2fine", "--classes", "3"]);
    args.extend(["--train-images", "8", "--test-images", "4"]);
    args.extend(["--run-dir", path(&run)]);
    args.extend(extra);
    let log = c2f_ok(&args);
    (run.join("coarse2fine/checkpoint.safetensors"), log)
}

#[test]
fn tf32_and_bf16_need_a_gpu() {
    let dir = scratch("precision_cpu");
    let (checkpoint, _) = tiny_cpu_run(&dir, &[]);
    let out = dir.join("out");
    for precision in ["tf32", "bf16"] {
        let expected = format!(
            "c2f: --precision {precision}: {precision} needs a GPU: the CPU backend computes in \
             f32 only"
        );
        for command in commands(path(&checkpoint), &out) {
            let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
            args.extend(["--device", "cpu", "--precision", precision]);
            let log = c2f_refused(&args);
            assert!(log.contains(&expected), "{args:?}: {log}");
            assert!(!out.exists(), "{args:?} wrote {}", out.display());
        }
        let config = dir.join(format!("{precision}.toml"));
        std::fs::write(
            &config,
            format!("device = \"cpu\"\nprecision = \"{precision}\"\n"),
        )
        .unwrap();
        let log = c2f_refused(&["train", "--config", path(&config)]);
        assert!(log.contains(&expected), "{log}");
        assert!(!log.contains("train / "), "data was made: {log}");
    }
    let log = c2f_ok(&[
        "eval",
        path(&checkpoint),
        "--device",
        "cpu",
        "--precision",
        "f32",
    ]);
    assert!(log.contains("coarse2fine, epoch 1"), "{log}");
}

/// The `precision` of every record in the run's `metrics.jsonl`.
fn metrics_precisions(checkpoint: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(checkpoint.with_file_name("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let record: serde_json::Value = serde_json::from_str(l).unwrap();
            record["precision"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Rewrites the checkpoint's metadata with `edit` applied to its JSON, tensors unchanged.
fn edit_metadata(
    checkpoint: &Path,
    edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
) {
    // Every tensor, by the names and shapes the file holds.
    let bytes = std::fs::read(checkpoint).unwrap();
    let header = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<(String, Vec<usize>)> = header
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let expected: Vec<(&str, &[usize])> = names
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let file = read_checked(checkpoint, &expected, |_| false, "test").unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&file.metadata["c2f"]).unwrap();
    edit(json.as_object_mut().unwrap());
    let tensors: Vec<(&str, &[usize], &[f32])> = expected
        .iter()
        .zip(&file.values)
        .map(|(&(n, s), v)| (n, s, v.as_slice()))
        .collect();
    let metadata = HashMap::from([("c2f".to_string(), json.to_string())]);
    write_tensors(checkpoint, &tensors, Some(metadata)).unwrap();
}

#[test]
fn precision_is_recorded_and_checkpoints_load_in_another() {
    let dir = scratch("precision_recorded");
    let (checkpoint, log) = tiny_cpu_run(&dir, &[]);
    assert!(log.contains("device: cpu f32 ("), "{log}");
    assert_eq!(read_meta(&checkpoint).unwrap().precision, Precision::F32);
    assert_eq!(metrics_precisions(&checkpoint), ["f32"]);

    // As a GPU run in tf32 would have written it: evaluated and resumed on the CPU in f32.
    edit_metadata(&checkpoint, |meta| {
        meta.insert("precision".into(), "tf32".into());
    });
    assert_eq!(read_meta(&checkpoint).unwrap().precision, Precision::Tf32);
    let log = c2f_ok(&["eval", path(&checkpoint), "--device", "cpu"]);
    assert!(log.contains("coarse2fine, epoch 1"), "{log}");
    let (_, log) = tiny_cpu_run(&dir, &["--resume", "--epochs", "2"]);
    assert!(
        log.contains("trained in tf32 so far, continuing in f32"),
        "{log}"
    );
    assert_eq!(read_meta(&checkpoint).unwrap().precision, Precision::F32);
    assert_eq!(metrics_precisions(&checkpoint), ["f32", "f32"]);

    // A checkpoint from before the precision was recorded was computed in f32.
    edit_metadata(&checkpoint, |meta| {
        meta.remove("precision");
    });
    assert_eq!(read_meta(&checkpoint).unwrap().precision, Precision::F32);
}

/// On a GPU: bf16 unless asked otherwise, recorded in the checkpoints and metrics; Coarse2Fine
/// and WS-DAN train in it end to end, their checkpoints evaluate on the CPU and on the GPU (in
/// bf16 by default, and in f32 and tf32) and localize and draw their pictures there; the
/// up-sampler pretrains in it.
#[test]
fn gpu_precision_is_bf16_by_default_and_wsdan_trains_in_it() {
    let test = "cli gpu_precision_is_bf16_by_default_and_wsdan_trains_in_it";
    if c2f_kernels::testing::gpu_or_skip(test).is_none() {
        return;
    }
    let dir = scratch("precision_gpu");
    let run = dir.join("run");
    let mut args = TINY_TRAIN.to_vec();
    args.extend(["--device", "cuda:0", "--models", "coarse2fine,wsdan"]);
    args.extend([
        "--classes",
        "3",
        "--train-images",
        "8",
        "--test-images",
        "4",
    ]);
    args.extend(["--run-dir", path(&run)]);
    let log = c2f_ok(&args);
    assert!(log.contains("device: cuda bf16 ("), "{log}");
    assert!(log.contains("| WS-DAN | "), "{log}");
    for (model, evals) in [
        (
            "coarse2fine",
            &[("cpu", None), ("cuda:0", None), ("cuda:0", Some("f32"))][..],
        ),
        (
            "wsdan",
            &[("cpu", None), ("cuda:0", None), ("cuda:0", Some("tf32"))],
        ),
    ] {
        let checkpoint = run.join(format!("{model}/checkpoint.safetensors"));
        assert_eq!(read_meta(&checkpoint).unwrap().precision, Precision::Bf16);
        assert_eq!(metrics_precisions(&checkpoint), ["bf16"]);
        for &(device, precision) in evals {
            let mut args = vec!["eval", path(&checkpoint), "--device", device];
            args.extend(precision.map(|p| ["--precision", p]).iter().flatten());
            let log = c2f_ok(&args);
            assert!(
                log.contains(&format!("{model}, epoch 1")),
                "{args:?}: {log}"
            );
        }
        let (json, pictures) = (
            dir.join(format!("{model}.json")),
            dir.join(format!("{model}_pictures")),
        );
        let (checkpoint, gpu) = (path(&checkpoint), ["--device", "cuda:0"]);
        c2f_ok(&[&["localize", checkpoint, "--json", path(&json)], &gpu[..]].concat());
        c2f_ok(
            &[
                &["visualize", checkpoint, "--out", path(&pictures)],
                &gpu[..],
            ]
            .concat(),
        );
        assert!(json.exists() && pictures.join("contact_sheet.png").exists());
    }
    let upsampler = dir.join("upsampler.safetensors");
    let log = c2f_ok(&[
        "pretrain-upsampler",
        "--device",
        "cuda:0",
        "--size",
        "75",
        "--pairs",
        "8",
        "--batch",
        "4",
        "--epochs",
        "1",
        "--out",
        path(&upsampler),
    ]);
    assert!(log.contains("held-out L2"), "{log}");
    assert!(upsampler.exists(), "{log}");
}

/// On a GPU Coarse2Fine and the baseline train in bf16: the device line, checkpoints and
/// metrics say so, and the checkpoints (f32 master weights) evaluate on the CPU in f32.
#[test]
fn gpu_coarse2fine_and_baseline_train_in_bf16() {
    let test = "cli gpu_coarse2fine_and_baseline_train_in_bf16";
    if c2f_kernels::testing::gpu_or_skip(test).is_none() {
        return;
    }
    let dir = scratch("precision_gpu_bf16");
    let run = dir.join("run");
    let mut args = TINY_TRAIN.to_vec();
    args.extend(["--device", "cuda:0", "--precision", "bf16"]);
    args.extend(["--models", "coarse2fine,baseline", "--classes", "3"]);
    args.extend(["--train-images", "8", "--test-images", "4"]);
    args.extend(["--run-dir", path(&run)]);
    let log = c2f_ok(&args);
    assert!(log.contains("device: cuda bf16 ("), "{log}");
    for model in ["coarse2fine", "baseline"] {
        let checkpoint = run.join(format!("{model}/checkpoint.safetensors"));
        assert_eq!(read_meta(&checkpoint).unwrap().precision, Precision::Bf16);
        assert_eq!(metrics_precisions(&checkpoint), ["bf16"]);
        let log = c2f_ok(&["eval", path(&checkpoint), "--device", "cpu"]);
        assert!(log.contains(&format!("{model}, epoch 1")), "{log}");
    }
}
