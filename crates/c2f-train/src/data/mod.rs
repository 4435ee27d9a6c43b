//! Datasets and the input pipeline.
//!
//! - [`synthetic`]: the built-in synthetic fine-grained set ("beetles" that differ only in their
//!   spot pattern), deterministic from a seed, and its writer in the CUB-200-2011 layout.
//! - Readers, each validating its files (errors name the file and the line or key) and returning
//!   a [`Dataset`]; [`open_dataset`] picks one by [`DatasetKind`]:
//!   - [`cub`]: CUB-200-2011 (ids joined across the text files);
//!   - [`aircraft`]: FGVC-Aircraft, variant level (the 20-pixel banner cut off at load time);
//!   - [`cars`]: Stanford Cars (MATLAB annotation files);
//!   - [`dogs`]: Stanford Dogs (MATLAB lists, PASCAL-VOC XML boxes);
//!   - [`inat`]: iNaturalist 2017 (COCO-style JSON, joined by image id).
//! - [`celeba`]: CelebA's 40 binary attributes (multi-label: its own sample type, opened for
//!   training by [`spec::DataSpec`] as `celeba`, not a
//!   [`Dataset`]).
//! - `files` (private): what the readers share (numbered lines, errors, the image-file pass).
//! - [`image_io`]: JPEG/PNG decoding to RGB, EXIF orientation honoured.
//! - [`transform`]: train/test transforms and ImageNet normalisation to an f32 CHW tensor, with the
//!   object box carried along.
//! - [`loader`]: the multi-threaded prefetching batch loader over an [`loader::ImageSource`].

pub mod aircraft;
pub mod cars;
pub mod celeba;
pub mod cub;
pub mod dogs;
mod files;
pub mod image_io;
pub mod inat;
pub mod loader;
mod mat;
pub mod spec;
pub mod synthetic;
pub mod transform;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use c2f_kernels::Result;

pub use loader::{Batch, EpochSummary, ImageSource, Item, Loader, LoaderConfig, Skipped};
pub use transform::Transform;

/// An axis-aligned box in pixel coordinates: pixel `i` covers `[i, i + 1)`, so a box holding
/// pixels `x0..=x1` is `x = x0, w = x1 - x0 + 1`. CUB's `bounding_boxes.txt` uses the same
/// `x y width height` order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl BBox {
    pub fn new(x: f32, y: f32, w: f32, h: f32) -> Self {
        BBox { x, y, w, h }
    }

    pub fn right(&self) -> f32 {
        self.x + self.w
    }

    pub fn bottom(&self) -> f32 {
        self.y + self.h
    }

    pub fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }

    /// Intersection over union; 0 when either box is empty.
    pub fn iou(&self, other: &BBox) -> f32 {
        let w = (self.right().min(other.right()) - self.x.max(other.x)).max(0.0);
        let h = (self.bottom().min(other.bottom()) - self.y.max(other.y)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    /// Whether the box lies inside a `width × height` image, `tolerance` pixels of slack allowed.
    pub fn inside(&self, width: f32, height: f32, tolerance: f32) -> bool {
        self.x >= -tolerance
            && self.y >= -tolerance
            && self.right() <= width + tolerance
            && self.bottom() <= height + tolerance
    }
}

/// One image of a dataset on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The dataset's own image id (CUB: the 1-based id of `images.txt`; see each reader). Unique
    /// within a split; Stanford Cars and Dogs number each split from 1.
    pub id: u64,
    /// Full path of the image file.
    pub path: PathBuf,
    /// 0-based class index.
    pub label: usize,
    /// The object's box, where the dataset has one.
    pub bbox: Option<BBox>,
    /// Whether the image belongs to the training split.
    pub is_train: bool,
    /// Rows cut off the bottom of the stored image when it is loaded, before anything else
    /// (FGVC-Aircraft's 20-pixel copyright banner); 0 for none. The box is in the stored pixels
    /// and is clipped to what is left.
    pub crop_bottom: u32,
}

/// Something wrong with one image that does not stop the dataset from being used (a listed
/// image whose file is missing: it is left out of the samples).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: PathBuf,
    pub message: String,
}

/// Options of the readers' `open_with`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOptions {
    /// Check each box against its image's size (reads every image header; in parallel).
    pub check_boxes_against_images: bool,
    /// Slack in pixels allowed outside the image.
    pub box_tolerance: f32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            check_boxes_against_images: true,
            box_tolerance: 1.0,
        }
    }
}

/// A single-label dataset read from disk and validated.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class names, index = 0-based label.
    pub class_names: Vec<String>,
    /// Every image whose file exists, in the reader's order (CUB: by id; the others: the
    /// training list, then the test list, each in file order).
    pub samples: Vec<Sample>,
    /// Images left out (missing files), with their paths.
    pub problems: Vec<Problem>,
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Whether the samples carry object boxes.
    pub fn has_boxes(&self) -> bool {
        self.samples.iter().any(|s| s.bbox.is_some())
    }

    /// The training images.
    pub fn train(&self) -> Vec<Sample> {
        self.split(true)
    }

    /// The test images.
    pub fn test(&self) -> Vec<Sample> {
        self.split(false)
    }

    fn split(&self, train: bool) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.is_train == train)
            .cloned()
            .collect()
    }
}

/// The single-label datasets [`open_dataset`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Cub,
    Aircraft,
    Cars,
    Dogs,
    Inat2017,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::Cub,
        DatasetKind::Aircraft,
        DatasetKind::Cars,
        DatasetKind::Dogs,
        DatasetKind::Inat2017,
    ];

    /// The name [`FromStr`] takes.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cub => "cub",
            DatasetKind::Aircraft => "aircraft",
            DatasetKind::Cars => "cars",
            DatasetKind::Dogs => "dogs",
            DatasetKind::Inat2017 => "inat2017",
        }
    }
}

impl FromStr for DatasetKind {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown dataset `{name}` (known: {})", names.join(", "))
            })
    }
}

/// Reads the dataset of `kind` at `root` (the folder each reader's documentation names) with
/// default options.
pub fn open_dataset(kind: DatasetKind, root: &Path) -> Result<Dataset> {
    let options = OpenOptions::default();
    match kind {
        DatasetKind::Cub => cub::open_with(root, &options),
        DatasetKind::Aircraft => aircraft::open_with(root, &options),
        DatasetKind::Cars => cars::open_with(root, &options),
        DatasetKind::Dogs => dogs::open_with(root, &options),
        DatasetKind::Inat2017 => inat::open(root),
    }
}
