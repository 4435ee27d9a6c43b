//! NVTX ranges in training (CPU, no profiler): a run with ranges on writes the same checkpoint
//! bytes and metrics as one with them off, and its ranges nest and name each phase of the step,
//! each pass of the model and each layer of the backbone.

use std::path::PathBuf;

use crate::common::train::{metrics, synthetic_spec, tiny_config};
use c2f_inception::cpu::CpuBackend;
use c2f_kernels::nvtx;
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::train::{checkpoint_path, ModelKind, RunOptions, TrainConfig};

/// One epoch of 2 steps of a tiny model (8 images, batch 4), a checkpoint after each and an evaluation; run
/// with ranges off, then recorded. Returns the recorded ranges as nested paths, after checking
/// that both runs wrote the same checkpoint and the same metrics.
fn paths_of_a_recorded_run(model: ModelKind) -> Vec<String> {
    let cfg = TrainConfig {
        wsdan_maps: 2,
        ..tiny_config(TrainConfig::default().lr, 1)
    };
    let data = synthetic_spec(8, 4, 3, (0.6, 0.9))
        .open(75, DEFAULT_MAX_PIXELS)
        .unwrap();
    let run = |name: &str| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nvtx_{}_{name}", model.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = RunOptions {
            checkpoint_every: 1,
            ..RunOptions::new(dir.clone())
        };
        model.trainer()(&mut CpuBackend::<f32>::new(), &cfg, &options, &data, None).unwrap();
        dir
    };
    let off = run("off");
    let (on, log) = nvtx::record(|| run("on"));
    let bytes = |dir: &PathBuf| std::fs::read(checkpoint_path(dir)).unwrap();
    assert!(
        bytes(&off) == bytes(&on),
        "{}: ranges changed the checkpoint",
        model.name()
    );
    let loss = |dir: &PathBuf| metrics(dir).last().unwrap()["loss"].clone();
    assert_eq!(loss(&off), loss(&on));
    nvtx::nested_paths(&log).unwrap()
}

fn assert_has(paths: &[String], wanted: &[&str]) {
    for want in wanted {
        assert!(
            paths.iter().any(|p| p == want),
            "no range {want} among {} ranges, e.g. {:?}",
            paths.len(),
            &paths[..paths.len().min(40)]
        );
    }
}

#[test]
fn coarse2fine_ranges_name_phases_passes_and_layers() {
    let paths = paths_of_a_recorded_run(ModelKind::Coarse2Fine);
    let step = "coarse2fine step 2/forward and backward";
    assert_has(
        &paths,
        &[
            "wait for batch",
            &format!("{step}/write batch"),
            &format!("{step}/coarse backbone forward/Conv2d_1a_3x3 forward"),
            &format!("{step}/coarse backbone forward/maxpool1 forward"),
            &format!("{step}/coarse backbone forward/Mixed_6e forward"),
            &format!("{step}/coarse head forward"),
            &format!("{step}/fine input forward"),
            &format!("{step}/fine pass/fine backbone forward/Mixed_5b forward"),
            &format!("{step}/fine pass/fine head forward"),
            &format!("{step}/fine pass/fine backbone backward/Conv2d_1a_3x3 backward"),
            &format!("{step}/coarse head backward"),
            &format!("{step}/fine input backward"),
            &format!("{step}/coarse attention backward"),
            &format!("{step}/coarse backbone backward/Mixed_6e backward"),
            "coarse2fine step 2/read stats",
            "coarse2fine step 2/sgd",
            "coarse2fine step 2/checkpoint",
            "evaluate/coarse backbone forward/Mixed_6e forward",
            "evaluate/fine head forward",
            "checkpoint",
        ],
    );
    // One range per layer and backbone pass: 15 top-level modules up to Mixed_6e, in both
    // backbone passes of both steps, forward and backward.
    let layers = |pass: &str| {
        paths
            .iter()
            .filter(|p| p.starts_with("coarse2fine step"))
            .filter_map(|p| p.rsplit_once('/'))
            .filter(|(parent, _)| parent.ends_with(pass))
            .count()
    };
    assert_eq!(layers("backbone forward"), 2 * 2 * 15);
    assert_eq!(layers("backbone backward"), 2 * 2 * 15);
}

#[test]
fn wsdan_ranges_name_its_three_passes() {
    let paths = paths_of_a_recorded_run(ModelKind::WsDan);
    let step = "wsdan step 1/forward and backward";
    assert_has(
        &paths,
        &[
            &format!("{step}/raw pass/Mixed_6e forward"),
            &format!("{step}/raw pass/choose maps"),
            &format!("{step}/raw pass/head backward"),
            &format!("{step}/raw pass/Conv2d_1a_3x3 backward"),
            &format!("{step}/crop input"),
            &format!("{step}/crop pass/Mixed_6e backward"),
            &format!("{step}/drop input"),
            &format!("{step}/drop pass/attention backward"),
            "wsdan step 1/sgd",
        ],
    );
}

#[test]
fn baseline_ranges_reach_the_head() {
    let paths = paths_of_a_recorded_run(ModelKind::Baseline);
    let step = "baseline step 1/forward and backward";
    assert_has(
        &paths,
        &[
            &format!("{step}/backbone forward/Mixed_7c forward"),
            &format!("{step}/backbone forward/avgpool+dropout+fc forward"),
            &format!("{step}/loss"),
            &format!("{step}/backbone backward/avgpool+dropout+fc backward"),
            &format!("{step}/backbone backward/Conv2d_1a_3x3 backward"),
        ],
    );
}
