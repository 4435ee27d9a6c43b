//! The WS-DAN model (c2f_train::wsdan) on a tiny network in f64: one training step's gradient
//! (the three passes, the attention conv and BN, the head, the backbone) against finite
//! differences of each loss term, with the augmentation's choices held fixed; that each of the
//! crop and drop passes adds its own gradient (leaving either out is far outside the bound),
//! and `--wsdan-passes` leaves out exactly the loss and gradient of a pass it drops;
//! an all-zero attention giving whole-image crops, no drop and finite losses; maps given whole
//! stepping as the maps they equal; the state's
//! names and shapes, which the PyTorch golden test reads; and on the CUDA backend (the CPU
//! emulator here), a step against the CPU backend's and a short `fit`, each printing
//! `skipped: no CUDA device` without a GPU; `c2f train --models wsdan` and every command on its
//! checkpoint, on the synthetic set and on a CUB-layout folder without boxes.

use std::sync::OnceLock;

use crate::cli::{
    c2f_ok, c2f_refused, localize_json, only_record, path, predictions_on_cpu, scratch,
    synthetic_images, train_tiny_synthetic, two_pictures,
};
use crate::common::tiny::{golden_backbone, uniform, write_answers};
use crate::common::train::{
    rates_at, synthetic_spec, tiny_config as tiny_train_config, TINY_TRAIN,
};
use crate::train_gpu::{assert_gpu_step_near_cpu, narrow, read_state, write_state, State, StepRun};
use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_kernels::augment::{attention_boxes_cpu, drop_mask_cpu, AugmentShape};
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::testing::{rel_error, SplitMix64};
use c2f_kernels::Real;
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::train::{build_wsdan, init_wsdan, ModelKind, RunOptions, TrainConfig};
use c2f_train::wsdan::{
    Augmentation, MapChoice, Task, WsDan, WsDanCenters, WsDanConfig, WsDanLosses, WsDanPasses,
    CROP_PADDING,
};

const BATCH: usize = 3;
const SIZE: usize = 75;
const MAPS: usize = 4;
const LABELS: [i32; BATCH] = [2, 0, 1];
/// Three attributes per sample, for [`Task::Attributes`].
const TARGETS: [f64; BATCH * 3] = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
const CROP_MAPS: [i32; BATCH] = [1, 0, 3];
const DROP_MAPS: [i32; BATCH] = [2, 3, 0];
/// Finite differences against the analytic gradient, each probed tensor's values together.
const TOLERANCE: f64 = 1e-4;

fn tiny_config(task: Task, centers: WsDanCenters, beta: f64) -> WsDanConfig {
    WsDanConfig {
        input_size: SIZE,
        width: 0.125,
        classes: 3,
        task,
        maps: MAPS,
        centers,
        passes: WsDanPasses::default(),
        center_loss: CenterLossParams {
            lambda: 1.0,
            beta,
            rule: CenterRule::MovingAverage,
        },
        batch: BATCH,
    }
}

/// The model of `config` with random weights, running statistics, center bank and input from
/// `seed`: the classifier small enough that no sample's softmax saturates, the attention BN's
/// weights and running variances positive and its biases too, so that few maps are all zero
/// after the ReLU (a map that is flat crops nothing and drops nothing).
fn tiny<R: Real>(config: WsDanConfig, seed: u64) -> (CpuBackend<R>, WsDan) {
    let mut cpu = CpuBackend::<R>::new();
    let model = WsDan::new(&mut cpu, config).unwrap();
    golden_backbone(&mut cpu, model.backbone());
    let mut rng = SplitMix64(seed);
    let mut random = |n: usize, lo: f64, hi: f64| uniform::<R>(&mut rng, n, lo, hi);
    let mut heads = random(model.params.len, -0.3, 0.3);
    for e in model.head_table().entries() {
        let range = match e.name.as_str() {
            "attention.bn.weight" => (0.5, 1.5),
            "attention.bn.bias" => (0.3, 0.8),
            n if n.starts_with("fc.") => (-0.02, 0.02),
            _ => continue,
        };
        heads[e.range()].copy_from_slice(&random(e.len(), range.0, range.1));
    }
    cpu.write(model.params, &heads).unwrap();
    for stat in model.running_stats() {
        let (lo, hi) = match stat.name.ends_with("running_var") {
            true => (0.5, 1.5),
            false => (-0.2, 0.2),
        };
        cpu.write(stat.tensor, &random(stat.tensor.len, lo, hi))
            .unwrap();
    }
    let bank = model.center_bank();
    cpu.write(bank, &random(bank.len, -0.2, 0.2)).unwrap();
    let image = random(model.input().len, -1.0, 1.0);
    cpu.write(model.input(), &image).unwrap();
    let answers = (model.labels(), model.targets());
    write_answers(&mut cpu, answers, model.config.task, (&LABELS, &TARGETS));
    (cpu, model)
}

