//! The Coarse2Fine golden case written by `tools/make_c2f_golden.py`: one training step of the
//! PyTorch model the GPU script times ours against (`tools/torch_c2f_baseline.py`), written with
//! autograd from the paper's equations, in float64, on a batch of 3 × 3 × 107 × 107 (width 1.0,
//! 4 maps, 5 classes, labels [1, 3, 1], chosen maps [2, 0, 1]), with the paper's center rule
//! (Eq. 2 and 3) on one center bank for both passes, started at zero: class 1 moves its center
//! twice in each pass, classes 0, 2 and 4 are absent. The CPU backend in f64 must match every
//! recorded tensor within 1e-6 relative: both passes' logits, the up-sampled map, the four loss
//! terms, the gradient of every parameter (backbone, attention, up-sampler, both heads), the
//! center bank after both passes' moves and the shared running statistics after both passes. The finite-difference
//! tests check the backward against our own forward; this checks the forward and the backward
//! against an independent definition of the method.

use crate::common::recorded::{by_name, floats};
use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::{counter_uniform, golden_range};
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::testing::rel_error;
use c2f_train::model::{CenterBanks, Coarse2Fine, Coarse2FineConfig, Task};
use c2f_train::upsampler::{attention_map_side, default_channels, init_range};
use safetensors::SafeTensors;

const SIZE: usize = 107;
const MAPS: usize = 4;
const CLASSES: usize = 5;
const LABELS: [i32; 3] = [1, 3, 1];
const CHOSEN: [i32; 3] = [2, 0, 1];
/// f64 against float64, the bilinear resize's weights computed in f32 on both sides (see
/// `tools/make_c2f_golden.py`): what is left is the order of summation, 3e-8 at the most.
const TOLERANCE: f64 = 1e-6;
const RUNNING: [&str; 4] = [
    "Conv2d_1a_3x3.bn.running_mean",
    "Conv2d_1a_3x3.bn.running_var",
    "Mixed_6e.branch_pool.bn.running_mean",
    "Mixed_6e.branch_pool.bn.running_var",
];

fn file() -> SafeTensors<'static> {
    static BYTES: &[u8] = include_bytes!("../data/c2f_golden.safetensors");
    SafeTensors::deserialize(BYTES).expect("tests/data/c2f_golden.safetensors is readable")
}

/// The range `tools/make_c2f_golden.py` draws a tensor outside the backbone from.
fn head_range(name: &str, shape: &[usize]) -> (f64, f64) {
    if name.starts_with("upsampler.") {
        return init_range(name, shape);
    }
    if name.ends_with("bias") {
        return (-0.1, 0.1);
    }
    let bound = 1.0 / (shape[1..].iter().product::<usize>() as f64).sqrt();
    (-bound, bound)
}

/// What the step produced, in f64.
struct Step {
    losses: Vec<f64>,
    logits: (Vec<f64>, Vec<f64>),
    upsampled: Vec<f64>,
    /// Every parameter's gradient, by name.
    grads: Vec<(String, Vec<f64>)>,
    /// The state after the step (parameters, running statistics, center banks), by name.
    state: Vec<(String, Vec<f64>)>,
}

fn read(b: &mut CpuBackend<f64>, t: Tensor) -> Vec<f64> {
    b.read(t).unwrap()
}

