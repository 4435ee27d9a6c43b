//! Multi-label training (CelebA's attributes, the paper's Table 9) end to end on a small tree
//! whose attributes can be seen in the pixels: both models train with a sigmoid binary
//! cross-entropy head and report each attribute's accuracy, in the result, the metrics and the
//! checkpoint; the baseline learns the attributes; `--attributes` on a single-label dataset is
//! refused.

use std::path::Path;

use crate::common::celeba::{write_faces, ATTRIBUTES};
use crate::common::datasets::scratch;
use c2f_inception::cpu::CpuBackend;
use c2f_train::checkpoint;
use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use c2f_train::data::spec::{DataSpec, OpenedData, CELEBA};
use c2f_train::model::Task;
use c2f_train::train::{
    checkpoint_path, train_baseline, train_coarse2fine, Evaluation, RunOptions, TrainConfig,
};

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 4,
        input_size: 75,
        width: 0.125,
        classes: ATTRIBUTES.len(),
        task: Task::Attributes,
        maps: 2,
        lr: 0.01,
        seed: 1,
        ..TrainConfig::default()
    }
}

/// The opened tree and its test images' attributes as written.
fn open_faces(dir: &Path, train: usize, test: usize) -> (OpenedData, Vec<[bool; 2]>) {
    let truth = write_faces(dir, train, test);
    let spec = DataSpec::Files {
        dataset: CELEBA.into(),
        root: dir.to_path_buf(),
        attributes: None,
    };
    (spec.open(75, DEFAULT_MAX_PIXELS).unwrap(), truth)
}

fn is_multiple_of(v: f64, step: f64) -> bool {
    let k = (v / step).round();
    (v - k * step).abs() < 1e-12 && (0.0..=1.0).contains(&v)
}

#[test]
fn both_models_report_each_attribute() {
    let dir = scratch("train_attributes", "both");
    let (data, truth) = open_faces(&dir.join("celeba"), 8, 6);
    assert_eq!(data.task, Task::Attributes);
    assert_eq!(data.class_names, ATTRIBUTES);
    assert_eq!((data.train.len(), data.test.len()), (8, 6));
    for (i, want) in truth.iter().enumerate() {
        assert_eq!(data.test.attributes(i), want, "test image {i}");
    }
    let cfg = config(2);
    type Trainer = fn(
        &mut CpuBackend<f32>,
        &TrainConfig,
        &RunOptions,
        &OpenedData,
        Option<&mut c2f_train::train::DataParallel<'_, CpuBackend<f32>>>,
    ) -> c2f_kernels::Result<Option<Evaluation>>;
    let trainers: [(&str, Trainer, bool); 2] = [
        ("coarse2fine", train_coarse2fine, true),
        ("baseline", train_baseline, false),
    ];
    for (name, trainer, two_heads) in trainers {
        let run = RunOptions::new(dir.join(name));
        let e = trainer(&mut CpuBackend::<f32>::new(), &cfg, &run, &data, None)
            .unwrap()
            .unwrap();
        assert_eq!(e.per_attribute.len(), ATTRIBUTES.len(), "{name}");
        // Each attribute's accuracy counts the 6 test images; the model's is their mean.
        let mean = e.per_attribute.iter().map(|a| a.coarse).sum::<f64>() / 2.0;
        assert!((e.accuracy.coarse - mean).abs() < 1e-12, "{name}: {e:?}");
        for a in &e.per_attribute {
            assert!(is_multiple_of(a.coarse, 1.0 / 6.0), "{name}: {a:?}");
            assert_eq!(a.fine.is_some(), two_heads, "{name}: {a:?}");
            assert_eq!(a.average.is_some(), two_heads, "{name}: {a:?}");
        }
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.join(name).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        assert_eq!(lines.len(), 2, "{name}");
        let last = &lines[1];
        for (attribute, acc) in ATTRIBUTES.iter().zip(&e.per_attribute) {
            let logged = last["test_attributes"][attribute]["coarse"].as_f64();
            assert_eq!(logged, Some(acc.coarse), "{name}: {last}");
        }
        // Training accuracy counts every (image, attribute) answer: 8 images × 2.
        let train_acc = last["train_acc"].as_f64().unwrap();
        assert!(is_multiple_of(train_acc, 1.0 / 16.0), "{name}: {train_acc}");
        assert_eq!(last["loss_center_coarse"].as_f64().unwrap_or(0.0), 0.0);

        let meta = checkpoint::read_meta(&checkpoint_path(&dir.join(name))).unwrap();
        assert_eq!(meta.config.task, Task::Attributes);
        assert_eq!(meta.class_names, ATTRIBUTES);
        assert_eq!(meta.data, data.spec);
    }
}

#[test]
fn baseline_learns_attributes_seen_in_the_pixels() {
    let dir = scratch("train_attributes", "learns");
    let (data, _) = open_faces(&dir.join("celeba"), 16, 8);
    let cfg = TrainConfig {
        lr: 0.03,
        ..config(16)
    };
    let run = RunOptions {
        eval_every: 0,
        ..RunOptions::new(dir.join("run"))
    };
    let e = train_baseline(&mut CpuBackend::<f32>::new(), &cfg, &run, &data, None)
        .unwrap()
        .unwrap();
    // Chance is 50% per attribute; both are plain to see.
    for (name, a) in ATTRIBUTES.iter().zip(&e.per_attribute) {
        assert!(a.coarse >= 0.75, "{name}: {e:?}");
    }
}

#[test]
fn attributes_on_a_single_label_dataset_are_refused() {
    let dir = scratch("train_attributes", "refused");
    let spec = DataSpec::Files {
        dataset: "cub".into(),
        root: dir.clone(),
        attributes: Some(vec!["Smiling".into()]),
    };
    let err = spec.open(75, DEFAULT_MAX_PIXELS).err().expect("refused");
    assert!(
        err.to_string()
            .contains("--attributes Smiling: is for --dataset celeba"),
        "{err}"
    );
    write_faces(&dir, 4, 2);
    let spec = DataSpec::Files {
        dataset: CELEBA.into(),
        root: dir.clone(),
        attributes: Some(vec!["Red".into(), "Smiling".into()]),
    };
    let err = spec.open(75, DEFAULT_MAX_PIXELS).err().expect("refused");
    assert!(err.to_string().contains("no attribute `Smiling`"), "{err}");
}
