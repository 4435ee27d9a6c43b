//! The built-in synthetic fine-grained set: "beetles" that differ only in their spot pattern.
//!
//! Like the paper's ladybugs (Figure 1), every class has the same body: an elliptical shell with
//! a dark pronotum, a seam, a head, six legs and two antennae. What tells the classes apart is
//! only the number and the arrangement of small dark spots on the shell ([`patterns`]: symmetric
//! pairs, a line along the seam, a ring, a triangle pointing forward or backward, a transverse
//! row, a chevron, ...; 50 patterns, the first 10 of which, the default classes, are pairwise
//! close: 4 spots in pairs vs the same plus one front-centre spot, a ring of 5 vs a ring of 6,
//! a triangle pointing forward vs backward).
//!
//! Everything else is a nuisance drawn from `(seed, split, index)` independently of the class:
//! pose (any in-plane rotation, and a mirror image so that chiral patterns come in both hands
//! and a horizontal flip preserves the label), scale, position, body proportions, the body
//! colour (one palette shared by all classes, so colour is no cue), the spot size and a small
//! per-spot jitter, the legs, the background (a gradient under leaves, stems, pebbles, dark
//! spot-like distractors the size of the real spots, and sometimes a spotted "berry" decoy in
//! the body's colours), lighting, colour cast and sensor noise.
//!
//! What makes it fine-grained: with the default object scale a spot's diameter is 2.5–5 % of the
//! image side (3–6 pixels at 128²) and the whole shell covers 3–8 % of the image area, surrounded
//! by clutter with the same local statistics (dark discs the spots' size, palette-coloured
//! blobs). A global
//! classifier has to find the beetle and then read a handful of pixels off it; attention on the
//! shell is what solves it. Because the class only changes pixels on the shell, rendering two
//! classes with the same [`Nuisance`] gives images that differ only inside the object's box
//! (tested).
//!
//! The label of sample `i` is `i % classes`, so every class has the same count (±1). Each image
//! comes with the tight box of the object's pixels (legs and antennae included).

mod cub_layout;
mod nuisance;
mod raster;
mod render;
mod spots;

use std::ops::RangeInclusive;

use c2f_kernels::rng::{splitmix64_output, SplitMix64};
use c2f_kernels::{Error, Result};
use image::RgbImage;

pub use cub_layout::{class_dir, write_cub_layout};
pub use nuisance::Nuisance;
pub use render::{render, Rendered};
pub use spots::{class_name, max_classes, patterns, SpotPattern};

use super::loader::{ImageSource, Item};
use super::BBox;

/// Image sides the set renders, in pixels (96–448 is the intended range).
pub const SIDES: RangeInclusive<u32> = 64..=1024;
/// The object's extent as a fraction of the image side: the ends of `object_scale`.
pub const OBJECT_SCALES: RangeInclusive<f32> = 0.15..=0.9;
/// Clutter, from none to four times the default amount.
pub const CLUTTER: RangeInclusive<f32> = 0.0..=4.0;

/// The configuration of the synthetic set.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Number of classes, `2..=max_classes()`; class `c` uses `patterns()[c]`.
    pub classes: usize,
    /// Side of the square images in pixels, in [`SIDES`].
    pub size: u32,
    /// The seed every image derives from.
    pub seed: u64,
    /// The object's overall extent (antennae tip to rear, legs included) as a fraction of the
    /// image side, drawn uniformly from this range. Smaller is harder.
    pub object_scale: (f32, f32),
    /// Scales the amount of background clutter (0 = plain gradient background, 1 = default).
    pub clutter: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            classes: 10,
            size: 128,
            seed: 0,
            object_scale: (0.4, 0.7),
            clutter: 1.0,
        }
    }
}

impl SyntheticConfig {
    /// Checks the ranges; every constructor calls it. An error is an [`Error::Config`] keyed by
    /// the field's name.
    pub fn validate(&self) -> Result<()> {
        let max = max_classes();
        if self.classes < 2 || self.classes > max {
            return Err(Error::config(
                "classes",
                self.classes,
                format!("the synthetic set has 2 to {max} classes"),
            ));
        }
        if !SIDES.contains(&self.size) {
            return Err(Error::config(
                "size",
                self.size,
                format!(
                    "the synthetic set's images are {} to {} pixels a side",
                    SIDES.start(),
                    SIDES.end()
                ),
            ));
        }
        let (lo, hi) = self.object_scale;
        if !(OBJECT_SCALES.contains(&lo) && OBJECT_SCALES.contains(&hi) && lo <= hi) {
            return Err(Error::config(
                "object_scale",
                format!("{lo} {hi}"),
                format!(
                    "the synthetic object's scale LO HI must satisfy {} <= LO <= HI <= {}",
                    OBJECT_SCALES.start(),
                    OBJECT_SCALES.end()
                ),
            ));
        }
        // NaN lies in no range.
        if !CLUTTER.contains(&self.clutter) {
            return Err(Error::config(
                "clutter",
                self.clutter,
                format!(
                    "the synthetic set's clutter lies in {}..={}",
                    CLUTTER.start(),
                    CLUTTER.end()
                ),
            ));
        }
        Ok(())
    }
}

/// Which half of the set: the two never share an image (different random streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn tag(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Test => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// One generated image.
#[derive(Debug, Clone)]
pub struct SyntheticSample {
    pub image: RgbImage,
    /// 0-based class.
    pub label: usize,
    /// Tight box of the object's pixels.
    pub bbox: BBox,
}

/// `len` images of one split, generated on demand (nothing is stored).
#[derive(Debug, Clone)]
pub struct SyntheticSet {
    config: SyntheticConfig,
    split: Split,
    len: usize,
}

impl SyntheticSet {
    pub fn new(config: SyntheticConfig, split: Split, len: usize) -> Result<Self> {
        config.validate()?;
        Ok(SyntheticSet { config, split, len })
    }

    pub fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    pub fn split(&self) -> Split {
        self.split
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The class of sample `index`: `index % classes`.
    pub fn label(&self, index: usize) -> usize {
        index % self.config.classes
    }

    /// The nuisance parameters of sample `index` (they do not depend on its class).
    pub fn nuisance(&self, index: usize) -> Nuisance {
        let seed = splitmix64_output(
            splitmix64_output(self.config.seed, self.split.tag()),
            index as u64 + 1,
        );
        Nuisance::sample(&self.config, &mut SplitMix64(seed))
    }

    /// Sample `index` (any `usize`; `len` only bounds what the loader sees).
    pub fn get(&self, index: usize) -> SyntheticSample {
        let label = self.label(index);
        let r = render(Some(label), &self.nuisance(index));
        SyntheticSample {
            image: r.image,
            label,
            bbox: r.bbox.expect("an object was drawn"),
        }
    }
}

impl ImageSource for SyntheticSet {
    fn len(&self) -> usize {
        self.len
    }

    fn label(&self, index: usize) -> usize {
        SyntheticSet::label(self, index)
    }

    fn name(&self, index: usize) -> String {
        format!("synthetic:{}:{index}", self.split.name())
    }

    fn load(&self, index: usize) -> Result<Item> {
        let s = self.get(index);
        Ok(Item {
            image: s.image.into(),
            label: s.label,
            bbox: Some(s.bbox),
        })
    }
}