/// Fixed choices: the given maps, and every threshold `thresholds` (crop, drop).
fn fixed(crop: Vec<f64>, drop: Vec<f64>) -> Augmentation {
    Augmentation {
        crop_maps: MapChoice::Given(CROP_MAPS.to_vec()),
        drop_maps: MapChoice::Given(DROP_MAPS.to_vec()),
        crop_thresholds: crop,
        drop_thresholds: drop,
    }
}

/// Thresholds above every normalised value: whole-image crops, nothing dropped, so the three
/// passes see the same images whatever the weights.
fn whole_images() -> Augmentation {
    fixed(vec![2.0; BATCH], vec![2.0; BATCH])
}

/// Thresholds from WS-DAN's middle ones up at which the crop boxes and drop masks of the
/// model's (inference-mode) maps stay put when a weight moves by a finite-difference step (no
/// row's or column's maximum, nor any pixel, of the normalised up-sampled map lies within 1e-4
/// of them), and where possible crop less than the whole image and drop something.
fn stable_thresholds(cpu: &mut CpuBackend<f64>, model: &mut WsDan) -> Augmentation {
    model.infer(cpu).unwrap();
    let maps = cpu.read(model.attention_maps()).unwrap();
    let (h, w) = model.map_side();
    let one = AugmentShape {
        batch: 1,
        channels: 1,
        height: SIZE,
        width: SIZE,
        map_height: h,
        map_width: w,
    };
    let map = |b: usize, k: i32| maps[(b * MAPS + k as usize) * h * w..][..h * w].to_vec();
    let boxes = |m: &[f64], t: f64| {
        let mut out = [0i32; 4];
        attention_boxes_cpu(&one, CROP_PADDING, m, &[t], &mut out).unwrap();
        out
    };
    let kept = |m: &[f64], t: f64| {
        let mut out = vec![0.0; SIZE * SIZE];
        drop_mask_cpu(&one, m, &[t], &vec![1.0; SIZE * SIZE], &mut out).unwrap();
        out
    };
    let eps = 1e-4;
    // The first threshold from `from` up at which `same` holds and, where one does, `useful`.
    let stable = |same: &dyn Fn(f64) -> bool, useful: &dyn Fn(f64) -> bool, from: f64| {
        let candidates: Vec<f64> = (0..1000)
            .map(|k| from + 1e-3 * k as f64)
            .filter(|&t| t < 1.0 && same(t))
            .collect();
        let first = *candidates.first().expect("a stable threshold");
        candidates.into_iter().find(|&t| useful(t)).unwrap_or(first)
    };
    let whole = [0, 0, SIZE as i32, SIZE as i32];
    let (mut crop, mut drop) = (Vec::new(), Vec::new());
    for b in 0..BATCH {
        let m = map(b, CROP_MAPS[b]);
        let same = |t: f64| boxes(&m, t - eps) == boxes(&m, t + eps);
        crop.push(stable(&same, &|t| boxes(&m, t) != whole, 0.45));
        let m = map(b, DROP_MAPS[b]);
        let same = |t: f64| kept(&m, t - eps) == kept(&m, t + eps);
        drop.push(stable(&same, &|t| kept(&m, t).contains(&0.0), 0.3));
    }
    fixed(crop, drop)
}

fn terms(l: &WsDanLosses) -> [f64; 4] {
    [l.raw, l.crop, l.drop, l.center]
}

/// The central difference of each loss term (raw, crop, drop, center) in element `i` of
/// `params`, which holds `p` before and after.
#[allow(clippy::too_many_arguments)]
fn central_differences(
    cpu: &mut CpuBackend<f64>,
    model: &mut WsDan,
    mode: BnMode,
    aug: &Augmentation,
    params: Tensor,
    p: &[f64],
    i: usize,
    h: f64,
) -> [f64; 4] {
    let mut probe = p.to_vec();
    let mut at = |v: f64| {
        probe[i] = v;
        cpu.write(params, &probe).unwrap();
        terms(&model.forward_backward(cpu, mode, aug).unwrap())
    };
    let (up, down) = (at(p[i] + h), at(p[i] - h));
    cpu.write(params, p).unwrap();
    [0, 1, 2, 3].map(|k| (up[k] - down[k]) / (2.0 * h))
}

