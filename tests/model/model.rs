//! The whole Coarse2Fine model's gradient (both passes, the up-sampler and mask path, BAP, the
//! heads and the center losses) against finite differences on a tiny model in f64, and a tiny
//! model fitting a fixed batch; both for classes and for multi-label attributes (sigmoid
//! binary cross-entropy, no center loss), and both with the fine pass and without it (the
//! coarse-only ablation), whose step is the coarse half of Coarse2Fine's.

use crate::common::tiny::{golden_backbone, uniform, write_answers};
use crate::common::train::sgd_group;
use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::testing::{rel_error, SplitMix64};
use c2f_kernels::Real;
use c2f_train::model::{CenterBanks, Coarse2Fine, Coarse2FineConfig, Losses, Task};

const BATCH: usize = 3;
const LABELS: [i32; BATCH] = [2, 0, 1];
/// Three attributes per sample, for [`Task::Attributes`].
const TARGETS: [f64; BATCH * 3] = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
const TASKS: [Task; 2] = [Task::Classes, Task::Attributes];

/// With the fine pass (Coarse2Fine) and without (the coarse-only ablation).
const FINE: [bool; 2] = [true, false];

fn tiny<R: Real>(task: Task, beta: f64, seed: u64) -> (CpuBackend<R>, Coarse2Fine) {
    tiny_from(tiny_config(task, beta), true, seed)
}

fn tiny_config(task: Task, beta: f64) -> Coarse2FineConfig {
    Coarse2FineConfig {
        input_size: 75,
        width: 0.125,
        classes: 3,
        task,
        maps: 2,
        upsampler_channels: vec![4, 4],
        center_loss: CenterLossParams {
            lambda: 1.0,
            beta,
            rule: CenterRule::MovingAverage,
        },
        center_banks: CenterBanks::Shared,
        batch: BATCH,
    }
}

/// The model of `config`, with its fine pass or without, and random weights, center banks and
/// input from `seed`.
fn tiny_from<R: Real>(
    config: Coarse2FineConfig,
    fine: bool,
    seed: u64,
) -> (CpuBackend<R>, Coarse2Fine) {
    let mut cpu = CpuBackend::<R>::new();
    let model = if fine {
        Coarse2Fine::new(&mut cpu, config)
    } else {
        Coarse2Fine::coarse_only(&mut cpu, config)
    }
    .unwrap();
    golden_backbone(&mut cpu, model.backbone());
    let mut rng = SplitMix64(seed);
    let mut random = |n: usize, lo: f64, hi: f64| uniform::<R>(&mut rng, n, lo, hi);
    let mut heads = random(model.params.len, -0.3, 0.3);
    // Positive up-sampler weights on non-negative attention maps: the up-sampled map has a
    // positive maximum, so the mask (and the fine branch's gradient path) is not the ones mask.
    for e in model.head_table().entries() {
        if e.name.starts_with("upsampler.") {
            let positive = random(e.len(), 0.05, 0.3);
            heads[e.range()].copy_from_slice(&positive);
        }
    }
    cpu.write(model.params, &heads).unwrap();
    for bank in model.center_banks() {
        let centers = random(bank.len, -0.2, 0.2);
        cpu.write(bank, &centers).unwrap();
    }
    let image = random(model.input().len, -1.0, 1.0);
    cpu.write(model.input(), &image).unwrap();
    let answers = (model.labels(), model.targets());
    write_answers(&mut cpu, answers, model.config.task, (&LABELS, &TARGETS));
    if let Some(chosen_maps) = model.chosen_maps() {
        cpu.write_index(chosen_maps, &[1, 0, 1]).unwrap();
    }
    (cpu, model)
}

#[test]
fn gradient_matches_finite_differences() {
    for (task, fine) in TASKS.into_iter().flat_map(|t| FINE.map(|f| (t, f))) {
        gradient_matches_finite_differences_for(task, fine);
    }
}

/// `(L(p + h·eᵢ) − L(p − h·eᵢ)) / 2h` of the model's total loss in element `i` of `params`, which
/// holds `p` before and after.
fn central_difference(
    cpu: &mut CpuBackend<f64>,
    model: &mut Coarse2Fine,
    mode: BnMode,
    params: Tensor,
    p: &[f64],
    i: usize,
    h: f64,
) -> f64 {
    let mut probe = p.to_vec();
    let mut at = |v: f64| {
        probe[i] = v;
        cpu.write(params, &probe).unwrap();
        model.forward_backward(cpu, mode).unwrap().total()
    };
    let up = at(p[i] + h);
    let down = at(p[i] - h);
    cpu.write(params, p).unwrap();
    (up - down) / (2.0 * h)
}

