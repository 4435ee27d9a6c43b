//! The CUB-200-2011 reader: a round trip through the synthetic set written in the CUB layout,
//! and hand-written fixture trees for the joins and the errors.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::common::datasets::expect_file_error;
use c2f_kernels::Error;
use c2f_train::data::cub;
use c2f_train::data::image_io::load_rgb;
use c2f_train::data::synthetic::{
    class_dir, write_cub_layout, Split, SyntheticConfig, SyntheticSet,
};
use c2f_train::data::{open_dataset, BBox, DatasetKind, OpenOptions};
use image::{Rgb, RgbImage};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data_cub_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn synthetic_round_trip() {
    let dir = scratch("round_trip");
    let cfg = SyntheticConfig {
        classes: 5,
        size: 96,
        seed: 11,
        ..Default::default()
    };
    write_cub_layout(&dir, &cfg, 20, 10).unwrap();
    let ds = cub::open(&dir).unwrap();
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    assert_eq!(ds.num_classes(), 5);
    assert_eq!(ds.class_names[2], class_dir(2));
    assert_eq!(ds.samples.len(), 30);
    let (train, test) = (ds.train(), ds.test());
    assert_eq!((train.len(), test.len()), (20, 10));

    let train_set = SyntheticSet::new(cfg.clone(), Split::Train, 20).unwrap();
    let test_set = SyntheticSet::new(cfg, Split::Test, 10).unwrap();
    for (set, samples) in [(&train_set, &train), (&test_set, &test)] {
        for (i, s) in samples.iter().enumerate() {
            let want = set.get(i);
            assert_eq!(s.label, want.label, "{s:?}");
            assert_eq!(s.bbox, Some(want.bbox), "{s:?}");
            assert_eq!(s.is_train, set.split() == Split::Train);
            // The JPEG (quality 95) is close to the generated pixels.
            let img = load_rgb(&s.path).unwrap();
            assert_eq!(img.dimensions(), (96, 96));
            let mad = img
                .as_raw()
                .iter()
                .zip(want.image.as_raw())
                .map(|(&a, &b)| a.abs_diff(b) as f64)
                .sum::<f64>()
                / img.as_raw().len() as f64;
            assert!(mad < 6.0, "{}: mean abs diff {mad}", s.path.display());
        }
    }
    // Ids are 1-based and sorted; the training images come first.
    let ids: Vec<u64> = ds.samples.iter().map(|s| s.id).collect();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>());
}

/// A hand-written tree: `images` holds `(id, rel path, label 1-based, train, box)`; each text
/// file is written in its own shuffled order; `skip_image` leaves that id's file out.
struct Fixture {
    rows: Vec<(u64, String, u64, u8, [f32; 4])>,
    classes: usize,
}

impl Fixture {
    fn tiny() -> Self {
        let rows = vec![
            (1, "001.A/a1.png".into(), 1, 1, [1.0, 2.0, 10.0, 8.0]),
            (2, "002.B/b1.png".into(), 2, 0, [0.0, 0.0, 20.0, 16.0]),
            (3, "001.A/a2.png".into(), 1, 0, [5.0, 4.0, 6.0, 6.0]),
            (5, "003.C/c1.png".into(), 3, 1, [3.0, 3.0, 12.0, 9.5]),
            (9, "002.B/b2.png".into(), 2, 1, [2.0, 1.0, 4.0, 4.0]),
        ];
        Fixture { rows, classes: 3 }
    }

    fn write(&self, dir: &Path, skip_image: Option<u64>) {
        for (id, rel, label, _, _) in &self.rows {
            if Some(*id) == skip_image {
                continue;
            }
            let path = dir.join("images").join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let img = RgbImage::from_fn(20, 16, |x, y| {
                Rgb([
                    (x * 10) as u8 + *id as u8,
                    (y * 12) as u8,
                    (*label * 60) as u8,
                ])
            });
            img.save(&path).unwrap();
        }
        let order = |k: usize| -> Vec<usize> {
            // Different shuffles per file (rotate and reverse), never the id order.
            let n = self.rows.len();
            let mut v: Vec<usize> = (0..n).map(|i| (i + k + 2) % n).collect();
            if k % 2 == 1 {
                v.reverse();
            }
            v
        };
        let mut images = String::new();
        for i in order(0) {
            writeln!(images, "{} {}", self.rows[i].0, self.rows[i].1).unwrap();
        }
        let mut labels = String::new();
        for i in order(1) {
            writeln!(labels, "{} {}", self.rows[i].0, self.rows[i].2).unwrap();
        }
        let mut split = String::new();
        for i in order(2) {
            writeln!(split, "{} {}", self.rows[i].0, self.rows[i].3).unwrap();
        }
        let mut boxes = String::new();
        for i in order(3) {
            let b = self.rows[i].4;
            writeln!(
                boxes,
                "{} {} {} {} {}",
                self.rows[i].0, b[0], b[1], b[2], b[3]
            )
            .unwrap();
        }
        let classes: String = (1..=self.classes)
            .map(|c| format!("{c} {:03}.{}\n", c, (b'A' + c as u8 - 1) as char))
            .collect();
        std::fs::write(dir.join("images.txt"), images).unwrap();
        std::fs::write(dir.join("image_class_labels.txt"), labels).unwrap();
        std::fs::write(dir.join("train_test_split.txt"), split).unwrap();
        std::fs::write(dir.join("bounding_boxes.txt"), boxes).unwrap();
        std::fs::write(dir.join("classes.txt"), classes).unwrap();
    }
}

