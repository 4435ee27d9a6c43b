//! Datasets and the input pipeline.
//!
//! - [`synthetic`]: the built-in synthetic fine-grained set ("beetles" that differ only in their
//!   spot pattern), deterministic from a seed, and its writer in the CUB-200-2011 layout.
//! - [`cub`]: the CUB-200-2011 reader (ids joined across the text files, validated).
//! - [`image_io`]: JPEG/PNG decoding to RGB, EXIF orientation honoured.
//! - [`transform`]: train/test transforms and ImageNet normalisation to an f32 CHW tensor, with the
//!   object box carried along.
//! - [`loader`]: the multi-threaded prefetching batch loader over an [`loader::ImageSource`].

pub mod cub;
pub mod image_io;
pub mod loader;
pub mod synthetic;
pub mod transform;

use std::path::PathBuf;

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
    /// The dataset's own image id (CUB: the 1-based id of `images.txt`).
    pub id: u64,
    /// Full path of the image file.
    pub path: PathBuf,
    /// 0-based class index.
    pub label: usize,
    /// The object's box, where the dataset has one.
    pub bbox: Option<BBox>,
    /// Whether the image belongs to the training split.
    pub is_train: bool,
}
