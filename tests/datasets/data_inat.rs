//! The iNaturalist 2017 reader on a fixture tree written here: annotations joined to images by
//! id (lists shuffled differently), sparse category ids made dense in id order, a missing and a
//! corrupt image, and errors naming file and key.

use std::path::Path;

use crate::common::datasets::{expect_file_error, loader_skips, pattern, scratch, write_jpeg};
use c2f_train::data::{inat, open_dataset, DatasetKind};
use serde_json::{json, Value};

/// Category ids (sparse, unsorted) and names.
const CATEGORIES: [(u64, &str); 3] = [
    (70, "Danaus plexippus"),
    (5, "Aves sp."),
    (31, "Quercus alba"),
];
/// `(image id, category id)`: train, then val.
const TRAIN: [(u64, u64); 4] = [(900, 31), (12, 70), (400, 5), (3, 31)];
const VAL: [(u64, u64); 2] = [(77, 5), (1000, 70)];

fn file_name(id: u64) -> String {
    format!("train_val_images/Sp/{id}.jpg")
}

fn coco(rows: &[(u64, u64)]) -> Value {
    let images: Vec<Value> = rows
        .iter()
        .map(|(id, _)| json!({"id": id, "file_name": file_name(*id), "width": 24, "height": 16, "license": 1}))
        .collect();
    // Annotations reversed and rotated against the images: only the ids can join them.
    let mut annotations: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(k, (id, c))| json!({"id": k, "image_id": id, "category_id": c}))
        .rev()
        .collect();
    annotations.rotate_left(1);
    let categories: Vec<Value> = CATEGORIES
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name, "supercategory": "X"}))
        .collect();
    json!({"info": {}, "images": images, "annotations": annotations, "categories": categories})
}

fn write_tree(dir: &Path, train: &Value, val: &Value) {
    for (k, (id, _)) in TRAIN.iter().chain(&VAL).enumerate() {
        write_jpeg(&dir.join(file_name(*id)), 24, 16, pattern(k as u32));
    }
    std::fs::write(dir.join("train2017.json"), train.to_string()).unwrap();
    std::fs::write(
        dir.join("val2017.json"),
        serde_json::to_string_pretty(val).unwrap(),
    )
    .unwrap();
}

#[test]
fn joins_by_image_id_and_numbers_categories_in_id_order() {
    let dir = scratch("data_inat", "read");
    write_tree(&dir, &coco(&TRAIN), &coco(&VAL));
    let ds = open_dataset(DatasetKind::Inat2017, &dir).unwrap();
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    // Ids 5, 31, 70 → classes 0, 1, 2.
    assert_eq!(
        ds.class_names,
        ["Aves sp.", "Quercus alba", "Danaus plexippus"]
    );
    let class = |c: u64| [5, 31, 70].iter().position(|&x| x == c).unwrap();
    assert!(!ds.has_boxes());
    let (train, test) = (ds.train(), ds.test());
    for (samples, rows) in [(&train, &TRAIN[..]), (&test, &VAL[..])] {
        let mut want = rows.to_vec();
        want.sort_unstable();
        let got: Vec<(u64, usize)> = samples.iter().map(|s| (s.id, s.label)).collect();
        let want: Vec<(u64, usize)> = want.iter().map(|&(id, c)| (id, class(c))).collect();
        assert_eq!(got, want);
        for s in samples.iter() {
            assert_eq!(s.path, dir.join(file_name(s.id)));
        }
    }
}

#[test]
fn missing_image_is_a_problem_and_corrupt_one_is_skipped_by_the_loader() {
    let dir = scratch("data_inat", "bad_files");
    write_tree(&dir, &coco(&TRAIN), &coco(&VAL));
    std::fs::remove_file(dir.join(file_name(400))).unwrap();
    let bytes = std::fs::read(dir.join(file_name(77))).unwrap();
    std::fs::write(dir.join(file_name(77)), &bytes[..bytes.len() / 2]).unwrap();
    let ds = inat::open(&dir).unwrap();
    assert_eq!(ds.problems.len(), 1);
    assert_eq!(ds.problems[0].path, dir.join(file_name(400)));
    let skipped: Vec<usize> = loader_skips(ds.samples.clone()).into_iter().collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(ds.samples[skipped[0]].id, 77);
}

#[test]
fn bad_annotations_name_file_and_key() {
    let case = |name: &str, edit: &dyn Fn(&mut Value), words: &[&str]| {
        let dir = scratch("data_inat", name);
        let mut train = coco(&TRAIN);
        edit(&mut train);
        write_tree(&dir, &train, &coco(&VAL));
        expect_file_error(inat::open(&dir), &dir.join("train2017.json"), words);
    };
    // annotations[0] is the rotated list's first: image 3's (rows reversed then rotated by one).
    case(
        "unknown_image",
        &|v| v["annotations"][0]["image_id"] = json!(5555),
        &["annotations[0]", "5555"],
    );
    case(
        "unknown_category",
        &|v| v["annotations"][1]["category_id"] = json!(6),
        &["annotations[1]", "category id 6"],
    );
    case(
        "duplicate_image",
        &|v| v["images"][2]["id"] = json!(900),
        &["images[2]", "images[0]"],
    );
    case(
        "no_annotation",
        &|v| {
            v["annotations"].as_array_mut().unwrap().remove(3);
        },
        &["has no annotation"],
    );
    case(
        "two_annotations",
        &|v| {
            let extra = json!({"id": 99, "image_id": 12, "category_id": 5});
            v["annotations"].as_array_mut().unwrap().push(extra);
        },
        &["annotations[4]", "image 12 already"],
    );
    case(
        "duplicate_category",
        &|v| v["categories"][1]["id"] = json!(70),
        &["categories[1]", "categories[0]"],
    );
    case(
        "not_coco",
        &|v| v["images"][1]["file_name"] = json!(7),
        &["not a COCO-style", "line 1"],
    );
    // The validation categories must agree with the training ones.
    let dir = scratch("data_inat", "val_categories");
    let mut val = coco(&VAL);
    val["categories"][2]["name"] = json!("Quercus rubra");
    write_tree(&dir, &coco(&TRAIN), &val);
    expect_file_error(
        inat::open(&dir),
        &dir.join("val2017.json"),
        &["categories[2]", "Quercus rubra"],
    );
}
