//! A data-parallel job of one rank takes exactly the one worker's training step: `fit`
//! through a collective of world size 1 (all-reduce of the gradients, the center banks' sync,
//! the broadcast, the rank's slice loaded by `Loader::load_batches`) against plain `fit`, one
//! SGD step of a tiny Coarse2Fine with BatchNorm on batch statistics, every state tensor bit for
//! bit. On the CPU with the thread collective, and on the GPU with NCCL (`NcclCollective`,
//! the id through the TCP rendezvous; prints `skipped: no CUDA device` without a GPU).
//!
//! Bit-identity holds for the center banks too: `CenterSync` sets `old + (new − old)`, which is
//! `new` exactly when the difference is exact, as it is from banks that start at zero.

use std::path::PathBuf;

use crate::common::train::{synthetic_spec, tiny_config};
use crate::dist_nccl::world_of_one;
use c2f_dist::collective::{Collective, ThreadCollective};
use c2f_inception::backend::prelude::*;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::train::{
    build_coarse2fine, fit, init_coarse2fine, DataParallel, RunOptions, TrainConfig, Trainee,
};

fn config() -> TrainConfig {
    TrainConfig {
        weight_decay: 1e-4,
        ..tiny_config(0.05, 2)
    }
}

/// One training step of a fresh model on `b`, alone or through `collective`; every state
/// tensor afterwards, by name.
fn one_step<B: Backend<Scalar = f32>>(
    b: &mut B,
    name: &str,
    collective: Option<&mut dyn Collective<B>>,
) -> Vec<(String, Vec<f32>)> {
    let cfg = config();
    let spec = synthetic_spec(6, 2, 8, (0.6, 0.9));
    let data = spec.open(cfg.input_size, DEFAULT_MAX_PIXELS).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dist_world_one_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let run = RunOptions {
        eval_every: 0,
        stop_after: Some(1),
        ..RunOptions::new(dir)
    };
    let mut model = build_coarse2fine(b, &cfg).unwrap();
    init_coarse2fine(b, &model, &cfg, &run).unwrap();
    let mut dp = collective.map(DataParallel::new);
    let stopped = fit(b, &mut model, &cfg, &run, &data, dp.as_mut()).unwrap();
    assert_eq!(stopped, None, "{name}: stop_after ends the run");
    Trainee::<B>::state(&model)
        .into_iter()
        .map(|n| (n.name, b.read(n.tensor).unwrap()))
        .collect()
}

fn assert_bit_identical(what: &str, ours: &[(String, Vec<f32>)], theirs: &[(String, Vec<f32>)]) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(ours.len(), theirs.len());
    let mut moved = false;
    for ((name, a), (_, b)) in ours.iter().zip(theirs) {
        assert_eq!(bits(a), bits(b), "{what}: {name}");
        moved |= name.starts_with("momentum.") && a.iter().any(|&v| v != 0.0);
    }
    // The step happened: momentum holds the gradients.
    assert!(moved, "{what}: no gradient reached the momentum buffers");
}

#[test]
fn cpu_world_of_one_step_equals_one_worker() {
    let mut b = CpuBackend::<f32>::new();
    let alone = one_step(&mut b, "cpu_alone", None);
    let mut group = ThreadCollective::group(1);
    let ranked = one_step(&mut b, "cpu_rank", Some(&mut group[0]));
    assert_bit_identical("CPU, thread collective", &ranked, &alone);
}

#[test]
fn gpu_nccl_world_of_one_step_equals_one_worker() {
    let Some(mut b) = cuda_or_skip("gpu_nccl_world_of_one_step_equals_one_worker") else {
        return;
    };
    let alone = one_step(&mut b, "gpu_alone", None);
    let mut nccl = world_of_one(&b);
    let ranked = one_step(&mut b, "gpu_rank", Some(&mut nccl));
    assert_bit_identical("GPU, NCCL", &ranked, &alone);
}
