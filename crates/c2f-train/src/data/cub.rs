//! CUB-200-2011 reader.
//!
//! The dataset as distributed (`CUB_200_2011/`):
//!
//! | file | line |
//! | --- | --- |
//! | `images.txt` | `<image_id> <path under images/>` |
//! | `image_class_labels.txt` | `<image_id> <class_id>` (1-based) |
//! | `train_test_split.txt` | `<image_id> <is_training_image>` (1 = train, 0 = test) |
//! | `bounding_boxes.txt` | `<image_id> <x> <y> <width> <height>` (stored pixels, floats) |
//! | `classes.txt` | `<class_id> <class_name>` (optional here) |
//!
//! The real set has 200 classes and 11,788 images split 5,994 train / 5,794 test.
//!
//! Boxes are in the pixels as stored in the files (the annotation tools, like PIL, ignored EXIF
//! orientation); the loader's [`super::loader::FileSource`] turns them with the image.
//!
//! The files are joined by image id, never by line order. Any malformed line, duplicate or
//! unknown id, a label outside `1..=classes`, a split flag other than 0/1, or a box that is not
//! finite, has no area, or lies outside its image (1 pixel of slack, checked against the image
//! header when it can be read) is an [`c2f_kernels::Error::Data`] naming the file and the line; a
//! text file that cannot be read is an [`c2f_kernels::Error::Io`] naming it. A listed image whose
//! file is missing is not an error: it is reported as a [`super::Problem`] with its path and left
//! out of the samples. A file that exists but does not decode is left to the loader, which skips
//! and counts it.

use std::collections::HashMap;
use std::path::Path;

use c2f_kernels::Result;

use super::files::{check_box, check_label, dataset_of, line_error, read_lines, Origin, Place};
use super::{BBox, Dataset, OpenOptions, Sample};

/// `image id → (line number, fields)` of one text file.
type Table = HashMap<u64, (usize, Vec<String>)>;

/// Parses a `<id> <fields...>` file into `id → (line, fields)`, `n` whitespace-separated fields
/// after the id, or the rest of the line as one field if `n == 0`.
fn read_table(path: &Path, n: usize) -> Result<Table> {
    let mut out = HashMap::new();
    for line in read_lines(path)? {
        let (id, rest) = match line.text.split_once(char::is_whitespace) {
            Some((id, rest)) => (id, rest.trim()),
            None => (line.text.as_str(), ""),
        };
        let id: u64 = id.parse().map_err(|_| {
            line_error(
                path,
                line.number,
                format!("image id `{id}` is not a number"),
            )
        })?;
        let fields: Vec<String> = if n == 0 {
            vec![rest.to_string()]
        } else {
            rest.split_whitespace().map(str::to_string).collect()
        };
        if fields.len() != n.max(1) || fields.iter().any(String::is_empty) {
            return Err(line_error(
                path,
                line.number,
                format!(
                    "expected `<id>` and {} field(s), found `{}`",
                    n.max(1),
                    line.text
                ),
            ));
        }
        if let Some((first, _)) = out.insert(id, (line.number, fields)) {
            return Err(line_error(
                path,
                line.number,
                format!("image id {id} already appears on line {first}"),
            ));
        }
    }
    Ok(out)
}

/// Reads the tree at `root` (the folder holding `images.txt`) with default options.
pub fn open(root: &Path) -> Result<Dataset> {
    open_with(root, &OpenOptions::default())
}

