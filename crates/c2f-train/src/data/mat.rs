//! MATLAB MAT-file (level 5, as MATLAB's `-v7` writes it, compressed or not) access through the
//! `matrw` crate, for the Stanford Cars and Dogs annotation files: the variables, the elements of
//! struct and cell arrays, numbers of any numeric class, single-row character arrays.
//!
//! matrw trusts the sizes a file declares: a data element claiming 3 GB reserves 3 GB, a struct
//! array's element count is multiplied without a check, a compressed variable is inflated
//! without a bound and a corrupt one panics. So [`load`] walks the file first ([`checked`]):
//! every size must fit in the bytes that hold it, every count in the bytes left, nesting is
//! bounded, and compressed variables are inflated here (bounded) and handed to matrw
//! uncompressed. Whatever matrw still panics on is caught.

use std::io::Read;
use std::path::Path;

use c2f_kernels::Result;
use matrw::{MatFile, MatVariable, MatlabType};

use super::files::{file_error, read_bytes};

/// The most bytes one compressed variable may inflate to: the annotation files' largest are a
/// few megabytes.
const MAX_VARIABLE_BYTES: u64 = 64 << 20;
/// How deep cells and structs may nest (the annotation files: two).
const MAX_DEPTH: usize = 32;

// Data types and array classes of the level-5 format.
const MI_INT8: u32 = 1;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MX_CELL: u32 = 1;
const MX_STRUCT: u32 = 2;
const MX_OBJECT: u32 = 3;
const MX_CHAR: u32 = 4;
/// The numeric classes: double, single, int8 … uint64.
const MX_NUMERIC: std::ops::RangeInclusive<u32> = 6..=15;
const COMPLEX_FLAG: u32 = 0x0800;

/// Reads and parses the MAT-file at `path`.
pub(crate) fn load(path: &Path) -> Result<MatFile> {
    let bytes = read_bytes(path)?;
    let bytes =
        checked(&bytes).map_err(|m| file_error(path, format!("cannot parse MAT-file: {m}")))?;
    // matrw panics on some input the walk lets through (bad UTF-8 in a character array): the
    // panic is caught here and becomes an error naming the file (its message is still printed by
    // the panic hook).
    match std::panic::catch_unwind(|| matrw::load_matfile_from_u8(&bytes)) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(file_error(path, format!("cannot parse MAT-file: {e}"))),
        Err(_) => Err(file_error(
            path,
            "cannot parse MAT-file: corrupt or truncated (the MAT reader gave up)",
        )),
    }
}

/// The file `bytes` with every compressed variable inflated, once every size and count it
/// declares is known to fit; or what does not.
fn checked(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if bytes.len() < 128 || !bytes.starts_with(b"MATLAB 5.0 MAT-file") {
        return Err("not a level-5 MAT-file (a MATLAB 7.3 file is HDF5: save it with -v7)".into());
    }
    let walk = Walk {
        big_endian: match &bytes[126..128] {
            b"IM" => false,
            b"MI" => true,
            _ => return Err("bad endian indicator in the header".into()),
        },
    };
    let mut out = bytes[..128].to_vec();
    let mut rest = &bytes[128..];
    while !rest.is_empty() {
        let (e, after) = walk.element(rest)?;
        match e.kind {
            MI_MATRIX => {
                walk.matrix(e.data, 0)?;
                out.extend_from_slice(&rest[..rest.len() - after.len()]);
            }
            MI_COMPRESSED => {
                let inner = inflate(e.data)?;
                let (m, _) = walk.element(&inner)?;
                if m.kind != MI_MATRIX {
                    return Err(format!("a compressed variable holds type {}", m.kind));
                }
                walk.matrix(m.data, 0)?;
                out.extend_from_slice(&inner[..8 + m.data.len()]);
            }
            other => return Err(format!("a top-level data element of type {other}")),
        }
        rest = after;
    }
    Ok(out)
}

fn inflate(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_VARIABLE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("a compressed variable does not inflate: {e}"))?;
    if out.len() as u64 > MAX_VARIABLE_BYTES {
        return Err(format!(
            "a compressed variable inflates to more than {MAX_VARIABLE_BYTES} bytes"
        ));
    }
    Ok(out)
}

/// One data element: its type and its data.
struct Element<'a> {
    kind: u32,
    data: &'a [u8],
}

/// The walk over a file of one byte order.
struct Walk {
    big_endian: bool,
}