/// Each probed tensor's analytic gradient and each loss term's finite differences at the
/// probed elements.
struct Probed {
    name: String,
    analytic: Vec<f64>,
    /// `numeric[term][probe]`, terms raw, crop, drop, center.
    numeric: [Vec<f64>; 4],
}

impl Probed {
    /// The finite differences of the terms `included` (by index), summed.
    fn sum_of(&self, included: &[usize]) -> Vec<f64> {
        (0..self.analytic.len())
            .map(|j| included.iter().map(|&t| self.numeric[t][j]).sum())
            .collect()
    }
}

/// One step of the model of `config` in `mode` with `aug`'s choices (`None`: thresholds
/// stable under the finite differences), then the analytic gradient and each term's finite
/// differences at a few elements of every head tensor and of the backbone's last four. The
/// center bank does not move (β = 0), so every step is the same function of the weights.
fn probe_step(
    config: WsDanConfig,
    mode: BnMode,
    aug: Option<Augmentation>,
) -> (WsDanLosses, Vec<Probed>) {
    assert_eq!(config.center_loss.beta, 0.0);
    let (mut cpu, mut model) = tiny::<f64>(config, 1);
    let aug = aug.unwrap_or_else(|| stable_thresholds(&mut cpu, &mut model));
    eprintln!("{aug:?}");
    // A first step leaves every scratch buffer written, so a gradient that wrongly adds to a
    // stale buffer instead of assigning it shows in the second.
    model.forward_backward(&mut cpu, mode, &aug).unwrap();
    model.zero_grads(&mut cpu).unwrap();
    let losses = model.forward_backward(&mut cpu, mode, &aug).unwrap();
    eprintln!("crop boxes {:?}", cpu.read_index(model.boxes()).unwrap());
    let net = model.backbone();
    let backbone = net.graph.params.clone();
    let (net_params, net_grads) = (net.params, cpu.read(net.grads).unwrap());
    let heads = model.head_table().clone();
    let (head_params, head_grads) = (model.params, cpu.read(model.grads).unwrap());
    let mut tensors: Vec<_> = heads
        .entries()
        .iter()
        .map(|e| (e.clone(), head_params, &head_grads))
        .collect();
    // The backbone's last tensors (Mixed_6e's pooling branch), which every pass reaches
    // through its own BatchNorms: a weight further down moves so many ReLUs and pooling
    // choices downstream that a finite difference crosses some of their kinks.
    let n = backbone.entries().len();
    for e in &backbone.entries()[n - 4..] {
        tensors.push((e.clone(), net_params, &net_grads));
    }
    let h = 1e-6;
    let mut probed = Vec::new();
    for (e, params, grads) in tensors {
        let p = cpu.read(params).unwrap();
        let mut one = Probed {
            name: e.name.clone(),
            analytic: Vec::new(),
            numeric: Default::default(),
        };
        for i in e.range().step_by(e.len().div_ceil(4)) {
            one.analytic.push(grads[i]);
            let d = central_differences(&mut cpu, &mut model, mode, &aug, params, &p, i, h);
            for (column, v) in one.numeric.iter_mut().zip(d) {
                column.push(v);
            }
        }
        probed.push(one);
    }
    (losses, probed)
}

/// Asserts each probed tensor's analytic gradient is the sum of the four terms' finite
/// differences.
fn assert_matches(what: &str, probed: &[Probed]) {
    for p in probed {
        let numeric = p.sum_of(&[0, 1, 2, 3]);
        assert!(
            numeric.iter().any(|v| v.abs() > 1e-8),
            "{what}: {}: no gradient reaches it, the test would prove nothing",
            p.name
        );
        let e = rel_error(&p.analytic, &numeric);
        eprintln!("{what}: {}: {e:.2e}", p.name);
        assert!(
            e < TOLERANCE,
            "{what}: {}: analytic {:?} vs finite differences {numeric:?}: {e:.3e}",
            p.name,
            p.analytic
        );
    }
}

