//! What `--resume` checks before it continues a run: the checkpoint's place in the run folder,
//! and that the checkpoint fits this run's model, data and config.

use std::path::{Path, PathBuf};

use c2f_inception::backend::Backend;
use c2f_inception::weights::temporary_prefix;
use c2f_kernels::rng::splitmix64_output;
use c2f_kernels::{Error, Result};
use serde::Serialize;

use super::trainee::Trainee;
use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::{ImageSource, Loader};
use crate::data::spec::{DataSpec, OpenedData};

/// The checkpoint file of a run directory.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// Whether the run continues from a checkpoint: `--resume`, and its checkpoint is there (a run
/// killed before its first one starts afresh).
pub(super) fn resumes(run: &RunOptions) -> bool {
    run.resume && checkpoint_path(&run.dir).exists()
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

/// The position a run starts from: a fresh one's, or with [`RunOptions::resume`] the checkpoint
/// in the run folder, loaded into `model`'s state once it is found to fit this run (where a crash came
/// before the first checkpoint there is none: the run then starts afresh, saying so, so that a
/// crashed run is restarted by one command whenever it crashed). A fresh run refuses to
/// overwrite a checkpoint that is there.
pub(super) fn start_or_resume<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    train: &Loader,
    model: &M,
    leader: bool,
) -> Result<CheckpointMeta> {
    let ckpt = checkpoint_path(&run.dir);
    let fingerprint = dataset_fingerprint(train.source().as_ref());
    let fresh = CheckpointMeta {
        format: checkpoint::FORMAT,
        model: model.name().to_string(),
        config: cfg.clone(),
        epoch: 0,
        batch_in_epoch: 0,
        step: 0,
        rng: cfg.seed ^ 0xc2f,
        // The loss terms' sums, then correct predictions and images.
        epoch_sums: vec![0.0; model.loss_terms().len() + 2],
        data: data.spec.clone(),
        dataset: fingerprint.clone(),
        class_names: data.class_names.clone(),
        upsampler: model.upsampler_origin(cfg, run),
        precision: b.precision(),
    };
    if leader && run.resume {
        remove_crash_leftovers(&ckpt)?;
    }
    if run.resume && !resumes(run) {
        if leader {
            println!(
                "{}: no checkpoint in {} yet: starting afresh",
                model.name(),
                run.dir.display()
            );
        }
        return Ok(fresh);
    }
    if !run.resume {
        if ckpt.exists() {
            return Err(Error::File {
                path: ckpt.display().to_string(),
                message: "a checkpoint is already there: pass --resume to continue that run, or \
                          choose another --run-dir"
                    .into(),
            });
        }
        return Ok(fresh);
    }
    let saved = checkpoint::load(b, &ckpt, &model.state())?;
    let saved_precision = saved.precision;
    let problems = resume_problems(&saved, model.name(), cfg, &data.spec, &fingerprint);
    if !problems.is_empty() {
        return Err(Error::File {
            path: ckpt.display().to_string(),
            message: format!("cannot resume: {}", problems.join("; ")),
        });
    }
    let meta = CheckpointMeta {
        config: cfg.clone(),
        precision: b.precision(),
        ..saved
    };
    if leader {
        println!(
            "{}: resumed from {} at epoch {}, batch {} (step {}){}",
            model.name(),
            ckpt.display(),
            meta.epoch,
            meta.batch_in_epoch,
            meta.step,
            match saved_precision {
                p if p == meta.precision => String::new(),
                p => format!(", trained in {p} so far, continuing in {}", meta.precision),
            }
        );
    }
    Ok(meta)
}

/// Removes the temporary files a process killed while writing checkpoint `ckpt` left beside it
/// (the checkpoint itself is whole: it is written by rename).
fn remove_crash_leftovers(ckpt: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (ckpt.parent(), ckpt.file_name()) else {
        return Ok(());
    };
    let prefix = temporary_prefix(&name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        // No folder yet: nothing was left.
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// Why a checkpoint does not fit this run, if it does not: another model, other data (its
/// spec, and the training set's fingerprint: the synthetic set's names and labels do not show
/// its object sizes or clutter, the spec does), another config but for the number of epochs
/// (a resumed run may be extended).
fn resume_problems(
    meta: &CheckpointMeta,
    model: &str,
    cfg: &TrainConfig,
    data: &DataSpec,
    fingerprint: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    if meta.model != model {
        problems.push(format!("it is a {} run, not {model}", meta.model));
    }
    if &meta.data != data {
        problems.push(format!(
            "it was trained on other data ({})",
            differences(&meta.data, data)
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
            "its config differs from this run's ({})",
            differences(&theirs, cfg)
        ));
    }
    problems
}

/// The fields in which two values differ, as `name: checkpoint's value, this run's value`, from
/// their JSON form (written as text first, where an f32 has its shortest form, not its f64's).
fn differences<T: Serialize>(checkpoint: &T, this_run: &T) -> String {
    let json = |v: &T| {
        let text = serde_json::to_string(v).expect("a config serialises");
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        }
    };
    let (theirs, ours) = (json(checkpoint), json(this_run));
    let null = serde_json::Value::Null;
    let mut keys: Vec<&String> = theirs.keys().chain(ours.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (theirs.get(k).unwrap_or(&null), ours.get(k).unwrap_or(&null));
            (a != b).then(|| format!("{k}: {a} in the checkpoint, {b} in this run"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
