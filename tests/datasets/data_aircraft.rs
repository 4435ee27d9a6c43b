//! The FGVC-Aircraft reader on a fixture tree written here: variant names with spaces, lists in
//! shuffled order, 1-based boxes, the 20-row banner cut at load time, a missing and a corrupt
//! image, and errors that name the file and line.

use std::path::Path;

use crate::common::datasets::{expect_file_error, loader_skips, scratch, write_jpeg};
use c2f_train::data::aircraft::{self, BANNER_ROWS};
use c2f_train::data::loader::{FileSource, ImageSource};
use c2f_train::data::{open_dataset, BBox, DatasetKind};

const VARIANTS: [&str; 3] = ["Boeing 737-700", "F/A-18", "Cessna 172"];
const TOP: [u8; 3] = [40, 160, 60];
const BANNER: [u8; 3] = [230, 30, 200];
const W: u32 = 40;
/// 16 image rows (a whole JPEG block row) above the 20-row banner.
const H: u32 = 36;

/// `(id, variant index, trainval, box xmin ymin xmax ymax)`.
const ROWS: [(&str, usize, bool, [u32; 4]); 6] = [
    ("0034309", 2, true, [3, 2, 30, 14]),
    ("1025794", 0, false, [1, 1, 40, 36]),
    ("0056978", 1, true, [5, 5, 12, 9]),
    ("2031775", 0, true, [10, 4, 20, 30]),
    ("0700001", 1, false, [2, 3, 4, 5]),
    ("0000007", 2, true, [1, 1, 8, 8]),
];

fn write_tree(dir: &Path) {
    let data = dir.join("data");
    for (id, _, _, _) in ROWS {
        write_jpeg(
            &data.join("images").join(format!("{id}.jpg")),
            W,
            H,
            |_, y| {
                if y < H - BANNER_ROWS {
                    TOP
                } else {
                    BANNER
                }
            },
        );
    }
    std::fs::write(data.join("variants.txt"), VARIANTS.join("\n") + "\n").unwrap();
    let list = |train: bool| -> String {
        ROWS.iter()
            .rev()
            .filter(|r| r.2 == train)
            .map(|r| format!("{} {}\n", r.0, VARIANTS[r.1]))
            .collect()
    };
    std::fs::write(data.join("images_variant_trainval.txt"), list(true)).unwrap();
    std::fs::write(data.join("images_variant_test.txt"), list(false)).unwrap();
    let boxes: String = ROWS
        .iter()
        .map(|r| format!("{} {} {} {} {}\n", r.0, r.3[0], r.3[1], r.3[2], r.3[3]))
        .collect();
    std::fs::write(data.join("images_box.txt"), boxes).unwrap();
}

#[test]
fn reads_labels_splits_and_one_based_boxes() {
    let dir = scratch("data_aircraft", "read");
    write_tree(&dir);
    let ds = aircraft::open(&dir).unwrap();
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    assert_eq!(ds.class_names, VARIANTS);
    assert!(ds.has_boxes());
    assert_eq!(ds.samples.len(), 6);
    // Training list first, each list in file order (written reversed).
    let order: Vec<&str> = ds
        .samples
        .iter()
        .map(|s| s.path.file_stem().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["0000007", "2031775", "0056978", "0034309", "0700001", "1025794"]
    );
    for s in &ds.samples {
        let stem = s.path.file_stem().unwrap().to_str().unwrap();
        let row = ROWS.iter().find(|r| r.0 == stem).unwrap();
        assert_eq!(s.id, stem.parse::<u64>().unwrap());
        assert_eq!(s.label, row.1);
        assert_eq!(s.is_train, row.2);
        assert_eq!(s.crop_bottom, BANNER_ROWS);
        let [x0, y0, x1, y1] = row.3.map(|v| v as f32);
        assert_eq!(
            s.bbox,
            Some(BBox::new(x0 - 1.0, y0 - 1.0, x1 - x0 + 1.0, y1 - y0 + 1.0))
        );
    }
    assert_eq!(ds.train().len(), 4);
    assert_eq!(ds.test().len(), 2);
    // The CLI's entry point gives the same.
    let same = open_dataset("aircraft".parse::<DatasetKind>().unwrap(), &dir).unwrap();
    assert_eq!(same.samples, ds.samples);
}