#[test]
fn step_gradient_matches_finite_differences() {
    let cases = [
        (
            Task::Classes,
            WsDanCenters::PerPart,
            BnMode::Inference,
            false,
        ),
        (
            Task::Attributes,
            WsDanCenters::PerPart,
            BnMode::Inference,
            false,
        ),
        (Task::Classes, WsDanCenters::PerClass, BnMode::Train, true),
    ];
    for (task, centers, mode, whole) in cases {
        let what = format!("{task:?}, {centers:?}, {mode:?}");
        let aug = whole.then(whole_images);
        let (losses, probed) = probe_step(tiny_config(task, centers, 0.0), mode, aug);
        assert!(
            terms(&losses).iter().all(|l| l.is_finite() && *l > 0.0),
            "{what}: {losses:?}"
        );
        assert_matches(&what, &probed);
    }
}

/// The train-mode step of the default model (one center per part), shared by the two tests
/// that read it.
fn train_mode_step() -> &'static (WsDanLosses, Vec<Probed>) {
    static STEP: OnceLock<(WsDanLosses, Vec<Probed>)> = OnceLock::new();
    STEP.get_or_init(|| {
        let config = tiny_config(Task::Classes, WsDanCenters::PerPart, 0.0);
        probe_step(config, BnMode::Train, Some(whole_images()))
    })
}

/// Train-mode BatchNorm (the backbone's and the attention's, batch statistics) through all
/// three passes.
#[test]
fn train_mode_step_gradient_matches_finite_differences() {
    let (_, probed) = train_mode_step();
    assert_matches("train mode", probed);
}

/// The step has three classification terms, each with its own gradient: a step that left the
/// crop or the drop pass's out (loss and gradient) would be the sum without that term, which
/// is far outside the bound [`step_gradient_matches_finite_differences`] holds the step to.
#[test]
fn crop_and_drop_passes_each_add_their_gradient() {
    let (losses, probed) = train_mode_step();
    // Whole-image crops and no drop: the three passes see the same images.
    assert!(losses.crop > 0.0 && losses.drop > 0.0, "{losses:?}");
    assert!(
        (losses.crop - losses.raw).abs() < 1e-9 * losses.raw,
        "{losses:?}"
    );
    assert!(
        (losses.drop - losses.raw).abs() < 1e-9 * losses.raw,
        "{losses:?}"
    );
    for (left_out, without) in [("crop", [0, 2, 3]), ("drop", [0, 1, 3])] {
        let analytic: Vec<f64> = probed.iter().flat_map(|p| p.analytic.clone()).collect();
        let mutated: Vec<f64> = probed.iter().flat_map(|p| p.sum_of(&without)).collect();
        let e = rel_error(&analytic, &mutated);
        eprintln!("without the {left_out} pass: {e:.3e}");
        assert!(
            e > 100.0 * TOLERANCE,
            "without the {left_out} pass the gradient moves only {e:.3e}"
        );
    }
}

/// `--wsdan-passes`: a step without the crop or the drop pass has neither its loss (0) nor its
/// gradient, and the passes it runs give what they give in the full step. With inference-mode
/// BatchNorm and a still center bank every pass is the same function of the weights whichever
/// others run, so the gradients must add: full + raw alone = (raw, crop) + (raw, drop).
#[test]
fn passes_left_out_add_neither_loss_nor_gradient() {
    let step = |crop: bool, drop: bool| {
        let config = WsDanConfig {
            passes: WsDanPasses { crop, drop },
            ..tiny_config(Task::Classes, WsDanCenters::PerPart, 0.0)
        };
        let (mut cpu, mut model) = tiny::<f64>(config, 1);
        let aug = fixed(vec![0.5; BATCH], vec![0.35; BATCH]);
        model.zero_grads(&mut cpu).unwrap();
        // Poisoned logits: a pass that does not run must not be read.
        for logits in model.logits() {
            cpu.fill(logits, f64::NAN).unwrap();
        }
        let losses = model
            .forward_backward(&mut cpu, BnMode::Inference, &aug)
            .unwrap();
        let mut grads = cpu.read(model.grads).unwrap();
        grads.extend(cpu.read(model.backbone().grads).unwrap());
        (losses, grads)
    };
    let (full, g_full) = step(true, true);
    let (raw, g_raw) = step(false, false);
    let (with_crop, g_crop) = step(true, false);
    let (with_drop, g_drop) = step(false, true);
    assert!(
        terms(&full).iter().all(|l| l.is_finite() && *l > 0.0),
        "{full:?}"
    );
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    for (what, l, crop, drop) in [
        ("raw", raw, false, false),
        ("raw,crop", with_crop, true, false),
        ("raw,drop", with_drop, false, true),
    ] {
        assert!(
            same(l.raw, full.raw) && same(l.center, full.center),
            "{what}: {l:?}"
        );
        assert_eq!(l.crop == 0.0, !crop, "{what}: {l:?}");
        assert_eq!(l.drop == 0.0, !drop, "{what}: {l:?}");
        assert!(
            !crop || same(l.crop, full.crop),
            "{what}: {l:?} vs {full:?}"
        );
        assert!(
            !drop || same(l.drop, full.drop),
            "{what}: {l:?} vs {full:?}"
        );
    }
    let sum = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<_>>();
    let e = rel_error(&sum(&g_full, &g_raw), &sum(&g_crop, &g_drop));
    eprintln!("full + raw against (raw, crop) + (raw, drop): {e:.2e}");
    assert!(e < 1e-10, "the passes' gradients do not add: {e:.3e}");
    for (what, g) in [("crop", &g_crop), ("drop", &g_drop)] {
        let moved = rel_error(g, &g_raw);
        assert!(
            moved > 1e-3,
            "the {what} pass adds no gradient: {moved:.3e}"
        );
    }
}

