//! Where a run's up-sampler starts: `c2f train --weights` (the paper's setting) defaults to the
//! pretrained up-sampler, and `--upsampler learnable` to a fresh one. At 299² and 448² that is
//! the file shipped in `c2f`, which up-samples interpolation pairs far closer to bilinear than
//! the fresh start does; at a side without one the run pretrains it first, keeps it in its
//! folder, reuses it on a second start there and records it in the checkpoint.

use std::path::{Path, PathBuf};

use crate::common::train::synthetic_spec;
use c2f_inception::backend::prelude::*;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::table::TensorTable;
use c2f_train::checkpoint;
use c2f_train::cli::args::{Cli, Command};
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::interpolate::{resize, Interpolation};
use c2f_train::pretrain::{pair, shipped, start_file, upsampler_origin};
use c2f_train::train::{
    build_coarse2fine, checkpoint_path, init_coarse2fine, train_coarse2fine, RunOptions,
    TrainConfig,
};
use c2f_train::upsampler::{
    attention_map_side, default_channels, init_params, load_into, save, Upsampler, UpsamplerKind,
    UpsamplerOrigin, UpsamplerShape, UpsamplerWeights,
};
use clap::Parser;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("upsampler_start_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The shipped file for `size`, as it lies in the repository.
fn shipped_file(size: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "crates/c2f-train/weights/upsampler-{size}.safetensors"
    ))
}

/// What `c2f train <flags>` asks the up-sampler to start from.
fn requested(flags: &[&str]) -> Option<UpsamplerWeights> {
    let argv = [&["c2f", "train"], flags].concat();
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Train(args) => args.upsampler_weights(),
        _ => unreachable!("parsed `train`"),
    }
}

/// A tiny Coarse2Fine at input side `size`.
fn tiny_config(size: usize) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch: 2,
        input_size: size,
        width: 0.125,
        classes: 3,
        maps: 2,
        ..TrainConfig::default()
    }
}

/// The up-sampler's own table at `size` (the stack `c2f train` builds there).
fn upsampler(cpu: &mut CpuBackend<f32>, size: usize, batch: usize) -> Upsampler {
    let map = attention_map_side(size).unwrap();
    let shape = UpsamplerShape {
        batch,
        map,
        output: size,
        kind: UpsamplerKind::Learnable,
        channels: default_channels(map.0, size),
    };
    Upsampler::new(cpu, shape).unwrap()
}

/// A fresh model's up-sampler entries after `init_coarse2fine` with `weights`, by name.
fn started(
    cfg: &TrainConfig,
    dir: &Path,
    weights: Option<UpsamplerWeights>,
) -> c2f_kernels::Result<Vec<(String, Vec<f32>)>> {
    let mut cpu = CpuBackend::<f32>::new();
    let model = build_coarse2fine(&mut cpu, cfg).unwrap();
    let run = RunOptions {
        upsampler_weights: weights,
        ..RunOptions::new(dir)
    };
    init_coarse2fine(&mut cpu, &model, cfg, &run)?;
    let heads = cpu.read(model.params).unwrap();
    Ok(by_name(model.head_table(), &heads))
}

fn by_name(table: &TensorTable, values: &[f32]) -> Vec<(String, Vec<f32>)> {
    table
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("upsampler."))
        .map(|e| (e.name.clone(), values[e.range()].to_vec()))
        .collect()
}

/// `file`'s values, by the names of the up-sampler `c2f train` builds at `size`.
fn file_values(file: &Path, size: usize) -> Vec<(String, Vec<f32>)> {
    let up = upsampler(&mut CpuBackend::<f32>::new(), size, 1);
    let mut values = vec![f32::NAN; up.table().total()];
    load_into(file, up.table(), &mut values).unwrap();
    by_name(up.table(), &values)
}

/// The mean squared distance from bilinear interpolation of the up-sampler at `size` with
/// `params` (its own table's layout), over the bilinear pairs 0, 3, …, 21 of a stream that
/// neither pretraining saw.
fn distance_from_bilinear(size: usize, params: &[f32]) -> f64 {
    const PAIRS: usize = 8;
    let mut cpu = CpuBackend::<f32>::new();
    let up = upsampler(&mut cpu, size, PAIRS);
    let map = attention_map_side(size).unwrap();
    let (mut maps, mut targets) = (Vec::new(), Vec::new());
    for k in 0..PAIRS {
        let (m, _, method) = pair(99, 3 * k, map, size).unwrap();
        assert_eq!(method, Interpolation::Bilinear);
        let wide: Vec<f64> = m.iter().map(|&v| v as f64).collect();
        targets.extend(resize(Interpolation::Bilinear, 1, map, (size, size), &wide).unwrap());
        maps.extend(m);
    }
    let (p, x) = (
        cpu.alloc(params.len()).unwrap(),
        cpu.alloc(maps.len()).unwrap(),
    );
    cpu.write(p, params).unwrap();
    cpu.write(x, &maps).unwrap();
    up.forward(&mut cpu, p, x).unwrap();
    let y = cpu.read(up.output()).unwrap();
    let sum: f64 = y
        .iter()
        .zip(&targets)
        .map(|(&a, &b)| (a as f64 - b).powi(2))
        .sum();
    sum / y.len() as f64
}

fn flat(values: &[(String, Vec<f32>)]) -> Vec<f32> {
    values.iter().flat_map(|(_, v)| v.iter().copied()).collect()
}

