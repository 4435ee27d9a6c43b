//! The WS-DAN golden case written by `tools/make_wsdan_golden.py`: one training step of the
//! PyTorch WS-DAN in `tools/torch_wsdan.py`, written with autograd from the WS-DAN paper and the
//! definition in docs/method.md (never from our Rust code), in float64, on a batch of
//! 3 × 3 × 107 × 107 (width 1.0, 4 maps, 5 classes, labels [1, 3, 1]), with the augmentation's
//! choices given: crop maps [2, 0, 1], drop maps [1, 3, 3], θ_c [0.5, 0.45, 0.55],
//! θ_d [0.3, 0.25, 0.45]; one center per part, from zero. Then inference on the same images, and
//! a second step from the moved center bank (from a zero bank the center term is ‖f‖² = 1 for
//! any unit f, so only the second step checks its gradient).
//!
//! The CPU backend in f64 must match every recorded tensor within 1e-6 relative: the three
//! passes' logits, the four loss terms, the crop boxes and the dropped images, the gradient of
//! every parameter (backbone, attention conv and BN, classifier) in both steps, the center bank
//! after each step, the running statistics after the three passes, and inference's raw and
//! refined logits and boxes. Two mutations of the step (the drop pass reading the crop's maps;
//! one center per class) must fail it.

use crate::common::recorded::{by_name, floats};
use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::{counter_uniform, golden_range};
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::testing::rel_error;
use c2f_train::config::WsDanCenters;
use c2f_train::model::Task;
use c2f_train::wsdan::{Augmentation, MapChoice, WsDan, WsDanConfig, WsDanPasses};
use safetensors::SafeTensors;

const SIZE: usize = 107;
const MAPS: usize = 4;
const CLASSES: usize = 5;
const LABELS: [i32; 3] = [1, 3, 1];
const CROP_MAPS: [i32; 3] = [2, 0, 1];
const DROP_MAPS: [i32; 3] = [1, 3, 3];
const CROP_THRESHOLDS: [f64; 3] = [0.5, 0.45, 0.55];
const DROP_THRESHOLDS: [f64; 3] = [0.3, 0.25, 0.45];
/// f64 against float64, the interpolation positions and weights computed in f32 on both sides
/// (`tools/torch_wsdan.py`): what is left is the order of summation.
const TOLERANCE: f64 = 1e-6;
const RUNNING: [&str; 6] = [
    "Conv2d_1a_3x3.bn.running_mean",
    "Conv2d_1a_3x3.bn.running_var",
    "Mixed_6e.branch_pool.bn.running_mean",
    "Mixed_6e.branch_pool.bn.running_var",
    "attention.bn.running_mean",
    "attention.bn.running_var",
];

fn file() -> SafeTensors<'static> {
    static BYTES: &[u8] = include_bytes!("../data/wsdan_golden.safetensors");
    SafeTensors::deserialize(BYTES).expect("tests/data/wsdan_golden.safetensors is readable")
}

/// The range `tools/make_wsdan_golden.py` draws a head parameter from.
fn head_range(name: &str, shape: &[usize]) -> (f64, f64) {
    match name {
        "attention.bn.weight" => (0.5, 1.5),
        _ if name.ends_with("bias") => (-0.1, 0.1),
        _ => {
            let bound = 1.0 / (shape[1..].iter().product::<usize>() as f64).sqrt();
            (-bound, bound)
        }
    }
}

/// One training step's results, in f64.
struct StepRecord {
    losses: Vec<f64>,
    /// Every parameter's gradient, by name.
    grads: Vec<(String, Vec<f64>)>,
    centers: Vec<f64>,
}

/// What the golden file records, computed by our model.
struct Run {
    first: StepRecord,
    logits: [Vec<f64>; 3],
    boxes: Vec<f64>,
    drop_sums: Vec<f64>,
    running: Vec<(String, Vec<f64>)>,
    infer_logits: [Vec<f64>; 2],
    infer_boxes: Vec<f64>,
    second: StepRecord,
}

/// How a run departs from the golden case: the mutations the golden must catch.
#[derive(Clone, Copy, PartialEq)]
enum Mutation {
    None,
    DropReadsCropMaps,
    CentersPerClass,
}

