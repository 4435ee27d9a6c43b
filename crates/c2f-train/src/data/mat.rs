//! MATLAB MAT-file (level 5, as MATLAB's `-v7` writes it, compressed or not) access through the
//! `matrw` crate, for the Stanford Cars and Dogs annotation files: the variables, the elements of
//! struct and cell arrays, numbers of any numeric class, single-row character arrays.

use std::path::Path;

use c2f_kernels::Result;
use matrw::{MatFile, MatVariable, MatlabType};

use super::files::{file_error, read_bytes};

/// Reads and parses the MAT-file at `path`. matrw panics on some corrupt input (a truncated
/// compressed variable, bad UTF-8 in a character array) instead of returning an error; such a
/// panic is caught here and becomes an error naming the file (the panic message is still printed
/// by the panic hook).
pub(crate) fn load(path: &Path) -> Result<MatFile> {
    let bytes = read_bytes(path)?;
    match std::panic::catch_unwind(|| matrw::load_matfile_from_u8(&bytes)) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(file_error(path, format!("cannot parse MAT-file: {e}"))),
        Err(_) => Err(file_error(
            path,
            "cannot parse MAT-file: corrupt or truncated (the MAT reader gave up)",
        )),
    }
}

/// The variable `name` of `file` (read from `path`).
pub(crate) fn variable<'a>(file: &'a MatFile, path: &Path, name: &str) -> Result<&'a MatVariable> {
    file.iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = file.iter().map(|(k, _)| k.as_str()).collect();
            file_error(
                path,
                format!("has no variable `{name}` (it has: {})", names.join(", ")),
            )
        })
}

/// The elements of a struct or cell array, in MATLAB's (column-major) order; a lone struct is
/// one element. `None` for anything else.
pub(crate) fn elements(v: &MatVariable) -> Option<Vec<&MatVariable>> {
    match v {
        MatVariable::StructureArray(a) => Some(a.value.iter().collect()),
        MatVariable::CellArray(a) => Some(a.value.iter().collect()),
        MatVariable::Structure(_) => Some(vec![v]),
        _ => None,
    }
}

/// Field `name` of a struct element.
pub(crate) fn field<'a>(v: &'a MatVariable, name: &str) -> Option<&'a MatVariable> {
    match v {
        MatVariable::Structure(s) => s.get(name),
        _ => None,
    }
}

/// The values of a real numeric array of any class, as `f64`, in column-major order.
pub(crate) fn numbers(v: &MatVariable) -> Option<Vec<f64>> {
    let MatVariable::NumericArray(a) = v else {
        return None;
    };
    if a.value_cmp.is_some() {
        return None;
    }
    fn all<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
        v.iter().map(|&x| x.into()).collect()
    }
    Some(match &a.value {
        MatlabType::U8(v) => all(v),
        MatlabType::I8(v) => all(v),
        MatlabType::U16(v) => all(v),
        MatlabType::I16(v) => all(v),
        MatlabType::U32(v) => all(v),
        MatlabType::I32(v) => all(v),
        // Whole numbers (labels, pixels) are exact well below 2^53.
        MatlabType::U64(v) => v.iter().map(|&x| x as f64).collect(),
        MatlabType::I64(v) => v.iter().map(|&x| x as f64).collect(),
        MatlabType::F32(v) => all(v),
        MatlabType::F64(v) => v.clone(),
        MatlabType::UTF8(_) | MatlabType::UTF16(_) | MatlabType::BOOL(_) => return None,
    })
}

/// The one number of a 1 × 1 numeric array.
pub(crate) fn number(v: &MatVariable) -> Option<f64> {
    match numbers(v)?.as_slice() {
        [x] => Some(*x),
        _ => None,
    }
}

/// The text of a single-row character array (an empty one is `""`).
pub(crate) fn text(v: &MatVariable) -> Option<String> {
    let MatVariable::NumericArray(a) = v else {
        return None;
    };
    let chars = match &a.value {
        MatlabType::UTF8(c) | MatlabType::UTF16(c) => c,
        _ => return None,
    };
    (a.dim.first().copied().unwrap_or(0) <= 1 || chars.is_empty()).then(|| chars.iter().collect())
}
