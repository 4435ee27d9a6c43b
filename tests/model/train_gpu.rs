//! Coarse2Fine on the CUDA backend against the CPU backend: one full training step (both passes,
//! the fine branch, both center banks, SGD) from the same weights and batch, for classes and for
//! attributes (the multi-label head), the same for the coarse-only ablation, the Coarse2Fine,
//! coarse-only and WS-DAN steps in bf16 against the CPU's f64 steps, a short `fit` on the
//! GPU that trains with finite losses, and (on the CPU emulator, which counts device allocations)
//! steps that allocate nothing after the first (WS-DAN's too; its step comparison, which uses
//! the helpers here, is in `wsdan.rs`), steps captured into a CUDA graph and replayed against
//! the same steps run eagerly, and `fit` with and without its graph. Without a GPU each test
//! prints `skipped: no CUDA device`.

use crate::common::train::{metrics, rates_at, sgd_group, synthetic_spec, tiny_config};
use c2f_inception::backend::{prelude::*, BnMode};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::CudaBackend;
use c2f_inception::Precision;
use c2f_kernels::augment::{attention_boxes_cpu, drop_mask_cpu, AugmentShape};
use c2f_kernels::testing::{emulator_allocation_count, rel_error, SplitMix64};
use c2f_kernels::Real;
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::data::loader::Batch as LoaderBatch;
use c2f_train::model::{Coarse2Fine, Task};
use c2f_train::state::Named;
use c2f_train::train::{
    batch_probabilities, build_baseline, build_coarse2fine, build_coarse_only, build_wsdan,
    init_baseline, init_coarse2fine, init_wsdan, train_coarse2fine, BatchShare, DeviceGraph,
    LearningRates, ModelKind, RunOptions, TrainConfig, Trainee,
};
use c2f_train::wsdan::{Augmentation, MapChoice, WsDanCenters, CROP_PADDING};

fn tiny() -> TrainConfig {
    tiny_config(0.01, 5)
}

fn run_options(dir: &std::path::Path) -> RunOptions {
    RunOptions::new(dir.to_path_buf())
}

/// One step's inputs, in f64 (each value exactly an f32).
struct Batch {
    images: Vec<f64>,
    labels: Vec<i32>,
    targets: Vec<f64>,
    chosen: Vec<i32>,
}

/// Every named tensor of a model's state, widened to f64.
pub type State = Vec<(String, Vec<f64>)>;

/// The model of `cfg`, with its fine pass (Coarse2Fine) or without (coarse-only).
fn build<B: Backend>(b: &mut B, cfg: &TrainConfig, fine: bool) -> Coarse2Fine {
    if fine {
        build_coarse2fine(b, cfg).unwrap()
    } else {
        build_coarse_only(b, cfg).unwrap()
    }
}

/// The four loss terms (the fine ones 0 without a fine pass) and the state after one step
/// from `init` on `b`.
fn step_from<B: Backend>(
    b: &mut B,
    cfg: &TrainConfig,
    fine: bool,
    init: &State,
    batch: &Batch,
) -> (Vec<f64>, State) {
    let mut model = build(b, cfg, fine);
    write_state(b, &model.state(), init);
    b.write(model.input(), &narrow::<B>(&batch.images)).unwrap();
    b.write_index(model.labels(), &batch.labels).unwrap();
    if cfg.task == Task::Attributes {
        b.write(model.targets(), &narrow::<B>(&batch.targets))
            .unwrap();
    }
    if let Some(chosen_maps) = model.chosen_maps() {
        b.write_index(chosen_maps, &batch.chosen).unwrap();
    }
    model.zero_grads(b).unwrap();
    let l = model.forward_backward(b, BnMode::Train).unwrap();
    let sgd = sgd_group(b, cfg.lr, cfg.momentum, cfg.weight_decay);
    model.sgd_step(b, &sgd).unwrap();
    (
        vec![l.coarse, l.fine, l.center_coarse, l.center_fine],
        read_state(b, &model.state()),
    )
}

/// f64 values in a backend's scalar.
pub fn narrow<B: Backend>(v: &[f64]) -> Vec<B::Scalar> {
    v.iter().map(|&x| B::Scalar::from_f64(x)).collect()
}

/// Writes `init` (a [`State`] of the same names, in order) into a model's `state`.
pub fn write_state<B: Backend>(b: &mut B, state: &[Named], init: &State) {
    for (tensor, (name, values)) in state.iter().zip(init) {
        assert_eq!(&tensor.name, name);
        b.write(tensor.tensor, &narrow::<B>(values)).unwrap();
    }
}

/// A model's state, read and widened to f64.
pub fn read_state<B: Backend>(b: &mut B, state: &[Named]) -> State {
    state
        .iter()
        .map(|t| {
            let values = b.read(t.tensor).unwrap();
            (t.name.clone(), values.iter().map(|v| v.to_f64()).collect())
        })
        .collect()
}