fn read(b: &mut CpuBackend<f64>, t: Tensor) -> Vec<f64> {
    b.read(t).unwrap()
}

fn step(b: &mut CpuBackend<f64>, model: &mut WsDan, aug: &Augmentation) -> StepRecord {
    model.zero_grads(b).unwrap();
    let l = model.forward_backward(b, BnMode::Train, aug).unwrap();
    let net = model.backbone();
    let mut grads = by_name(&net.graph.params, &read(b, net.grads));
    grads.extend(by_name(model.head_table(), &read(b, model.grads)));
    StepRecord {
        losses: vec![l.raw, l.crop, l.drop, l.center],
        grads,
        centers: read(b, model.center_bank()),
    }
}

fn run(mutation: Mutation) -> Run {
    let b = &mut CpuBackend::<f64>::new();
    let centers = match mutation {
        Mutation::CentersPerClass => WsDanCenters::PerClass,
        _ => WsDanCenters::PerPart,
    };
    let mut model = WsDan::new(
        b,
        WsDanConfig {
            input_size: SIZE,
            width: 1.0,
            classes: CLASSES,
            task: Task::Classes,
            maps: MAPS,
            centers,
            passes: WsDanPasses::default(),
            center_loss: CenterLossParams {
                lambda: 1.0,
                beta: 0.05,
                rule: CenterRule::MovingAverage,
            },
            batch: LABELS.len(),
        },
    )
    .unwrap();
    let graph = model.backbone().graph.clone();
    for t in model.state() {
        let mut values = vec![0.0f32; t.tensor.len];
        let in_backbone =
            graph.params.get(&t.name).is_some() || graph.buffers.get(&t.name).is_some();
        match t.name.as_str() {
            // Momentum and the center bank start at zero, the attention BN's running
            // statistics at BatchNorm's defaults.
            n if n.starts_with("momentum.")
                || n == "centers"
                || n.ends_with("running_mean") && !in_backbone => {}
            n if n.ends_with("running_var") && !in_backbone => values.fill(1.0),
            n => {
                let (lo, hi) = if in_backbone {
                    golden_range(n, &t.shape)
                } else {
                    head_range(n, &t.shape)
                };
                counter_uniform(n, lo, hi, &mut values);
            }
        }
        let values: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        b.write(t.tensor, &values).unwrap();
    }
    let mut image = vec![0.0f32; model.input().len];
    counter_uniform("input", -1.0, 1.0, &mut image);
    let image: Vec<f64> = image.iter().map(|&v| v as f64).collect();
    b.write(model.input(), &image).unwrap();
    b.write_index(model.labels(), &LABELS).unwrap();
    let drop_maps = match mutation {
        Mutation::DropReadsCropMaps => CROP_MAPS,
        _ => DROP_MAPS,
    };
    let aug = Augmentation {
        crop_maps: MapChoice::Given(CROP_MAPS.to_vec()),
        drop_maps: MapChoice::Given(drop_maps.to_vec()),
        crop_thresholds: CROP_THRESHOLDS.to_vec(),
        drop_thresholds: DROP_THRESHOLDS.to_vec(),
    };

    let first = step(b, &mut model, &aug);
    let logits = model.logits().map(|t| read(b, t));
    let boxes = b.read_index(model.boxes()).unwrap();
    let dropped = read(b, model.backbone().input());
    let image_len = dropped.len() / LABELS.len();
    let drop_sums = dropped.chunks(image_len).map(|c| c.iter().sum()).collect();
    let state: Vec<(String, Vec<f64>)> = model
        .state()
        .into_iter()
        .map(|t| (t.name, read(b, t.tensor)))
        .collect();
    let running = RUNNING
        .iter()
        .map(|&name| {
            let values = state.iter().find(|(n, _)| n == name);
            let values = values.unwrap_or_else(|| panic!("the model's state lacks {name}"));
            (name.to_string(), values.1.clone())
        })
        .collect();

    model.infer(b).unwrap();
    let [raw, refined, _] = model.logits();
    let infer_logits = [read(b, raw), read(b, refined)];
    let infer_boxes = b.read_index(model.boxes()).unwrap();
    let second = step(b, &mut model, &aug);
    let as_f64 = |v: Vec<i32>| v.into_iter().map(f64::from).collect();
    Run {
        first,
        logits,
        boxes: as_f64(boxes),
        drop_sums,
        running,
        infer_logits,
        infer_boxes: as_f64(infer_boxes),
        second,
    }
}