#[test]
fn banner_is_cut_at_load_time_and_boxes_are_clipped() {
    let dir = scratch("data_aircraft", "banner");
    write_tree(&dir);
    let ds = aircraft::open(&dir).unwrap();
    let src = FileSource::new(ds.samples.clone());
    for (i, s) in ds.samples.iter().enumerate() {
        let item = src.load(i).unwrap();
        assert_eq!(item.image.dimensions(), (W, H - BANNER_ROWS));
        // Every pixel left is the top colour (JPEG noise only): no banner row survives.
        for p in item.image.pixels() {
            let near = p.0.iter().zip(TOP).all(|(&v, t)| v.abs_diff(t) < 12);
            assert!(near, "{:?} in {}", p.0, s.path.display());
        }
        let b = s.bbox.unwrap();
        let want_bottom = b.bottom().min((H - BANNER_ROWS) as f32);
        assert_eq!(
            item.bbox,
            Some(BBox::new(b.x, b.y, b.w, want_bottom - b.y)),
            "{}",
            s.path.display()
        );
    }
    // Without the crop the banner is there: the bottom row is the banner colour.
    let mut whole = ds.samples[0].clone();
    whole.crop_bottom = 0;
    let item = FileSource::new(vec![whole]).load(0).unwrap();
    assert_eq!(item.image.dimensions(), (W, H));
    let p = item.image.get_pixel(W / 2, H - 1).0;
    assert!((0..3).all(|c| p[c].abs_diff(BANNER[c]) < 12), "{p:?}");
}

#[test]
fn missing_image_is_a_problem_and_corrupt_one_is_skipped_by_the_loader() {
    let dir = scratch("data_aircraft", "bad_files");
    write_tree(&dir);
    let images = dir.join("data/images");
    std::fs::remove_file(images.join("0056978.jpg")).unwrap();
    std::fs::write(images.join("2031775.jpg"), b"not a jpeg").unwrap();
    let ds = aircraft::open(&dir).unwrap();
    assert_eq!(ds.problems.len(), 1);
    assert_eq!(ds.problems[0].path, images.join("0056978.jpg"));
    assert_eq!(ds.samples.len(), 5);
    let skipped = loader_skips(ds.samples.clone());
    let bad: Vec<usize> = skipped.into_iter().collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(ds.samples[bad[0]].path, images.join("2031775.jpg"));
}

/// Rewrites `file` (under `data/`) with `edit` and expects an error naming it and `words`.
fn expect_error(name: &str, file: &str, edit: impl Fn(&str) -> String, words: &[&str]) {
    let dir = scratch("data_aircraft", name);
    write_tree(&dir);
    let path = dir.join("data").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(&text)).unwrap();
    expect_file_error(aircraft::open(&dir), &path, words);
}

#[test]
fn bad_lines_name_file_and_line() {
    let trainval = "images_variant_trainval.txt";
    // Line 2 of the trainval list is 2031775 (the rows are written in reverse).
    let replace2 = |new: &'static str| {
        move |t: &str| {
            let mut lines: Vec<&str> = t.lines().collect();
            lines[1] = new;
            lines.join("\n")
        }
    };
    expect_error(
        "variant",
        trainval,
        replace2("2031775 Boeing 747"),
        &["line 2:", "Boeing 747"],
    );
    expect_error(
        "short_id",
        trainval,
        replace2("203177 F/A-18"),
        &["line 2:", "seven digits"],
    );
    expect_error("no_variant", trainval, replace2("2031775"), &["line 2:"]);
    // Listed in both lists: the test list's line is named.
    expect_error(
        "twice",
        "images_variant_test.txt",
        |t| format!("{t}0000007 Cessna 172\n"),
        &["line 3:", "0000007", "line 1"],
    );
    expect_error(
        "duplicate_variant",
        "variants.txt",
        |t| format!("{t}F/A-18\n"),
        &["line 4:", "line 2"],
    );
    // Boxes: corners swapped, not numbers, an unlisted id, an id without a box.
    let boxes = "images_box.txt";
    expect_error(
        "box_swapped",
        boxes,
        replace2("1025794 30 1 10 36"),
        &["line 2:", "out of range"],
    );
    expect_error(
        "box_text",
        boxes,
        replace2("1025794 1 1 ten 36"),
        &["line 2:"],
    );
    expect_error(
        "box_far",
        boxes,
        replace2("1025794 1 1 60 36"),
        &["line 2:", "outside"],
    );
    expect_error(
        "box_unlisted",
        boxes,
        replace2("1234567 1 1 5 5"),
        &["line 2:", "1234567"],
    );
    let dir = scratch("data_aircraft", "box_missing");
    write_tree(&dir);
    let p = dir.join("data").join(boxes);
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        t.lines()
            .filter(|l| !l.starts_with("0056978"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    expect_file_error(
        aircraft::open(&dir),
        &dir.join("data").join(trainval),
        &["line 3:", "0056978", "images_box.txt"],
    );
    // Without a box file there are no boxes, and that is fine.
    std::fs::remove_file(&p).unwrap();
    let ds = aircraft::open(&dir).unwrap();
    assert!(!ds.has_boxes());
    assert_eq!(ds.samples.len(), 6);
}
