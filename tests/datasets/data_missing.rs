//! A dataset whose listed images are missing: the files are left out, and the log names the
//! first 20 of them and counts them all, in `c2f train` and in `c2f eval`.

use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use std::path::PathBuf;
use std::process::Command;

use c2f_train::data::spec::{DataSpec, MISSING_SHOWN};
use c2f_train::data::synthetic::{write_cub_layout, SyntheticConfig};

use crate::common::datasets::scratch;
use crate::common::train::TINY_TRAIN;

#[test]
fn missing_files_are_counted_and_the_first_twenty_named() {
    let dir = scratch("data_missing", "cub");
    let root = dir.join("cub");
    let cfg = SyntheticConfig {
        classes: 2,
        size: 75,
        ..Default::default()
    };
    write_cub_layout(&root, &cfg, 24, 6).unwrap();
    // Every image but the first four of each split, in list (id) order.
    let listed: Vec<PathBuf> = std::fs::read_to_string(root.join("images.txt"))
        .unwrap()
        .lines()
        .map(|l| root.join("images").join(l.split_once(' ').unwrap().1))
        .collect();
    let removed: Vec<&PathBuf> = listed
        .iter()
        .enumerate()
        .filter(|&(i, _)| !(i < 4 || (24..28).contains(&i)))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(removed.len(), 22);
    for p in &removed {
        std::fs::remove_file(p).unwrap();
    }
    let spec = DataSpec::Files {
        dataset: "cub".into(),
        root: root.clone(),
        attributes: None,
    };
    let opened = spec.open(75, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!((opened.train.len(), opened.test.len()), (4, 4));
    assert!(opened.description.ends_with("22 listed files missing"));
    let mut expected =
        format!("22 listed image files are missing and left out, the first {MISSING_SHOWN}:");
    for p in &removed[..MISSING_SHOWN] {
        expected += &format!("\n  {}", p.display());
    }
    let report = opened.missing_report().unwrap();
    assert_eq!(report, expected);
    assert!(!report.contains(&removed[MISSING_SHOWN].display().to_string()));

    // `c2f train` on the folder, then `c2f eval` on its checkpoint: each says it on stderr.
    let c2f = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
    };
    let run = dir.join("run");
    let (root, run_dir) = (root.to_str().unwrap(), run.to_str().unwrap());
    let files = [
        "--dataset",
        "cub",
        "--data-root",
        root,
        "--models",
        "baseline",
    ];
    c2f(&[&TINY_TRAIN[..], &files, &["--run-dir", run_dir]].concat());
    let checkpoint = run.join("baseline/checkpoint.safetensors");
    c2f(&["eval", checkpoint.to_str().unwrap(), "--device", "cpu"]);

    // Every file there: no report.
    let whole = dir.join("whole");
    write_cub_layout(&whole, &cfg, 2, 2).unwrap();
    let spec = DataSpec::Files {
        dataset: "cub".into(),
        root: whole,
        attributes: None,
    };
    assert_eq!(
        spec.open(75, DEFAULT_MAX_PIXELS).unwrap().missing_report(),
        None
    );
}
