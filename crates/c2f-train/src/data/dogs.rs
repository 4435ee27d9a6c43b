//! Stanford Dogs reader.
//!
//! The dataset as distributed, under `root`:
//!
//! | file | contents |
//! | --- | --- |
//! | `train_list.mat`, `test_list.mat` | `file_list` (cell array of paths under `Images/`), `labels` (1-based) |
//! | `Images/<breed dir>/<name>.jpg` | the images |
//! | `Annotation/<breed dir>/<name>` | PASCAL-VOC-style XML, one `object/bndbox` per dog (optional here) |
//!
//! The real set has 120 breeds, 12,000 training and 8,580 test images. Class names are the
//! breed folders (`n02085620-Chihuahua`); every image of a label must sit in the same folder. A
//! sample's id is its 1-based position in its split's `file_list`.
//!
//! Boxes, when `Annotation/` exists: VOC's `xmin ymin xmax ymax` are 1-based inclusive pixel
//! corners (`x = xmin − 1`, `w = xmax − xmin + 1`). An image with several dogs has several
//! objects, all of the image's breed; the sample's box is their **union**, so that the box holds
//! every instance of the class the label names (a crop to it never cuts a labelled dog out, and
//! attention on any of them counts as on the object). Most images have one object.
//!
//! Errors name the file and the element (`file_list{12}`, `labels(12)`) or, for the XML, the
//! file and the element path: a label outside `1..=classes` or not a whole number, lists of
//! different lengths, a path listed twice, one label in two folders, an annotation file missing
//! or without an object, a malformed or out-of-range box. A listed image whose file is missing
//! is a [`super::Problem`], left out.

use std::collections::HashMap;
use std::path::Path;

use c2f_kernels::Result;
use rayon::prelude::*;

use super::files::{
    at_error, box_from_corners, check_box, check_label, dataset_of, file_error, Origin, Place,
};
use super::{mat, BBox, Dataset, OpenOptions, Sample};

pub fn open(root: &Path) -> Result<Dataset> {
    open_with(root, &OpenOptions::default())
}

/// One entry of a list file.
struct Entry {
    /// Under `Images/`, `/`-separated as in the file.
    rel: String,
    /// 1-based.
    label: u64,
    place: String,
}