/// Zero attention weights make every map zero (BN of a constant, bias 0, ReLU): each map is
/// flat, so the crops are the whole image and nothing is dropped (never a NaN), the three
/// passes see the same images, and the refinement crop of inference is the whole image too.
#[test]
fn all_zero_attention_crops_the_whole_image() {
    let config = tiny_config(Task::Classes, WsDanCenters::PerPart, 0.05);
    let (mut cpu, mut model) = tiny::<f64>(config, 4);
    let mut heads = cpu.read(model.params).unwrap();
    for name in ["attention.weight", "attention.bn.bias"] {
        let e = model.head_table().get(name).unwrap().clone();
        heads[e.range()].fill(0.0);
    }
    cpu.write(model.params, &heads).unwrap();
    let whole = [0, 0, SIZE as i32, SIZE as i32].repeat(BATCH);
    let aug = Augmentation {
        crop_maps: MapChoice::ByMass(vec![0.1, 0.5, 0.999]),
        drop_maps: MapChoice::ByMass(vec![0.0, 0.7, 0.3]),
        crop_thresholds: vec![0.4, 0.5, 0.6],
        drop_thresholds: vec![0.2, 0.35, 0.5],
    };
    model.zero_grads(&mut cpu).unwrap();
    let losses = model
        .forward_backward(&mut cpu, BnMode::Train, &aug)
        .unwrap();
    assert!(terms(&losses).iter().all(|l| l.is_finite()), "{losses:?}");
    assert_eq!(cpu.read_index(model.boxes()).unwrap(), whole);
    // The crop resizes the whole image onto itself and the drop keeps it: the same images,
    // in train mode the same batch statistics, the same loss.
    assert_eq!(losses.crop, losses.raw, "{losses:?}");
    assert_eq!(losses.drop, losses.raw, "{losses:?}");
    for grads in [model.backbone().grads, model.grads] {
        let g = cpu.read(grads).unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
    }
    model.infer(&mut cpu).unwrap();
    assert_eq!(cpu.read_index(model.boxes()).unwrap(), whole);
    for logits in &model.logits()[..2] {
        assert!(cpu.read(*logits).unwrap().iter().all(|v| v.is_finite()));
    }
}

