//! iNaturalist 2017 reader.
//!
//! The dataset as distributed, under `root`: `train2017.json` and `val2017.json`, COCO-style:
//!
//! - `images`: `{id, file_name, …}`, `file_name` relative to `root`
//!   (`train_val_images/<supercategory>/<category>/<hash>.jpg`);
//! - `annotations`: `{image_id, category_id, …}`, one per image;
//! - `categories`: `{id, name, …}`.
//!
//! Annotations are joined to images by `image_id`, never by list order. The classes are the
//! categories of `train2017.json` in ascending id order, numbered densely from 0; the validation
//! file's categories must agree (same ids, same names). The validation split is the test split
//! here. The real set has 5,089 categories, 579,184 training and 95,986 validation images. Samples
//! come in ascending image id, training first; a sample's id is the image id. No boxes (the
//! 2017 boxes are a separate file, for a subset of the categories).
//!
//! Errors name the file and the key (`annotations[17]`, `images[3]`): malformed JSON (with its
//! line and column), a duplicate image or category id, an annotation for an unknown image or
//! category, an image with no annotation or two. A listed image whose file is missing is a
//! [`super::Problem`], left out.

use std::collections::HashMap;
use std::path::Path;

use c2f_kernels::Result;
use serde::Deserialize;

use super::files::{at_error, dataset_of, file_error, read_bytes};
use super::{Dataset, OpenOptions, Sample};

#[derive(Deserialize)]
struct Coco {
    images: Vec<Image>,
    annotations: Vec<Annotation>,
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct Image {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize)]
struct Category {
    id: u64,
    name: String,
}

fn read(path: &Path) -> Result<Coco> {
    serde_json::from_slice(&read_bytes(path)?)
        .map_err(|e| file_error(path, format!("not a COCO-style annotation file: {e}")))
}

/// `category id → (name, index in categories)`, ids unique.
fn categories(path: &Path, coco: &Coco) -> Result<HashMap<u64, (String, usize)>> {
    let mut out = HashMap::new();
    for (k, c) in coco.categories.iter().enumerate() {
        if let Some((_, first)) = out.insert(c.id, (c.name.clone(), k)) {
            return Err(at_error(
                path,
                &format!("categories[{k}]"),
                format!("category id {} is already categories[{first}]", c.id),
            ));
        }
    }
    Ok(out)
}

pub fn open(root: &Path) -> Result<Dataset> {
    let train_path = root.join("train2017.json");
    let val_path = root.join("val2017.json");
    let train = read(&train_path)?;
    let val = read(&val_path)?;

    let train_categories = categories(&train_path, &train)?;
    let mut ids: Vec<u64> = train_categories.keys().copied().collect();
    ids.sort_unstable();
    let class_of: HashMap<u64, usize> = ids.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    let class_names: Vec<String> = ids
        .iter()
        .map(|id| train_categories[id].0.clone())
        .collect();
    for (id, (name, k)) in categories(&val_path, &val)? {
        match train_categories.get(&id) {
            Some((train_name, _)) if *train_name == name => {}
            _ => {
                return Err(at_error(
                    &val_path,
                    &format!("categories[{k}]"),
                    format!("category {id} `{name}` is not in train2017.json's categories"),
                ))
            }
        }
    }

    let mut samples = Vec::with_capacity(train.images.len() + val.images.len());
    for (path, coco, is_train) in [(&train_path, &train, true), (&val_path, &val, false)] {
        samples.extend(join(root, path, coco, &class_of, is_train)?);
    }
    dataset_of(root, class_names, samples, &OpenOptions::default())
}

/// The images of one file with their classes, in ascending image id.
fn join(
    root: &Path,
    path: &Path,
    coco: &Coco,
    class_of: &HashMap<u64, usize>,
    is_train: bool,
) -> Result<Vec<(Sample, Option<super::files::Origin>)>> {
    let mut image_at: HashMap<u64, usize> = HashMap::with_capacity(coco.images.len());
    for (k, im) in coco.images.iter().enumerate() {
        if let Some(first) = image_at.insert(im.id, k) {
            return Err(at_error(
                path,
                &format!("images[{k}]"),
                format!("image id {} is already images[{first}]", im.id),
            ));
        }
    }
    // image index → (class, annotation index)
    let mut class_at: Vec<Option<(usize, usize)>> = vec![None; coco.images.len()];
    for (k, a) in coco.annotations.iter().enumerate() {
        let place = format!("annotations[{k}]");
        let &i = image_at.get(&a.image_id).ok_or_else(|| {
            at_error(
                path,
                &place,
                format!("image id {} is not in images", a.image_id),
            )
        })?;
        let &class = class_of.get(&a.category_id).ok_or_else(|| {
            at_error(
                path,
                &place,
                format!("category id {} is not in the categories", a.category_id),
            )
        })?;
        if let Some((_, first)) = class_at[i] {
            return Err(at_error(
                path,
                &place,
                format!("image {} already has annotations[{first}]", a.image_id),
            ));
        }
        class_at[i] = Some((class, k));
    }
    let mut order: Vec<usize> = (0..coco.images.len()).collect();
    order.sort_unstable_by_key(|&k| coco.images[k].id);
    order
        .into_iter()
        .map(|k| {
            let im = &coco.images[k];
            let (label, _) = class_at[k].ok_or_else(|| {
                at_error(
                    path,
                    &format!("images[{k}]"),
                    format!("image {} has no annotation", im.id),
                )
            })?;
            Ok((
                Sample {
                    id: im.id,
                    path: root.join(&im.file_name),
                    label,
                    bbox: None,
                    is_train,
                    crop_bottom: 0,
                },
                None,
            ))
        })
        .collect()
}