/// Adds `what` to `failures` when `ours` is `reference` within the tolerance (NaN and a length
/// mismatch fail too).
fn compare(failures: &mut Vec<String>, what: String, ours: &[f64], reference: &[f64]) {
    let e = if ours.len() == reference.len() {
        rel_error(ours, reference)
    } else {
        f64::INFINITY
    };
    if e.is_nan() || e >= TOLERANCE {
        failures.push(format!("{what}: relative error {e:.3e}"));
    }
}

/// A training step's losses and gradients against the golden file's, under `prefix`.
fn compare_step(failures: &mut Vec<String>, file: &SafeTensors, prefix: &str, s: &StepRecord) {
    let losses = floats(file, &format!("{prefix}losses"));
    for (i, term) in ["raw CE", "crop CE", "drop CE", "center"]
        .iter()
        .enumerate()
    {
        let what = format!("{prefix}loss {term}");
        compare(failures, what, &s.losses[i..=i], &losses[i..=i]);
    }
    for (name, g) in &s.grads {
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let n = g.len();
        let at = [g[0], g[n / 3], g[2 * n / 3], g[n - 1]];
        let key = |what: &str| floats(file, &format!("{prefix}{what}/{name}"));
        compare(
            failures,
            format!("{prefix}grad norm of {name}"),
            &[norm],
            &key("grad_norm"),
        );
        compare(
            failures,
            format!("{prefix}gradient entries of {name}"),
            &at,
            &key("grad_at"),
        );
    }
}

/// Every recorded tensor our run misses by the tolerance or more, named.
fn mismatches(run: &Run) -> Vec<String> {
    let file = file();
    let mut failures = Vec::new();
    let f = &mut failures;
    compare_step(f, &file, "", &run.first);
    compare_step(f, &file, "second/", &run.second);
    let key = |k: &str| floats(&file, k);
    compare(
        f,
        "centers after the first step".into(),
        &run.first.centers,
        &key("centers"),
    );
    let second = &run.second.centers;
    compare(
        f,
        "centers after the second step".into(),
        second,
        &key("second/centers"),
    );
    for (i, pass) in ["raw", "crop", "drop"].iter().enumerate() {
        let reference = key(&format!("{pass}_logits"));
        compare(f, format!("{pass} logits"), &run.logits[i], &reference);
    }
    compare(f, "crop boxes".into(), &run.boxes, &key("boxes"));
    compare(
        f,
        "dropped images' sums".into(),
        &run.drop_sums,
        &key("drop_sums"),
    );
    for (name, values) in &run.running {
        compare(
            f,
            format!("updated {name}"),
            values,
            &key(&format!("running/{name}")),
        );
    }
    let [raw, refined] = &run.infer_logits;
    compare(
        f,
        "inference's raw logits".into(),
        raw,
        &key("infer_raw_logits"),
    );
    compare(
        f,
        "inference's refined logits".into(),
        refined,
        &key("infer_refined_logits"),
    );
    compare(
        f,
        "inference's boxes".into(),
        &run.infer_boxes,
        &key("infer_boxes"),
    );
    let recorded = file
        .names()
        .iter()
        .filter(|n| n.starts_with("grad_norm/"))
        .count();
    if run.first.grads.len() != recorded {
        f.push(format!(
            "the model has {} parameter tensors, the golden file {recorded}",
            run.first.grads.len()
        ));
    }
    failures
}

#[test]
fn cpu_backend_f64_step_matches_pytorch() {
    let failures = mismatches(&run(Mutation::None));
    assert!(
        failures.is_empty(),
        "{} golden tensors are off:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn mutated_steps_fail_the_golden() {
    for (mutation, what, expected) in [
        (
            Mutation::DropReadsCropMaps,
            "the drop pass reading the crop's maps",
            "drop logits",
        ),
        (
            Mutation::CentersPerClass,
            "one center per class",
            "second/loss center",
        ),
    ] {
        let failures = mismatches(&run(mutation));
        assert!(
            failures.iter().any(|f| f.starts_with(expected)),
            "{what}: the golden did not catch it at {expected}; it caught {failures:?}"
        );
    }
}