fn gradient_matches_finite_differences_for(task: Task, fine: bool) {
    // Inference-mode BN and no center update (β = 0) make every forward the same function of
    // the parameters.
    let mode = BnMode::Inference;
    let (mut cpu, mut model) = tiny_from::<f64>(tiny_config(task, 0.0), fine, 1);
    // A first step leaves every scratch buffer written, so a gradient that wrongly adds to a
    // stale buffer instead of assigning it shows in the second.
    model.forward_backward(&mut cpu, mode).unwrap();
    model.zero_grads(&mut cpu).unwrap();
    let loss0 = model.forward_backward(&mut cpu, mode).unwrap().total();
    assert!(loss0.is_finite() && loss0 > 0.0);
    // Both gradients are read before any probe: each probe's forward_backward adds to them.
    let backbone = (
        model.backbone().params,
        cpu.read(model.backbone().grads).unwrap(),
    );
    let heads = (model.params, cpu.read(model.grads).unwrap());
    let mut rng = SplitMix64(5);
    let (mut analytic, mut numeric) = (Vec::new(), Vec::new());
    let h = 1e-6;
    for (params, g, probes) in [(backbone.0, backbone.1, 12), (heads.0, heads.1, 24)] {
        let p = cpu.read(params).unwrap();
        for _ in 0..probes {
            let i = rng.below(p.len() as u64) as usize;
            analytic.push(g[i]);
            numeric.push(central_difference(
                &mut cpu, &mut model, mode, params, &p, i, h,
            ));
        }
    }
    let e = rel_error(&analytic, &numeric);
    assert!(
        e < 1e-4,
        "{task:?}, fine pass {fine}: model gradient vs finite differences: {e:.3e}\n\
         analytic {analytic:?}\nnumeric {numeric:?}"
    );
}

#[test]
fn fits_a_fixed_batch() {
    for (task, fine) in TASKS.into_iter().flat_map(|t| FINE.map(|f| (t, f))) {
        let (mut cpu, mut model) = tiny_from::<f32>(tiny_config(task, 0.05), fine, 2);
        let sgd = sgd_group(&mut cpu, 0.01, 0.9, 1e-5);
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..40 {
            model.zero_grads(&mut cpu).unwrap();
            let losses = model.forward_backward(&mut cpu, BnMode::Train).unwrap();
            last = losses.coarse + losses.fine;
            first.get_or_insert(last);
            model.sgd_step(&mut cpu, &sgd).unwrap();
            if task == Task::Attributes {
                assert_eq!((losses.center_coarse, losses.center_fine), (0.0, 0.0));
            }
            if !fine {
                assert_eq!((losses.fine, losses.center_fine), (0.0, 0.0));
            }
        }
        let first = first.unwrap();
        assert!(
            last < 0.1 * first,
            "{task:?}, fine pass {fine}: the head loss went from {first:.4} to {last:.4}"
        );
        if task == Task::Attributes {
            // Every answer right: each 0/1 prediction equals its target.
            assert_eq!(model.predictions().len(), if fine { 2 } else { 1 });
            for predictions in model.predictions() {
                let got = cpu.read_index(predictions).unwrap();
                let want: Vec<i32> = TARGETS.iter().map(|&t| t as i32).collect();
                assert_eq!(got, want);
            }
        }
    }
}

#[test]
fn attribute_model_has_no_center_banks_in_its_state() {
    let (_, classes) = tiny::<f32>(Task::Classes, 0.05, 2);
    let (_, attributes) = tiny::<f32>(Task::Attributes, 0.05, 2);
    let names =
        |m: &Coarse2Fine| -> Vec<String> { m.state().into_iter().map(|n| n.name).collect() };
    let with = names(&classes);
    let without = names(&attributes);
    // One bank shared by both passes (CenterBanks::Shared).
    assert!(with.iter().any(|n| n == "centers"));
    assert!(!without.iter().any(|n| n.starts_with("centers")));
    assert_eq!(with.len(), without.len() + 1);
}