pub fn open_with(root: &Path, options: &OpenOptions) -> Result<Dataset> {
    let images_path = root.join("images.txt");
    let labels_path = root.join("image_class_labels.txt");
    let split_path = root.join("train_test_split.txt");
    let boxes_path = root.join("bounding_boxes.txt");
    let classes_path = root.join("classes.txt");

    let images = read_table(&images_path, 0)?;
    let labels = read_table(&labels_path, 1)?;
    let split = read_table(&split_path, 1)?;
    let boxes = if boxes_path.exists() {
        Some(read_table(&boxes_path, 4)?)
    } else {
        None
    };

    // Classes: from classes.txt when present (ids must be 1..=n), else as many as the
    // largest label.
    let class_names = if classes_path.exists() {
        let table = read_table(&classes_path, 0)?;
        let n = table.len();
        let mut names = vec![String::new(); n];
        for (&id, (line, fields)) in &table {
            if id == 0 || id as usize > n {
                return Err(line_error(
                    &classes_path,
                    *line,
                    format!("class id {id} outside 1..={n} ({n} classes listed)"),
                ));
            }
            names[id as usize - 1] = fields[0].clone();
        }
        Some(names)
    } else {
        None
    };

    // Every id of the other files must name an image.
    let mut tables: Vec<(&Path, &Table)> = vec![(&labels_path, &labels), (&split_path, &split)];
    if let Some(b) = &boxes {
        tables.push((&boxes_path, b));
    }
    for (path, table) in &tables {
        let mut lines: Vec<(usize, u64)> = table
            .iter()
            .filter(|(id, _)| !images.contains_key(id))
            .map(|(&id, (line, _))| (*line, id))
            .collect();
        lines.sort_unstable();
        if let Some(&(line, id)) = lines.first() {
            return Err(line_error(
                path,
                line,
                format!("image id {id} is not listed in images.txt"),
            ));
        }
    }

    // Labels: the first line (in file order) of one too large to be a class, then the largest.
    let numbers: Vec<(usize, u64)> = labels
        .values()
        .filter_map(|(line, f)| Some((*line, f[0].parse::<u64>().ok()?)))
        .collect();
    if let Some((line, message)) = numbers
        .iter()
        .filter_map(|&(line, l)| Some((line, check_label(l as f64).err()?)))
        .min()
    {
        return Err(line_error(&labels_path, line, message));
    }
    let max_label = numbers.iter().map(|&(_, l)| l).max().unwrap_or(0);
    let n_classes = class_names
        .as_ref()
        .map_or(max_label as usize, |names| names.len());
    let class_names =
        class_names.unwrap_or_else(|| (1..=n_classes).map(|c| format!("class_{c}")).collect());

    let mut ids: Vec<u64> = images.keys().copied().collect();
    ids.sort_unstable();
    let mut samples = Vec::with_capacity(ids.len());
    for id in ids {
        let (img_line, img_fields) = &images[&id];
        let missing = |what: &Path| {
            line_error(
                &images_path,
                *img_line,
                format!(
                    "image id {id} has no line in {}",
                    what.file_name().unwrap_or_default().to_string_lossy()
                ),
            )
        };
        let (line, f) = labels.get(&id).ok_or_else(|| missing(&labels_path))?;
        let label: u64 = f[0].parse().map_err(|_| {
            line_error(
                &labels_path,
                *line,
                format!("label `{}` is not a number", f[0]),
            )
        })?;
        if label == 0 || label as usize > n_classes {
            return Err(line_error(
                &labels_path,
                *line,
                format!("label {label} outside 1..={n_classes}"),
            ));
        }
        let (line, f) = split.get(&id).ok_or_else(|| missing(&split_path))?;
        let is_train = match f[0].as_str() {
            "1" => true,
            "0" => false,
            other => {
                return Err(line_error(
                    &split_path,
                    *line,
                    format!("split flag `{other}` is neither 1 (train) nor 0 (test)"),
                ))
            }
        };
        let bbox = match &boxes {
            None => None,
            Some(table) => {
                let (line, f) = table.get(&id).ok_or_else(|| missing(&boxes_path))?;
                let v: Vec<f32> = f
                    .iter()
                    .map(|x| x.parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| line_error(&boxes_path, *line, "box values must be numbers"))?;
                let b = BBox::new(v[0], v[1], v[2], v[3]);
                check_box(&b, options.box_tolerance)
                    .map_err(|m| line_error(&boxes_path, *line, m))?;
                Some((b, *line))
            }
        };
        samples.push((
            Sample {
                id,
                path: root.join("images").join(&img_fields[0]),
                label: label as usize - 1,
                bbox: bbox.map(|(b, _)| b),
                is_train,
                crop_bottom: 0,
            },
            bbox.map(|(_, line)| Origin::new(&boxes_path, Place::Line(line))),
        ));
    }

    dataset_of(root, class_names, samples, options)
}
