//! Safetensors weights with torchvision's names: a round trip is bit-exact, and every kind of bad
//! file is refused with a message that names the file and the tensors at fault.

use std::path::{Path, PathBuf};

use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::weights::{load, save, write_tensors, LoadOptions};
use c2f_kernels::testing::SplitMix64;
use safetensors::Dtype;

fn graph(depth: Depth, width: f64) -> Graph {
    Graph::new(InceptionConfig {
        input_size: 299,
        width,
        depth,
    })
    .unwrap()
}

/// A file in the target folder's scratch space: each run overwrites the last one's files
/// (about 440 MB of full-width weights) instead of leaving them behind per process.
fn temp_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c2f-weights");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

/// Saves random weights for `g` and returns the path and the values.
fn saved(g: &Graph, name: &str) -> (PathBuf, Vec<f32>, Vec<f32>) {
    let path = temp_path(name);
    let params = random(g.params.total(), 1);
    let buffers = random(g.buffers.total(), 2);
    save(&path, g, &params, &buffers).unwrap();
    (path, params, buffers)
}

fn load_err(path: &Path, g: &Graph, options: LoadOptions) -> String {
    let mut p = vec![0.0; g.params.total()];
    let mut b = vec![0.0; g.buffers.total()];
    load(path, g, &mut p, &mut b, options)
        .unwrap_err()
        .to_string()
}

