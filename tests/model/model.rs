//! The whole Coarse2Fine model's gradient (both passes, the up-sampler and mask path, BAP, the
//! heads and the center losses) against finite differences on a tiny model in f64, and a tiny
//! model fitting a fixed batch; both for classes and for multi-label attributes (sigmoid
//! binary cross-entropy, no center loss).

use c2f_inception::backend::{prelude::*, BnMode, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::golden_init;
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::testing::{rel_error, SplitMix64};
use c2f_kernels::Real;
use c2f_train::model::{CenterBanks, Coarse2Fine, Coarse2FineConfig, Task};

const BATCH: usize = 3;
const LABELS: [i32; BATCH] = [2, 0, 1];
/// Three attributes per sample, for [`Task::Attributes`].
const TARGETS: [f64; BATCH * 3] = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
const TASKS: [Task; 2] = [Task::Classes, Task::Attributes];

fn tiny<R: Real>(task: Task, beta: f64, seed: u64) -> (CpuBackend<R>, Coarse2Fine) {
    let config = Coarse2FineConfig {
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
    };
    let mut cpu = CpuBackend::<R>::new();
    let model = Coarse2Fine::new(&mut cpu, config).unwrap();
    let net = model.backbone();
    let mut params = vec![0.0f32; net.graph.params.total()];
    let mut buffers = vec![0.0f32; net.graph.buffers.total()];
    golden_init(&net.graph, &mut params, &mut buffers);
    let widen = |v: &[f32]| v.iter().map(|&x| R::from_f64(x as f64)).collect::<Vec<R>>();
    cpu.write(net.params, &widen(&params)).unwrap();
    cpu.write(net.buffers, &widen(&buffers)).unwrap();
    let mut rng = SplitMix64(seed);
    let mut random = |n: usize, lo: f64, hi: f64| -> Vec<R> {
        (0..n).map(|_| R::from_f64(rng.uniform(lo, hi))).collect()
    };
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
    let (cc, cf) = model.centers();
    let centers = random(cc.len, -0.2, 0.2);
    cpu.write(cc, &centers).unwrap();
    let centers = random(cf.len, -0.2, 0.2);
    cpu.write(cf, &centers).unwrap();
    let image = random(model.input().len, -1.0, 1.0);
    cpu.write(model.input(), &image).unwrap();
    cpu.write_index(model.labels(), &LABELS).unwrap();
    if task == Task::Attributes {
        let targets: Vec<R> = TARGETS.iter().map(|&t| R::from_f64(t)).collect();
        cpu.write(model.targets(), &targets).unwrap();
    }
    cpu.write_index(model.chosen_maps(), &[1, 0, 1]).unwrap();
    (cpu, model)
}

#[test]
fn gradient_matches_finite_differences() {
    for task in TASKS {
        gradient_matches_finite_differences_for(task);
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

fn gradient_matches_finite_differences_for(task: Task) {
    // Inference-mode BN and no center update (β = 0) make every forward the same function of
    // the parameters.
    let mode = BnMode::Inference;
    let (mut cpu, mut model) = tiny::<f64>(task, 0.0, 1);
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
        "{task:?}: model gradient vs finite differences: {e:.3e}\nanalytic {analytic:?}\n\
         numeric {numeric:?}"
    );
}

#[test]
fn fits_a_fixed_batch() {
    for task in TASKS {
        let (mut cpu, mut model) = tiny::<f32>(task, 0.05, 2);
        let sgd = SgdParams::new(0.01, 0.9, 1e-5);
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
        }
        let first = first.unwrap();
        assert!(
            last < 0.1 * first,
            "{task:?}: the head loss went from {first:.4} to {last:.4}"
        );
        if task == Task::Attributes {
            // Every answer right: each 0/1 prediction equals its target.
            let (coarse, fine) = model.predictions();
            for predictions in [coarse, fine] {
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
