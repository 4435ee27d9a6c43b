//! Training checkpoints: one safetensors file holding every tensor a run needs to continue
//! (parameters, BatchNorm running statistics, SGD momentum, the center banks), named, with the
//! run's JSON metadata (config, position, RNG state, dataset fingerprint, class names, precision)
//! in the file's `__metadata__`. Written atomically (temp file, fsync, rename): a crash leaves the last
//! good checkpoint. Loading checks every name and shape and refuses the file otherwise.

use std::collections::HashMap;
use std::path::Path;

use c2f_inception::backend::Backend;
use c2f_inception::weights::{read_checked, write_tensors};
use c2f_inception::Precision;
use c2f_kernels::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::spec::DataSpec;
use crate::state::Named;
use crate::upsampler::UpsamplerOrigin;

/// The `__metadata__` key the run's JSON lives under.
const META_KEY: &str = "c2f";
/// Bumped when the layout of a checkpoint changes.
pub const FORMAT: u32 = 1;

/// Where a run stands, and what it needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// `coarse2fine` or `baseline`.
    pub model: String,
    pub config: TrainConfig,
    /// Epochs finished, and batches finished of the next one.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    /// Training steps taken in all.
    pub step: u64,
    /// The state of the generator that draws the fine branch's attention maps.
    pub rng: u64,
    /// The epoch's running sums so far (loss terms and counts), so its summary line after a
    /// resume is the one an uninterrupted run prints.
    pub epoch_sums: Vec<f64>,
    /// What the run trains on, so `c2f eval` can open it again.
    pub data: DataSpec,
    /// [`crate::train::resume::dataset_fingerprint`] of the training set.
    pub dataset: String,
    pub class_names: Vec<String>,
    /// Where the up-sampler started (`None`: the model has none, or the checkpoint is older
    /// than this record).
    #[serde(default)]
    pub upsampler: Option<UpsamplerOrigin>,
    /// How the run computed when it wrote the checkpoint. Every tensor is f32 whatever it was,
    /// so a checkpoint loads in any precision.
    #[serde(default = "legacy_precision")]
    pub precision: Precision,
}

/// Checkpoints from before the precision was recorded were all computed in f32: the CPU backend,
/// and the CUDA backend with TF32 off.
fn legacy_precision() -> Precision {
    Precision::F32
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads every tensor of `state` off the backend and writes them with `meta` to `path`. A state
/// with a value that is not finite is an [`Error::Divergence`] naming the tensor, and nothing is
/// written: the file there stays the last good checkpoint.
pub fn save<B: Backend<Scalar = f32>>(
    b: &mut B,
    path: &Path,
    state: &[Named],
    meta: &CheckpointMeta,
) -> Result<()> {
    let values = state
        .iter()
        .map(|n| b.read(n.tensor))
        .collect::<Result<Vec<_>>>()?;
    for (n, v) in state.iter().zip(&values) {
        if let Some(&value) = v.iter().find(|x| !x.is_finite()) {
            return Err(Error::Divergence {
                step: meta.step as usize,
                term: format!("{} tensor `{}`", meta.model, n.name),
                value: value.into(),
            });
        }
    }
    let tensors: Vec<(&str, &[usize], &[f32])> = state
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.name.as_str(), n.shape.as_slice(), v.as_slice()))
        .collect();
    let json = serde_json::to_string(meta)
        .map_err(|e| file_error(path, format!("cannot encode the metadata: {e}")))?;
    write_tensors(
        path,
        &tensors,
        Some(HashMap::from([(META_KEY.to_string(), json)])),
    )
}

/// Reads only the metadata of the checkpoint at `path` (to build the model it fits).
pub fn read_meta(path: &Path) -> Result<CheckpointMeta> {
    let file = read_checked(path, &[], |_| true, "a c2f checkpoint")?;
    parse_meta(path, &file.metadata)
}

fn parse_meta(path: &Path, metadata: &HashMap<String, String>) -> Result<CheckpointMeta> {
    let json = metadata.get(META_KEY).ok_or_else(|| {
        file_error(
            path,
            format!(
                "no `{META_KEY}` metadata: not a c2f checkpoint (a weights file? use --weights)"
            ),
        )
    })?;
    let meta: CheckpointMeta = serde_json::from_str(json)
        .map_err(|e| file_error(path, format!("bad `{META_KEY}` metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(file_error(
            path,
            format!("checkpoint format {}, this c2f reads {FORMAT}", meta.format),
        ));
    }
    Ok(meta)
}

/// Fills every tensor of `state` from the checkpoint at `path` and returns its metadata. The
/// file must hold exactly these tensors with these shapes; nothing is written otherwise.
pub fn load<B: Backend<Scalar = f32>>(
    b: &mut B,
    path: &Path,
    state: &[Named],
) -> Result<CheckpointMeta> {
    let expected: Vec<(&str, &[usize])> = state
        .iter()
        .map(|n| (n.name.as_str(), n.shape.as_slice()))
        .collect();
    let file = read_checked(path, &expected, |_| false, "a c2f checkpoint")?;
    let meta = parse_meta(path, &file.metadata)?;
    for (n, v) in state.iter().zip(&file.values) {
        b.write(n.tensor, v)?;
    }
    Ok(meta)
}
