//! One Coarse2Fine training step (coarse pass, fine branch, fine pass, both backwards, SGD) on
//! the CUDA backend at batch 64, 299² and 448², width 1.0, M = 8, 200 classes, in f32, in tf32
//! and in bf16 (`c2f train`'s default on a GPU; channels-last; PyTorch's peer is its AMP
//! step), op by op and replayed from a CUDA graph (`_graph`, bf16); each row's name ends in its
//! precision: images/s. The
//! baseline is the plain InceptionV3 step of `benches/inception_gpu.rs` on the same card (a
//! Coarse2Fine step runs the backbone twice, so about half its rate is the hardware-bound
//! target). Beside it, one WS-DAN training step (raw, crop and drop passes, M = 32, one center
//! per part, the maps drawn by mass) at the same shapes, whose peer is PyTorch's WS-DAN step,
//! `tools/torch_wsdan.py --time` (it runs the backbone three times: about a third of the plain
//! step's rate is its hardware-bound target). Prints `NETBENCH` lines; without a GPU it says so. With or without one it first
//! prints the bytes of the tensors the model allocates at each size, counted on the CPU backend
//! (the same allocations; the device adds cuDNN's workspace, the launchers' scratch and the
//! CUDA context).

use c2f_inception::backend::{prelude::*, BnMode, IndexTensor, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::CudaBackend;
use c2f_inception::network::SgdGroup;
use c2f_inception::Precision;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::testing::{bench_smoke, SplitMix64};
use c2f_train::train::{
    build_coarse2fine, build_wsdan, init_coarse2fine, init_wsdan, RunOptions, TrainConfig,
};
use c2f_train::wsdan::{Augmentation, MapChoice};
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "common/net.rs"]
mod net;
use net::{captured, network_shapes, time_training_step};

/// The step's config at batch `batch` and input side `size`.
fn config(batch: usize, size: usize) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch,
        input_size: size,
        ..TrainConfig::default()
    }
}

/// Prints the bytes of the tensors the model allocates at `batch` and `size`.
fn count_tensors(batch: usize, size: usize) {
    // Zero-filled host buffers are not touched here, so counting costs no real memory.
    let mut counter = CpuBackend::<f32>::new();
    build_coarse2fine(&mut counter, &config(batch, size)).unwrap();
    println!(
        "NETBENCH coarse2fine_b{batch}_{size} tensors {:.2} GiB (counted on the CPU backend)",
        counter.allocated_bytes() as f64 / (1u64 << 30) as f64
    );
}

/// A CUDA backend in `precision` for the row `name`, or `None` (and a skip line) without a GPU.
fn backend(name: &str, precision: Precision) -> Option<CudaBackend> {
    let mut b = cuda_or_skip(&format!("coarse2fine_gpu {name}"))?;
    b.set_precision(precision).unwrap();
    Some(b)
}

/// Writes random images in [-2, 2) to `input` and the labels 0, 1, … of one batch of `cfg` to
/// `labels`.
fn write_batch(b: &mut CudaBackend, cfg: &TrainConfig, input: Tensor, labels: IndexTensor) {
    let mut rng = SplitMix64(3);
    let images: Vec<f32> = (0..input.len)
        .map(|_| rng.uniform(-2.0, 2.0) as f32)
        .collect();
    let classes: Vec<i32> = (0..cfg.batch).map(|i| (i % cfg.classes) as i32).collect();
    b.write(input, &images).unwrap();
    b.write_index(labels, &classes).unwrap();
}

fn run_options() -> RunOptions {
    RunOptions {
        eval_every: 0,
        ..RunOptions::new("unused")
    }
}

/// One SGD group for every parameter at `cfg`'s base rate, its rate in device memory.
fn sgd_group(b: &mut CudaBackend, cfg: &TrainConfig) -> SgdGroup {
    let lr = b.alloc(1).unwrap();
    b.write(lr, &[cfg.lr as f32]).unwrap();
    SgdGroup {
        params: SgdParams::new(cfg.momentum, cfg.weight_decay),
        lr,
    }
}

