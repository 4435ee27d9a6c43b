//! The Stanford Cars reader on a fixture tree written here, the MAT-files by the test-only
//! writer (compressed like MATLAB's, and uncompressed): classes as uint8 and double, 1-based
//! boxes, class names, a missing and a corrupt image, and errors naming file and element.

use std::path::Path;

use crate::common::datasets::{
    expect_file_error, loader_skips, mat_bytes, pattern, scratch, write_jpeg, write_mat, Mat,
};
use c2f_train::data::{cars, open_dataset, BBox, DatasetKind};

const FIELDS: [&str; 6] = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"];
/// `(fname, class 1-based, x1 y1 x2 y2)` per split.
const TRAIN: [(&str, u8, [f64; 4]); 4] = [
    ("00001.jpg", 2, [3.0, 4.0, 30.0, 20.0]),
    ("00002.jpg", 1, [1.0, 1.0, 32.0, 24.0]),
    ("00003.jpg", 3, [10.0, 2.0, 11.0, 3.0]),
    ("00004.jpg", 2, [5.0, 6.0, 25.0, 18.0]),
];
const TEST: [(&str, u8, [f64; 4]); 2] = [
    ("00001.jpg", 3, [2.0, 2.0, 20.0, 20.0]),
    ("00002.jpg", 1, [4.0, 1.0, 31.0, 9.0]),
];
const NAMES: [&str; 3] = [
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "smart fortwo 2012",
];

fn annotations(rows: &[(&str, u8, [f64; 4])], class_as_u8: bool) -> Mat {
    Mat::Struct(
        FIELDS.to_vec(),
        rows.iter()
            .map(|(f, c, b)| {
                let mut v: Vec<Mat> = b.iter().map(|&x| Mat::Double(vec![x], [1, 1])).collect();
                v.push(if class_as_u8 {
                    Mat::U8(*c)
                } else {
                    Mat::Double(vec![*c as f64], [1, 1])
                });
                v.push(Mat::Text(f.to_string()));
                v
            })
            .collect(),
    )
}

fn write_tree(dir: &Path, train: &[(&str, u8, [f64; 4])]) {
    for (k, (f, _, _)) in train.iter().enumerate() {
        write_jpeg(&dir.join("cars_train").join(f), 32, 24, pattern(k as u32));
    }
    for (k, (f, _, _)) in TEST.iter().enumerate() {
        write_jpeg(
            &dir.join("cars_test").join(f),
            32,
            24,
            pattern(10 + k as u32),
        );
    }
    let devkit = dir.join("devkit");
    write_mat(
        &devkit.join("cars_train_annos.mat"),
        &[("annotations", annotations(train, true))],
        true,
    );
    // The test annotations with labels are a separate download, here in the root, uncompressed.
    write_mat(
        &dir.join("cars_test_annos_withlabels.mat"),
        &[("annotations", annotations(&TEST, false))],
        false,
    );
    let names = NAMES.iter().map(|n| Mat::Text(n.to_string())).collect();
    write_mat(
        &devkit.join("cars_meta.mat"),
        &[("class_names", Mat::Cell(names, [1, 3]))],
        true,
    );
}

fn corners(b: [f64; 4]) -> BBox {
    let [x1, y1, x2, y2] = b.map(|v| v as f32);
    BBox::new(x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0)
}

#[test]
fn reads_annotations_boxes_and_class_names() {
    let dir = scratch("data_cars", "read");
    write_tree(&dir, &TRAIN);
    let ds = open_dataset(DatasetKind::Cars, &dir).unwrap();
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    assert_eq!(ds.class_names, NAMES);
    assert!(ds.has_boxes());
    let (train, test) = (ds.train(), ds.test());
    assert_eq!((train.len(), test.len()), (4, 2));
    for (samples, rows, folder) in [
        (&train, &TRAIN[..], "cars_train"),
        (&test, &TEST[..], "cars_test"),
    ] {
        for (k, (s, (f, c, b))) in samples.iter().zip(rows).enumerate() {
            assert_eq!(s.id, k as u64 + 1);
            assert_eq!(s.path, dir.join(folder).join(f));
            assert_eq!(s.label, *c as usize - 1);
            assert_eq!(s.bbox, Some(corners(*b)));
            assert_eq!(s.crop_bottom, 0);
        }
    }
    // Without cars_meta.mat the classes are numbered up to the largest.
    std::fs::remove_file(dir.join("devkit/cars_meta.mat")).unwrap();
    let ds = cars::open(&dir).unwrap();
    assert_eq!(ds.class_names, ["class_1", "class_2", "class_3"]);
}

#[test]
fn missing_image_is_a_problem_and_corrupt_one_is_skipped_by_the_loader() {
    let dir = scratch("data_cars", "bad_files");
    write_tree(&dir, &TRAIN);
    std::fs::remove_file(dir.join("cars_train/00002.jpg")).unwrap();
    std::fs::write(dir.join("cars_test/00001.jpg"), b"").unwrap();
    let ds = cars::open(&dir).unwrap();
    assert_eq!(ds.problems.len(), 1);
    assert_eq!(ds.problems[0].path, dir.join("cars_train/00002.jpg"));
    let skipped: Vec<usize> = loader_skips(ds.samples.clone()).into_iter().collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(ds.samples[skipped[0]].path, dir.join("cars_test/00001.jpg"));
}

