//! The Stanford Dogs reader on a fixture tree written here: MAT lists (test-only writer), VOC
//! XML boxes (one dog, two dogs → their union), breed folders as class names, a missing and a
//! corrupt image, and errors naming file and element.

use std::path::Path;

use crate::common::datasets::{
    expect_file_error, expect_io_error, loader_skips, pattern, scratch, write_jpeg, write_mat, Mat,
};
use c2f_train::data::{dogs, open_dataset, BBox, DatasetKind};

const CHI: &str = "n02085620-Chihuahua";
const POM: &str = "n02112018-Pomeranian";
/// `(path under Images/, label 1-based, boxes xmin ymin xmax ymax)`.
type Row = (&'static str, f64, &'static [[u32; 4]]);
const TRAIN: [Row; 3] = [
    (
        "n02112018-Pomeranian/n02112018_1.jpg",
        2.0,
        &[[3, 4, 20, 18]],
    ),
    (
        "n02085620-Chihuahua/n02085620_7.jpg",
        1.0,
        &[[2, 2, 10, 12], [15, 5, 30, 20]],
    ),
    (
        "n02085620-Chihuahua/n02085620_9.jpg",
        1.0,
        &[[1, 1, 32, 24]],
    ),
];
const TEST: [Row; 2] = [
    ("n02085620-Chihuahua/n02085620_3.jpg", 1.0, &[[5, 5, 9, 9]]),
    (
        "n02112018-Pomeranian/n02112018_4.jpg",
        2.0,
        &[[4, 3, 28, 22]],
    ),
];

fn xml(boxes: &[[u32; 4]]) -> String {
    let objects: String = boxes
        .iter()
        .map(|b| {
            format!(
                "<object><name>dog</name><pose>Unspecified</pose><bndbox><xmin>{}</xmin>\
                 <ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                b[0], b[1], b[2], b[3]
            )
        })
        .collect();
    format!("<annotation><size><width>32</width><height>24</height><depth>3</depth></size>{objects}</annotation>")
}

fn list(rows: &[Row]) -> Vec<(&'static str, Mat)> {
    let n = rows.len();
    vec![
        (
            "file_list",
            Mat::Cell(rows.iter().map(|r| Mat::Text(r.0.into())).collect(), [n, 1]),
        ),
        (
            "annotation_list",
            Mat::Cell(
                rows.iter()
                    .map(|r| Mat::Text(r.0.trim_end_matches(".jpg").into()))
                    .collect(),
                [n, 1],
            ),
        ),
        (
            "labels",
            Mat::Double(rows.iter().map(|r| r.1).collect(), [n, 1]),
        ),
    ]
}

fn write_tree(dir: &Path, train: &[Row]) {
    for (k, r) in train.iter().chain(&TEST).enumerate() {
        write_jpeg(&dir.join("Images").join(r.0), 32, 24, pattern(k as u32));
        let a = dir.join("Annotation").join(r.0.trim_end_matches(".jpg"));
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        std::fs::write(a, xml(r.2)).unwrap();
    }
    write_mat(&dir.join("train_list.mat"), &list(train), true);
    write_mat(&dir.join("test_list.mat"), &list(&TEST), false);
}

fn corners(b: [u32; 4]) -> BBox {
    let [x1, y1, x2, y2] = b.map(|v| v as f32);
    BBox::new(x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0)
}

#[test]
fn reads_lists_breeds_and_union_boxes() {
    let dir = scratch("data_dogs", "read");
    write_tree(&dir, &TRAIN);
    let ds = open_dataset(DatasetKind::Dogs, &dir).unwrap();
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    assert_eq!(ds.class_names, [CHI, POM]);
    let (train, test) = (ds.train(), ds.test());
    assert_eq!((train.len(), test.len()), (3, 2));
    for (samples, rows) in [(&train, &TRAIN[..]), (&test, &TEST[..])] {
        for (k, (s, r)) in samples.iter().zip(rows).enumerate() {
            assert_eq!(s.id, k as u64 + 1);
            assert_eq!(s.path, dir.join("Images").join(r.0));
            assert_eq!(s.label, r.1 as usize - 1);
            let union = r.2.iter().fold(r.2[0], |u, b| {
                [
                    u[0].min(b[0]),
                    u[1].min(b[1]),
                    u[2].max(b[2]),
                    u[3].max(b[3]),
                ]
            });
            assert_eq!(s.bbox, Some(corners(union)));
        }
    }
    // Two dogs: the union of (2,2)-(10,12) and (15,5)-(30,20) is (2,2)-(30,20).
    assert_eq!(train[1].bbox, Some(corners([2, 2, 30, 20])));
    // Without Annotation/ there are no boxes.
    std::fs::remove_dir_all(dir.join("Annotation")).unwrap();
    assert!(!dogs::open(&dir).unwrap().has_boxes());
}