/// The coarse-only model's checkpoint is Coarse2Fine's without the fine pass's tensors (the
/// up-sampler, the fine head and their momentum) and with one center bank, even where
/// Coarse2Fine has one per pass.
#[test]
fn coarse_only_state_is_coarse2fine_without_the_fine_pass() {
    let config = CoarseOnlyCheck::config(1.0, CenterBanks::Separate);
    let names = |fine: bool| -> Vec<String> {
        let (_, model) = tiny_from::<f32>(config.clone(), fine, 2);
        model.state().into_iter().map(|n| n.name).collect()
    };
    let (with, without) = (names(true), names(false));
    let fine_only = |n: &&String| {
        let n = n.trim_start_matches("momentum.");
        n.starts_with("upsampler.") || n.starts_with("fc_fine.") || n.starts_with("centers.")
    };
    let mut expected: Vec<String> = with.iter().filter(|n| !fine_only(n)).cloned().collect();
    expected.push("centers".into());
    assert_eq!(without, expected);
    // What was left out: 3 up-sampler layers' weight and bias, the fine head's, twice
    // (parameters and momentum), and the two banks.
    assert_eq!(with.len() - without.len(), 2 * (6 + 2) + 2 - 1);
}

/// A Coarse2Fine and a coarse-only model with the same weights, center banks and batch.
struct CoarseOnlyCheck {
    c2f: (CpuBackend<f64>, Coarse2Fine),
    coarse_only: (CpuBackend<f64>, Coarse2Fine),
}

impl CoarseOnlyCheck {
    fn config(lambda: f64, center_banks: CenterBanks) -> Coarse2FineConfig {
        let mut config = tiny_config(Task::Classes, 0.05);
        config.center_loss.lambda = lambda;
        config.center_banks = center_banks;
        config
    }

    /// The coarse-only model takes every tensor of its state, and its input, from Coarse2Fine:
    /// its one bank from Coarse2Fine's coarse bank.
    fn new(config: Coarse2FineConfig) -> CoarseOnlyCheck {
        let (mut cpu, c2f) = tiny_from::<f64>(config.clone(), true, 7);
        let (mut co_cpu, coarse_only) = tiny_from::<f64>(config, false, 8);
        for t in coarse_only.state() {
            let values = cpu.read(Self::tensor(&c2f, &t.name)).unwrap();
            co_cpu.write(t.tensor, &values).unwrap();
        }
        let image = cpu.read(c2f.input()).unwrap();
        co_cpu.write(coarse_only.input(), &image).unwrap();
        CoarseOnlyCheck {
            c2f: (cpu, c2f),
            coarse_only: (co_cpu, coarse_only),
        }
    }

    /// The Coarse2Fine tensor of the coarse-only model's state entry `name`.
    fn tensor(c2f: &Coarse2Fine, name: &str) -> Tensor {
        let separate = c2f.config.center_banks == CenterBanks::Separate;
        let name = if name == "centers" && separate {
            "centers.coarse"
        } else {
            name
        };
        c2f.state()
            .into_iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("Coarse2Fine has no {name}"))
            .tensor
    }

    /// One training step of each: their losses.
    fn step(&mut self) -> (Losses, Losses) {
        let one = |(cpu, model): &mut (CpuBackend<f64>, Coarse2Fine)| {
            model.zero_grads(cpu).unwrap();
            model.forward_backward(cpu, BnMode::Train).unwrap()
        };
        (one(&mut self.c2f), one(&mut self.coarse_only))
    }

    /// The relative difference between the two models' values of each of the coarse-only
    /// model's head parameters' gradients, by name, and of the backbone's gradient.
    fn grad_errors(&mut self) -> Vec<(String, f64)> {
        let (cpu, c2f) = &mut self.c2f;
        let (co_cpu, co) = &mut self.coarse_only;
        let (g, co_g) = (cpu.read(c2f.grads).unwrap(), co_cpu.read(co.grads).unwrap());
        let mut errors: Vec<(String, f64)> = co
            .head_table()
            .entries()
            .iter()
            .map(|e| {
                let theirs = c2f.head_table().get(&e.name).unwrap();
                let error = rel_error(&co_g[e.range()], &g[theirs.range()]);
                (e.name.clone(), error)
            })
            .collect();
        let backbone = rel_error(
            &co_cpu.read(co.backbone().grads).unwrap(),
            &cpu.read(c2f.backbone().grads).unwrap(),
        );
        errors.push(("backbone".into(), backbone));
        errors
    }
}

