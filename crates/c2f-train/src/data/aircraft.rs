//! FGVC-Aircraft (2013b) reader, variant level.
//!
//! The dataset as distributed (`fgvc-aircraft-2013b/`, the `root`):
//!
//! | file | line |
//! | --- | --- |
//! | `data/variants.txt` | `<variant name>`; the 0-based class is the line's rank |
//! | `data/images_variant_trainval.txt` | `<image id> <variant name>` (training images) |
//! | `data/images_variant_test.txt` | `<image id> <variant name>` (test images) |
//! | `data/images_box.txt` | `<image id> <xmin> <ymin> <xmax> <ymax>` (optional here) |
//!
//! Image ids are seven digits, the image is `data/images/<id>.jpg`; variant names may hold
//! spaces (`Cessna 172`, `F/A-18`), so a line is split at its first space only. The real set has
//! 102 variants and 10,000 images (100 per variant), split 6,667 trainval / 3,333 test.
//!
//! Boxes: the dataset's README gives `xmin ymin xmax ymax` with the top-left pixel at `(1, 1)`;
//! they are taken as inclusive pixel corners, so `x = xmin − 1`, `w = xmax − xmin + 1`.
//!
//! Every image has a 20-pixel copyright banner at the bottom, which the authors ask users to
//! remove: each sample has [`Sample::crop_bottom`] = [`BANNER_ROWS`], cut off when the loader
//! reads the file (the box, annotated on the whole image, is clipped to what is left).
//!
//! Errors name the file and the line: an id that is not seven digits, a variant not in
//! `variants.txt`, an id listed twice (in one list or in both), a box for an unlisted id, a listed
//! image without a box (when the box file exists), a malformed or out-of-range box. A listed
//! image whose file is missing is a [`super::Problem`], left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use c2f_kernels::Result;

use super::files::{
    box_from_corners, check_box, dataset_of, line_error, read_lines, Origin, Place,
};
use super::{Dataset, OpenOptions, Sample};

/// Height of the copyright banner at the bottom of every image.
pub const BANNER_ROWS: u32 = 20;

pub fn open(root: &Path) -> Result<Dataset> {
    open_with(root, &OpenOptions::default())
}

/// One listed image: where it was listed, its id (the seven digits) and class.
struct Listed {
    file: PathBuf,
    line: usize,
    id: String,
    label: usize,
    is_train: bool,
}

pub fn open_with(root: &Path, options: &OpenOptions) -> Result<Dataset> {
    let data = root.join("data");
    let variants_path = data.join("variants.txt");
    let boxes_path = data.join("images_box.txt");

    let mut class_names: Vec<String> = Vec::new();
    let mut class_of: HashMap<String, (usize, usize)> = HashMap::new();
    for line in read_lines(&variants_path)? {
        if let Some((_, first)) =
            class_of.insert(line.text.clone(), (class_names.len(), line.number))
        {
            return Err(line_error(
                &variants_path,
                line.number,
                format!("variant `{}` already appears on line {first}", line.text),
            ));
        }
        class_names.push(line.text);
    }

    // The two lists, with every id's first listing for the duplicate check.
    let mut listed: Vec<Listed> = Vec::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for (name, is_train) in [
        ("images_variant_trainval.txt", true),
        ("images_variant_test.txt", false),
    ] {
        let path = data.join(name);
        for line in read_lines(&path)? {
            let (id, variant) = line.text.split_once(' ').ok_or_else(|| {
                line_error(
                    &path,
                    line.number,
                    format!("expected `<image id> <variant>`, found `{}`", line.text),
                )
            })?;
            let id = parse_id(&path, line.number, id)?;
            let variant = variant.trim();
            let &(label, _) = class_of.get(variant).ok_or_else(|| {
                line_error(
                    &path,
                    line.number,
                    format!("variant `{variant}` is not in variants.txt"),
                )
            })?;
            if let Some((file, first)) = seen.get(&id) {
                return Err(line_error(
                    &path,
                    line.number,
                    format!(
                        "image {id} is already listed on line {first} of {}",
                        file.display()
                    ),
                ));
            }
            seen.insert(id.clone(), (path.clone(), line.number));
            listed.push(Listed {
                file: path.clone(),
                line: line.number,
                id,
                label,
                is_train,
            });
        }
    }

    let boxes = if boxes_path.exists() {
        Some(read_boxes(&boxes_path, &seen, options)?)
    } else {
        None
    };

    let mut samples = Vec::with_capacity(listed.len());
    for l in listed {
        let bbox = match &boxes {
            None => None,
            Some(table) => Some(table.get(&l.id).cloned().ok_or_else(|| {
                line_error(
                    &l.file,
                    l.line,
                    format!("image {} has no line in images_box.txt", l.id),
                )
            })?),
        };
        samples.push((
            Sample {
                // Seven digits always fit.
                id: l.id.parse().expect("checked digits"),
                path: data.join("images").join(format!("{}.jpg", l.id)),
                label: l.label,
                bbox: bbox.as_ref().map(|(b, _)| *b),
                is_train: l.is_train,
                crop_bottom: BANNER_ROWS,
            },
            bbox.map(|(_, origin)| origin),
        ));
    }
    dataset_of(root, class_names, samples, options)
}

fn parse_id(path: &Path, line: usize, id: &str) -> Result<String> {
    if id.len() == 7 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id.to_string())
    } else {
        Err(line_error(
            path,
            line,
            format!("image id `{id}` is not seven digits"),
        ))
    }
}

/// `images_box.txt`: `id → (box, where)`, every id listed, each once.
fn read_boxes(
    path: &Path,
    listed: &HashMap<String, (PathBuf, usize)>,
    options: &OpenOptions,
) -> Result<HashMap<String, (super::BBox, Origin)>> {
    let mut out: HashMap<String, (super::BBox, Origin)> = HashMap::new();
    for line in read_lines(path)? {
        let fields: Vec<&str> = line.text.split_whitespace().collect();
        let v: Option<Vec<f32>> = fields[1..].iter().map(|f| f.parse().ok()).collect();
        let v = match v {
            Some(v) if v.len() == 4 => v,
            _ => {
                return Err(line_error(
                    path,
                    line.number,
                    format!(
                        "expected `<image id> <xmin> <ymin> <xmax> <ymax>`, found `{}`",
                        line.text
                    ),
                ))
            }
        };
        let id = parse_id(path, line.number, fields[0])?;
        if !listed.contains_key(&id) {
            return Err(line_error(
                path,
                line.number,
                format!("image {id} is in neither images_variant_trainval.txt nor images_variant_test.txt"),
            ));
        }
        let b = box_from_corners(v[0], v[1], v[2], v[3]);
        check_box(&b, options.box_tolerance).map_err(|m| line_error(path, line.number, m))?;
        let origin = Origin::new(path, Place::Line(line.number));
        if let Some((_, first)) = out.insert(id.clone(), (b, origin)) {
            return Err(line_error(
                path,
                line.number,
                format!("image {id} already has a box on {}", first.place),
            ));
        }
    }
    Ok(out)
}