/// Coarse2Fine's step, then the coarse-only model's, for each task.
#[test]
fn coarse2fine_step_matches_cpu() {
    let Some(mut gpu) = cuda_or_skip("coarse2fine_step_matches_cpu") else {
        return;
    };
    for fine in [true, false] {
        for task in [Task::Classes, Task::Attributes] {
            step_matches_cpu(&mut gpu, task, fine);
        }
    }
}

/// How much further than the CPU backend's f32 run the GPU's may land from the f64 run, per
/// tensor. Two f32 implementations summing in different orders differ by a few times each other's
/// rounding through the batch-4 BatchNorms, and more where cuDNN's algorithms (Winograd, FFT,
/// tiled GEMMs) round differently from the CPU's im2col GEMM: the CPU emulator of `tools/cuda-emu`
/// lands 2-6x as far as the CPU, an H200 (2026-11-27, commit 488c9d7) 10-16x, on the backbone's
/// BN gradients and the up-sampler's biases, the ends of the longest backward chains. A wrong
/// index or a missing term is off by orders of magnitude more.
const F32_SPREAD: f64 = 30.0;
/// Below this the f64 comparison is at f32's own resolution.
const F32_FLOOR: f64 = 1e-5;

/// The GPU step and the CPU backend's f32 step, from the same weights and batch, are each held
/// to the CPU backend's f64 step: the GPU's error on every tensor of the state (parameters moved
/// by one step, momentum = the step's gradient, running statistics, center banks) must be within
/// [`F32_SPREAD`] times the f32 CPU run's. Comparing the GPU with the f32 CPU run directly would
/// need a bound above the f32 noise of the worst-conditioned tensor (1.2e-2 on the up-sampler's
/// first bias for attributes) for every tensor.
fn step_matches_cpu(gpu: &mut c2f_inception::cuda::CudaBackend, task: Task, fine: bool) {
    let cfg = TrainConfig { task, ..tiny() };
    let (run64, run32, init) = cpu_steps(task, fine);
    let gpu_run = step_from(gpu, &cfg, fine, &init, &step_batch(&cfg));
    assert_gpu_step_near_cpu(
        &format!("fine pass {fine}, {task:?}"),
        &run64,
        &run32,
        &gpu_run,
    );
}

/// The batch every step test of `cfg` takes: random images, fixed labels, targets and maps.
fn step_batch(cfg: &TrainConfig) -> Batch {
    let mut rng = SplitMix64(11);
    Batch {
        images: (0..cfg.batch * 3 * 75 * 75)
            .map(|_| rng.uniform(-2.0, 2.0) as f32 as f64)
            .collect(),
        labels: vec![0, 2, 1, 2],
        // Three attributes per image for the multi-label head.
        targets: (0..cfg.batch * cfg.classes)
            .map(|i| (i % 2) as f64)
            .collect(),
        chosen: vec![1, 0, 0, 1],
    }
}

/// The CPU backend's f64 and f32 steps of the tiny model for `task` (with its fine pass or
/// without), from the initial state also returned.
fn cpu_steps(task: Task, fine: bool) -> (StepRun, StepRun, State) {
    let cfg = TrainConfig { task, ..tiny() };
    let batch = step_batch(&cfg);
    let mut cpu = CpuBackend::<f32>::new();
    let model = build(&mut cpu, &cfg, fine);
    init_coarse2fine(
        &mut cpu,
        &model,
        &cfg,
        &run_options(std::path::Path::new("unused")),
    )
    .unwrap();
    let init = read_state(&mut cpu, &model.state());
    let run64 = step_from(&mut CpuBackend::<f64>::new(), &cfg, fine, &init, &batch);
    let run32 = step_from(&mut CpuBackend::<f32>::new(), &cfg, fine, &init, &batch);
    (run64, run32, init)
}

/// One step's loss terms and the state after it.
pub type StepRun = (Vec<f64>, State);

/// How far a GPU step may land from the f64 one: each loss term within `loss` (relative), each
/// tensor of the state within `spread` times the f32 CPU step's distance plus `floor`.
#[derive(Clone, Copy)]
pub struct StepBounds {
    pub loss: f64,
    pub spread: f64,
    pub floor: f64,
}

/// The f32 GPU step's bounds: [`F32_SPREAD`] and [`F32_FLOOR`].
pub const F32_BOUNDS: StepBounds = StepBounds {
    loss: 1e-3,
    spread: F32_SPREAD,
    floor: F32_FLOOR,
};