pub fn open_with(root: &Path, options: &OpenOptions) -> Result<Dataset> {
    let train_path = root.join("train_list.mat");
    let test_path = root.join("test_list.mat");
    let train = read_list(&train_path)?;
    let test = read_list(&test_path)?;

    // Classes: as many as the largest label, each named by its images' folder.
    let n = train
        .iter()
        .chain(&test)
        .map(|e| e.label)
        .max()
        .unwrap_or(0) as usize;
    let mut folder_of: Vec<Option<(String, String)>> = vec![None; n];
    for (path, list) in [(&train_path, &train), (&test_path, &test)] {
        for e in list {
            let folder = e.rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            match &folder_of[e.label as usize - 1] {
                None => folder_of[e.label as usize - 1] = Some((folder, e.place.clone())),
                Some((f, first)) if *f != folder => {
                    return Err(at_error(
                        path,
                        &e.place,
                        format!(
                            "label {} is in folder `{folder}` here but in `{f}` at {first}",
                            e.label
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let class_names: Vec<String> = folder_of
        .into_iter()
        .enumerate()
        .map(|(k, f)| f.map_or_else(|| format!("class_{}", k + 1), |(f, _)| f))
        .collect();

    let annotations = root.join("Annotation");
    let with_boxes = annotations.is_dir();
    let mut samples = Vec::with_capacity(train.len() + test.len());
    for (list, is_train) in [(train, true), (test, false)] {
        let boxes: Vec<Option<(BBox, Origin)>> = list
            .par_iter()
            .map(|e| {
                if !with_boxes {
                    return Ok(None);
                }
                let xml = annotations.join(e.rel.strip_suffix(".jpg").unwrap_or(&e.rel));
                read_box(&xml, options).map(Some)
            })
            .collect::<Result<_>>()?;
        for (k, (e, b)) in list.into_iter().zip(boxes).enumerate() {
            samples.push((
                Sample {
                    id: k as u64 + 1,
                    path: root.join("Images").join(&e.rel),
                    label: e.label as usize - 1,
                    bbox: b.as_ref().map(|(b, _)| *b),
                    is_train,
                    crop_bottom: 0,
                },
                b.map(|(_, origin)| origin),
            ));
        }
    }
    dataset_of(root, class_names, samples, options)
}

/// `file_list` and `labels` of a list file, checked against each other.
fn read_list(path: &Path) -> Result<Vec<Entry>> {
    let file = mat::load(path)?;
    let files = mat::variable(&file, path, "file_list")?;
    let files =
        mat::elements(files).ok_or_else(|| file_error(path, "`file_list` is not a cell array"))?;
    let labels = mat::numbers(mat::variable(&file, path, "labels")?)
        .ok_or_else(|| file_error(path, "`labels` is not a numeric array"))?;
    if labels.len() != files.len() {
        return Err(file_error(
            path,
            format!(
                "`file_list` has {} entries but `labels` has {}",
                files.len(),
                labels.len()
            ),
        ));
    }
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for (k, (f, &label)) in files.into_iter().zip(&labels).enumerate() {
        let place = format!("file_list{{{}}}", k + 1);
        let rel = mat::text(f)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| at_error(path, &place, "not a path"))?;
        let place_of_label = format!("labels({})", k + 1);
        if label < 1.0 || label.fract() != 0.0 || !label.is_finite() {
            return Err(at_error(
                path,
                &place_of_label,
                format!("label {label} is not a whole number >= 1"),
            ));
        }
        check_label(label).map_err(|m| at_error(path, &place_of_label, m))?;
        if let Some(first) = first_of.insert(rel.clone(), k + 1) {
            return Err(at_error(
                path,
                &place,
                format!("`{rel}` is already file_list{{{first}}}"),
            ));
        }
        out.push(Entry {
            rel,
            label: label as u64,
            place,
        });
    }
    Ok(out)
}

/// The union of the `object/bndbox` boxes of a VOC-style XML file.
fn read_box(path: &Path, options: &OpenOptions) -> Result<(BBox, Origin)> {
    let text = super::files::read_text(path)?;
    let doc = roxmltree::Document::parse(&text)
        .map_err(|e| file_error(path, format!("not valid XML: {e}")))?;
    let mut union: Option<(f32, f32, f32, f32)> = None;
    let objects = doc
        .descendants()
        .filter(|n| n.has_tag_name("object"))
        .enumerate();
    for (k, object) in objects {
        let place = format!("object {} bndbox", k + 1);
        let bndbox = object
            .children()
            .find(|n| n.has_tag_name("bndbox"))
            .ok_or_else(|| at_error(path, &place, "missing"))?;
        let corner = |name: &str| -> Result<f32> {
            bndbox
                .children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .and_then(|t| t.trim().parse::<f32>().ok())
                .ok_or_else(|| {
                    at_error(path, &format!("{place} {name}"), "missing or not a number")
                })
        };
        let (x0, y0, x1, y1) = (
            corner("xmin")?,
            corner("ymin")?,
            corner("xmax")?,
            corner("ymax")?,
        );
        check_box(&box_from_corners(x0, y0, x1, y1), options.box_tolerance)
            .map_err(|m| at_error(path, &place, m))?;
        union = Some(match union {
            None => (x0, y0, x1, y1),
            Some((a, b, c, d)) => (a.min(x0), b.min(y0), c.max(x1), d.max(y1)),
        });
    }
    let (x0, y0, x1, y1) = union.ok_or_else(|| file_error(path, "no `object` element"))?;
    Ok((
        box_from_corners(x0, y0, x1, y1),
        Origin::new(path, Place::Key("union of the objects' bndbox".into())),
    ))
}