#[test]
fn files_are_joined_by_id_not_by_order() {
    let dir = scratch("join");
    let f = Fixture::tiny();
    f.write(&dir, None);
    let ds = cub::open(&dir).unwrap();
    assert!(ds.problems.is_empty());
    assert_eq!(ds.class_names, vec!["001.A", "002.B", "003.C"]);
    assert_eq!(ds.samples.len(), 5);
    for (s, (id, rel, label, train, b)) in ds.samples.iter().zip(&f.rows) {
        assert_eq!(s.id, *id);
        assert_eq!(s.path, dir.join("images").join(rel));
        assert_eq!(s.label as u64, label - 1);
        assert_eq!(s.is_train, *train == 1);
        assert_eq!(s.bbox, Some(BBox::new(b[0], b[1], b[2], b[3])));
    }
    assert_eq!(
        ds.train().iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![1, 5, 9]
    );
    assert_eq!(
        ds.test().iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

#[test]
fn missing_image_is_reported_and_skipped() {
    let dir = scratch("missing");
    let f = Fixture::tiny();
    f.write(&dir, Some(3));
    let ds = cub::open(&dir).unwrap();
    assert_eq!(ds.samples.len(), 4);
    assert!(ds.samples.iter().all(|s| s.id != 3));
    assert_eq!(ds.problems.len(), 1);
    assert_eq!(ds.problems[0].path, dir.join("images/001.A/a2.png"));
}

/// Opens the tree after `edit` rewrote one of its files, expecting an error that names `file`
/// and contains each of `words`.
fn expect_error(name: &str, file: &str, edit: impl Fn(&str) -> String, words: &[&str]) {
    let dir = scratch(name);
    Fixture::tiny().write(&dir, None);
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(&text)).unwrap();
    expect_file_error(cub::open(&dir), &path, words);
}

/// Replaces the line for image `id` (the line starting with `id `).
fn replace_line(text: &str, id: u64, new: &str) -> String {
    text.lines()
        .map(|l| {
            if l.split_whitespace().next() == Some(&id.to_string()) {
                new.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn line_of(dir_file_text: &str, id: u64) -> usize {
    dir_file_text
        .lines()
        .position(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap()
        + 1
}

#[test]
fn label_out_of_range_names_file_and_line() {
    let dir = scratch("probe");
    Fixture::tiny().write(&dir, None);
    let labels = std::fs::read_to_string(dir.join("image_class_labels.txt")).unwrap();
    let line = format!("line {}:", line_of(&labels, 5));
    expect_error(
        "label_high",
        "image_class_labels.txt",
        |t| replace_line(t, 5, "5 4"),
        &[&line, "label 4", "1..=3"],
    );
    expect_error(
        "label_zero",
        "image_class_labels.txt",
        |t| replace_line(t, 5, "5 0"),
        &[&line, "label 0"],
    );
    expect_error(
        "label_text",
        "image_class_labels.txt",
        |t| replace_line(t, 5, "5 bird"),
        &[&line, "bird"],
    );
    // Without classes.txt the classes run up to the largest label: one of 10^18 is refused
    // before a name is made for each (tests/fuzz found it).
    let dir = scratch("label_huge");
    Fixture::tiny().write(&dir, None);
    std::fs::remove_file(dir.join("classes.txt")).unwrap();
    let path = dir.join("image_class_labels.txt");
    std::fs::write(&path, replace_line(&labels, 5, "5 1000000000000000000")).unwrap();
    expect_file_error(
        cub::open(&dir),
        &path,
        &[&line, "label 1000000000000000000 is above 100000"],
    );
}

#[test]
fn bad_boxes_name_file_and_line() {
    let dir = scratch("probe_box");
    Fixture::tiny().write(&dir, None);
    let boxes = std::fs::read_to_string(dir.join("bounding_boxes.txt")).unwrap();
    let line = format!("line {}:", line_of(&boxes, 2));
    // Negative width, negative x, beyond the 20×16 image, not a number, missing a value.
    for (name, new) in [
        ("box_w", "2 1 1 -3 4"),
        ("box_x", "2 -5 1 3 4"),
        ("box_far", "2 10 4 15 4"),
        ("box_nan", "2 1 1 NaN 4"),
        ("box_short", "2 1 1 3"),
    ] {
        expect_error(
            name,
            "bounding_boxes.txt",
            |t| replace_line(t, 2, new),
            &[&line],
        );
    }
    // Within the 1-pixel slack is fine; switched off, the image size is not checked.
    let dir = scratch("box_slack");
    Fixture::tiny().write(&dir, None);
    let p = dir.join("bounding_boxes.txt");
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, replace_line(&t, 2, "2 0 0 20.5 16.5")).unwrap();
    assert!(cub::open(&dir).is_ok());
    std::fs::write(&p, replace_line(&t, 2, "2 0 0 40 16")).unwrap();
    assert!(cub::open(&dir).is_err());
    let lax = OpenOptions {
        check_boxes_against_images: false,
        ..Default::default()
    };
    assert!(cub::open_with(&dir, &lax).is_ok());
}

#[test]
fn inconsistent_ids_and_flags_name_file_and_line() {
    let dir = scratch("probe_ids");
    Fixture::tiny().write(&dir, None);
    let split = std::fs::read_to_string(dir.join("train_test_split.txt")).unwrap();
    let line = format!("line {}:", line_of(&split, 9));
    expect_error(
        "split_flag",
        "train_test_split.txt",
        |t| replace_line(t, 9, "9 2"),
        &[&line, "`2`"],
    );
    // An id the images list does not have.
    let labels = std::fs::read_to_string(dir.join("image_class_labels.txt")).unwrap();
    let line = format!("line {}:", line_of(&labels, 9));
    expect_error(
        "unknown_id",
        "image_class_labels.txt",
        |t| replace_line(t, 9, "77 1"),
        &[&line, "77", "images.txt"],
    );
    // A duplicate id.
    expect_error(
        "duplicate",
        "images.txt",
        |t| format!("{t}\n1 001.A/a1.png\n"),
        &["line 7:", "already appears"],
    );
    // An image with no label: the error points at images.txt.
    let images = std::fs::read_to_string(dir.join("images.txt")).unwrap();
    let line = format!("line {}:", line_of(&images, 9));
    let dir2 = scratch("no_label");
    Fixture::tiny().write(&dir2, None);
    let p = dir2.join("image_class_labels.txt");
    let t = std::fs::read_to_string(&p).unwrap();
    let kept: Vec<&str> = t.lines().filter(|l| !l.starts_with("9 ")).collect();
    std::fs::write(&p, kept.join("\n")).unwrap();
    match cub::open(&dir2) {
        Err(Error::Data {
            path,
            line: Some(number),
            message,
        }) => {
            assert!(path.ends_with("images.txt"), "{path}");
            assert_eq!(format!("line {number}:"), line);
            assert!(message.contains("image_class_labels.txt"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A missing text file names itself.
    let dir3 = scratch("no_split");
    Fixture::tiny().write(&dir3, None);
    std::fs::remove_file(dir3.join("train_test_split.txt")).unwrap();
    match cub::open(&dir3) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("train_test_split.txt")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dataset_kinds_parse_by_name_and_open_cub() {
    for kind in DatasetKind::ALL {
        assert_eq!(kind.name().parse::<DatasetKind>(), Ok(kind));
    }
    let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, ["cub", "aircraft", "cars", "dogs", "inat2017"]);
    let err = "birds".parse::<DatasetKind>().unwrap_err();
    assert!(err.contains("`birds`") && err.contains("inat2017"), "{err}");
    let dir = scratch("open_dataset");
    Fixture::tiny().write(&dir, None);
    let ds = open_dataset(DatasetKind::Cub, &dir).unwrap();
    assert_eq!(ds.samples, cub::open(&dir).unwrap().samples);
    assert_eq!(ds.class_names, vec!["001.A", "002.B", "003.C"]);
    assert!(ds.has_boxes());
}