impl Walk {
    fn word(&self, bytes: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// The data element at the start of `bytes`, and the bytes after it (and its padding to 8,
    /// but for compressed data).
    fn element<'a>(&self, bytes: &'a [u8]) -> std::result::Result<(Element<'a>, &'a [u8]), String> {
        let truncated = || format!("a data element is cut short ({} bytes left)", bytes.len());
        let first = self.word(bytes, 0).ok_or_else(truncated)?;
        if first >> 16 != 0 {
            // The small-element format: size and type share the first word, the data (at most
            // 4 bytes) fills the second.
            let size = (first >> 16) as usize;
            if size > 4 || bytes.len() < 8 {
                return Err(truncated());
            }
            let e = Element {
                kind: first & 0xffff,
                data: &bytes[4..4 + size],
            };
            return Ok((e, &bytes[8..]));
        }
        let size = self.word(bytes, 4).ok_or_else(truncated)? as usize;
        let rest = &bytes[8..];
        if size > rest.len() {
            return Err(format!(
                "a data element declares {size} bytes where {} remain",
                rest.len()
            ));
        }
        // Compressed data is not padded (MATLAB writes the next variable right after it).
        let next = match first {
            MI_COMPRESSED => size,
            _ => size.next_multiple_of(8).min(rest.len()),
        };
        let e = Element {
            kind: first,
            data: &rest[..size],
        };
        Ok((e, &rest[next..]))
    }

    /// Checks the data of a miMATRIX element: its flags, dimensions and name, then its parts.
    fn matrix(&self, data: &[u8], depth: usize) -> std::result::Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("cells or structs nested deeper than {MAX_DEPTH}"));
        }
        if !data.len().is_multiple_of(8) {
            return Err(format!(
                "an array of {} bytes, not a multiple of 8",
                data.len()
            ));
        }
        let (flags, rest) = self.element(data)?;
        let flags = match (flags.kind, self.word(flags.data, 0)) {
            (MI_UINT32, Some(w)) if flags.data.len() == 8 => w,
            _ => return Err("an array without its flags".into()),
        };
        let (dims, rest) = self.element(rest)?;
        if dims.kind != MI_INT32 || dims.data.len() < 8 || !dims.data.len().is_multiple_of(4) {
            return Err("an array without its dimensions".into());
        }
        // The element count as matrw computes it (u32, in order): it must not overflow.
        let mut count: u32 = 1;
        for k in 0..dims.data.len() / 4 {
            let d = self.word(dims.data, 4 * k).unwrap_or(0);
            count = count
                .checked_mul(d)
                .filter(|_| d <= i32::MAX as u32)
                .ok_or_else(|| "array dimensions out of range".to_string())?;
        }
        let (name, mut rest) = self.element(rest)?;
        if name.kind != MI_INT8 {
            return Err("an array without its name".into());
        }
        match flags & 0xff {
            MX_CELL => self.children(rest, count, depth),
            class @ (MX_STRUCT | MX_OBJECT) => {
                if class == MX_OBJECT {
                    rest = self.element(rest)?.1; // the class name
                }
                let (length, r) = self.element(rest)?;
                let length = self.word(length.data, 0).unwrap_or(0) as usize;
                let (names, r) = self.element(r)?;
                if length == 0 || !names.data.len().is_multiple_of(length) {
                    return Err("a struct with malformed field names".into());
                }
                let fields = u32::try_from(names.data.len() / length)
                    .ok()
                    .and_then(|f| f.checked_mul(count))
                    .ok_or_else(|| "a struct array of too many fields".to_string())?;
                self.children(r, fields, depth)
            }
            class if class == MX_CHAR || MX_NUMERIC.contains(&class) => {
                let (_, rest) = self.element(rest)?; // the real part
                if flags & COMPLEX_FLAG != 0 {
                    self.element(rest)?; // the imaginary part
                }
                Ok(())
            }
            class => Err(format!(
                "an array of class {class} (neither cell, struct, character nor numeric)"
            )),
        }
    }

    /// Checks `n` miMATRIX elements at the start of `bytes`.
    fn children(&self, mut bytes: &[u8], n: u32, depth: usize) -> std::result::Result<(), String> {
        // Each takes at least one 8-byte tag: a count beyond that is a lie.
        if n as usize > bytes.len() / 8 {
            return Err(format!("{n} elements declared in {} bytes", bytes.len()));
        }
        for _ in 0..n {
            let (e, rest) = self.element(bytes)?;
            if e.kind != MI_MATRIX {
                return Err(format!("an element of a cell or struct of type {}", e.kind));
            }
            self.matrix(e.data, depth + 1)?;
            bytes = rest;
        }
        Ok(())
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
