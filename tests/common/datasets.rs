//! Shared by the dataset reader tests: scratch folders, small JPEG images, the check that an
//! error names its file and place, the loader pass that must skip a corrupt image, and a small
//! MATLAB level-5 MAT-file writer (test-only) for the Stanford Cars and Dogs fixtures.

#![allow(dead_code)] // each test file uses a part

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use c2f_kernels::Error;
use c2f_train::data::loader::FileSource;
use c2f_train::data::{Loader, LoaderConfig, Sample, Skipped, Transform};
use image::{Rgb, RgbImage};

pub fn scratch(test: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a `w × h` JPEG (quality 95) of `pixel(x, y)`, making the folders.
pub fn write_jpeg(path: &Path, w: u32, h: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(w, h, |x, y| Rgb(pixel(x, y)));
    let mut out = std::fs::File::create(path).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(&img)
        .unwrap();
}

/// A smooth, image-specific pattern (so images differ), every value in 40..=215.
pub fn pattern(seed: u32) -> impl Fn(u32, u32) -> [u8; 3] {
    move |x, y| {
        [
            (40 + (x * 3 + seed * 17) % 170) as u8,
            (40 + (y * 5 + seed * 29) % 170) as u8,
            (40 + (seed * 53) % 170) as u8,
        ]
    }
}

/// Asserts `result` is an [`Error::Data`] about `path` whose message, after `line N: ` where it
/// has a line, holds every one of `words`.
pub fn expect_file_error<T: std::fmt::Debug>(
    result: Result<T, Error>,
    path: &Path,
    words: &[&str],
) {
    match result {
        Err(Error::Data {
            path: p,
            line,
            message,
        }) => {
            let message = match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            };
            assert_eq!(p, path.display().to_string(), "{message}");
            for w in words {
                assert!(message.contains(w), "`{message}` lacks `{w}`");
            }
        }
        other => panic!(
            "expected a data error about {}, got {other:?}",
            path.display()
        ),
    }
}

/// Asserts `result` is an [`Error::Io`] about `path`.
pub fn expect_io_error<T: std::fmt::Debug>(result: Result<T, Error>, path: &Path) {
    match result {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path.display().to_string()),
        other => panic!(
            "expected an I/O error about {}, got {other:?}",
            path.display()
        ),
    }
}

/// Runs one epoch of the loader over `samples` and returns the indices it skipped (each must
/// name its path); the rest must arrive.
pub fn loader_skips(samples: Vec<Sample>) -> HashSet<usize> {
    loader_skipped(samples).iter().map(|s| s.index).collect()
}

/// [`loader_skips`], returning what was skipped and why.
pub fn loader_skipped(samples: Vec<Sample>) -> Vec<Skipped> {
    let n = samples.len();
    let src = Arc::new(FileSource::new(samples.clone()));
    let loader = Loader::new(
        src,
        LoaderConfig {
            shuffle: false,
            ..LoaderConfig::new(2, Transform::test(16))
        },
    )
    .unwrap();
    let summary = loader.epoch(0).finish();
    for s in &summary.skipped {
        assert_eq!(s.name, samples[s.index].path.display().to_string());
        assert!(!s.message.is_empty());
    }
    assert_eq!(summary.samples + summary.skipped.len(), n);
    summary.skipped
}