/// Holds the GPU's step to the CPU backend's f64 step (`run64`) within [`F32_BOUNDS`], each
/// tensor's bound scaled from the f32 CPU step's (`run32`) distance; `what` names the case.
pub fn assert_gpu_step_near_cpu(what: &str, run64: &StepRun, run32: &StepRun, gpu: &StepRun) {
    let misses = gpu_step_misses(what, run64, run32, gpu, F32_BOUNDS);
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

/// What of the GPU's step lies outside `bounds` (see [`StepBounds`]), printing the ten tensors
/// nearest their bound.
pub fn gpu_step_misses(
    what: &str,
    run64: &StepRun,
    run32: &StepRun,
    gpu: &StepRun,
    bounds: StepBounds,
) -> Vec<String> {
    let ((losses64, state64), (_, state32), (gpu_losses, gpu_state)) = (run64, run32, gpu);
    let mut misses = Vec::new();
    for (k, (r, g)) in losses64.iter().zip(gpu_losses).enumerate() {
        if (r - g).abs() > bounds.loss * r.abs().max(1e-3) || g.is_nan() {
            misses.push(format!("{what}: loss term {k}: f64 {r}, gpu {g}"));
        }
    }
    // Every tensor is measured before any assertion, so a failure shows the whole spread (an
    // index bug stands out from rounding by orders of magnitude).
    let mut ratios = Vec::new();
    for (((name, r), (_, c)), (_, g)) in state64.iter().zip(state32).zip(gpu_state) {
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what}: {name}: non-finite on the GPU"
        );
        let (cpu_err, gpu_err) = (rel_error(c, r), rel_error(g, r));
        let bound = bounds.spread * cpu_err + bounds.floor;
        ratios.push((gpu_err / bound, name.clone(), gpu_err, cpu_err, bound));
    }
    ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("{what}: the ten tensors nearest their bound");
    for (ratio, name, gpu_err, cpu_err, bound) in ratios.iter().take(10) {
        println!(
            "  {name}: GPU {gpu_err:.2e} from f64, f32 CPU {cpu_err:.2e}, bound {bound:.2e} \
             ({ratio:.2} of it)"
        );
    }
    for (_, name, gpu_err, cpu_err, bound) in &ratios {
        if gpu_err.is_nan() || gpu_err > bound {
            misses.push(format!(
                "{what}: {name}: the GPU is {gpu_err:.2e} from f64, the f32 CPU {cpu_err:.2e} \
                 (bound {bound:.2e})"
            ));
        }
    }
    misses
}

