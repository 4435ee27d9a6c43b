//! The datasets' annotation files: CUB's and Aircraft's text, Stanford Cars' and Dogs' MAT-files
//! and Dogs' VOC XML, iNaturalist's JSON, CelebA's text. Each target's seeds are a small valid
//! tree (and, where a file is optional, a second tree without it); every input replaces one file.

use std::path::Path;

use crate::common::datasets::{mat_bytes, pattern, write_jpeg, Mat};
use crate::harness::{fuzz_files, scratch, FileSeed};
use c2f_train::data::{aircraft, cars, celeba, cub, dogs, inat};

/// Writes an 8×8 JPEG at each of `files` under `root`.
fn images(root: &Path, files: &[&str]) {
    for (k, f) in files.iter().enumerate() {
        write_jpeg(&root.join(f), 8, 8, pattern(k as u32));
    }
}

#[test]
fn cub_text_files() {
    let dir = scratch("cub");
    let mut seeds = Vec::new();
    for with_classes in [true, false] {
        let root = dir.join(if with_classes { "all" } else { "no_classes" });
        images(
            &root,
            &[
                "images/001.A/a1.jpg",
                "images/002.B/b1.jpg",
                "images/001.A/a2.jpg",
            ],
        );
        seeds.extend([
            FileSeed::new(
                &root,
                "images.txt",
                "1 001.A/a1.jpg\n2 002.B/b1.jpg\n3 001.A/a2.jpg\n",
            ),
            FileSeed::new(&root, "image_class_labels.txt", "1 1\n2 2\n3 1\n"),
            FileSeed::new(&root, "train_test_split.txt", "3 0\n1 1\n2 0\n"),
            FileSeed::new(
                &root,
                "bounding_boxes.txt",
                "1 1.0 2.0 5.0 4.0\n2 0 0 8 8\n3 2.5 1.5 3.0 3.0\n",
            ),
        ]);
        if with_classes {
            seeds.push(FileSeed::new(&root, "classes.txt", "1 001.A\n2 002.B\n"));
        }
    }
    fuzz_files("cub", 2000, &seeds, cub::open);
}

#[test]
fn aircraft_text_files() {
    let root = scratch("aircraft");
    // 16×32: the 20-row banner leaves 12.
    for (k, id) in ["1000001", "1000002", "1000003"].iter().enumerate() {
        write_jpeg(
            &root.join(format!("data/images/{id}.jpg")),
            16,
            32,
            pattern(k as u32),
        );
    }
    let seeds = [
        FileSeed::new(
            &root,
            "data/variants.txt",
            "Boeing 707\nF/A-18\nCessna 172\n",
        ),
        FileSeed::new(
            &root,
            "data/images_variant_trainval.txt",
            "1000001 Boeing 707\n1000002 F/A-18\n",
        ),
        FileSeed::new(
            &root,
            "data/images_variant_test.txt",
            "1000003 Cessna 172\n",
        ),
        FileSeed::new(
            &root,
            "data/images_box.txt",
            "1000001 1 1 16 12\n1000002 2 3 10 11\n1000003 4 4 8 8\n",
        ),
    ];
    fuzz_files("aircraft", 2000, &seeds, aircraft::open);
}

/// A Stanford Cars `annotations` struct array of `(fname, class, x1 y1 x2 y2)`.
fn cars_annotations(rows: &[(&str, f64, [f64; 4])]) -> Mat {
    Mat::Struct(
        vec!["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"],
        rows.iter()
            .map(|(f, c, b)| {
                let mut v: Vec<Mat> = b.iter().map(|&x| Mat::Double(vec![x], [1, 1])).collect();
                v.push(Mat::Double(vec![*c], [1, 1]));
                v.push(Mat::Text(f.to_string()));
                v
            })
            .collect(),
    )
}

#[test]
fn cars_mat_files() {
    let dir = scratch("cars");
    let mut seeds = Vec::new();
    for with_meta in [true, false] {
        let root = dir.join(if with_meta { "all" } else { "no_meta" });
        images(
            &root,
            &[
                "cars_train/00001.jpg",
                "cars_train/00002.jpg",
                "cars_test/00001.jpg",
            ],
        );
        let train = cars_annotations(&[
            ("00001.jpg", 2.0, [1.0, 1.0, 8.0, 8.0]),
            ("00002.jpg", 1.0, [2.0, 3.0, 6.0, 7.0]),
        ]);
        let test = cars_annotations(&[("00001.jpg", 1.0, [1.0, 2.0, 5.0, 5.0])]);
        // One file uncompressed (mutations reach the structure), one compressed as MATLAB
        // writes it (they reach the zlib stream).
        seeds.extend([
            FileSeed::new(
                &root,
                "devkit/cars_train_annos.mat",
                mat_bytes(&[("annotations", train)], false),
            ),
            FileSeed::new(
                &root,
                "devkit/cars_test_annos_withlabels.mat",
                mat_bytes(&[("annotations", test)], true),
            ),
        ]);
        if with_meta {
            let names = Mat::Cell(
                vec![Mat::Text("Hummer".into()), Mat::Text("Acura".into())],
                [1, 2],
            );
            seeds.push(FileSeed::new(
                &root,
                "devkit/cars_meta.mat",
                mat_bytes(&[("class_names", names)], false),
            ));
        }
    }
    fuzz_files("cars", 2000, &seeds, cars::open);
}

