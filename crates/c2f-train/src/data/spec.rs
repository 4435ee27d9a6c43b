//! Which dataset a run trains on, as a value the checkpoint keeps, so that `c2f eval` and
//! `c2f predict` find the same data and class names again.

use std::path::PathBuf;
use std::sync::Arc;

use c2f_kernels::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::task::Task;

use super::celeba::{self, Partition};
use super::loader::{FileSource, ImageSource};
use super::synthetic::{class_name, Split, SyntheticConfig, SyntheticSet};
use super::{open_dataset, DatasetKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    /// The built-in synthetic set, rendered at the run's input size.
    Synthetic {
        classes: usize,
        train_images: usize,
        test_images: usize,
        seed: u64,
        object_scale: (f32, f32),
        clutter: f32,
    },
    /// A dataset on disk, by [`DatasetKind::name`], or `celeba`.
    Files {
        dataset: String,
        root: PathBuf,
        /// CelebA: the attributes to predict, in this order (`None`: all 40).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attributes: Option<Vec<String>>,
    },
}

/// The name `--dataset` takes for CelebA's attributes (multi-label, so not a [`DatasetKind`]).
pub const CELEBA: &str = "celeba";

/// An opened dataset: both splits, the class names, and the spec it was opened from.
#[derive(Clone)]
pub struct OpenedData {
    pub spec: DataSpec,
    pub train: Arc<dyn ImageSource>,
    pub test: Arc<dyn ImageSource>,
    /// The classes' names, or the attributes' for [`Task::Attributes`].
    pub class_names: Vec<String>,
    pub task: Task,
    /// A line for the log: what was read, and how many files were left out.
    pub description: String,
    /// The listed images whose files are missing (left out of the splits), in list order.
    pub missing: Vec<PathBuf>,
}

/// How many missing files [`OpenedData::missing_report`] names; the rest it counts.
pub const MISSING_SHOWN: usize = 20;

impl OpenedData {
    /// The missing files for the log: how many, and the first [`MISSING_SHOWN`] paths, one a
    /// line; `None` when every listed file is there.
    pub fn missing_report(&self) -> Option<String> {
        let n = self.missing.len();
        if n == 0 {
            return None;
        }
        let mut report = format!("{n} listed image files are missing and left out");
        if n > MISSING_SHOWN {
            report += &format!(", the first {MISSING_SHOWN}");
        }
        report.push(':');
        for path in self.missing.iter().take(MISSING_SHOWN) {
            report += &format!("\n  {}", path.display());
        }
        Some(report)
    }
}

impl DataSpec {
    /// `c2f train`'s default data: the synthetic set's first 5 classes, 1,200 training and 400
    /// test images of objects 0.6-0.9 of the image side in half clutter, drawn from `seed`.
    pub fn synthetic_demo(seed: u64) -> DataSpec {
        DataSpec::Synthetic {
            classes: 5,
            train_images: 1200,
            test_images: 400,
            seed,
            object_scale: (0.6, 0.9),
            clutter: 0.5,
        }
    }

    /// Opens the data for an input side of `input_size`; images on disk above `max_pixels`
    /// pixels are refused from their headers (and skipped by the loader).
    pub fn open(&self, input_size: usize, max_pixels: u64) -> Result<OpenedData> {
        match self {
            DataSpec::Synthetic {
                classes,
                train_images,
                test_images,
                seed,
                object_scale,
                clutter,
            } => {
                let config = SyntheticConfig {
                    classes: *classes,
                    size: u32::try_from(input_size)
                        .map_err(|_| Error::config("input_size", input_size, "too large"))?,
                    seed: *seed,
                    object_scale: *object_scale,
                    clutter: *clutter,
                };
                Ok(OpenedData {
                    spec: self.clone(),
                    train: Arc::new(SyntheticSet::new(
                        config.clone(),
                        Split::Train,
                        *train_images,
                    )?),
                    test: Arc::new(SyntheticSet::new(config, Split::Test, *test_images)?),
                    class_names: (0..*classes).map(|c| class_name(c).to_string()).collect(),
                    task: Task::Classes,
                    description: format!(
                        "synthetic fine-grained set: {classes} classes, {train_images} train / \
                         {test_images} test images"
                    ),
                    missing: Vec::new(),
                })
            }
            DataSpec::Files {
                dataset,
                root,
                attributes,
            } if dataset == CELEBA => {
                let data = celeba::open(root, attributes.as_deref())?;
                let split = |partition| -> Result<Arc<dyn ImageSource>> {
                    let (samples, attributes) = data
                        .partition(partition)
                        .into_iter()
                        .map(|s| (s.sample, s.attributes))
                        .unzip();
                    let source = FileSource::with_attributes(samples, attributes)?;
                    Ok(Arc::new(source.with_max_pixels(max_pixels)))
                };
                let (train, test) = (split(Partition::Train)?, split(Partition::Test)?);
                let description = format!(
                    "celeba at {}: {} attributes, {} train / {} test images, {} listed files \
                     missing",
                    root.display(),
                    data.num_attributes(),
                    train.len(),
                    test.len(),
                    data.problems.len()
                );
                Ok(OpenedData {
                    spec: self.clone(),
                    train,
                    test,
                    class_names: data.attribute_names,
                    task: Task::Attributes,
                    description,
                    missing: data.problems.into_iter().map(|p| p.path).collect(),
                })
            }
            DataSpec::Files {
                dataset,
                root,
                attributes,
            } => {
                if attributes.is_some() {
                    return Err(Error::config(
                        "--attributes",
                        attributes.as_deref().unwrap_or_default().join(","),
                        format!("is for --dataset {CELEBA}; {dataset} has classes"),
                    ));
                }
                let kind: DatasetKind = dataset.parse().map_err(|e: String| {
                    Error::config(
                        "--dataset",
                        dataset,
                        format!("{e}; `{CELEBA}` for CelebA's attributes"),
                    )
                })?;
                let data = open_dataset(kind, root)?;
                let (train, test) = (data.train(), data.test());
                let description = format!(
                    "{} at {}: {} classes, {} train / {} test images, {} listed files missing",
                    kind.name(),
                    root.display(),
                    data.num_classes(),
                    train.len(),
                    test.len(),
                    data.problems.len()
                );
                Ok(OpenedData {
                    spec: self.clone(),
                    train: Arc::new(FileSource::new(train).with_max_pixels(max_pixels)),
                    test: Arc::new(FileSource::new(test).with_max_pixels(max_pixels)),
                    class_names: data.class_names,
                    task: Task::Classes,
                    description,
                    missing: data.problems.into_iter().map(|p| p.path).collect(),
                })
            }
        }
    }
}
