//! CelebA attributes reader (multi-label: 40 binary attributes per face).
//!
//! The dataset as distributed, under `root`:
//!
//! | file | contents |
//! | --- | --- |
//! | `list_attr_celeba.txt` | line 1: the image count; line 2: the 40 attribute names; then `<file> <v1> … <v40>`, each value `1` or `-1` |
//! | `list_eval_partition.txt` | `<file> <partition>`: 0 train, 1 validation, 2 test |
//! | `img_align_celeba/<file>` | the aligned and cropped faces |
//!
//! The real set has 202,599 images split 162,770 / 19,867 / 19,962. The files are joined by file
//! name. [`open`] keeps all 40 attributes or a chosen subset, in the order asked; each
//! [`AttributeSample`] holds its [`Sample`] (for the loader: `label` is 0, `is_train` is the
//! training partition, `id` the 1-based rank in `list_attr_celeba.txt`) and its targets as
//! `Vec<bool>` (`1` → true), ready for a per-attribute binary cross-entropy head.
//!
//! Errors name the file and the line: a count that disagrees with the rows, a row of the wrong
//! length or with a value other than ±1, a file listed twice, a file without a partition or a
//! partition line for an unlisted file, a partition other than 0/1/2. An attribute asked for but
//! not in the header is an error naming the header line and the known names. A listed image
//! whose file is missing is a [`super::Problem`], left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use c2f_kernels::Result;

use super::files::{keep_existing, line_error, read_lines};
use super::{OpenOptions, Problem, Sample};

/// CelebA's three partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partition {
    Train,
    Val,
    Test,
}

/// One face with its chosen attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeSample {
    pub sample: Sample,
    pub partition: Partition,
    /// One per [`CelebA::attribute_names`].
    pub attributes: Vec<bool>,
}

/// CelebA read and validated.
#[derive(Debug, Clone)]
pub struct CelebA {
    pub root: PathBuf,
    /// The attributes kept, in the order of [`AttributeSample::attributes`].
    pub attribute_names: Vec<String>,
    /// Every image whose file exists, in `list_attr_celeba.txt`'s order.
    pub samples: Vec<AttributeSample>,
    /// Images left out (missing files).
    pub problems: Vec<Problem>,
}

impl CelebA {
    pub fn num_attributes(&self) -> usize {
        self.attribute_names.len()
    }

    /// The images of one partition.
    pub fn partition(&self, partition: Partition) -> Vec<AttributeSample> {
        self.samples
            .iter()
            .filter(|s| s.partition == partition)
            .cloned()
            .collect()
    }
}

/// Reads the tree at `root`, keeping the attributes named in `attributes` (in that order), or
/// all of them in the file's order.
pub fn open(root: &Path, attributes: Option<&[String]>) -> Result<CelebA> {
    let attr_path = root.join("list_attr_celeba.txt");
    let part_path = root.join("list_eval_partition.txt");
    let lines = read_lines(&attr_path)?;
    let (count, header, rows) = match lines.as_slice() {
        [count, header, rows @ ..] => (count, header, rows),
        _ => {
            return Err(line_error(
                &attr_path,
                lines.len() + 1,
                "expected the image count, then the attribute names",
            ))
        }
    };
    let names: Vec<&str> = header.text.split_whitespace().collect();
    let chosen: Vec<usize> = match attributes {
        None => (0..names.len()).collect(),
        Some(wanted) => wanted
            .iter()
            .map(|w| {
                names.iter().position(|n| n == w).ok_or_else(|| {
                    line_error(
                        &attr_path,
                        header.number,
                        format!("no attribute `{w}` (known: {})", names.join(" ")),
                    )
                })
            })
            .collect::<Result<_>>()?,
    };
    let expected: usize = count.text.parse().map_err(|_| {
        line_error(
            &attr_path,
            count.number,
            format!("image count `{}` is not a number", count.text),
        )
    })?;
    if expected != rows.len() {
        return Err(line_error(
            &attr_path,
            count.number,
            format!("says {expected} images but {} rows follow", rows.len()),
        ));
    }

    let partitions = read_partitions(&part_path)?;
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    let mut samples = Vec::with_capacity(rows.len());
    let mut targets = Vec::with_capacity(rows.len());
    for (k, row) in rows.iter().enumerate() {
        let mut fields = row.text.split_whitespace();
        let file = fields.next().unwrap_or_default();
        let values: Vec<&str> = fields.collect();
        if values.len() != names.len() {
            return Err(line_error(
                &attr_path,
                row.number,
                format!(
                    "expected a file name and {} values, found {}",
                    names.len(),
                    values.len()
                ),
            ));
        }
        let all: Vec<bool> = values
            .iter()
            .zip(&names)
            .map(|(&v, name)| match v {
                "1" => Ok(true),
                "-1" => Ok(false),
                other => Err(line_error(
                    &attr_path,
                    row.number,
                    format!("{name} is `{other}`, neither 1 nor -1"),
                )),
            })
            .collect::<Result<_>>()?;
        if let Some(first) = seen.insert(file, row.number) {
            return Err(line_error(
                &attr_path,
                row.number,
                format!("{file} is already on line {first}"),
            ));
        }
        let &(partition, _) = partitions.get(file).ok_or_else(|| {
            line_error(
                &attr_path,
                row.number,
                format!("{file} has no line in list_eval_partition.txt"),
            )
        })?;
        samples.push((
            Sample {
                id: k as u64 + 1,
                path: root.join("img_align_celeba").join(file),
                label: 0,
                bbox: None,
                is_train: partition == Partition::Train,
                crop_bottom: 0,
            },
            None,
        ));
        targets.push((
            partition,
            chosen.iter().map(|&a| all[a]).collect::<Vec<_>>(),
        ));
    }
    let mut unlisted: Vec<(usize, &String)> = partitions
        .iter()
        .filter(|(f, _)| !seen.contains_key(f.as_str()))
        .map(|(f, (_, line))| (*line, f))
        .collect();
    unlisted.sort_unstable();
    if let Some((line, file)) = unlisted.first() {
        return Err(line_error(
            &part_path,
            *line,
            format!("{file} is not in list_attr_celeba.txt"),
        ));
    }

    let (kept, problems) = keep_existing(samples, &OpenOptions::default())?;
    let samples = kept
        .into_iter()
        .map(|sample| {
            let (partition, attributes) = targets[sample.id as usize - 1].clone();
            AttributeSample {
                sample,
                partition,
                attributes,
            }
        })
        .collect();
    Ok(CelebA {
        root: root.to_path_buf(),
        attribute_names: chosen.iter().map(|&a| names[a].to_string()).collect(),
        samples,
        problems,
    })
}

/// `file → (partition, line)`.
fn read_partitions(path: &Path) -> Result<HashMap<String, (Partition, usize)>> {
    let mut out = HashMap::new();
    for line in read_lines(path)? {
        let fields: Vec<&str> = line.text.split_whitespace().collect();
        let partition = match fields.as_slice() {
            [_, "0"] => Partition::Train,
            [_, "1"] => Partition::Val,
            [_, "2"] => Partition::Test,
            _ => {
                return Err(line_error(
                    path,
                    line.number,
                    format!(
                        "expected `<file> <0|1|2>` (train, validation, test), found `{}`",
                        line.text
                    ),
                ))
            }
        };
        if let Some((_, first)) = out.insert(fields[0].to_string(), (partition, line.number)) {
            return Err(line_error(
                path,
                line.number,
                format!("{} is already on line {first}", fields[0]),
            ));
        }
    }
    Ok(out)
}
