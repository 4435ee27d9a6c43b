//! InceptionV3 weights in safetensors with torchvision's state-dict names
//! (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`, ..., `fc.weight`).
//!
//! Loading checks every name and shape against the graph and refuses the file with one message
//! that names it and lists what is missing, unexpected and mis-shaped. `num_batches_tracked` and
//! the auxiliary head (`AuxLogits.*`, which torchvision's pretrained files carry) are accepted
//! and ignored. Saving is atomic: a temporary file beside the target, then a rename.

use std::collections::BTreeSet;
use std::path::Path;

use c2f_kernels::{Error, Result};
use safetensors::{Dtype, SafeTensors};

use crate::spec::Graph;
use crate::table::TensorTable;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Leave `fc` as it is and ignore it in the file: for a new number of classes.
    pub skip_fc: bool,
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn ignored(name: &str) -> bool {
    name.ends_with(".num_batches_tracked") || name.starts_with("AuxLogits.")
}

fn is_fc(name: &str) -> bool {
    name.starts_with("fc.")
}

/// Fills `params` and `buffers` (the graph's two flat host buffers) from the file at `path`.
pub fn load(
    path: &Path,
    graph: &Graph,
    params: &mut [f32],
    buffers: &mut [f32],
    options: LoadOptions,
) -> Result<()> {
    if graph.config.width != 1.0 {
        return Err(file_error(
            path,
            format!(
                "weights fit only width 1.0; this network has width {}",
                graph.config.width
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    let wanted = |name: &str| !(options.skip_fc && is_fc(name));

    let mut problems = Vec::new();
    let in_file: BTreeSet<&str> = file.names().into_iter().collect();
    let tables = [(&graph.params, "parameter"), (&graph.buffers, "buffer")];
    let expected: BTreeSet<&str> = tables
        .iter()
        .flat_map(|(t, _)| t.entries().iter().map(|e| e.name.as_str()))
        .filter(|n| wanted(n))
        .collect();
    let missing: Vec<&str> = expected.difference(&in_file).copied().collect();
    let unexpected: Vec<&str> = in_file
        .iter()
        .filter(|n| wanted(n) && !ignored(n) && !expected.contains(*n))
        .copied()
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "missing ({}): {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "unexpected ({}): {}",
            unexpected.len(),
            unexpected.join(", ")
        ));
    }
    let mut misshaped = Vec::new();
    for (table, _) in &tables {
        for entry in table.entries().iter().filter(|e| wanted(&e.name)) {
            let Ok(view) = file.tensor(&entry.name) else {
                continue;
            };
            if view.shape() != entry.shape.as_slice() {
                misshaped.push(format!(
                    "{} is {:?}, expected {:?}",
                    entry.name,
                    view.shape(),
                    entry.shape
                ));
            } else if view.dtype() != Dtype::F32 {
                misshaped.push(format!(
                    "{} is {:?}, expected F32",
                    entry.name,
                    view.dtype()
                ));
            }
        }
    }
    if !misshaped.is_empty() {
        problems.push(format!(
            "mis-shaped or mis-typed ({}): {}",
            misshaped.len(),
            misshaped.join("; ")
        ));
    }
    if !problems.is_empty() {
        return Err(file_error(
            path,
            format!("refused as InceptionV3 weights: {}", problems.join(" | ")),
        ));
    }
    for (table, dest) in [(&graph.params, params), (&graph.buffers, buffers)] {
        check_buffer(path, table, dest.len())?;
        for entry in table.entries().iter().filter(|e| wanted(&e.name)) {
            let view = file.tensor(&entry.name).expect("checked above");
            let out = &mut dest[entry.range()];
            for (o, chunk) in out.iter_mut().zip(view.data().chunks_exact(4)) {
                *o = f32::from_le_bytes(chunk.try_into().unwrap());
            }
        }
    }
    Ok(())
}

fn check_buffer(path: &Path, table: &TensorTable, len: usize) -> Result<()> {
    if table.total() == len {
        Ok(())
    } else {
        Err(file_error(
            path,
            format!("buffer of {len} values for a table of {}", table.total()),
        ))
    }
}

/// Writes `params` and `buffers` to `path` with torchvision's names, atomically.
pub fn save(path: &Path, graph: &Graph, params: &[f32], buffers: &[f32]) -> Result<()> {
    check_buffer(path, &graph.params, params.len())?;
    check_buffer(path, &graph.buffers, buffers.len())?;
    let mut views = Vec::new();
    for (table, src) in [(&graph.params, params), (&graph.buffers, buffers)] {
        for entry in table.entries() {
            let data: &[u8] = bytemuck::cast_slice(&src[entry.range()]);
            let view = safetensors::tensor::TensorView::new(Dtype::F32, entry.shape.clone(), data)
                .map_err(|e| file_error(path, format!("{}: {e}", entry.name)))?;
            views.push((entry.name.clone(), view));
        }
    }
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| file_error(path, format!("cannot serialise: {e}")))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`, so a
/// crash leaves either the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| file_error(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, format!("cannot write: {e}"))
    })
}
