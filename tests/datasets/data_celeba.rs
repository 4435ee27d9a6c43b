//! The CelebA attributes reader on a fixture tree written here: ±1 values to booleans, a chosen
//! subset of attributes in the asked order, partitions joined by file name, a missing and a
//! corrupt image, and errors naming file and line.

use std::path::Path;

use crate::common::datasets::{expect_file_error, loader_skips, pattern, scratch, write_jpeg};
use c2f_train::data::celeba::{self, Partition};

const NAMES: [&str; 4] = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Bald", "Smiling"];
/// `(file, values, partition)`.
const ROWS: [(&str, [i8; 4], u8); 5] = [
    ("000001.jpg", [-1, 1, 1, -1], 0),
    ("000002.jpg", [1, -1, -1, -1], 2),
    ("000003.jpg", [-1, -1, 1, 1], 0),
    ("000004.jpg", [1, 1, -1, 1], 1),
    ("000005.jpg", [-1, 1, -1, -1], 0),
];

fn write_tree(dir: &Path) {
    let mut attrs = format!("{}\n{}\n", ROWS.len(), NAMES.join(" "));
    for (k, (f, v, _)) in ROWS.iter().enumerate() {
        write_jpeg(
            &dir.join("img_align_celeba").join(f),
            16,
            20,
            pattern(k as u32),
        );
        // The real file pads the values with two spaces.
        let values: Vec<String> = v.iter().map(|x| format!("{x:>2}")).collect();
        attrs += &format!("{f} {}\n", values.join(" "));
    }
    std::fs::write(dir.join("list_attr_celeba.txt"), attrs).unwrap();
    // Partitions in another order.
    let parts: String = ROWS
        .iter()
        .rev()
        .map(|(f, _, p)| format!("{f} {p}\n"))
        .collect();
    std::fs::write(dir.join("list_eval_partition.txt"), parts).unwrap();
}

#[test]
fn reads_all_or_chosen_attributes_and_partitions() {
    let dir = scratch("data_celeba", "read");
    write_tree(&dir);
    let ds = celeba::open(&dir, None).unwrap();
    assert!(ds.problems.is_empty());
    assert_eq!(ds.attribute_names, NAMES);
    assert_eq!(ds.samples.len(), 5);
    for (k, (s, (f, v, p))) in ds.samples.iter().zip(&ROWS).enumerate() {
        assert_eq!(s.sample.id, k as u64 + 1);
        assert_eq!(s.sample.path, dir.join("img_align_celeba").join(f));
        assert_eq!(s.sample.label, 0);
        assert_eq!(s.attributes, v.map(|x| x == 1));
        let want = [Partition::Train, Partition::Val, Partition::Test][*p as usize];
        assert_eq!(s.partition, want);
        assert_eq!(s.sample.is_train, want == Partition::Train);
    }
    assert_eq!(ds.partition(Partition::Train).len(), 3);
    assert_eq!(ds.partition(Partition::Val)[0].sample.id, 4);

    let chosen = ["Smiling".to_string(), "Bald".to_string()];
    let ds = celeba::open(&dir, Some(&chosen)).unwrap();
    assert_eq!(ds.attribute_names, chosen);
    for (s, (_, v, _)) in ds.samples.iter().zip(&ROWS) {
        assert_eq!(s.attributes, vec![v[3] == 1, v[2] == 1]);
    }
    let attr = dir.join("list_attr_celeba.txt");
    expect_file_error(
        celeba::open(&dir, Some(&["Bald".to_string(), "Hat".to_string()])),
        &attr,
        &["line 2:", "`Hat`", "Smiling"],
    );
}

#[test]
fn missing_image_is_a_problem_and_corrupt_one_is_skipped_by_the_loader() {
    let dir = scratch("data_celeba", "bad_files");
    write_tree(&dir);
    let images = dir.join("img_align_celeba");
    std::fs::remove_file(images.join("000002.jpg")).unwrap();
    std::fs::write(images.join("000005.jpg"), b"GIF89a").unwrap();
    let ds = celeba::open(&dir, None).unwrap();
    assert_eq!(ds.problems.len(), 1);
    assert_eq!(ds.problems[0].path, images.join("000002.jpg"));
    // The attributes stay with their images after the gap.
    assert_eq!(ds.samples[1].sample.id, 3);
    assert_eq!(ds.samples[1].attributes, ROWS[2].1.map(|x| x == 1));
    let samples = ds.samples.iter().map(|s| s.sample.clone()).collect();
    let skipped: Vec<usize> = loader_skips(samples).into_iter().collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        ds.samples[skipped[0]].sample.path,
        images.join("000005.jpg")
    );
}

#[test]
fn bad_lines_name_file_and_line() {
    let case = |name: &str, file: &str, edit: &dyn Fn(&str) -> String, words: &[&str]| {
        let dir = scratch("data_celeba", name);
        write_tree(&dir);
        let p = dir.join(file);
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, edit(&t)).unwrap();
        expect_file_error(celeba::open(&dir, None), &p, words);
    };
    let attr = "list_attr_celeba.txt";
    let set = |n: usize, new: &'static str| {
        move |t: &str| {
            let mut l: Vec<&str> = t.lines().collect();
            l[n - 1] = new;
            l.join("\n")
        }
    };
    case(
        "count",
        attr,
        &set(1, "6"),
        &["line 1:", "6 images", "5 rows"],
    );
    case(
        "value",
        attr,
        &set(5, "000003.jpg -1 -1 0 1"),
        &["line 5:", "Bald", "`0`"],
    );
    case(
        "short",
        attr,
        &set(5, "000003.jpg -1 -1 1"),
        &["line 5:", "4 values, found 3"],
    );
    case(
        "twice",
        attr,
        &set(6, "000001.jpg 1 1 1 1"),
        &["line 6:", "line 3"],
    );
    let part = "list_eval_partition.txt";
    case(
        "partition",
        part,
        &set(2, "000004.jpg 3"),
        &["line 2:", "000004.jpg 3"],
    );
    case(
        "unlisted",
        part,
        &|t| format!("{t}000009.jpg 0\n"),
        &["line 6:", "000009.jpg"],
    );
    // A listed file without a partition: named on its attribute line.
    let dir = scratch("data_celeba", "no_partition");
    write_tree(&dir);
    let p = dir.join(part);
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        t.lines()
            .filter(|l| !l.starts_with("000003"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    expect_file_error(
        celeba::open(&dir, None),
        &dir.join(attr),
        &["line 5:", "list_eval_partition.txt"],
    );
}
