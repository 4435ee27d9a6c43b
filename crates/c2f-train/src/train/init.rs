//! Starting values shared by the models: the backbone's fresh draw (or weights file), and an
//! earlier run's checkpoint as a new run's start.

use std::path::Path;

use c2f_inception::backend::Backend;
use c2f_inception::init::{counter_uniform, golden_init};
use c2f_inception::network::Network;
use c2f_inception::table::TensorTable;
use c2f_inception::weights::{self, LoadOptions};
use c2f_kernels::{Error, Result};

use crate::checkpoint;
use crate::model::FEATURE_SCALE;
use crate::state::Named;
use crate::upsampler::init_range;

/// Starting values for a fresh run: the shared counter-based draw for the backbone (or the
/// weights file), fresh BatchNorm statistics, and the heads' own ranges.
pub fn init_backbone<B: Backend<Scalar = f32>>(
    b: &mut B,
    net: &Network,
    weights_file: Option<&Path>,
) -> Result<()> {
    let mut params = vec![0.0; net.graph.params.total()];
    let mut buffers = vec![0.0; net.graph.buffers.total()];
    golden_init(&net.graph, &mut params, &mut buffers);
    // Fresh BatchNorm statistics, as a new torchvision model has.
    for e in net.graph.buffers.entries() {
        let fill = if e.name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        buffers[e.range()].fill(fill);
    }
    if let Some(path) = weights_file {
        let options = LoadOptions { skip_fc: true };
        weights::load(path, &net.graph, &mut params, &mut buffers, options)?;
    }
    b.write(net.params, &params)?;
    b.write(net.buffers, &buffers)
}

/// A fresh draw of a model's head parameters, laid out as `table`: each tensor uniform in its
/// [`head_range`], drawn by its name.
pub fn uniform_heads(table: &TensorTable) -> Vec<f32> {
    let mut heads = vec![0.0f32; table.total()];
    for e in table.entries() {
        let (lo, hi) = head_range(&e.name, &e.shape);
        counter_uniform(&e.name, lo, hi, &mut heads[e.range()]);
    }
    heads
}

/// The uniform range a head parameter starts from: ±1/sqrt(fan_in), except the up-sampler's
/// own ([`init_range`]), and the classifiers (`fc*`) 100× smaller, because they see 100× the
/// unit-norm part features and should start with logits of order one.
fn head_range(name: &str, shape: &[usize]) -> (f64, f64) {
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f64).sqrt();
    if name.starts_with("upsampler.") {
        init_range(name, shape)
    } else if name.starts_with("fc") {
        (-bound / FEATURE_SCALE, bound / FEATURE_SCALE)
    } else {
        (-bound, bound)
    }
}

/// Fills a fresh model's state from the checkpoint of an earlier run of the same model and
/// shapes, then zeroes its momentum: a new run, with its own data, schedule and epochs, that
/// starts where that one ended.
pub fn start_from_checkpoint<B: Backend<Scalar = f32>>(
    b: &mut B,
    state: &[Named],
    path: &Path,
    model: &str,
) -> Result<()> {
    let meta = checkpoint::read_meta(path)?;
    if meta.model != model {
        return Err(Error::File {
            path: path.display().to_string(),
            message: format!("a {} checkpoint cannot start a {model} run", meta.model),
        });
    }
    checkpoint::load(b, path, state)?;
    for n in state.iter().filter(|n| n.name.starts_with("momentum.")) {
        b.fill(n.tensor, 0.0)?;
    }
    Ok(())
}
