//! Stanford Cars reader.
//!
//! The dataset as distributed, under `root`:
//!
//! | file | contents |
//! | --- | --- |
//! | `devkit/cars_train_annos.mat` | struct array `annotations`: `bbox_x1 bbox_y1 bbox_x2 bbox_y2 class fname` |
//! | `devkit/cars_test_annos_withlabels.mat` (or in `root`) | the same for the test images |
//! | `devkit/cars_meta.mat` | cell array `class_names` (optional here) |
//! | `cars_train/<fname>`, `cars_test/<fname>` | the images |
//!
//! `class` is 1-based; the boxes are MATLAB's 1-based inclusive pixel corners, so
//! `x = bbox_x1 − 1`, `w = bbox_x2 − bbox_x1 + 1`. The real set has 196 classes, 8,144 training
//! and 8,041 test images. A sample's id is its 1-based position in its split's `annotations`.
//!
//! The MAT-files are read with `matrw` (the private `mat` module). Errors name the file and the element
//! and field (`annotations(12).class`): a missing or non-numeric field, a class outside
//! `1..=classes`, a bad box, a file name listed twice. A listed image whose file is missing is a
//! [`super::Problem`], left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use c2f_kernels::Result;
use matrw::MatVariable;

use super::files::{
    at_error, box_from_corners, check_box, check_label, dataset_of, file_error, Origin, Place,
};
use super::{mat, Dataset, OpenOptions, Sample};

pub fn open(root: &Path) -> Result<Dataset> {
    open_with(root, &OpenOptions::default())
}

/// One element of `annotations`, checked on its own.
struct Annotation {
    fname: String,
    /// 1-based.
    class: u64,
    bbox: super::BBox,
    origin: Origin,
}

pub fn open_with(root: &Path, options: &OpenOptions) -> Result<Dataset> {
    let devkit = root.join("devkit");
    let train_path = devkit.join("cars_train_annos.mat");
    let test_path = test_annotations_path(root);
    let meta_path = devkit.join("cars_meta.mat");

    let train = read_annotations(&train_path, options)?;
    let test = read_annotations(&test_path, options)?;

    let class_names = if meta_path.exists() {
        let file = mat::load(&meta_path)?;
        let names = mat::variable(&file, &meta_path, "class_names")?;
        let cells = mat::elements(names)
            .ok_or_else(|| file_error(&meta_path, "`class_names` is not a cell array"))?;
        cells
            .iter()
            .enumerate()
            .map(|(k, c)| {
                mat::text(c).ok_or_else(|| {
                    at_error(
                        &meta_path,
                        &format!("class_names{{{}}}", k + 1),
                        "not a text",
                    )
                })
            })
            .collect::<Result<Vec<String>>>()?
    } else {
        let n = train
            .iter()
            .chain(&test)
            .map(|a| a.class)
            .max()
            .unwrap_or(0);
        (1..=n).map(|c| format!("class_{c}")).collect()
    };
    let n = class_names.len() as u64;

    let mut samples = Vec::with_capacity(train.len() + test.len());
    for (list, folder, is_train) in [(train, "cars_train", true), (test, "cars_test", false)] {
        for (k, a) in list.into_iter().enumerate() {
            if a.class == 0 || a.class > n {
                return Err(a.origin.error(format!("class {} outside 1..={n}", a.class)));
            }
            samples.push((
                Sample {
                    id: k as u64 + 1,
                    path: root.join(folder).join(&a.fname),
                    label: a.class as usize - 1,
                    bbox: Some(a.bbox),
                    is_train,
                    crop_bottom: 0,
                },
                Some(a.origin),
            ));
        }
    }
    dataset_of(root, class_names, samples, options)
}

fn read_annotations(path: &Path, options: &OpenOptions) -> Result<Vec<Annotation>> {
    let file = mat::load(path)?;
    let annotations = mat::variable(&file, path, "annotations")?;
    let elements = mat::elements(annotations)
        .ok_or_else(|| file_error(path, "`annotations` is not a struct array"))?;
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(elements.len());
    for (k, e) in elements.into_iter().enumerate() {
        let place = format!("annotations({})", k + 1);
        let a = read_annotation(path, &place, e, options)?;
        if let Some(first) = first_of.insert(a.fname.clone(), k + 1) {
            return Err(at_error(
                path,
                &format!("{place}.fname"),
                format!("`{}` is already annotations({first})'s image", a.fname),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

fn read_annotation(
    path: &Path,
    place: &str,
    e: &MatVariable,
    options: &OpenOptions,
) -> Result<Annotation> {
    let field = |name: &str| {
        mat::field(e, name)
            .ok_or_else(|| at_error(path, &format!("{place}.{name}"), "missing field"))
    };
    let number = |name: &str| -> Result<f64> {
        let v = mat::number(field(name)?)
            .filter(|x| x.is_finite())
            .ok_or_else(|| at_error(path, &format!("{place}.{name}"), "not a single number"))?;
        Ok(v)
    };
    let class = number("class")?;
    if class.fract() != 0.0 || class < 0.0 {
        return Err(at_error(
            path,
            &format!("{place}.class"),
            format!("class {class} is not a whole number >= 1"),
        ));
    }
    check_label(class).map_err(|m| at_error(path, &format!("{place}.class"), m))?;
    let fname = mat::text(field("fname")?)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| at_error(path, &format!("{place}.fname"), "not a file name"))?;
    let corners = [
        number("bbox_x1")?,
        number("bbox_y1")?,
        number("bbox_x2")?,
        number("bbox_y2")?,
    ];
    let bbox = box_from_corners(
        corners[0] as f32,
        corners[1] as f32,
        corners[2] as f32,
        corners[3] as f32,
    );
    check_box(&bbox, options.box_tolerance).map_err(|m| at_error(path, place, m))?;
    Ok(Annotation {
        fname,
        class: class as u64,
        bbox,
        origin: Origin::new(path, Place::Key(place.to_string())),
    })
}

/// The test annotations are a separate download: `devkit/` or `root` may hold them.
fn test_annotations_path(root: &Path) -> PathBuf {
    let name = "cars_test_annos_withlabels.mat";
    let devkit = root.join("devkit").join(name);
    if devkit.exists() {
        devkit
    } else {
        root.join(name)
    }
}
