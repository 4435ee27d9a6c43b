//! One Coarse2Fine training step (coarse pass, fine branch, fine pass, both backwards, SGD) on
//! the CUDA backend at batch 64, 299² and 448², width 1.0, M = 8, 200 classes: images/s. The
//! baseline is the plain InceptionV3 step of `benches/inception_gpu.rs` on the same card (a
//! Coarse2Fine step runs the backbone twice, so about half its rate is the hardware-bound
//! target). Prints `NETBENCH` lines; without a GPU it says so. With or without one it first
//! prints the bytes of the tensors the model allocates at each size, counted on the CPU backend
//! (the same allocations; the device adds cuDNN's workspace, the launchers' scratch and the
//! CUDA context).

use c2f_inception::backend::{prelude::*, BnMode};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_kernels::testing::SplitMix64;
use c2f_train::train::{build_coarse2fine, init_coarse2fine, RunOptions, TrainConfig};
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "common/net.rs"]
mod net;
use net::{network_shapes, time_training_step};

fn case(c: &mut Criterion, batch: usize, size: usize) {
    let name = format!("coarse2fine_b{batch}_{size}");
    let cfg = TrainConfig {
        epochs: 1,
        batch,
        input_size: size,
        ..TrainConfig::default()
    };
    // Zero-filled host buffers are not touched here, so counting costs no real memory.
    let mut counter = CpuBackend::<f32>::new();
    build_coarse2fine(&mut counter, &cfg).unwrap();
    println!(
        "NETBENCH {name} tensors {:.2} GiB (counted on the CPU backend)",
        counter.allocated_bytes() as f64 / (1u64 << 30) as f64
    );
    let Some(mut b) = cuda_or_skip(&format!("coarse2fine_gpu {name}")) else {
        return;
    };
    let run = RunOptions {
        eval_every: 0,
        ..RunOptions::new("unused")
    };
    let mut model = build_coarse2fine(&mut b, &cfg).unwrap();
    init_coarse2fine(&mut b, &model, &cfg, &run).unwrap();
    let mut rng = SplitMix64(3);
    let images: Vec<f32> = (0..model.input().len)
        .map(|_| rng.uniform(-2.0, 2.0) as f32)
        .collect();
    let labels: Vec<i32> = (0..batch).map(|i| (i % cfg.classes) as i32).collect();
    let chosen: Vec<i32> = (0..batch).map(|i| (i % cfg.maps) as i32).collect();
    b.write(model.input(), &images).unwrap();
    b.write_index(model.labels(), &labels).unwrap();
    let chosen_maps = model.chosen_maps().expect("Coarse2Fine has a fine pass");
    b.write_index(chosen_maps, &chosen).unwrap();
    let sgd = c2f_kernels::sgd::SgdParams::new(cfg.lr, cfg.momentum, cfg.weight_decay);
    time_training_step(c, "coarse2fine_gpu_f32", &name, batch, &mut b, |b| {
        model.zero_grads(b).unwrap();
        model.forward_backward(b, BnMode::Train).unwrap();
        model.sgd_step(b, &sgd).unwrap();
    });
}

fn bench(c: &mut Criterion) {
    let (batch, sizes) = network_shapes();
    for size in sizes {
        case(c, batch, size);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
