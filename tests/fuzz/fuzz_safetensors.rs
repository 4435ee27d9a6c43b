//! safetensors files: InceptionV3 weights (torchvision's names, the auxiliary head and
//! `num_batches_tracked` accepted and ignored) and training checkpoints (tensors and the run's
//! JSON metadata), through the readers the loaders use.

use std::collections::HashMap;

use crate::harness::{fuzz_files, scratch, FileSeed};
use c2f_inception::weights::{read_checked, write_tensors};
use c2f_inception::Precision;
use c2f_train::checkpoint::{read_meta, CheckpointMeta, FORMAT};
use c2f_train::config::{Machine, Preset};
use c2f_train::data::spec::DataSpec;
use c2f_train::upsampler::UpsamplerOrigin;

/// `(name, shape)` of the tensors each file must hold.
const WEIGHTS: [(&str, &[usize]); 3] = [
    ("Conv2d_1a_3x3.conv.weight", &[2, 3, 3, 3]),
    ("Conv2d_1a_3x3.bn.running_var", &[2]),
    ("fc.bias", &[5]),
];

/// The file of `expected` tensors plus `extra` ones, with `metadata`.
fn tensors_file(extra: &[(&str, &[usize])], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let all: Vec<(&str, &[usize], Vec<f32>)> = WEIGHTS
        .iter()
        .chain(extra)
        .map(|&(name, shape)| {
            let n = shape.iter().product::<usize>();
            (name, shape, (0..n).map(|k| k as f32 * 0.5 - 1.0).collect())
        })
        .collect();
    let tensors: Vec<(&str, &[usize], &[f32])> = all
        .iter()
        .map(|(name, shape, v)| (*name, *shape, v.as_slice()))
        .collect();
    let path = scratch("safetensors_seed").join("seed.safetensors");
    write_tensors(&path, &tensors, metadata).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn weights_files() {
    let root = scratch("weights");
    let extra: [(&str, &[usize]); 2] = [
        ("AuxLogits.fc.weight", &[5, 2]),
        ("Conv2d_1a_3x3.bn.num_batches_tracked", &[]),
    ];
    let seeds = [FileSeed::new(
        &root,
        "inception_v3.safetensors",
        tensors_file(&extra, None),
    )];
    fuzz_files("weights", 2000, &seeds, |root| {
        read_checked(
            &root.join("inception_v3.safetensors"),
            &WEIGHTS,
            |name| name.ends_with(".num_batches_tracked") || name.starts_with("AuxLogits."),
            "InceptionV3 weights",
        )
    });
}

#[test]
fn checkpoint_files() {
    let root = scratch("checkpoint");
    let meta = CheckpointMeta {
        format: FORMAT,
        model: "coarse2fine".into(),
        config: Preset::FromScratchDemo.config(Machine::Cpu),
        epoch: 3,
        batch_in_epoch: 1,
        step: 301,
        rng: 0x1234_5678_9abc_def0,
        epoch_sums: vec![1.5, 0.25, 12.0],
        data: DataSpec::synthetic_demo(7),
        dataset: "fingerprint".into(),
        class_names: vec!["a".into(), "b".into()],
        upsampler: Some(UpsamplerOrigin::Shipped {
            path: "upsampler-299.safetensors".into(),
        }),
        precision: Precision::Tf32,
    };
    let json = serde_json::to_string(&meta).unwrap();
    let seeds = [FileSeed::new(
        &root,
        "checkpoint.safetensors",
        tensors_file(&[], Some(HashMap::from([("c2f".to_string(), json)]))),
    )];
    // What `c2f eval` and `predict` do: the metadata first, then every tensor by name and shape.
    fuzz_files("checkpoint", 2000, &seeds, |root| {
        let path = root.join("checkpoint.safetensors");
        read_meta(&path)?;
        read_checked(&path, &WEIGHTS, |_| false, "a c2f checkpoint")
    });
}