/// Maps given whole (`MapChoice::Maps`) step as the maps they equal: a step with the crop and
/// drop maps picked by index, then one given the maps it picked (and the rest of the state as
/// it was), give the same boxes, losses and gradients bit for bit; maps of the wrong size are
/// refused, naming them.
#[test]
fn given_maps_step_as_the_maps_they_equal() {
    let step = |aug: &Augmentation| {
        let config = tiny_config(Task::Classes, WsDanCenters::PerPart, 0.0);
        let (mut cpu, mut model) = tiny::<f64>(config, 6);
        model.zero_grads(&mut cpu).unwrap();
        let losses = model
            .forward_backward(&mut cpu, BnMode::Inference, aug)
            .unwrap();
        let maps = model.augment_maps().map(|t| cpu.read(t).unwrap());
        let mut grads = cpu.read(model.grads).unwrap();
        grads.extend(cpu.read(model.backbone().grads).unwrap());
        let boxes = cpu.read_index(model.boxes()).unwrap();
        (terms(&losses), grads, boxes, maps)
    };
    let picked = fixed(vec![0.5; BATCH], vec![0.35; BATCH]);
    let (losses, grads, boxes, [crop, drop]) = step(&picked);
    assert!(boxes
        .chunks(4)
        .any(|b| b != [0, 0, SIZE as i32, SIZE as i32]));
    let given = Augmentation {
        crop_maps: MapChoice::Maps(crop.clone()),
        drop_maps: MapChoice::Maps(drop),
        ..picked.clone()
    };
    let again = step(&given);
    assert_eq!((again.0, again.1, again.2), (losses, grads, boxes));

    let config = tiny_config(Task::Classes, WsDanCenters::PerPart, 0.0);
    let (mut cpu, mut model) = tiny::<f64>(config, 6);
    let short = Augmentation {
        crop_maps: MapChoice::Maps(crop[1..].to_vec()),
        ..picked
    };
    let e = model
        .forward_backward(&mut cpu, BnMode::Inference, &short)
        .unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("WS-DAN crop maps: 26 values given for 3 maps of 9 pixels"),
        "{message}"
    );
}

/// The checkpoint's names and shapes, which the PyTorch golden test's reference reads: the
/// backbone by torchvision's names, then the heads, the attention BN's running statistics,
/// the heads' momentum and the center bank, `[1, M·N]` for one center per part and `[C, M·N]`
/// per class; an attribute model keeps its per-part bank and refuses a per-class one.
#[test]
fn state_names_and_shapes() {
    let n = 96; // Mixed_6e's 768 channels at width 1/8.
    for (task, centers, rows) in [
        (Task::Classes, WsDanCenters::PerPart, 1),
        (Task::Classes, WsDanCenters::PerClass, 3),
        (Task::Attributes, WsDanCenters::PerPart, 1),
    ] {
        let (_, model) = tiny::<f32>(tiny_config(task, centers, 0.05), 2);
        let state = model.state();
        // The backbone's parameters, running statistics and momentum come first.
        let graph = &model.backbone().graph;
        let backbone = 2 * graph.params.entries().len() + graph.buffers.entries().len();
        let ours: Vec<(String, Vec<usize>)> = state[backbone..]
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let heads = [
            ("attention.weight", vec![MAPS, n, 1, 1]),
            ("attention.bn.weight", vec![MAPS]),
            ("attention.bn.bias", vec![MAPS]),
            ("fc.weight", vec![3, MAPS * n]),
            ("fc.bias", vec![3]),
        ];
        let mut expected: Vec<(String, Vec<usize>)> = heads
            .iter()
            .map(|(k, s)| (k.to_string(), s.clone()))
            .collect();
        expected.push(("attention.bn.running_mean".into(), vec![MAPS]));
        expected.push(("attention.bn.running_var".into(), vec![MAPS]));
        expected.extend(
            heads
                .iter()
                .map(|(k, s)| (format!("momentum.{k}"), s.clone())),
        );
        expected.push(("centers".into(), vec![rows, MAPS * n]));
        assert_eq!(ours, expected, "{task:?}, {centers:?}");
        assert_eq!(state[0].name, "Conv2d_1a_3x3.conv.weight");
    }
    let mut cpu = CpuBackend::<f32>::new();
    let refused = WsDan::new(
        &mut cpu,
        tiny_config(Task::Attributes, WsDanCenters::PerClass, 0.05),
    );
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("--wsdan-centers per-class"), "{message}");
}

/// One step of WS-DAN of `cfg` from `init` on `b` with the batch `images` (labels 0, 2, 1, 2;
/// `targets` for attributes) and `aug`'s choices, then SGD: its loss terms and state.
fn step_from<B: Backend>(
    b: &mut B,
    cfg: &TrainConfig,
    init: &State,
    batch: (&[f64], &[f64]),
    aug: &Augmentation,
) -> StepRun {
    step_model(b, cfg, init, batch, aug).1
}