#[test]
fn weights_default_to_the_pretrained_upsampler_and_learnable_to_a_fresh_one() {
    let pretrained = Some(UpsamplerWeights::Pretrained);
    assert_eq!(requested(&["--weights", "w.safetensors"]), pretrained);
    assert_eq!(requested(&["--upsampler", "pretrained"]), pretrained);
    let learnable = ["--weights", "w.safetensors", "--upsampler", "learnable"];
    assert_eq!(requested(&learnable), None);
    assert_eq!(requested(&[]), None);
    assert_eq!(
        requested(&[
            "--weights",
            "w.safetensors",
            "--upsampler",
            "up.safetensors"
        ]),
        Some(UpsamplerWeights::File("up.safetensors".into()))
    );

    let cfg = tiny_config(299);
    let dir = scratch("shipped");
    let start = started(&cfg, &dir, pretrained.clone()).unwrap();
    // The shipped weights, bit for bit; the run's folder keeps their copy.
    assert_eq!(start, file_values(&shipped_file(299), 299));
    let copy = start_file(&dir, 299);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(shipped_file(299)).unwrap()
    );
    let run = RunOptions {
        upsampler_weights: pretrained,
        ..RunOptions::new(&dir)
    };
    assert_eq!(
        upsampler_origin(&cfg, &run),
        Some(UpsamplerOrigin::Shipped { path: copy })
    );

    // `--upsampler learnable`: the fresh draw, as `c2f pretrain-upsampler` starts from too.
    let fresh = started(&cfg, &scratch("fresh"), None).unwrap();
    let up = upsampler(&mut CpuBackend::<f32>::new(), 299, 1);
    assert_eq!(fresh, by_name(up.table(), &init_params(up.table())));
    assert_ne!(fresh, start);
    let run = RunOptions::new(scratch("fresh"));
    assert_eq!(upsampler_origin(&cfg, &run), Some(UpsamplerOrigin::Fresh));
}

#[test]
fn shipped_upsamplers_are_closer_to_bilinear_than_a_fresh_one() {
    for size in [299, 448] {
        let file = shipped_file(size);
        assert_eq!(
            shipped(size).unwrap(),
            std::fs::read(&file).unwrap(),
            "{size}"
        );
        let up = upsampler(&mut CpuBackend::<f32>::new(), size, 1);
        let pretrained = distance_from_bilinear(size, &flat(&file_values(&file, size)));
        let fresh = distance_from_bilinear(size, &init_params(up.table()));
        println!("{size}²: mean squared distance from bilinear {pretrained:.5} pretrained, {fresh:.5} fresh");
        assert!(
            pretrained < 0.02 * fresh && pretrained < 0.005,
            "{size}²: {pretrained:.5} pretrained against {fresh:.5} fresh"
        );
    }
    assert!(shipped(75).is_none());
}

#[test]
fn a_side_without_shipped_weights_pretrains_at_the_start_and_records_it() {
    let cfg = tiny_config(75);
    let dir = scratch("side75");
    let pretrained = Some(UpsamplerWeights::Pretrained);
    let start = started(&cfg, &dir, pretrained.clone()).unwrap();
    let file = start_file(&dir, 75);
    assert_eq!(start, file_values(&file, 75));
    let up = upsampler(&mut CpuBackend::<f32>::new(), 75, 1);
    let trained = distance_from_bilinear(75, &flat(&start));
    let fresh = distance_from_bilinear(75, &init_params(up.table()));
    println!("75²: mean squared distance from bilinear {trained:.5} pretrained, {fresh:.5} fresh");
    assert!(
        trained < 0.05 * fresh,
        "{trained:.5} pretrained against {fresh:.5} fresh"
    );

    // A second start in the folder takes the file there instead of pretraining again.
    let other: Vec<f32> = flat(&start).iter().map(|v| 0.25 - v).collect();
    save(&file, up.table(), &other).unwrap();
    let again = started(&cfg, &dir, pretrained.clone()).unwrap();
    assert_eq!(flat(&again), other);

    // A damaged file there is refused, naming it.
    std::fs::write(&file, b"not weights").unwrap();
    let err = started(&cfg, &dir, pretrained.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&file.display().to_string()) && err.contains("not a valid"),
        "{err}"
    );

    // The checkpoint records where the up-sampler came from; a bilinear run has none.
    save(&file, up.table(), &other).unwrap();
    let data = synthetic_spec(4, 2, 3, (0.6, 0.9))
        .open(75, DEFAULT_MAX_PIXELS)
        .unwrap();
    let run = RunOptions {
        upsampler_weights: pretrained,
        ..RunOptions::new(&dir)
    };
    let mut cpu = CpuBackend::<f32>::new();
    train_coarse2fine(&mut cpu, &cfg, &run, &data, None).unwrap();
    let meta = checkpoint::read_meta(&checkpoint_path(&dir)).unwrap();
    assert_eq!(
        meta.upsampler,
        Some(UpsamplerOrigin::Pretrained { path: file })
    );
    let bilinear = TrainConfig {
        upsampler: UpsamplerKind::FixedBilinear,
        ..cfg
    };
    let run = RunOptions::new(scratch("bilinear75"));
    train_coarse2fine(&mut cpu, &bilinear, &run, &data, None).unwrap();
    let meta = checkpoint::read_meta(&checkpoint_path(&run.dir)).unwrap();
    assert_eq!(meta.upsampler, None);
}