#[test]
fn round_trip_is_bit_exact() {
    let g = graph(Depth::Full { classes: 7 }, 1.0);
    let (path, params, buffers) = saved(&g, "round_trip.safetensors");
    let mut p = vec![f32::NAN; g.params.total()];
    let mut b = vec![f32::NAN; g.buffers.total()];
    load(&path, &g, &mut p, &mut b, LoadOptions::default()).unwrap();
    assert!(p
        .iter()
        .zip(&params)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(b
        .iter()
        .zip(&buffers)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn missing_tensors_are_listed_with_the_file() {
    let (path, _, _) = saved(&graph(Depth::Mixed6e, 1.0), "backbone.safetensors");
    let msg = load_err(
        &path,
        &graph(Depth::Full { classes: 5 }, 1.0),
        LoadOptions::default(),
    );
    assert!(msg.contains("backbone.safetensors"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    assert!(msg.contains("Mixed_7c.branch_pool.bn.running_var"), "{msg}");
    assert!(msg.contains("fc.weight"), "{msg}");
}

#[test]
fn unexpected_tensors_are_refused() {
    // A full network's file (ImageNet's, say) loads into a backbone cut at Mixed_6e: the later
    // blocks and `fc` are not its own, so they are passed over, not "unexpected".
    let full = graph(Depth::Full { classes: 5 }, 1.0);
    let (path, params, buffers) = saved(&full, "full.safetensors");
    let cut = graph(Depth::Mixed6e, 1.0);
    let mut p = vec![f32::NAN; cut.params.total()];
    let mut b = vec![f32::NAN; cut.buffers.total()];
    load(&path, &cut, &mut p, &mut b, LoadOptions::default()).unwrap();
    for (table, got, all, whole) in [
        (&cut.params, &p, &full.params, &params),
        (&cut.buffers, &b, &full.buffers, &buffers),
    ] {
        for e in table.entries() {
            let src = all.get(&e.name).unwrap();
            assert_eq!(&got[e.range()], &whole[src.range()], "{}", e.name);
        }
    }
    // A tensor no InceptionV3 has is refused, named.
    let extra = temp_path("extra.safetensors");
    let mut tensors: Vec<(&str, &[usize], &[f32])> = cut
        .params
        .entries()
        .iter()
        .map(|e| (e.name.as_str(), e.shape.as_slice(), &p[e.range()]))
        .chain(
            cut.buffers
                .entries()
                .iter()
                .map(|e| (e.name.as_str(), e.shape.as_slice(), &b[e.range()])),
        )
        .collect();
    tensors.push(("Mixed_6e.branch9x9.conv.weight", &[2], &[1.0, 2.0]));
    write_tensors(&extra, &tensors, None).unwrap();
    let msg = load_err(&extra, &cut, LoadOptions::default());
    assert!(msg.contains("unexpected (1)"), "{msg}");
    assert!(msg.contains("Mixed_6e.branch9x9.conv.weight"), "{msg}");
    assert!(msg.contains("extra.safetensors"), "{msg}");
}

#[test]
fn misshaped_fc_is_refused_unless_fc_is_skipped() {
    let (path, params, _) = saved(&graph(Depth::Full { classes: 10 }, 1.0), "fc10.safetensors");
    let g5 = graph(Depth::Full { classes: 5 }, 1.0);
    let msg = load_err(&path, &g5, LoadOptions::default());
    assert!(
        msg.contains("fc.weight is [10, 2048], expected [5, 2048]"),
        "{msg}"
    );
    let mut p = vec![0.25f32; g5.params.total()];
    let mut b = vec![0.0; g5.buffers.total()];
    load(&path, &g5, &mut p, &mut b, LoadOptions { skip_fc: true }).unwrap();
    let fc = g5.params.get("fc.weight").unwrap();
    assert!(
        p[fc.range()].iter().all(|&v| v == 0.25),
        "fc was overwritten"
    );
    let first = g5.params.entry(0);
    assert_eq!(&p[first.range()], &params[first.range()]);
}

#[test]
fn wrong_dtype_truncation_and_width_are_refused() {
    let g = graph(Depth::Mixed6e, 1.0);
    let (path, params, buffers) = saved(&g, "ok.safetensors");

    // Truncated: the header promises more bytes than the file has.
    let bytes = std::fs::read(&path).unwrap();
    let cut = temp_path("truncated.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&cut, &g, LoadOptions::default());
    assert!(
        msg.contains("truncated.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );

    // One tensor stored as f64.
    let mut views = Vec::new();
    let doubled: Vec<f64> = params[g.params.entry(0).range()]
        .iter()
        .map(|&v| v as f64)
        .collect();
    for (table, src) in [(&g.params, &params), (&g.buffers, &buffers)] {
        for (i, e) in table.entries().iter().enumerate() {
            let (dtype, data): (Dtype, &[u8]) = if i == 0 && std::ptr::eq(table, &g.params) {
                (Dtype::F64, bytemuck::cast_slice(&doubled))
            } else {
                (Dtype::F32, bytemuck::cast_slice(&src[e.range()]))
            };
            let view = safetensors::tensor::TensorView::new(dtype, e.shape.clone(), data).unwrap();
            views.push((e.name.clone(), view));
        }
    }
    let f64_path = temp_path("f64.safetensors");
    std::fs::write(&f64_path, safetensors::serialize(views, None).unwrap()).unwrap();
    let msg = load_err(&f64_path, &g, LoadOptions::default());
    assert!(
        msg.contains("Conv2d_1a_3x3.conv.weight is F64, expected F32"),
        "{msg}"
    );

    let narrow = graph(Depth::Mixed6e, 0.5);
    let msg = load_err(&path, &narrow, LoadOptions::default());
    assert!(msg.contains("width 0.5"), "{msg}");
}

#[test]
fn num_batches_tracked_and_aux_head_are_ignored() {
    let g = graph(Depth::Mixed6e, 1.0);
    let params = random(g.params.total(), 3);
    let buffers = random(g.buffers.total(), 4);
    let counter = [7i64];
    let aux = [0.5f32; 4];
    let mut views = Vec::new();
    for (table, src) in [(&g.params, &params), (&g.buffers, &buffers)] {
        for e in table.entries() {
            let data: &[u8] = bytemuck::cast_slice(&src[e.range()]);
            views.push((
                e.name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, e.shape.clone(), data).unwrap(),
            ));
        }
    }
    views.push((
        "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
        safetensors::tensor::TensorView::new(Dtype::I64, vec![], bytemuck::cast_slice(&counter))
            .unwrap(),
    ));
    views.push((
        "AuxLogits.fc.bias".into(),
        safetensors::tensor::TensorView::new(Dtype::F32, vec![4], bytemuck::cast_slice(&aux))
            .unwrap(),
    ));
    let path = temp_path("torchvision_like.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut p = vec![0.0; g.params.total()];
    let mut b = vec![0.0; g.buffers.total()];
    load(&path, &g, &mut p, &mut b, LoadOptions::default()).unwrap();
    assert_eq!(p, params);
    assert_eq!(b, buffers);
}