#[test]
fn bad_annotations_name_file_and_element() {
    let train_path = |dir: &Path| dir.join("devkit/cars_train_annos.mat");
    let case = |name: &str, rows: &[(&str, u8, [f64; 4])], words: &[&str]| {
        let dir = scratch("data_cars", name);
        write_tree(&dir, rows);
        expect_file_error(cars::open(&dir), &train_path(&dir), words);
    };
    let mut rows = TRAIN;
    rows[2].1 = 4;
    case("class_high", &rows, &["annotations(3)", "class 4", "1..=3"]);
    let mut rows = TRAIN;
    rows[1].1 = 0;
    case("class_zero", &rows, &["annotations(2)", "class 0"]);
    let mut rows = TRAIN;
    rows[3].2 = [20.0, 6.0, 5.0, 18.0];
    case("box_swapped", &rows, &["annotations(4)", "out of range"]);
    let mut rows = TRAIN;
    rows[3].2 = [1.0, 1.0, 32.0, 40.0];
    case("box_far", &rows, &["annotations(4)", "outside"]);
    let mut rows = TRAIN;
    rows[3].0 = "00001.jpg";
    case(
        "fname_twice",
        &rows,
        &["annotations(4).fname", "annotations(1)"],
    );

    // A missing field, a text where a number belongs, a file that is not a MAT-file, a
    // truncated one, a missing variable.
    let dir = scratch("data_cars", "fields");
    write_tree(&dir, &TRAIN);
    let p = train_path(&dir);
    let no_class = Mat::Struct(
        vec!["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname"],
        vec![[1.0, 1.0, 5.0, 5.0]
            .map(|x| Mat::Double(vec![x], [1, 1]))
            .into_iter()
            .chain([Mat::Text("00001.jpg".into())])
            .collect()],
    );
    write_mat(&p, &[("annotations", no_class)], true);
    expect_file_error(
        cars::open(&dir),
        &p,
        &["annotations(1).class", "missing field"],
    );
    let text_box = Mat::Struct(
        FIELDS.to_vec(),
        vec![vec![
            Mat::Text("1".into()),
            Mat::Double(vec![1.0], [1, 1]),
            Mat::Double(vec![5.0], [1, 1]),
            Mat::Double(vec![5.0], [1, 1]),
            Mat::U8(1),
            Mat::Text("00001.jpg".into()),
        ]],
    );
    write_mat(&p, &[("annotations", text_box)], false);
    expect_file_error(
        cars::open(&dir),
        &p,
        &["annotations(1).bbox_x1", "not a single number"],
    );
    write_mat(&p, &[("labels", Mat::Double(vec![1.0], [1, 1]))], true);
    expect_file_error(
        cars::open(&dir),
        &p,
        &["no variable `annotations`", "labels"],
    );
    std::fs::write(&p, b"hello").unwrap();
    expect_file_error(cars::open(&dir), &p, &["cannot parse MAT-file"]);
    write_mat(&p, &[("annotations", annotations(&TRAIN, true))], true);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 40]).unwrap();
    expect_file_error(cars::open(&dir), &p, &["cannot parse MAT-file"]);
}

/// Where `needle` starts in `bytes`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// MAT-files that made matrw panic, reserve gigabytes or inflate without end (found by
/// tests/fuzz) are refused naming the file, before or around matrw.
#[test]
fn corrupt_mat_files_are_refused_not_trusted() {
    let dir = scratch("data_cars", "corrupt_mat");
    write_tree(&dir, &TRAIN);
    let meta = dir.join("devkit/cars_meta.mat");
    let names = || {
        Mat::Cell(
            NAMES.iter().map(|n| Mat::Text(n.to_string())).collect(),
            [1, 3],
        )
    };
    let plain = mat_bytes(&[("class_names", names())], false);

    // A byte of a class name that is not UTF-8: matrw unwraps the conversion and panics; the
    // panic is contained.
    let mut bad_utf8 = plain.clone();
    bad_utf8[find(&plain, b"Acura") + 2] = 0xff;
    std::fs::write(&meta, &bad_utf8).unwrap();
    expect_file_error(
        cars::open(&dir),
        &meta,
        &["cannot parse MAT-file", "the MAT reader gave up"],
    );

    // A name's data element declaring 3 GB: matrw would reserve them.
    let mut huge = plain.clone();
    let size_at = find(&plain, b"Acura") - 4;
    huge[size_at..size_at + 4].copy_from_slice(&3_054_174_214u32.to_le_bytes());
    std::fs::write(&meta, &huge).unwrap();
    expect_file_error(
        cars::open(&dir),
        &meta,
        &["a data element declares 3054174214 bytes where"],
    );

    // A cell array claiming 2^30 elements in a few hundred bytes.
    let mut many = plain.clone();
    let dims_at = find(&plain, &[5, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0]) + 12;
    many[dims_at..dims_at + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    std::fs::write(&meta, &many).unwrap();
    expect_file_error(
        cars::open(&dir),
        &meta,
        &["1073741824 elements declared in"],
    );

    // A compressed variable cut short (its size too): matrw unwraps the inflation and panics.
    let mut cut = mat_bytes(&[("class_names", names())], true);
    cut.truncate(cut.len() - 10);
    let size = (cut.len() - 136) as u32;
    cut[132..136].copy_from_slice(&size.to_le_bytes());
    std::fs::write(&meta, &cut).unwrap();
    expect_file_error(cars::open(&dir), &meta, &["does not inflate"]);

    // A compressed variable of 65 MiB of zeros (65 KB in the file): inflated no further than
    // 64 MiB.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    for _ in 0..65 {
        std::io::Write::write_all(&mut z, &[0u8; 1 << 20]).unwrap();
    }
    let z = z.finish().unwrap();
    let mut bomb = plain[..128].to_vec();
    bomb.extend(15u32.to_le_bytes());
    bomb.extend((z.len() as u32).to_le_bytes());
    bomb.extend(z);
    std::fs::write(&meta, &bomb).unwrap();
    expect_file_error(
        cars::open(&dir),
        &meta,
        &["a compressed variable inflates to more than 67108864 bytes"],
    );
}