/// A Stanford Dogs list file: `file_list` and `labels`.
fn dogs_list(files: &[&str], labels: &[f64], compress: bool) -> Vec<u8> {
    let cells = files.iter().map(|f| Mat::Text(f.to_string())).collect();
    mat_bytes(
        &[
            ("file_list", Mat::Cell(cells, [files.len(), 1])),
            ("labels", Mat::Double(labels.to_vec(), [labels.len(), 1])),
        ],
        compress,
    )
}

/// A VOC annotation with one `object/bndbox` per box.
fn voc(boxes: &[[u32; 4]]) -> String {
    let objects: String = boxes
        .iter()
        .map(|[x0, y0, x1, y1]| {
            format!(
                "<object><name>dog</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>\
                 <xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            )
        })
        .collect();
    format!("<annotation><size><width>8</width><height>8</height></size>{objects}</annotation>")
}

#[test]
fn dogs_mat_and_xml_files() {
    let root = scratch("dogs");
    images(
        &root,
        &[
            "Images/n01-A/a1.jpg",
            "Images/n02-B/b1.jpg",
            "Images/n01-A/a2.jpg",
        ],
    );
    let seeds = [
        FileSeed::new(
            &root,
            "train_list.mat",
            dogs_list(&["n01-A/a1.jpg", "n02-B/b1.jpg"], &[1.0, 2.0], false),
        ),
        FileSeed::new(
            &root,
            "test_list.mat",
            dogs_list(&["n01-A/a2.jpg"], &[1.0], true),
        ),
        FileSeed::new(&root, "Annotation/n01-A/a1", voc(&[[1, 1, 8, 8]])),
        FileSeed::new(
            &root,
            "Annotation/n02-B/b1",
            voc(&[[2, 2, 4, 5], [3, 1, 7, 6]]),
        ),
        FileSeed::new(&root, "Annotation/n01-A/a2", voc(&[[1, 2, 3, 4]])),
    ];
    fuzz_files("dogs", 2000, &seeds, dogs::open);
}

#[test]
fn inat_json_files() {
    let root = scratch("inat");
    images(
        &root,
        &[
            "train_val_images/Aves/Sp1/a.jpg",
            "train_val_images/Aves/Sp2/b.jpg",
            "train_val_images/Aves/Sp1/c.jpg",
        ],
    );
    let categories = r#"[{"id": 7, "name": "Sp1", "supercategory": "Aves"},
        {"id": 3, "name": "Sp2", "supercategory": "Aves"}]"#;
    let seeds = [
        FileSeed::new(
            &root,
            "train2017.json",
            format!(
                r#"{{"images": [{{"id": 10, "file_name": "train_val_images/Aves/Sp1/a.jpg",
                "width": 8, "height": 8}}, {{"id": 4, "file_name":
                "train_val_images/Aves/Sp2/b.jpg"}}], "annotations": [{{"id": 1, "image_id": 4,
                "category_id": 3}}, {{"id": 2, "image_id": 10, "category_id": 7}}],
                "categories": {categories}}}"#
            ),
        ),
        FileSeed::new(
            &root,
            "val2017.json",
            format!(
                r#"{{"images": [{{"id": 11, "file_name": "train_val_images/Aves/Sp1/c.jpg"}}],
                "annotations": [{{"image_id": 11, "category_id": 7}}],
                "categories": {categories}}}"#
            ),
        ),
    ];
    fuzz_files("inat", 2000, &seeds, inat::open);
}

#[test]
fn celeba_text_files() {
    let root = scratch("celeba");
    let files = ["000001.jpg", "000002.jpg", "000003.jpg"];
    for (k, f) in files.iter().enumerate() {
        write_jpeg(
            &root.join("img_align_celeba").join(f),
            8,
            8,
            pattern(k as u32),
        );
    }
    let seeds = [
        FileSeed::new(
            &root,
            "list_attr_celeba.txt",
            "3\nMale Smiling Young\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n\
             000003.jpg  1  1 -1\n",
        ),
        FileSeed::new(
            &root,
            "list_eval_partition.txt",
            "000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n",
        ),
    ];
    fuzz_files("celeba", 2000, &seeds, |root| celeba::open(root, None));
}
