//! InceptionV3 weights in safetensors with torchvision's state-dict names
//! (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`, ..., `fc.weight`).
//!
//! Loading checks every name and shape against the graph and refuses the file with one message
//! that names it and lists what is missing, unexpected and mis-shaped. `num_batches_tracked` and
//! the auxiliary head (`AuxLogits.*`, which torchvision's pretrained files carry) are accepted
//! and ignored. Saving is atomic: a temporary file beside the target, then a rename.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use c2f_kernels::{Error, Result};
use safetensors::{Dtype, SafeTensors};

use crate::spec::{Depth, Graph};
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
        // A missing or broken file is named as that first: another width would not help it.
        read_checked(path, &[], |_| true, "InceptionV3 weights")?;
        return Err(file_error(
            path,
            format!(
                "weights fit only width 1.0; this network has width {}",
                graph.config.width
            ),
        ));
    }
    let wanted = |name: &str| !(options.skip_fc && is_fc(name));
    let tables = [&graph.params, &graph.buffers];
    let expected: Vec<(&str, &[usize])> = tables
        .iter()
        .flat_map(|t| t.entries())
        .filter(|e| wanted(&e.name))
        .map(|e| (e.name.as_str(), e.shape.as_slice()))
        .collect();
    // A backbone cut at Mixed_6e reads a full file: the later blocks and `fc` are not its own.
    let cut = graph.config.depth == Depth::Mixed6e;
    let beyond = |name: &str| cut && (name.starts_with("Mixed_7") || is_fc(name));
    let file = read_checked(
        path,
        &expected,
        |name| ignored(name) || !wanted(name) || beyond(name),
        "InceptionV3 weights",
    )?;
    let mut values = file.values.into_iter();
    for (table, dest) in [(&graph.params, params), (&graph.buffers, buffers)] {
        check_buffer(path, table, dest.len())?;
        for entry in table.entries().iter().filter(|e| wanted(&e.name)) {
            dest[entry.range()].copy_from_slice(&values.next().expect("one per expected tensor"));
        }
    }
    Ok(())
}

/// What [`read_checked`] found: the expected tensors' values in the order asked for, and the
/// file's `__metadata__` map.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedFile {
    pub values: Vec<Vec<f32>>,
    pub metadata: HashMap<String, String>,
}

/// Reads the f32 tensors `expected` (name, shape) from the safetensors file at `path`. Refuses
/// the file, naming it and `what` it was read as, with one message listing every missing,
/// unexpected (a name neither expected nor `accept_extra`), mis-shaped and mis-typed tensor.
pub fn read_checked(
    path: &Path,
    expected: &[(&str, &[usize])],
    accept_extra: impl Fn(&str) -> bool,
    what: &str,
) -> Result<CheckedFile> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    let mut problems = Vec::new();
    let in_file: BTreeSet<&str> = file.names().into_iter().collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|(name, _)| *name).collect();
    let missing: Vec<&str> = wanted.difference(&in_file).copied().collect();
    let unexpected: Vec<&str> = in_file
        .iter()
        .filter(|n| !accept_extra(n) && !wanted.contains(*n))
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
    for &(name, shape) in expected {
        let Ok(view) = file.tensor(name) else {
            continue;
        };
        if view.shape() != shape {
            misshaped.push(format!("{name} is {:?}, expected {shape:?}", view.shape()));
        } else if view.dtype() != Dtype::F32 {
            misshaped.push(format!("{name} is {:?}, expected F32", view.dtype()));
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
            format!("refused as {what}: {}", problems.join(" | ")),
        ));
    }
    let values = expected
        .iter()
        .map(|(name, _)| {
            let view = file.tensor(name).expect("checked above");
            view.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .collect();
    Ok(CheckedFile {
        values,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Writes f32 tensors (name, shape, values) and an optional `__metadata__` map to a safetensors
/// file at `path`, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut views = Vec::new();
    for &(name, shape, values) in tensors {
        let data: &[u8] = bytemuck::cast_slice(values);
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), data)
            .map_err(|e| file_error(path, format!("{name}: {e}")))?;
        views.push((name, view));
    }
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| file_error(path, format!("cannot serialise: {e}")))?;
    write_atomically(path, &bytes)
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
    let tensors: Vec<(&str, &[usize], &[f32])> =
        [(&graph.params, params), (&graph.buffers, buffers)]
            .into_iter()
            .flat_map(|(table, src)| {
                table
                    .entries()
                    .iter()
                    .map(move |e| (e.name.as_str(), e.shape.as_slice(), &src[e.range()]))
            })
            .collect();
    write_tensors(path, &tensors, None)
}

/// The environment variable that makes [`write_atomically`] pause this many milliseconds
/// between the synced temporary file and the rename, saying so on stderr: for tests that kill
/// a process in the middle of a write.
pub const PAUSE_BEFORE_RENAME: &str = "C2F_TEST_PAUSE_BEFORE_RENAME_MS";

/// The prefix of the temporary file [`write_atomically`] writes beside `name` (the process id
/// follows), so that a crashed run's leftovers can be found.
pub fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path` and syncs
/// the folder, so a crash (or a power cut) leaves either the old file or the new one, never a
/// torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| file_error(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(
        "{}{}",
        temporary_prefix(&name.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Some(ms) = std::env::var(PAUSE_BEFORE_RENAME)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            eprintln!(
                "{PAUSE_BEFORE_RENAME}: {} written, renaming in {ms} ms",
                tmp.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the folder's entry is.
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(folder)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, format!("cannot write: {e}"))
    })
}