/// The coarse-only step is the coarse half of Coarse2Fine's. With the center loss on
/// (λ = 1, one bank per pass), the coarse loss terms, the coarse head's gradients (which the
/// fine pass does not reach) and the coarse bank's update are Coarse2Fine's; the attention
/// conv's and the backbone's gradients are not, because the fine pass adds to them. With the
/// fine head at zero and λ = 0 the fine pass adds nothing, and then every gradient the
/// coarse-only model has is Coarse2Fine's.
#[test]
fn coarse_only_step_is_the_coarse_half_of_coarse2fine() {
    let mut check = CoarseOnlyCheck::new(CoarseOnlyCheck::config(1.0, CenterBanks::Separate));
    let (c2f, co) = check.step();
    assert!(c2f.fine > 0.0 && c2f.center_fine > 0.0, "{c2f:?}");
    assert_eq!((co.fine, co.center_fine), (0.0, 0.0));
    for (what, a, b) in [
        ("coarse", co.coarse, c2f.coarse),
        ("center_coarse", co.center_coarse, c2f.center_coarse),
    ] {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "{what}: {a} vs {b}");
    }
    let errors = check.grad_errors();
    eprintln!("λ = 1: relative differences of the gradients {errors:?}");
    for (name, e) in errors {
        if name.starts_with("fc_coarse.") {
            assert!(e < 1e-12, "{name}: {e:.2e}");
        } else {
            assert!(e > 1e-3, "{name}: the fine pass adds nothing? {e:.2e}");
        }
    }
    let banks = [
        CoarseOnlyCheck::tensor(&check.c2f.1, "centers"),
        check.coarse_only.1.center_banks()[0],
    ];
    let c2f_bank = check.c2f.0.read(banks[0]).unwrap();
    let co_bank = check.coarse_only.0.read(banks[1]).unwrap();
    assert!(rel_error(&co_bank, &c2f_bank) < 1e-12);

    let mut check = CoarseOnlyCheck::new(CoarseOnlyCheck::config(0.0, CenterBanks::Shared));
    let (cpu, c2f) = &mut check.c2f;
    let mut heads = cpu.read(c2f.params).unwrap();
    for e in c2f.head_table().entries() {
        if e.name.starts_with("fc_fine.") {
            heads[e.range()].fill(0.0);
        }
    }
    cpu.write(c2f.params, &heads).unwrap();
    let (c2f_losses, _) = check.step();
    assert!(c2f_losses.fine > 0.0, "{c2f_losses:?}");
    let errors = check.grad_errors();
    eprintln!("λ = 0, no fine head: relative differences of the gradients {errors:?}");
    assert_eq!(errors.len(), 4, "{errors:?}");
    for (name, e) in errors {
        assert!(e < 1e-12, "{name}: {e:.2e}");
    }
}

/// The fine branch's path from the loss through the mask into the up-sampler, probed tensor by
/// tensor (its gradients are small next to the heads', so the whole-vector check above would
/// not see an error in them).
#[test]
fn upsampler_gradient_matches_finite_differences() {
    let mode = BnMode::Inference;
    let (mut cpu, mut model) = tiny::<f64>(Task::Classes, 0.0, 3);
    model.zero_grads(&mut cpu).unwrap();
    model.forward_backward(&mut cpu, mode).unwrap();
    let g = cpu.read(model.grads).unwrap();
    let p = cpu.read(model.params).unwrap();
    let params = model.params;
    let entries: Vec<_> = model
        .head_table()
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("upsampler."))
        .cloned()
        .collect();
    let h = 1e-4;
    for e in entries {
        let (mut analytic, mut numeric) = (Vec::new(), Vec::new());
        for i in e.range().step_by(e.len().div_ceil(6)) {
            analytic.push(g[i]);
            numeric.push(central_difference(
                &mut cpu, &mut model, mode, params, &p, i, h,
            ));
        }
        eprintln!("{}: analytic {analytic:?} numeric {numeric:?}", e.name);
        assert!(
            numeric.iter().any(|v| v.abs() > 1e-8),
            "{}: no gradient reaches it, the test would prove nothing",
            e.name
        );
        let e_rel = rel_error(&analytic, &numeric);
        assert!(e_rel < 1e-3, "{}: {e_rel:.3e}", e.name);
    }
}

#[test]
fn attention_initialisation_is_orthonormal() {
    use c2f_train::model::orthogonal_attention;
    for (maps, channels) in [(8, 768), (32, 768), (2, 96), (3, 3)] {
        let w = orthogonal_attention(maps, channels, 7).unwrap();
        assert_eq!(w.len(), maps * channels);
        for i in 0..maps {
            for j in 0..maps {
                let dot: f64 = (0..channels)
                    .map(|c| w[i * channels + c] as f64 * w[j * channels + c] as f64)
                    .sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot - expected).abs() < 1e-5, "rows {i}, {j}: {dot}");
            }
        }
        // Deterministic from the seed, different for another seed.
        assert_eq!(w, orthogonal_attention(maps, channels, 7).unwrap());
        assert_ne!(w, orthogonal_attention(maps, channels, 8).unwrap());
    }
    let err = orthogonal_attention(10, 4, 0).unwrap_err();
    assert!(err.to_string().contains("10 maps of 4"), "{err}");
}