/// [`step_from`], and the model after the step.
pub fn step_model<B: Backend>(
    b: &mut B,
    cfg: &TrainConfig,
    init: &State,
    (images, targets): (&[f64], &[f64]),
    aug: &Augmentation,
) -> (WsDan, StepRun) {
    let mut model = build_wsdan(b, cfg).unwrap();
    write_state(b, &model.state(), init);
    b.write(model.input(), &narrow::<B>(images)).unwrap();
    b.write_index(model.labels(), &[0, 2, 1, 2]).unwrap();
    if cfg.task == Task::Attributes {
        b.write(model.targets(), &narrow::<B>(targets)).unwrap();
    }
    model.zero_grads(b).unwrap();
    let l = model.forward_backward(b, BnMode::Train, aug).unwrap();
    let rates = rates_at(b, cfg);
    model.sgd_step_by(b, &cfg.sgd_rule(&rates)).unwrap();
    let run = (terms(&l).to_vec(), read_state(b, &model.state()));
    (model, run)
}

/// A WS-DAN training step on the CUDA backend against the CPU backend's, from the same fresh
/// weights, batch and choices (the crop maps drawn by mass, the drop maps given), for classes
/// with a center per class and for attributes with one per part: every tensor of the state
/// within the bound the Coarse2Fine step is held to.
#[test]
fn gpu_wsdan_step_matches_cpu() {
    let Some(mut gpu) = cuda_or_skip("gpu_wsdan_step_matches_cpu") else {
        return;
    };
    for (task, centers) in [
        (Task::Classes, WsDanCenters::PerClass),
        (Task::Attributes, WsDanCenters::PerPart),
    ] {
        let cfg = TrainConfig {
            task,
            wsdan_maps: MAPS,
            wsdan_centers: centers,
            ..tiny_train_config(0.01, 5)
        };
        let mut rng = SplitMix64(11);
        let images: Vec<f64> = (0..cfg.batch * 3 * SIZE * SIZE)
            .map(|_| rng.uniform(-2.0, 2.0) as f32 as f64)
            .collect();
        let targets: Vec<f64> = (0..cfg.batch * cfg.classes)
            .map(|i| (i % 2) as f64)
            .collect();
        let aug = Augmentation {
            crop_maps: MapChoice::ByMass(vec![0.1, 0.9, 0.5, 0.3]),
            drop_maps: MapChoice::Given(vec![3, 0, 1, 2]),
            crop_thresholds: vec![0.45, 0.5, 0.55, 0.6],
            drop_thresholds: vec![0.25, 0.3, 0.4, 0.5],
        };
        let mut cpu = CpuBackend::<f32>::new();
        let model = build_wsdan(&mut cpu, &cfg).unwrap();
        init_wsdan(&mut cpu, &model, &RunOptions::new("unused")).unwrap();
        let init = read_state(&mut cpu, &model.state());
        let batch = (&images[..], &targets[..]);
        let run64 = step_from(&mut CpuBackend::<f64>::new(), &cfg, &init, batch, &aug);
        let run32 = step_from(&mut CpuBackend::<f32>::new(), &cfg, &init, batch, &aug);
        let gpu_run = step_from(&mut gpu, &cfg, &init, batch, &aug);
        assert_gpu_step_near_cpu(
            &format!("WS-DAN, {task:?}, {centers:?}"),
            &run64,
            &run32,
            &gpu_run,
        );
    }
}

/// Two epochs of two steps of `fit` on the GPU (the choices drawn): finite losses, a checkpoint
/// after the fourth step, and raw, refined and average accuracies.
#[test]
fn gpu_wsdan_trains() {
    let Some(mut gpu) = cuda_or_skip("gpu_wsdan_trains") else {
        return;
    };
    let data = synthetic_spec(8, 4, 1, (0.6, 0.9))
        .open(SIZE, DEFAULT_MAX_PIXELS)
        .unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wsdan_gpu_fit");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = TrainConfig {
        epochs: 2,
        wsdan_maps: MAPS,
        ..tiny_train_config(0.01, 5)
    };
    let train = ModelKind::WsDan.trainer();
    let evaluation = train(&mut gpu, &cfg, &RunOptions::new(&dir), &data, None)
        .unwrap()
        .unwrap();
    let a = evaluation.accuracy;
    for v in [Some(a.coarse), a.fine, a.average] {
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{a:?}");
    }
    let meta = c2f_train::checkpoint::read_meta(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!((meta.model.as_str(), meta.step), ("wsdan", 4));
}