#[test]
fn missing_image_is_a_problem_and_corrupt_one_is_skipped_by_the_loader() {
    let dir = scratch("data_dogs", "bad_files");
    write_tree(&dir, &TRAIN);
    let images = dir.join("Images");
    std::fs::remove_file(images.join(TEST[0].0)).unwrap();
    std::fs::write(images.join(TRAIN[0].0), b"\xff\xd8\xff garbage").unwrap();
    let ds = dogs::open(&dir).unwrap();
    assert_eq!(ds.problems.len(), 1);
    assert_eq!(ds.problems[0].path, images.join(TEST[0].0));
    let skipped: Vec<usize> = loader_skips(ds.samples.clone()).into_iter().collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(ds.samples[skipped[0]].path, images.join(TRAIN[0].0));
}

#[test]
fn bad_lists_and_boxes_name_file_and_element() {
    let case = |name: &str, train: &[Row]| {
        let dir = scratch("data_dogs", name);
        write_tree(&dir, train);
        (dogs::open(&dir), dir.join("train_list.mat"), dir)
    };
    let mut rows = TRAIN;
    rows[2].1 = 0.0;
    let (r, p, _) = case("label_zero", &rows);
    expect_file_error(r, &p, &["labels(3)", "label 0"]);
    let mut rows = TRAIN;
    rows[1].1 = 1.5;
    let (r, p, _) = case("label_half", &rows);
    expect_file_error(r, &p, &["labels(2)", "1.5"]);
    // A Chihuahua label on a Pomeranian folder.
    let mut rows = TRAIN;
    rows[0].1 = 1.0;
    let (r, p, _) = case("two_folders", &rows);
    expect_file_error(r, &p, &["file_list{2}", CHI, POM]);
    let mut rows = TRAIN;
    rows[2].0 = TRAIN[1].0;
    let (r, p, _) = case("twice", &rows);
    expect_file_error(r, &p, &["file_list{3}", "file_list{2}"]);
    // Lists of different lengths.
    let dir = scratch("data_dogs", "lengths");
    write_tree(&dir, &TRAIN);
    let p = dir.join("train_list.mat");
    let mut vars = list(&TRAIN);
    vars[2].1 = Mat::Double(vec![1.0, 2.0], [2, 1]);
    write_mat(&p, &vars, true);
    expect_file_error(dogs::open(&dir), &p, &["3 entries", "2"]);

    // XML: swapped corners, not a number, no object, not XML, missing file.
    let dir = scratch("data_dogs", "xml");
    write_tree(&dir, &TRAIN);
    let a = dir
        .join("Annotation")
        .join(TRAIN[1].0.trim_end_matches(".jpg"));
    let good = std::fs::read_to_string(&a).unwrap();
    std::fs::write(&a, xml(&[[2, 2, 10, 12], [30, 5, 15, 20]])).unwrap();
    expect_file_error(dogs::open(&dir), &a, &["object 2 bndbox", "out of range"]);
    std::fs::write(&a, good.replace("<ymax>12</ymax>", "<ymax>twelve</ymax>")).unwrap();
    expect_file_error(dogs::open(&dir), &a, &["object 1 bndbox ymax"]);
    std::fs::write(&a, "<annotation><size/></annotation>").unwrap();
    expect_file_error(dogs::open(&dir), &a, &["no `object`"]);
    std::fs::write(&a, "<annotation><object>").unwrap();
    expect_file_error(dogs::open(&dir), &a, &["not valid XML"]);
    std::fs::write(&a, xml(&[[1, 1, 40, 24]])).unwrap();
    expect_file_error(dogs::open(&dir), &a, &["outside"]);
    std::fs::remove_file(&a).unwrap();
    expect_io_error(dogs::open(&dir), &a);
}