fn golden_step() -> Step {
    let b = &mut CpuBackend::<f64>::new();
    let side = attention_map_side(SIZE).unwrap();
    let mut model = Coarse2Fine::new(
        b,
        Coarse2FineConfig {
            input_size: SIZE,
            width: 1.0,
            classes: CLASSES,
            task: Task::Classes,
            maps: MAPS,
            upsampler_channels: default_channels(side.0, SIZE),
            center_loss: CenterLossParams {
                lambda: 1.0,
                beta: 0.05,
                rule: CenterRule::MovingAverage,
            },
            center_banks: CenterBanks::Shared,
            batch: LABELS.len(),
        },
    )
    .unwrap();
    let graph = model.backbone().graph.clone();
    for t in model.state() {
        let mut values = vec![0.0f32; t.tensor.len];
        // Momentum and the center bank start at zero, the bank as the paper starts it.
        if !t.name.starts_with("momentum.") && t.name != "centers" {
            let in_backbone =
                graph.params.get(&t.name).is_some() || graph.buffers.get(&t.name).is_some();
            let (lo, hi) = if in_backbone {
                golden_range(&t.name, &t.shape)
            } else {
                head_range(&t.name, &t.shape)
            };
            counter_uniform(&t.name, lo, hi, &mut values);
        }
        let values: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        b.write(t.tensor, &values).unwrap();
    }
    let mut image = vec![0.0f32; model.input().len];
    counter_uniform("input", -1.0, 1.0, &mut image);
    let image: Vec<f64> = image.iter().map(|&v| v as f64).collect();
    b.write(model.input(), &image).unwrap();
    b.write_index(model.labels(), &LABELS).unwrap();
    let chosen_maps = model.chosen_maps().expect("Coarse2Fine has a fine pass");
    b.write_index(chosen_maps, &CHOSEN).unwrap();
    model.zero_grads(b).unwrap();
    let l = model.forward_backward(b, BnMode::Train).unwrap();

    let [coarse, fine] = model.logits()[..] else {
        panic!("Coarse2Fine has two heads")
    };
    let net = model.backbone();
    let mut grads = by_name(&net.graph.params, &read(b, net.grads));
    grads.extend(by_name(model.head_table(), &read(b, model.grads)));
    let state = model
        .state()
        .into_iter()
        .map(|t| (t.name, read(b, t.tensor)))
        .collect();
    Step {
        losses: vec![l.coarse, l.fine, l.center_coarse, l.center_fine],
        logits: (read(b, coarse), read(b, fine)),
        upsampled: read(b, model.upsampled_map()),
        grads,
        state,
    }
}

#[test]
fn cpu_backend_f64_step_matches_pytorch() {
    let file = file();
    let step = golden_step();
    let mut failures = Vec::new();
    let mut check = |what: String, ours: &[f64], reference: &[f64]| {
        let e = rel_error(ours, reference);
        // NaN fails too.
        if e.is_nan() || e >= TOLERANCE {
            failures.push(format!("{what}: relative error {e:.3e}"));
        }
    };
    for (i, term) in ["coarse CE", "fine CE", "coarse center", "fine center"]
        .iter()
        .enumerate()
    {
        check(
            format!("loss {term}"),
            &step.losses[i..=i],
            &floats(&file, "losses")[i..=i],
        );
    }
    check(
        "coarse logits".into(),
        &step.logits.0,
        &floats(&file, "coarse_logits"),
    );
    check(
        "fine logits".into(),
        &step.logits.1,
        &floats(&file, "fine_logits"),
    );
    check(
        "up-sampled map".into(),
        &step.upsampled,
        &floats(&file, "upsampled"),
    );
    for (name, g) in &step.grads {
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        check(
            format!("grad norm of {name}"),
            &[norm],
            &floats(&file, &format!("grad_norm/{name}")),
        );
        let n = g.len();
        check(
            format!("gradient entries of {name}"),
            &[g[0], g[n / 3], g[2 * n / 3], g[n - 1]],
            &floats(&file, &format!("grad_at/{name}")),
        );
    }
    let state = |name: &str| {
        &step
            .state
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("the model's state lacks {name}"))
            .1
    };
    check(
        "updated centers".into(),
        state("centers"),
        &floats(&file, "centers"),
    );
    for name in RUNNING {
        check(
            format!("updated {name}"),
            state(name),
            &floats(&file, &format!("running/{name}")),
        );
    }
    assert_eq!(
        step.grads.len(),
        file.names()
            .iter()
            .filter(|n| n.starts_with("grad_norm/"))
            .count(),
        "the golden file and the model have different parameter lists"
    );
    assert!(
        failures.is_empty(),
        "{} golden tensors are off:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