/// A MATLAB value, as the MAT-file holds it.
#[derive(Debug, Clone)]
pub enum Mat {
    /// `double`, column-major, with its dimensions.
    Double(Vec<f64>, [usize; 2]),
    /// `uint8` scalar.
    U8(u8),
    /// A `1 × n` char array.
    Text(String),
    /// Cell array, column-major.
    Cell(Vec<Mat>, [usize; 2]),
    /// `1 × n` struct array: field names, then each element's values in field order.
    Struct(Vec<&'static str>, Vec<Vec<Mat>>),
}

// Data types and array classes of the level-5 format.
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MX_CELL: u32 = 1;
const MX_STRUCT: u32 = 2;
const MX_CHAR: u32 = 4;
const MX_DOUBLE: u32 = 6;
const MX_UINT8: u32 = 9;

/// A data element: tag, data, padding to 8 bytes.
fn element(out: &mut Vec<u8>, ty: u32, data: &[u8]) {
    out.extend(ty.to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn matrix(name: &str, value: &Mat) -> Vec<u8> {
    let (class, dims): (u32, [usize; 2]) = match value {
        Mat::Double(_, d) => (MX_DOUBLE, *d),
        Mat::U8(_) => (MX_UINT8, [1, 1]),
        Mat::Text(t) => (MX_CHAR, [1, t.len()]),
        Mat::Cell(_, d) => (MX_CELL, *d),
        Mat::Struct(_, e) => (MX_STRUCT, [1, e.len()]),
    };
    let mut body = Vec::new();
    let flags: Vec<u8> = [class, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    element(&mut body, MI_UINT32, &flags);
    let d: Vec<u8> = dims
        .iter()
        .flat_map(|&v| (v as i32).to_le_bytes())
        .collect();
    element(&mut body, MI_INT32, &d);
    element(&mut body, MI_INT8, name.as_bytes());
    match value {
        Mat::Double(v, _) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            element(&mut body, MI_DOUBLE, &b);
        }
        Mat::U8(v) => {
            // The small-element form MATLAB uses for up to 4 bytes: size and type share a word.
            body.extend(((1u32 << 16) | MI_UINT8).to_le_bytes());
            body.extend([*v, 0, 0, 0]);
        }
        Mat::Text(t) => element(&mut body, MI_UTF8, t.as_bytes()),
        Mat::Cell(cells, _) => {
            for c in cells {
                body.extend(matrix("", c));
            }
        }
        Mat::Struct(fields, elements) => {
            let len = 32usize;
            body.extend(((4u32 << 16) | MI_INT32).to_le_bytes());
            body.extend((len as i32).to_le_bytes());
            let mut names = vec![0u8; len * fields.len()];
            for (k, f) in fields.iter().enumerate() {
                names[k * len..k * len + f.len()].copy_from_slice(f.as_bytes());
            }
            element(&mut body, MI_INT8, &names);
            for e in elements {
                assert_eq!(e.len(), fields.len());
                for v in e {
                    body.extend(matrix("", v));
                }
            }
        }
    }
    let mut out = Vec::new();
    element(&mut out, MI_MATRIX, &body);
    out
}

/// Writes a MAT-file of `variables`, each zlib-compressed (as MATLAB's default `-v7`) or not.
pub fn write_mat(path: &Path, variables: &[(&str, Mat)], compress: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, mat_bytes(variables, compress)).unwrap();
}

/// The bytes of a MAT-file of `variables` ([`write_mat`]).
pub fn mat_bytes(variables: &[(&str, Mat)], compress: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut text = b"MATLAB 5.0 MAT-file, written by the coarse2fine tests".to_vec();
    text.resize(116, b' ');
    out.extend(text);
    out.extend([0u8; 8]); // no subsystem data
    out.extend(0x0100u16.to_le_bytes());
    out.extend(b"IM");
    for (name, value) in variables {
        let m = matrix(name, value);
        if compress {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&m).unwrap();
            let z = z.finish().unwrap();
            out.extend(MI_COMPRESSED.to_le_bytes());
            out.extend((z.len() as u32).to_le_bytes());
            out.extend(z);
        } else {
            out.extend(m);
        }
    }
    out
}

/// A PNG of under a hundred bytes whose header declares a `w × h` 8-bit RGB image (a
/// decompression bomb to a decoder that trusts it): the signature, an IHDR with a valid CRC, an
/// IDAT holding one compressed row of zeros, IEND.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, not interlaced
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&[0u8; 64]).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}
