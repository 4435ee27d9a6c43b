//! Up-sampler pretraining: the pairs, the weights file, that training lowers the held-out L2
//! error below the untrained up-sampler's, and the same run on the CUDA backend against the CPU's
//! (skipped without a GPU).

use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_kernels::testing::rel_error;
use c2f_train::interpolate::{resize, Interpolation};
use c2f_train::pretrain::{pair, pretrain_upsampler, PretrainConfig, Progress};
use c2f_train::upsampler::{attention_map_side, load_into, save};

#[test]
fn pretraining_lowers_held_out_error() {
    let dir = std::env::temp_dir().join(format!("c2f-pretrain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("upsampler.safetensors");
    let cfg = PretrainConfig {
        pairs: 96,
        held_out: 32,
        epochs: 4,
        batch: 8,
        output: Some(path.clone()),
        ..PretrainConfig::new(75)
    };
    let mut cpu = CpuBackend::<f32>::new();
    let (mut steps, mut epochs) = (0, 0);
    let report = pretrain_upsampler(&mut cpu, &cfg, &mut |p| match p {
        Progress::Step { .. } => steps += 1,
        Progress::Epoch(e) => {
            epochs += 1;
            eprintln!("{e:?}");
        }
    })
    .unwrap();
    assert_eq!((steps, epochs), (4 * 12, 4));
    eprintln!("initial held-out {:.5}", report.initial_held_out);
    assert!(
        report.final_held_out() < 0.5 * report.initial_held_out,
        "held-out L2 {:.5} → {:.5}",
        report.initial_held_out,
        report.final_held_out()
    );
    // The saved file holds the returned weights.
    let mut loaded = vec![f32::NAN; report.table.total()];
    load_into(&path, &report.table, &mut loaded).unwrap();
    assert_eq!(loaded, report.params);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same short pretraining on the CUDA backend (our transposed-conv kernels, the SGD kernel)
/// and on the CPU backend: the same held-out errors and weights, within f32 rounding.
#[test]
fn gpu_pretraining_matches_cpu() {
    let Some(mut gpu) = cuda_or_skip("pretrain gpu_pretraining_matches_cpu") else {
        return;
    };
    let cfg = PretrainConfig {
        pairs: 32,
        held_out: 16,
        epochs: 2,
        batch: 8,
        ..PretrainConfig::new(75)
    };
    let cpu = pretrain_upsampler(&mut CpuBackend::<f32>::new(), &cfg, &mut |_| {}).unwrap();
    let on_gpu = pretrain_upsampler(&mut gpu, &cfg, &mut |_| {}).unwrap();
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    for (what, e, bound) in [
        (
            "initial held-out error",
            rel_error(&[on_gpu.initial_held_out], &[cpu.initial_held_out]),
            1e-5,
        ),
        (
            "final held-out error",
            rel_error(&[on_gpu.final_held_out()], &[cpu.final_held_out()]),
            1e-4,
        ),
        (
            "weights",
            rel_error(&widen(&on_gpu.params), &widen(&cpu.params)),
            1e-5,
        ),
    ] {
        println!("pretraining on the GPU vs the CPU, {what}: relative error {e:.2e}");
        assert!(
            e < bound,
            "{what}: relative error {e:.2e} (bound {bound:.0e})"
        );
    }
}

#[test]
fn pairs_are_deterministic_thirds_and_non_negative() {
    let map = attention_map_side(75).unwrap();
    let mut seen = [0usize; 3];
    for k in 0..9 {
        let (m, t, method) = pair(7, k, map, 75).unwrap();
        assert_eq!(method, Interpolation::ALL[k % 3]);
        seen[k % 3] += 1;
        assert_eq!(m.len(), map.0 * map.1);
        assert!(
            m.iter().all(|&v| v >= 0.0),
            "pair {k}: a negative map value"
        );
        assert!(m.iter().any(|&v| v > 0.0), "pair {k}: an all-zero map");
        // The target is the map resized by its method.
        let wide: Vec<f64> = m.iter().map(|&v| v as f64).collect();
        let want = resize(method, 1, map, (75, 75), &wide).unwrap();
        let err = t
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-6, "pair {k}: target off by {err}");
        assert_eq!(
            pair(7, k, map, 75).unwrap().0,
            m,
            "pair {k} not reproducible"
        );
        assert_ne!(
            pair(8, k, map, 75).unwrap().0,
            m,
            "pair {k} ignores the seed"
        );
    }
    assert_eq!(seen, [3, 3, 3]);
}

#[test]
fn weights_file_with_missing_or_misshaped_tensor_is_refused() {
    use c2f_train::upsampler::{Upsampler, UpsamplerKind, UpsamplerShape};
    let mut cpu = CpuBackend::<f32>::new();
    let shape = |channels: Vec<usize>| UpsamplerShape {
        batch: 1,
        map: (3, 3),
        output: 75,
        kind: UpsamplerKind::Learnable,
        channels,
    };
    let up = Upsampler::new(&mut cpu, shape(vec![4])).unwrap();
    let other = Upsampler::new(&mut cpu, shape(vec![4, 4])).unwrap();
    let narrow = Upsampler::new(&mut cpu, shape(vec![2])).unwrap();
    let dir = std::env::temp_dir().join(format!("c2f-upfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("two_layers.safetensors");
    let values: Vec<f32> = (0..up.table().total()).map(|i| i as f32 * 0.01).collect();
    save(&path, up.table(), &values).unwrap();
    let mut back = vec![0.0; up.table().total()];
    load_into(&path, up.table(), &mut back).unwrap();
    assert_eq!(back, values);
    // A three-layer up-sampler misses upsampler.2.* and upsampler.1.weight has another shape.
    let mut buf = vec![0.0; other.table().total()];
    let e = load_into(&path, other.table(), &mut buf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("two_layers.safetensors"), "{e}");
    assert!(
        e.contains("missing (2): upsampler.2.bias, upsampler.2.weight"),
        "{e}"
    );
    assert!(
        e.contains("upsampler.1.weight is [4, 1, 4, 4], expected [4, 4, 4, 4]"),
        "{e}"
    );
    // Fewer channels: every tensor mis-shaped, named.
    let mut buf = vec![0.0; narrow.table().total()];
    let e = load_into(&path, narrow.table(), &mut buf)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upsampler.0.weight is [1, 4, 4, 4], expected [1, 2, 4, 4]"),
        "{e}"
    );
    // Not a safetensors file at all.
    std::fs::write(&path, b"not weights").unwrap();
    let e = load_into(&path, up.table(), &mut back)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("two_layers.safetensors") && e.contains("not a valid"),
        "{e}"
    );
    // The fixed bilinear up-sampler has nothing to load.
    let fixed = Upsampler::new(
        &mut cpu,
        UpsamplerShape {
            kind: UpsamplerKind::FixedBilinear,
            ..shape(vec![4])
        },
    )
    .unwrap();
    assert!(fixed.table().entries().is_empty());
    let e = load_into(&path, fixed.table(), &mut [])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no parameters"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fixed bilinear up-sampler is exactly the bilinear resize, forward and backward (adjoint).
#[test]
fn fixed_bilinear_is_the_resize() {
    use c2f_inception::backend::prelude::*;
    use c2f_kernels::testing::SplitMix64;
    use c2f_train::upsampler::{Upsampler, UpsamplerKind, UpsamplerShape};
    let mut cpu = CpuBackend::<f64>::new();
    let up = Upsampler::new(
        &mut cpu,
        UpsamplerShape {
            batch: 2,
            map: (5, 4),
            output: 13,
            kind: UpsamplerKind::FixedBilinear,
            channels: vec![8],
        },
    )
    .unwrap();
    let mut rng = SplitMix64(3);
    let x_host = rng.uniform_vec(40, 0.0, 1.0);
    let x = cpu.alloc(40).unwrap();
    cpu.write(x, &x_host).unwrap();
    let empty = cpu.alloc(0).unwrap();
    cpu.fill(up.output(), f64::NAN).unwrap();
    up.forward(&mut cpu, empty, x).unwrap();
    let y = cpu.read(up.output()).unwrap();
    let want = resize(Interpolation::Bilinear, 2, (5, 4), (13, 13), &x_host).unwrap();
    assert_eq!(y, want);
    // <dy, R x> = <Rᵀ dy, x>.
    let dy_host = rng.uniform_vec(2 * 13 * 13, -1.0, 1.0);
    cpu.write(up.output_grad(), &dy_host).unwrap();
    let dx = cpu.alloc(40).unwrap();
    cpu.fill(dx, f64::NAN).unwrap();
    up.backward(&mut cpu, empty, empty, x, dx).unwrap();
    let dx = cpu.read(dx).unwrap();
    let lhs: f64 = dy_host.iter().zip(&y).map(|(a, b)| a * b).sum();
    let rhs: f64 = dx.iter().zip(&x_host).map(|(a, b)| a * b).sum();
    assert!(
        (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
        "{lhs} vs {rhs}"
    );
}