/// `c2f train --models wsdan` on the synthetic set: its row and epoch lines name its heads raw
/// and refined, its metrics have its four loss terms and `test_raw` and `test_refined`; its
/// checkpoint serves `eval` (raw, refined, average), `predict` (`--mode refined` too),
/// `localize` (the refinement crop's box) and `visualize`.
#[test]
fn wsdan_trains_and_serves_every_command() {
    let dir = scratch("wsdan");
    let run_dir = dir.join("run");
    let log = train_tiny_synthetic(&run_dir, &["--models", "wsdan", "--wsdan-maps", "4"]);
    assert!(
        log.contains("| model | raw | refined | average | time |") && log.contains("| WS-DAN | "),
        "{log}"
    );
    assert!(
        log.contains("test raw ") && log.contains(" refined "),
        "{log}"
    );
    let record = only_record(&run_dir, "wsdan", &["raw", "crop", "drop", "center"]);
    for column in ["test_raw", "test_refined", "test_average"] {
        assert!(record[column].as_f64().is_some(), "{column}: {record}");
    }
    assert!(record["test_coarse"].is_null(), "{record}");
    let csv = std::fs::read_to_string(run_dir.join("wsdan/metrics.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .contains(",test_raw,test_refined,test_average,"),
        "{csv}"
    );

    let checkpoint = run_dir.join("wsdan/checkpoint.safetensors");
    let log = c2f_ok(&["eval", path(&checkpoint), "--device", "cpu"]);
    let first = log.lines().next().unwrap();
    assert!(
        first.contains("(wsdan, epoch 1)")
            && first.contains(": raw ")
            && first.contains(" refined "),
        "{log}"
    );
    assert!(log.contains("| wsdan | "), "{log}");

    let image = &synthetic_images(&dir, 1)[0];
    let lines = predictions_on_cpu(&checkpoint, image);
    let heads: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(heads, ["raw", "refined", "average"], "{lines:?}");
    let log = c2f_ok(&[
        "predict",
        "--checkpoint",
        path(&checkpoint),
        "--device",
        "cpu",
        "--mode",
        "refined",
        path(image),
    ]);
    let shown: Vec<&str> = log.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(
        shown.len() == 1 && shown[0].starts_with("  refined "),
        "{log}"
    );

    let (log, metrics) = localize_json(&checkpoint, "cpu", &dir);
    assert!(
        log.contains("the refinement crop") && log.contains("raw   refined"),
        "{log}"
    );
    assert_eq!(metrics["box_rule"], "refinement_crop", "{metrics}");
    assert!(metrics["accuracy"]["fine"].as_f64().is_some(), "{metrics}");
    two_pictures(&checkpoint, "cpu", &dir);
}

/// WS-DAN (one center per class) on a CUB-layout folder without `bounding_boxes.txt`: it
/// trains and evaluates; only `localize` needs boxes, and says so.
#[test]
fn wsdan_trains_on_a_cub_folder_without_boxes() {
    let dir = scratch("wsdan_cub");
    let root = dir.join("cub");
    let spec = c2f_train::data::synthetic::SyntheticConfig {
        classes: 3,
        size: 75,
        ..Default::default()
    };
    c2f_train::data::synthetic::write_cub_layout(&root, &spec, 8, 4).unwrap();
    std::fs::remove_file(root.join("bounding_boxes.txt")).unwrap();
    let run_dir = dir.join("run");
    let args = [
        "--dataset",
        "cub",
        "--data-root",
        path(&root),
        "--models",
        "wsdan",
        "--wsdan-maps",
        "4",
        "--wsdan-centers",
        "per-class",
        "--run-dir",
        path(&run_dir),
    ];
    let log = c2f_ok(&[&TINY_TRAIN[..], &args].concat());
    assert!(log.contains("| WS-DAN | "), "{log}");
    let checkpoint = run_dir.join("wsdan/checkpoint.safetensors");
    let meta = c2f_train::checkpoint::read_meta(&checkpoint).unwrap();
    assert_eq!(meta.config.wsdan_centers, WsDanCenters::PerClass);
    let log = c2f_ok(&["eval", path(&checkpoint), "--device", "cpu"]);
    assert!(log.contains("(wsdan, epoch 1)"), "{log}");
    let log = c2f_refused(&["localize", path(&checkpoint), "--device", "cpu"]);
    assert!(log.contains("localization needs bounding boxes"), "{log}");
}
