//! What every dataset reader shares: numbered text lines, errors that name the file and the line
//! or key ([`Error::Data`]; a file that cannot be read is an [`Error::Io`]), box checks, and the
//! last pass over the image files (missing files become [`Problem`]s, boxes are checked against
//! the image headers).

use std::fmt::Display;
use std::path::{Path, PathBuf};

use c2f_kernels::{Error, Result};
use rayon::prelude::*;

use super::{image_io, BBox, Dataset, OpenOptions, Problem, Sample};

/// A [`Error::Data`] about the file at `path` as a whole.
pub(crate) fn file_error(path: &Path, message: impl Display) -> Error {
    Error::Data {
        path: path.display().to_string(),
        line: None,
        message: message.to_string(),
    }
}

/// A [`Error::Data`] about one place (`annotations(3).class`, `categories[2]`, …) of the file
/// at `path`.
pub(crate) fn at_error(path: &Path, place: &str, message: impl Display) -> Error {
    file_error(path, format!("{place}: {message}"))
}

/// A [`Error::Data`] about line `line` (1-based) of the text file at `path`.
pub(crate) fn line_error(path: &Path, line: usize, message: impl Display) -> Error {
    Error::Data {
        path: path.display().to_string(),
        line: Some(line),
        message: message.to_string(),
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A non-empty line of a text file: its 1-based line number and the line, trimmed.
pub(crate) struct Line {
    pub number: usize,
    pub text: String,
}

pub(crate) fn read_lines(path: &Path) -> Result<Vec<Line>> {
    Ok(read_text(path)?
        .lines()
        .enumerate()
        .map(|(k, l)| Line {
            number: k + 1,
            text: l.trim().to_string(),
        })
        .filter(|l| !l.text.is_empty())
        .collect())
}

/// Where an annotation was read, for errors found after the files were parsed.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub file: PathBuf,
    pub place: Place,
}

/// A place in an annotation file: a line of a text file, or a key or element of a structured
/// one.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    Line(usize),
    /// `annotations(3)`, `union of the objects' bndbox`, …
    Key(String),
}

impl Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(number) => write!(f, "line {number}"),
            Place::Key(key) => f.write_str(key),
        }
    }
}

impl Origin {
    pub fn new(file: &Path, place: Place) -> Self {
        Origin {
            file: file.to_path_buf(),
            place,
        }
    }

    pub fn error(&self, message: impl Display) -> Error {
        match &self.place {
            Place::Line(number) => line_error(&self.file, *number, message),
            Place::Key(key) => at_error(&self.file, key, message),
        }
    }
}

/// The largest label a dataset may use: its class names are made up to the largest label where
/// it has no list of them, so one corrupt label must not make billions. Far above any
/// fine-grained set's classes (iNaturalist 2017: 5,089).
pub(crate) const MAX_LABEL: u64 = 100_000;

/// Refuses a 1-based label above [`MAX_LABEL`].
pub(crate) fn check_label(label: f64) -> std::result::Result<(), String> {
    if label > MAX_LABEL as f64 {
        Err(format!(
            "label {label} is above {MAX_LABEL}, more classes than any dataset has"
        ))
    } else {
        Ok(())
    }
}

/// The box of 1-based, inclusive corners `xmin ymin xmax ymax` (FGVC-Aircraft, Stanford Cars,
/// PASCAL VOC's XML, so Stanford Dogs): the pixels `xmin..=xmax` are `[xmin − 1, xmax)` in our
/// 0-based, half-open [`BBox`].
pub(crate) fn box_from_corners(xmin: f32, ymin: f32, xmax: f32, ymax: f32) -> BBox {
    BBox::new(xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0)
}

/// Checks a box on its own: finite, of positive size, not left of or above the image by more
/// than `tolerance` pixels.
pub(crate) fn check_box(b: &BBox, tolerance: f32) -> std::result::Result<(), String> {
    let finite = [b.x, b.y, b.w, b.h].iter().all(|v| v.is_finite());
    if finite && b.w > 0.0 && b.h > 0.0 && b.x >= -tolerance && b.y >= -tolerance {
        Ok(())
    } else {
        Err(format!(
            "box x={} y={} w={} h={} is out of range (needs x, y >= 0 and w, h > 0)",
            b.x, b.y, b.w, b.h
        ))
    }
}

/// The last pass of every reader, over the samples with where each box was read: a missing
/// image file becomes a [`Problem`] and its sample is left out; a box is checked against its
/// image's header (in parallel) when `options` ask. An unreadable header is left to the loader,
/// which skips and counts the file.
/// The dataset of `samples` whose image files exist ([`keep_existing`]), the others its
/// problems.
pub(crate) fn dataset_of(
    root: &Path,
    class_names: Vec<String>,
    samples: Vec<(Sample, Option<Origin>)>,
    options: &OpenOptions,
) -> Result<Dataset> {
    let (samples, problems) = keep_existing(samples, options)?;
    Ok(Dataset {
        root: root.to_path_buf(),
        class_names,
        samples,
        problems,
    })
}

pub(crate) fn keep_existing(
    samples: Vec<(Sample, Option<Origin>)>,
    options: &OpenOptions,
) -> Result<(Vec<Sample>, Vec<Problem>)> {
    let checked: Vec<std::result::Result<Option<Error>, Problem>> = samples
        .par_iter()
        .map(|(s, origin)| {
            if !s.path.is_file() {
                return Err(Problem {
                    path: s.path.clone(),
                    message: "image file is missing".into(),
                });
            }
            let (Some(b), Some(origin), true) =
                (s.bbox, origin, options.check_boxes_against_images)
            else {
                return Ok(None);
            };
            let Ok((w, h)) = image_io::stored_size(&s.path) else {
                return Ok(None);
            };
            if b.inside(w as f32, h as f32, options.box_tolerance) {
                Ok(None)
            } else {
                Ok(Some(origin.error(format!(
                    "box x={} y={} w={} h={} lies outside its {w}×{h} image {}",
                    b.x,
                    b.y,
                    b.w,
                    b.h,
                    s.path.display()
                ))))
            }
        })
        .collect();
    let mut kept = Vec::with_capacity(samples.len());
    let mut problems = Vec::new();
    for ((s, _), c) in samples.into_iter().zip(checked) {
        match c {
            Ok(None) => kept.push(s),
            Ok(Some(e)) => return Err(e),
            Err(p) => problems.push(p),
        }
    }
    Ok((kept, problems))
}