/// A dropped term fails [`BF16_BOUNDS`]: `ours` with one gradient zeroed (the momentum, after one
/// step the gradient, whose f32 run is nearest the f64 one, so whose bound is tightest) misses.
fn assert_dropped_gradient_misses(what: &str, run64: &StepRun, run32: &StepRun, ours: &StepRun) {
    let mut dropped = ours.clone();
    let ((_, state64), (_, state32)) = (run64, run32);
    let (index, _) = state64
        .iter()
        .zip(state32)
        .enumerate()
        .filter(|(_, ((name, _), _))| name.starts_with("momentum."))
        .map(|(i, ((_, r), (_, c)))| (i, rel_error(c, r)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("a momentum tensor");
    let (name, values) = &mut dropped.1[index];
    values.fill(0.0);
    let name = name.clone();
    let misses = gpu_step_misses(what, run64, run32, &dropped, BF16_BOUNDS);
    assert!(
        misses.iter().any(|m| m.contains(&name)),
        "{what}: dropping {name} passed: {misses:?}"
    );
}

/// bf16's unit roundoff over f32's (2⁻⁸ / 2⁻²⁴): a bf16 step rounds each activation and
/// activation gradient to 8 significant bits where an f32 step rounds to 24, so, rounding at the
/// same places, it lands at most about this much farther from the f64 step.
const BF16_SPREAD: f64 = 65_536.0;
/// Below this the f64 comparison is at bf16's own resolution (2⁻⁸ of a tensor's norm).
const BF16_FLOOR: f64 = 1.0 / 256.0;

/// The bf16 step's bounds: [`BF16_SPREAD`] and [`BF16_FLOOR`], the loss terms within 2⁻⁴ (the
/// logits carry bf16's rounding of the features through the classifiers).
pub const BF16_BOUNDS: StepBounds = StepBounds {
    loss: 1.0 / 16.0,
    spread: BF16_SPREAD,
    floor: BF16_FLOOR,
};

/// A whole Coarse2Fine step in bf16 on the GPU (both passes, the losses, every gradient through
/// momentum, the centers and the running statistics; the coarse-only model's too) against the
/// CPU backend's f64 step within [`BF16_BOUNDS`]; a dropped term fails them: one parameter's
/// gradient (its momentum after the step) zeroed.
#[test]
fn bf16_coarse2fine_step_matches_cpu_f64() {
    let Some(mut gpu) = cuda_or_skip("bf16_coarse2fine_step_matches_cpu_f64") else {
        return;
    };
    gpu.set_precision(Precision::Bf16).unwrap();
    for fine in [true, false] {
        let what = format!("bf16, fine pass {fine}");
        let (run64, run32, init) = cpu_steps(Task::Classes, fine);
        let cfg = TrainConfig {
            task: Task::Classes,
            ..tiny()
        };
        let ours = step_from(&mut gpu, &cfg, fine, &init, &step_batch(&cfg));
        let misses = gpu_step_misses(&what, &run64, &run32, &ours, BF16_BOUNDS);
        assert!(misses.is_empty(), "{}", misses.join("\n"));
        assert_dropped_gradient_misses(&what, &run64, &run32, &ours);
    }
}

/// A whole WS-DAN step in bf16 on the GPU (the raw, crop and drop passes, the losses, every
/// gradient through momentum, the center bank and the running statistics) against the CPU
/// backend's f64 step within [`BF16_BOUNDS`], as [`bf16_coarse2fine_step_matches_cpu_f64`]
/// holds Coarse2Fine's; a dropped gradient fails them. The crop boxes and drop masks threshold
/// the raw pass's maps, which bf16 moves by 20-80% on this tiny network (its Mixed_6e features
/// are that far off, as Coarse2Fine's are): a box edge or a dropped pixel that flips changes a
/// whole pass's input, beyond any rounding bound. So the augmentation is fed identical inputs:
/// the crop and drop maps are given (exact in bf16), each sample's thresholds the first from
/// the middle of WS-DAN's ranges up at which f64 and f32 decide alike (the bf16 kernels decide as f32, bit for
/// bit: `inception_cuda::augment_ops_match_cpu_in_bf16`), and the three steps' boxes and
/// dropped pixels are checked equal before their states are compared.
#[test]
fn bf16_wsdan_step_matches_cpu_f64() {
    let Some(mut gpu) = cuda_or_skip("bf16_wsdan_step_matches_cpu_f64") else {
        return;
    };
    gpu.set_precision(Precision::Bf16).unwrap();
    let cfg = TrainConfig {
        task: Task::Classes,
        wsdan_maps: 4,
        wsdan_centers: WsDanCenters::PerClass,
        ..tiny()
    };
    let mut rng = SplitMix64(11);
    let images: Vec<f64> = (0..cfg.batch * 3 * 75 * 75)
        .map(|_| rng.uniform(-2.0, 2.0) as f32 as f64)
        .collect();
    let mut cpu = CpuBackend::<f32>::new();
    let model = build_wsdan(&mut cpu, &cfg).unwrap();
    init_wsdan(
        &mut cpu,
        &model,
        &run_options(std::path::Path::new("unused")),
    )
    .unwrap();
    let init = read_state(&mut cpu, &model.state());
    let (h, w) = model.map_side();
    // Maps as the ReLU leaves them, about half zero, the rest eighths up to 2 (exact in bf16).
    let mut given = || -> Vec<f64> {
        (0..cfg.batch * h * w)
            .map(|_| rng.below(33).saturating_sub(16) as f64 / 8.0)
            .collect()
    };
    let (crop_maps, drop_maps) = (given(), given());
    let one = AugmentShape {
        batch: 1,
        channels: 1,
        height: 75,
        width: 75,
        map_height: h,
        map_width: w,
    };
    let (mut crop, mut drop) = (Vec::new(), Vec::new());
    for b in 0..cfg.batch {
        let map = |maps: &[f64]| maps[b * h * w..][..h * w].to_vec();
        let (c64, d64) = (map(&crop_maps), map(&drop_maps));
        let (c32, d32) = (narrow_f32(&c64), narrow_f32(&d64));
        let whole = [0, 0, 75, 75];
        crop.push(agreed_threshold(0.5, |t| {
            let boxes = box_of(&one, &c64, t);
            (boxes == box_of(&one, &c32, t)).then_some(boxes != whole)
        }));
        drop.push(agreed_threshold(0.35, |t| {
            let kept = kept_of(&one, &d64, t);
            (kept == kept_of(&one, &d32, t)).then(|| kept.contains(&false))
        }));
    }
    println!("crop thresholds {crop:?}, drop thresholds {drop:?}");
    let aug = Augmentation {
        crop_maps: MapChoice::Maps(crop_maps),
        drop_maps: MapChoice::Maps(drop_maps),
        crop_thresholds: crop,
        drop_thresholds: drop,
    };

    let what = "bf16, WS-DAN";
    let batch = (&images[..], &[][..]);
    let (decided64, run64) = wsdan_step(&mut CpuBackend::<f64>::new(), &cfg, &init, batch, &aug);
    let (decided32, run32) = wsdan_step(&mut CpuBackend::<f32>::new(), &cfg, &init, batch, &aug);
    let (decided16, ours) = wsdan_step(&mut gpu, &cfg, &init, batch, &aug);
    let (boxes, dropped) = &decided64;
    let whole = boxes.chunks(4).filter(|b| *b == [0, 0, 75, 75]).count();
    println!(
        "{what}: {whole} of {} boxes whole, {} of {} pixels dropped",
        cfg.batch,
        dropped.iter().filter(|&&d| d).count(),
        dropped.len()
    );
    assert!(whole < cfg.batch && dropped.contains(&true));
    assert!(decided32 == decided64, "f32 cropped or dropped otherwise");
    assert!(decided16 == decided64, "bf16 cropped or dropped otherwise");
    let misses = gpu_step_misses(what, &run64, &run32, &ours, BF16_BOUNDS);
    assert!(misses.is_empty(), "{}", misses.join("\n"));
    assert_dropped_gradient_misses(what, &run64, &run32, &ours);
}

/// The crop boxes and the dropped pixels (those of the drop pass's input, the network's input
/// after the step, that are 0) of WS-DAN's step of `cfg` from `init` on `b`
/// ([`crate::wsdan::step_model`]), and its loss terms and state.
fn wsdan_step<B: Backend>(
    b: &mut B,
    cfg: &TrainConfig,
    init: &State,
    batch: (&[f64], &[f64]),
    aug: &Augmentation,
) -> ((Vec<i32>, Vec<bool>), StepRun) {
    let (model, run) = crate::wsdan::step_model(b, cfg, init, batch, aug);
    let boxes = b.read_index(model.boxes()).unwrap();
    let input = b.read(model.backbone().input()).unwrap();
    let dropped = input.iter().map(|v| v.to_f64() == 0.0).collect();
    ((boxes, dropped), run)
}

/// f64 values that are f32 values, as f32.
fn narrow_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The crop box of one map at threshold `t` (WS-DAN's padding).
fn box_of<R: Real>(one: &AugmentShape, map: &[R], t: f64) -> [i32; 4] {
    let mut out = [0; 4];
    attention_boxes_cpu(one, CROP_PADDING, map, &[R::from_f64(t)], &mut out).unwrap();
    out
}

/// Which pixels the drop of one map at threshold `t` keeps.
fn kept_of<R: Real>(one: &AugmentShape, map: &[R], t: f64) -> Vec<bool> {
    let mut out = vec![R::zero(); one.hw()];
    let ones = vec![R::one(); one.hw()];
    drop_mask_cpu(one, map, &[R::from_f64(t)], &ones, &mut out).unwrap();
    out.iter().map(|&v| v != R::zero()).collect()
}

/// The first threshold from `from` up, in steps of 2⁻⁸ (each exact in bf16) below 1, at which
/// `agreed` is `Some` (the three steps decide alike), preferring one where it is `Some(true)`
/// (the decision does something).
fn agreed_threshold(from: f64, agreed: impl Fn(f64) -> Option<bool>) -> f64 {
    let candidates: Vec<(f64, bool)> = ((from * 256.0).ceil() as usize..256)
        .map(|k| k as f64 / 256.0)
        .filter_map(|t| agreed(t).map(|useful| (t, useful)))
        .collect();
    let (first, _) = *candidates
        .first()
        .expect("a threshold the three steps agree at");
    candidates
        .iter()
        .find(|(_, useful)| *useful)
        .map_or(first, |&(t, _)| t)
}

#[test]
fn coarse2fine_trains_on_the_gpu() {
    let Some(mut gpu) = cuda_or_skip("coarse2fine_trains_on_the_gpu") else {
        return;
    };
    let spec = synthetic_spec(8, 4, 1, (0.6, 0.9));
    let data = spec.open(75, DEFAULT_MAX_PIXELS).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("train_gpu_fit");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = TrainConfig {
        epochs: 2,
        ..tiny()
    };
    let acc = train_coarse2fine(&mut gpu, &cfg, &run_options(&dir), &data, None)
        .unwrap()
        .unwrap();
    assert!((0.0..=1.0).contains(&acc.accuracy.coarse), "{acc:?}");
    let meta = c2f_train::checkpoint::read_meta(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(meta.step, 4);
}

/// A batch of `cfg`'s shape with random images and labels.
fn random_batch(cfg: &TrainConfig, seed: u64) -> LoaderBatch {
    let mut rng = SplitMix64(seed);
    let pixels = cfg.batch * 3 * cfg.input_size * cfg.input_size;
    LoaderBatch {
        images: (0..pixels).map(|_| rng.uniform(-2.0, 2.0) as f32).collect(),
        labels: (0..cfg.batch)
            .map(|_| rng.below(cfg.classes as u64) as i32)
            .collect(),
        attributes: vec![Vec::new(); cfg.batch],
        boxes: vec![None; cfg.batch],
        indices: (0..cfg.batch).collect(),
        size: cfg.input_size,
        skipped: Vec::new(),
    }
}

/// The emulator's allocation count after each of three training steps taken as `fit` takes them
/// (the batch written, forward and backward, the step's statistics read, SGD), then
/// after each of two evaluations of a batch.
fn allocations_per_step<M: Trainee<CudaBackend>>(
    b: &mut CudaBackend,
    model: &mut M,
    cfg: &TrainConfig,
) -> Vec<u64> {
    let mut draw = SplitMix64(3);
    let mut counts = Vec::new();
    let rates = rates_at(b, cfg);
    for step in 0..3 {
        let batch = random_batch(cfg, 10 + step);
        let share = BatchShare::whole(cfg.batch);
        model
            .write_step_inputs(b, &batch, &mut draw, step, &share)
            .unwrap();
        model.step(b, BnMode::Train, &mut |_, _, _| Ok(())).unwrap();
        let stats = model.stats();
        let values = b.read(stats.tensor).unwrap();
        let losses: Vec<f32> = stats.losses.iter().map(|&i| values[i]).collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        model.sgd_step(b, &cfg.sgd_rule(&rates)).unwrap();
        b.synchronize().unwrap();
        counts.push(emulator_allocation_count().unwrap());
    }
    for seed in [20, 21] {
        model
            .probabilities(b, &random_batch(cfg, seed).images)
            .unwrap();
        counts.push(emulator_allocation_count().unwrap());
    }
    counts
}

/// Issue 3's memory rule: activations, scratch and plans are made once per (batch, resolution),
/// so once the first step and the first evaluation have run, neither allocates device memory
/// again, for Coarse2Fine, the coarse-only model, the baseline and WS-DAN.
#[test]
fn training_steps_allocate_nothing_after_the_first() {
    let test = "training_steps_allocate_nothing_after_the_first";
    let Some(mut gpu) = cuda_or_skip(test) else {
        return;
    };
    if emulator_allocation_count().is_none() {
        println!("{test}: skipped: only the CPU emulator counts device allocations");
        return;
    }
    let cfg = tiny();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("train_gpu_allocations");
    let run = run_options(&dir);
    let mut c2f = build_coarse2fine(&mut gpu, &cfg).unwrap();
    init_coarse2fine(&mut gpu, &c2f, &cfg, &run).unwrap();
    let c2f_counts = allocations_per_step(&mut gpu, &mut c2f, &cfg);
    let mut coarse_only = build(&mut gpu, &cfg, false);
    init_coarse2fine(&mut gpu, &coarse_only, &cfg, &run).unwrap();
    let coarse_only_counts = allocations_per_step(&mut gpu, &mut coarse_only, &cfg);
    let mut baseline = build_baseline(&mut gpu, &cfg).unwrap();
    init_baseline(&mut gpu, &baseline, &run).unwrap();
    let baseline_counts = allocations_per_step(&mut gpu, &mut baseline, &cfg);
    let mut wsdan = build_wsdan(&mut gpu, &cfg).unwrap();
    init_wsdan(&mut gpu, &wsdan, &run).unwrap();
    let wsdan_counts = allocations_per_step(&mut gpu, &mut wsdan, &cfg);
    // The count does move when something allocates.
    let before = emulator_allocation_count().unwrap();
    let _scratch = gpu.gpu().alloc_zeros::<f32>(16).unwrap();
    assert_eq!(emulator_allocation_count().unwrap(), before + 1);
    for (model, counts) in [
        ("Coarse2Fine", c2f_counts),
        ("coarse-only", coarse_only_counts),
        ("baseline", baseline_counts),
        ("WS-DAN", wsdan_counts),
    ] {
        // After step 1, then steps 2 and 3; after evaluation 1, then evaluation 2.
        assert!(
            counts[0] == counts[1] && counts[1] == counts[2] && counts[3] == counts[4],
            "{model}: device allocations after each step and evaluation {counts:?}"
        );
    }
}

/// The base rate and λ of step `k` of [`steps_on`]: new values every step, as the warmups
/// give.
fn step_values(cfg: &TrainConfig, k: usize) -> (f64, f64) {
    (cfg.lr * [1.0, 0.5, 0.2][k], [0.2, 0.7, 1.0][k])
}

/// Three steps of `model` as `fit` takes them, from what the backend holds: the host writes
/// (each step's rate into `rates`, λ, the batch and the random choices, dropout's step), then
/// the device work (forward and backward, SGD), run op by op or, with `captured`, captured once
/// at the first step and replayed at every step. The step statistics after each step, and the
/// state after the last.
fn steps_on<M: Trainee<CudaBackend>>(
    b: &mut CudaBackend,
    model: &mut M,
    cfg: &TrainConfig,
    rates: &LearningRates,
    captured: bool,
) -> (Vec<Vec<f32>>, State) {
    let share = BatchShare::whole(cfg.batch);
    let rule = cfg.sgd_rule(rates);
    let mut draw = SplitMix64(7);
    let mut graph = None;
    let mut stats = Vec::new();
    for k in 0..3 {
        let (lr, lambda) = step_values(cfg, k);
        rates.write(b, cfg, lr).unwrap();
        model.set_center_lambda(b, lambda).unwrap();
        let batch = random_batch(cfg, 40 + k as u64);
        model
            .write_step_inputs(b, &batch, &mut draw, 10 + k as u64, &share)
            .unwrap();
        let mut work = |b: &mut CudaBackend| {
            model.step(b, BnMode::Train, &mut |_, _, _| Ok(()))?;
            model.sgd_step(b, &rule)
        };
        if captured {
            let ops = graph.get_or_insert_with(|| b.capture(&mut work).unwrap());
            b.replay(ops).unwrap();
        } else {
            work(b).unwrap();
        }
        let values = b.read(model.stats().tensor).unwrap();
        for &slot in &model.stats().losses {
            assert!(
                values[slot].is_finite(),
                "step {k}, loss slot {slot}: {values:?}"
            );
        }
        stats.push(values);
    }
    (stats, read_state(b, &model.state()))
}

/// After one eager warm-up step of `model`, three steps captured once and replayed give the
/// bits (every state tensor: parameters, momentum, running statistics, center banks; and each
/// step's losses and right answers) of the same steps run eagerly from the same state, though
/// the rate, λ, the batch and dropout's step change every step.
fn assert_replays_match_eager<M: Trainee<CudaBackend>>(
    b: &mut CudaBackend,
    model: &mut M,
    cfg: &TrainConfig,
    name: &str,
) {
    let rates = rates_at(b, cfg);
    let share = BatchShare::whole(cfg.batch);
    let warm_up = random_batch(cfg, 30);
    model
        .write_step_inputs(b, &warm_up, &mut SplitMix64(5), 0, &share)
        .unwrap();
    model.step(b, BnMode::Train, &mut |_, _, _| Ok(())).unwrap();
    model.sgd_step(b, &cfg.sgd_rule(&rates)).unwrap();
    let state = Trainee::<CudaBackend>::state(model);
    let start = read_state(b, &state);
    let (eager_stats, eager) = steps_on(b, model, cfg, &rates, false);
    write_state(b, &state, &start);
    let (replayed_stats, replayed) = steps_on(b, model, cfg, &rates, true);
    assert_ne!(eager, start, "{name}: the steps changed nothing");
    for (k, (e, r)) in eager_stats.iter().zip(&replayed_stats).enumerate() {
        assert!(e == r, "{name}: step {k} statistics {r:?}, eagerly {e:?}");
    }
    for ((tensor, a), (_, b)) in eager.iter().zip(&replayed) {
        assert!(a == b, "{name}: {tensor} differs after the replayed steps");
    }
}

/// A step captured into a CUDA graph is what `fit` replays: `Trainee::step` and SGD hold no
/// host read, write or allocation (the emulator refuses them inside a capture, as a GPU does),
/// and every value that changes between steps (the rate per parameter group, λ, dropout's
/// step, the batch and the random choices) is read from the device, so a graph captured once
/// replays three steps of Coarse2Fine, the coarse-only model, the baseline and WS-DAN (and of
/// Coarse2Fine, the baseline and WS-DAN in bf16) with the bits of the same steps run eagerly.
#[test]
fn emulator_replayed_steps_match_eager_ones_as_values_change() {
    let test = "emulator_replayed_steps_match_eager_ones_as_values_change";
    let Some(mut gpu) = cuda_or_skip(test) else {
        return;
    };
    let cfg = tiny();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("train_gpu_capture");
    let run = run_options(&dir);
    for (fine, name) in [(true, "Coarse2Fine"), (false, "coarse-only")] {
        let mut model = build(&mut gpu, &cfg, fine);
        init_coarse2fine(&mut gpu, &model, &cfg, &run).unwrap();
        assert_replays_match_eager(&mut gpu, &mut model, &cfg, name);
    }
    let mut baseline = build_baseline(&mut gpu, &cfg).unwrap();
    init_baseline(&mut gpu, &baseline, &run).unwrap();
    assert_replays_match_eager(&mut gpu, &mut baseline, &cfg, "baseline");
    let mut wsdan = build_wsdan(&mut gpu, &cfg).unwrap();
    init_wsdan(&mut gpu, &wsdan, &run).unwrap();
    assert_replays_match_eager(&mut gpu, &mut wsdan, &cfg, "WS-DAN");
    // In bf16, channels-last, with its conversions (weights, layouts) inside the graph.
    let mut bf16 = cuda_or_skip(test).expect("opened above");
    bf16.set_precision(Precision::Bf16).unwrap();
    let mut model = build(&mut bf16, &cfg, true);
    init_coarse2fine(&mut bf16, &model, &cfg, &run).unwrap();
    assert_replays_match_eager(&mut bf16, &mut model, &cfg, "Coarse2Fine in bf16");
    let mut baseline = build_baseline(&mut bf16, &cfg).unwrap();
    init_baseline(&mut bf16, &baseline, &run).unwrap();
    assert_replays_match_eager(&mut bf16, &mut baseline, &cfg, "the baseline in bf16");
    let mut wsdan = build_wsdan(&mut bf16, &cfg).unwrap();
    init_wsdan(&mut bf16, &wsdan, &run).unwrap();
    assert_replays_match_eager(&mut bf16, &mut wsdan, &cfg, "WS-DAN in bf16");
}

/// Each batch's probabilities from `model` on `b`, inferred through an evaluation graph that
/// replays (`replay`) or runs op by op; and whether it ended replaying.
fn probabilities_of<M: Trainee<CudaBackend>>(
    b: &mut CudaBackend,
    model: &mut M,
    batches: &[Vec<f32>],
    replay: bool,
) -> (Vec<Vec<Vec<f64>>>, bool) {
    let mut graph = DeviceGraph::new("evaluation", replay);
    let outputs = model.outputs();
    let heads = batches
        .iter()
        .map(|images| batch_probabilities(b, model, images, outputs, &mut graph).unwrap())
        .collect();
    (heads, graph.replays())
}

/// Evaluation's inference captured once and replayed (the graph `fit` evaluates through) gives
/// the bits of the same batches run op by op, for Coarse2Fine, the coarse-only model, the
/// baseline and WS-DAN, though every batch's images differ; from the third batch on it is
/// really replayed (inference holds no host work).
#[test]
fn emulator_evaluation_replayed_matches_eager() {
    let test = "emulator_evaluation_replayed_matches_eager";
    let Some(mut gpu) = cuda_or_skip(test) else {
        return;
    };
    let cfg = tiny();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("train_gpu_eval_graph");
    let run = run_options(&dir);
    let batches: Vec<Vec<f32>> = (0..4).map(|k| random_batch(&cfg, 60 + k).images).collect();
    let check = |name: &str, (eager, _): (Vec<Vec<Vec<f64>>>, bool), replayed| {
        let (replayed, replays): (Vec<Vec<Vec<f64>>>, bool) = replayed;
        assert!(replays, "{name}: the evaluation was not replayed");
        assert_ne!(
            eager[2], eager[3],
            "{name}: two batches gave the same probabilities"
        );
        assert!(eager == replayed, "{name}: replayed probabilities differ");
    };
    for (fine, name) in [(true, "Coarse2Fine"), (false, "coarse-only")] {
        let mut model = build(&mut gpu, &cfg, fine);
        init_coarse2fine(&mut gpu, &model, &cfg, &run).unwrap();
        let eager = probabilities_of(&mut gpu, &mut model, &batches, false);
        check(
            name,
            eager,
            probabilities_of(&mut gpu, &mut model, &batches, true),
        );
    }
    let mut baseline = build_baseline(&mut gpu, &cfg).unwrap();
    init_baseline(&mut gpu, &baseline, &run).unwrap();
    let eager = probabilities_of(&mut gpu, &mut baseline, &batches, false);
    check(
        "baseline",
        eager,
        probabilities_of(&mut gpu, &mut baseline, &batches, true),
    );
    let mut wsdan = build_wsdan(&mut gpu, &cfg).unwrap();
    init_wsdan(&mut gpu, &wsdan, &run).unwrap();
    let eager = probabilities_of(&mut gpu, &mut wsdan, &batches, false);
    check(
        "WS-DAN",
        eager,
        probabilities_of(&mut gpu, &mut wsdan, &batches, true),
    );
}

/// The numbers of a run's metrics.jsonl (what its timing and `cuda_graph` say left out).
fn metric_numbers(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut lines = metrics(dir);
    for line in &mut lines {
        let record = line.as_object_mut().unwrap();
        record.remove("images_per_s");
        record.remove("cuda_graph");
    }
    lines
}

/// `fit` with its steps captured into a CUDA graph and replayed, and with `--no-cuda-graph`
/// (every step op by op), gives the same run: the same metrics.jsonl numbers and checkpoint
/// bytes, over 2 epochs of 2 steps whose rate and λ warm up every step, for Coarse2Fine, the
/// baseline and WS-DAN; the metrics say which ran.
#[test]
fn emulator_fit_with_and_without_cuda_graph_gives_the_same_run() {
    let test = "emulator_fit_with_and_without_cuda_graph_gives_the_same_run";
    let Some(mut gpu) = cuda_or_skip(test) else {
        return;
    };
    let spec = synthetic_spec(8, 4, 1, (0.6, 0.9));
    let data = spec.open(75, DEFAULT_MAX_PIXELS).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        warmup_epochs: 2.0,
        center_warmup_epochs: 2.0,
        ..tiny()
    };
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("train_gpu_graph_fit");
    for kind in [
        ModelKind::Coarse2Fine,
        ModelKind::Baseline,
        ModelKind::WsDan,
    ] {
        let mut runs = Vec::new();
        for cuda_graph in [true, false] {
            let dir = root.join(format!("{}_{cuda_graph}", kind.name()));
            let _ = std::fs::remove_dir_all(&dir);
            let run = RunOptions {
                cuda_graph,
                ..run_options(&dir)
            };
            kind.trainer()(&mut gpu, &cfg, &run, &data, None).unwrap();
            let records = metrics(&dir);
            let said: Vec<bool> = records.iter().map(|r| r["cuda_graph"] == true).collect();
            assert_eq!(
                said,
                [cuda_graph; 2],
                "{}: metrics' cuda_graph",
                kind.name()
            );
            let checkpoint = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
            runs.push((metric_numbers(&dir), checkpoint));
        }
        assert_eq!(runs[0].0, runs[1].0, "{}: metrics", kind.name());
        assert!(runs[0].1 == runs[1].1, "{}: checkpoint bytes", kind.name());
    }
}