/// The Coarse2Fine step in `precision`, run op by op or, with `graph`, replayed from a CUDA
/// graph as `c2f train` runs it (the `_graph` rows).
fn case(c: &mut Criterion, batch: usize, size: usize, precision: Precision, graph: bool) {
    let suffix = if graph { "_graph" } else { "" };
    let name = format!("coarse2fine_b{batch}_{size}_{precision}{suffix}");
    let cfg = config(batch, size);
    let Some(mut b) = backend(&name, precision) else {
        return;
    };
    let mut model = build_coarse2fine(&mut b, &cfg).unwrap();
    init_coarse2fine(&mut b, &model, &cfg, &run_options()).unwrap();
    write_batch(&mut b, &cfg, model.input(), model.labels());
    let chosen: Vec<i32> = (0..batch).map(|i| (i % cfg.maps) as i32).collect();
    let chosen_maps = model.chosen_maps().expect("Coarse2Fine has a fine pass");
    b.write_index(chosen_maps, &chosen).unwrap();
    let sgd = sgd_group(&mut b, &cfg);
    let group = format!("coarse2fine_gpu_{precision}");
    // The losses stay on the device, as in `c2f train`'s step (a host read could not be
    // captured).
    let eager = |b: &mut CudaBackend| {
        model.zero_grads(b).unwrap();
        model
            .forward_backward_reporting(b, BnMode::Train, &mut |_, _| Ok(()))
            .unwrap();
        model.sgd_step(b, &sgd).unwrap();
    };
    if graph {
        let replay = captured(&mut b, eager);
        time_training_step(c, &group, &name, batch, &mut b, replay);
    } else {
        time_training_step(c, &group, &name, batch, &mut b, eager);
    }
}

/// WS-DAN's step at the same shapes, on one fixed draw of its augmentation (the draws are
/// written each step, as `c2f train` writes them).
fn wsdan_case(c: &mut Criterion, batch: usize, size: usize, precision: Precision) {
    let name = format!("wsdan_b{batch}_{size}_{precision}");
    let cfg = config(batch, size);
    let Some(mut b) = backend(&name, precision) else {
        return;
    };
    let mut model = build_wsdan(&mut b, &cfg).unwrap();
    init_wsdan(&mut b, &model, &run_options()).unwrap();
    write_batch(&mut b, &cfg, model.input(), model.labels());
    let spread = |lo: f64, hi: f64| -> Vec<f64> {
        (0..batch)
            .map(|i| lo + (hi - lo) * i as f64 / batch as f64)
            .collect()
    };
    let aug = Augmentation {
        crop_maps: MapChoice::ByMass(spread(0.0, 1.0)),
        drop_maps: MapChoice::ByMass(spread(1.0, 0.0)),
        crop_thresholds: spread(0.4, 0.6),
        drop_thresholds: spread(0.2, 0.5),
    };
    let sgd = sgd_group(&mut b, &cfg);
    let group = format!("wsdan_gpu_{precision}");
    time_training_step(c, &group, &name, batch, &mut b, |b| {
        model.zero_grads(b).unwrap();
        model.forward_backward(b, BnMode::Train, &aug).unwrap();
        model.sgd_step_by(b, &|_| Some(sgd)).unwrap();
    });
}

fn bench(c: &mut Criterion) {
    let (batch, sizes) = network_shapes();
    for size in sizes {
        count_tensors(batch, size);
        // The smoke run takes bf16 only: the rows run the same code in every precision, which
        // the backend's tests cover, and each costs the emulator minutes.
        let precisions = match bench_smoke() {
            true => vec![Precision::Bf16],
            false => vec![Precision::F32, Precision::Tf32, Precision::Bf16],
        };
        for precision in precisions {
            case(c, batch, size, precision, false);
            wsdan_case(c, batch, size, precision);
        }
        case(c, batch, size, Precision::Bf16, true);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
