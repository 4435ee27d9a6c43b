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

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use c2f_kernels::rng::{splitmix64_output, SplitMix64};
use c2f_kernels::{Error, Result};
use image::RgbImage;
use rayon::prelude::*;

use super::loader::{ImageSource, Item};
use super::BBox;

/// The configuration of the synthetic set.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Number of classes, `2..=max_classes()`; class `c` uses `patterns()[c]`.
    pub classes: usize,
    /// Side of the square images in pixels (64..=1024; 96–448 is the intended range).
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
    /// Checks the ranges; every constructor calls it.
    pub fn validate(&self) -> Result<()> {
        let max = max_classes();
        if self.classes < 2 || self.classes > max {
            return Err(Error::Shape(format!(
                "synthetic set: {} classes requested, 2..={max} available",
                self.classes
            )));
        }
        if !(64..=1024).contains(&self.size) {
            return Err(Error::Shape(format!(
                "synthetic set: image size {} outside 64..=1024",
                self.size
            )));
        }
        let (lo, hi) = self.object_scale;
        if !(lo.is_finite() && hi.is_finite() && 0.15 <= lo && lo <= hi && hi <= 0.9) {
            return Err(Error::Shape(format!(
                "synthetic set: object scale {lo}..{hi} must satisfy 0.15 <= lo <= hi <= 0.9"
            )));
        }
        if !(self.clutter.is_finite() && (0.0..=4.0).contains(&self.clutter)) {
            return Err(Error::Shape(format!(
                "synthetic set: clutter {} outside 0..=4",
                self.clutter
            )));
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

// ---------------------------------------------------------------------------------------------
// Spot patterns
// ---------------------------------------------------------------------------------------------

/// One class's spots, in the shell's normalised frame: `u` along the body (−1 rear, +1 front,
/// the pronotum starts at 0.62), `v` across it (−1..1); the shell is `u² + v² ≤ 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPattern {
    pub name: String,
    pub spots: Vec<[f32; 2]>,
    /// Spot radius relative to the nuisance's spot radius (dense patterns have smaller spots so
    /// that no two ever touch).
    pub size: f32,
}

/// Spot radius as a fraction of the shell's half-width, drawn per image.
const SPOT_FRACTION: (f32, f32) = (0.14, 0.18);
/// Shell half-width over half-length, drawn per image.
const ASPECT: (f32, f32) = (0.7, 0.85);
/// Per-spot jitter in normalised units (intra-class variation).
const JITTER: f32 = 0.025;
/// The most spots a pattern has.
const MAX_SPOTS: usize = 12;
/// The first classes: pairwise close patterns.
const FIRST: [&str; 10] = [
    "pairs2",
    "pairs2_c",
    "pairs3",
    "line3",
    "ring5",
    "ring6",
    "tri_fwd",
    "tri_back",
    "row3_rear",
    "ring4_c",
];

/// All spot patterns; class `c` is `patterns()[c]`.
pub fn patterns() -> &'static [SpotPattern] {
    static P: OnceLock<Vec<SpotPattern>> = OnceLock::new();
    P.get_or_init(build_patterns)
}

/// How many classes the synthetic set can have.
pub fn max_classes() -> usize {
    patterns().len()
}

/// The name of class `label` (e.g. `ring5`, `pairs2_c`).
pub fn class_name(label: usize) -> &'static str {
    &patterns()[label].name
}

fn spread(n: usize, lo: f32, hi: f32, single: f32) -> Vec<f32> {
    if n == 1 {
        vec![single]
    } else {
        (0..n)
            .map(|k| lo + (hi - lo) * k as f32 / (n - 1) as f32)
            .collect()
    }
}

fn build_patterns() -> Vec<SpotPattern> {
    let mut out: Vec<SpotPattern> = Vec::new();
    let mut push = |name: String, spots: Vec<[f32; 2]>, size: Option<f32>| {
        let size = size.unwrap_or_else(|| auto_size(&spots));
        out.push(SpotPattern { name, spots, size });
    };
    let centre = |c: bool| if c { "_c" } else { "" };
    // Symmetric pairs; `_c` adds a spot on the seam (between the two rearmost rows, or in
    // front of a single pair).
    for n in 1..=4 {
        for c in [false, true] {
            let rows = match n {
                1 => vec![-0.15],
                2 => vec![-0.45, 0.12],
                _ => spread(n, -0.62, 0.3, 0.0),
            };
            let mut s: Vec<[f32; 2]> = rows.iter().flat_map(|&u| [[u, 0.45], [u, -0.45]]).collect();
            if c {
                let u = if n == 1 {
                    0.35
                } else {
                    (rows[0] + rows[1]) / 2.0
                };
                s.push([u, 0.0]);
            }
            push(format!("pairs{n}{}", centre(c)), s, None);
        }
    }
    // A line along the seam.
    for n in 1..=4 {
        let s = spread(n, -0.7, 0.36, -0.15)
            .into_iter()
            .map(|u| [u, 0.0])
            .collect();
        push(format!("line{n}"), s, None);
    }
    // A ring (the first spot points forward), optionally with a centre spot.
    let ring = |n: usize, offset: f32, c: bool| {
        let mut s: Vec<[f32; 2]> = (0..n)
            .map(|k| {
                let t = offset + std::f32::consts::TAU * k as f32 / n as f32;
                [-0.12 + 0.56 * t.cos(), 0.56 * t.sin()]
            })
            .collect();
        if c {
            s.push([-0.12, 0.0]);
        }
        s
    };
    for n in 4..=8 {
        for c in [false, true] {
            push(format!("ring{n}{}", centre(c)), ring(n, 0.0, c), None);
        }
    }
    for c in [false, true] {
        let s = ring(4, std::f32::consts::FRAC_PI_4, c);
        push(format!("square{}", centre(c)), s, None);
    }
    // A triangle pointing forward or backward, optionally with a centre spot.
    for (dir, offset) in [("fwd", 0.0f32), ("back", std::f32::consts::PI)] {
        for c in [false, true] {
            let mut s: Vec<[f32; 2]> = (0..3)
                .map(|k| {
                    let t = offset + std::f32::consts::TAU * k as f32 / 3.0;
                    [-0.12 + 0.56 * t.cos(), 0.56 * t.sin()]
                })
                .collect();
            if c {
                s.push([-0.12, 0.0]);
            }
            push(format!("tri_{dir}{}", centre(c)), s, None);
        }
    }
    // A transverse row near the front or the rear.
    for (pos, u) in [("front", 0.22f32), ("rear", -0.45)] {
        for n in 3..=4 {
            let s = spread(n, -0.6, 0.6, 0.0)
                .into_iter()
                .map(|v| [u, v])
                .collect();
            push(format!("row{n}_{pos}"), s, None);
        }
    }
    // A tight cluster of three at the rear or the front.
    push(
        "rear3".into(),
        vec![[-0.68, 0.0], [-0.36, 0.32], [-0.36, -0.32]],
        None,
    );
    push(
        "front3".into(),
        vec![[0.42, 0.0], [0.1, 0.32], [0.1, -0.32]],
        None,
    );
    // Chiral patterns (the mirror nuisance shows both hands): a diagonal, a zigzag, spots down
    // one side.
    for n in 2..=4 {
        let s = (0..n)
            .map(|k| {
                let t = k as f32 / (n - 1) as f32;
                [-0.55 + 0.85 * t, -0.42 + 0.84 * t]
            })
            .collect();
        push(format!("diag{n}"), s, None);
    }
    push(
        "zigzag4".into(),
        vec![[-0.62, 0.3], [-0.27, -0.3], [0.08, 0.3], [0.4, -0.3]],
        None,
    );
    for n in 2..=3 {
        let s = spread(n, -0.5, 0.3, 0.0)
            .into_iter()
            .map(|u| [u, 0.5])
            .collect();
        push(format!("side{n}"), s, None);
    }
    // A chevron pointing forward or backward.
    push(
        "chevron_fwd".into(),
        vec![
            [0.38, 0.0],
            [0.06, 0.3],
            [0.06, -0.3],
            [-0.26, 0.6],
            [-0.26, -0.6],
        ],
        None,
    );
    push(
        "chevron_back".into(),
        vec![
            [-0.68, 0.0],
            [-0.36, 0.3],
            [-0.36, -0.3],
            [-0.04, 0.6],
            [-0.04, -0.6],
        ],
        None,
    );
    // A T, upright or upside down.
    push(
        "tee_fwd".into(),
        vec![
            [0.3, -0.5],
            [0.3, 0.0],
            [0.3, 0.5],
            [-0.12, 0.0],
            [-0.56, 0.0],
        ],
        None,
    );
    push(
        "tee_back".into(),
        vec![
            [-0.56, -0.5],
            [-0.56, 0.0],
            [-0.56, 0.5],
            [-0.12, 0.0],
            [0.32, 0.0],
        ],
        None,
    );
    // Big spots.
    push("big1".into(), vec![[-0.12, 0.0]], Some(2.0));
    push("big2".into(), vec![[-0.15, 0.4], [-0.15, -0.4]], Some(1.6));
    push(
        "big_line2".into(),
        vec![[-0.42, 0.0], [0.16, 0.0]],
        Some(1.5),
    );
    // Pairs near the shell's edge.
    for n in 1..=3 {
        let s = spread(n, -0.4, 0.25, -0.15)
            .into_iter()
            .flat_map(|u| [[u, 0.66], [u, -0.66]])
            .collect();
        push(format!("edge{n}"), s, None);
    }

    // The pairwise-close patterns first.
    let mut ordered = Vec::with_capacity(out.len());
    for name in FIRST {
        let k = out.iter().position(|p| p.name == name).expect("known name");
        ordered.push(out.remove(k));
    }
    ordered.extend(out);
    ordered
}

/// The largest of the sizes 1, 0.8, 0.65, 0.5 for which no two spots of `spots` can touch, whatever the aspect,
/// spot fraction and jitter drawn.
fn auto_size(spots: &[[f32; 2]]) -> f32 {
    const GAP: f32 = 0.03; // in units of the half-length
    let mut size = 1.0f32;
    for aspect in [ASPECT.0, ASPECT.1] {
        for (i, p) in spots.iter().enumerate() {
            for q in &spots[i + 1..] {
                // Distance in units of the half-length `a` (v is scaled by b = aspect·a).
                let d = ((p[0] - q[0]).powi(2) + ((p[1] - q[1]) * aspect).powi(2)).sqrt();
                let room = d - GAP - 2.0 * std::f32::consts::SQRT_2 * JITTER;
                size = size.min(room / (2.0 * SPOT_FRACTION.1 * aspect));
            }
        }
    }
    // Quantised, so that many classes share a spot size and size alone tells little.
    [1.0, 0.8, 0.65, 0.5]
        .into_iter()
        .find(|&q| q <= size)
        .unwrap_or(size)
}

// ---------------------------------------------------------------------------------------------
// Nuisance parameters
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Clutter {
    Ellipse {
        e: Ellipse,
        color: [f32; 3],
        alpha: f32,
    },
    Stroke {
        c: Capsule,
        color: [f32; 3],
        alpha: f32,
    },
}

/// Everything about an image except its class: pose, colours, background, lighting, noise.
/// Drawn by [`SyntheticSet::nuisance`]; rendering the same nuisance with two labels gives two
/// images that differ only on the shell.
#[derive(Debug, Clone)]
pub struct Nuisance {
    size: u32,
    cx: f32,
    cy: f32,
    angle: f32,
    mirror: f32,
    /// Shell half-length and half-width in pixels.
    a: f32,
    b: f32,
    body: [f32; 3],
    spot: [f32; 3],
    dark: [f32; 3],
    spot_fraction: f32,
    jitter: [[f32; 2]; MAX_SPOTS],
    legs: [f32; 6],
    bg: [[f32; 3]; 2],
    bg_angle: f32,
    clutter: Vec<Clutter>,
    light: f32,
    cast: [f32; 3],
    noise_amp: f32,
    noise_seed: u64,
}

/// Shell colours shared by all classes.
const BODY_PALETTE: [[f32; 3]; 6] = [
    [205.0, 35.0, 30.0],
    [235.0, 125.0, 25.0],
    [225.0, 190.0, 45.0],
    [150.0, 25.0, 25.0],
    [225.0, 95.0, 120.0],
    [170.0, 85.0, 35.0],
];
const BG_PALETTE: [[f32; 3]; 7] = [
    [60.0, 110.0, 40.0],
    [90.0, 140.0, 60.0],
    [110.0, 85.0, 55.0],
    [120.0, 120.0, 110.0],
    [100.0, 110.0, 50.0],
    [70.0, 55.0, 40.0],
    [180.0, 165.0, 130.0],
];

fn jitter_color(rng: &mut SplitMix64, base: [f32; 3], amount: f32) -> [f32; 3] {
    let mut c = base;
    for x in &mut c {
        *x = (*x + rng.uniform(-amount as f64, amount as f64) as f32).clamp(0.0, 255.0);
    }
    c
}

fn palette_color(rng: &mut SplitMix64, palette: &[[f32; 3]], amount: f32) -> [f32; 3] {
    let base = pick(rng, palette);
    jitter_color(rng, base, amount)
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

fn uni(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    rng.uniform(lo as f64, hi as f64) as f32
}

/// A count scaled by the clutter level: `round(clutter · uniform(lo, hi))`.
fn count(rng: &mut SplitMix64, clutter: f32, lo: f32, hi: f32) -> usize {
    (clutter * uni(rng, lo, hi)).round() as usize
}

impl Nuisance {
    /// Draws every nuisance parameter from `rng`; the class plays no part.
    pub fn sample(config: &SyntheticConfig, rng: &mut SplitMix64) -> Nuisance {
        let s = config.size as f32;
        let scale = uni(rng, config.object_scale.0, config.object_scale.1);
        let aspect = uni(rng, ASPECT.0, ASPECT.1);
        // Half the overall extent; the antennae tip is at a + 1.01 b from the centre, the rest
        // of the object is nearer.
        let r = scale * s / 2.0;
        let a = (r - 1.0) / (1.0 + 1.15 * aspect);
        let b = aspect * a;
        let margin = r + 1.0;
        let cx = uni(rng, margin, s - margin);
        let cy = uni(rng, margin, s - margin);
        let angle = uni(rng, 0.0, std::f32::consts::TAU);
        let mirror = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        let body = palette_color(rng, &BODY_PALETTE, 18.0);
        let spot_level = uni(rng, 10.0, 45.0);
        let spot = jitter_color(rng, [spot_level; 3], 8.0);
        let dark_level = uni(rng, 15.0, 40.0);
        let dark = jitter_color(rng, [dark_level; 3], 6.0);
        let spot_fraction = uni(rng, SPOT_FRACTION.0, SPOT_FRACTION.1);
        let mut jitter = [[0.0f32; 2]; MAX_SPOTS];
        for j in &mut jitter {
            *j = [uni(rng, -JITTER, JITTER), uni(rng, -JITTER, JITTER)];
        }
        let mut legs = [0.0f32; 6];
        for l in &mut legs {
            *l = uni(rng, -0.25, 0.25);
        }
        let bg = [
            palette_color(rng, &BG_PALETTE, 20.0),
            palette_color(rng, &BG_PALETTE, 20.0),
        ];
        let bg_angle = uni(rng, 0.0, std::f32::consts::TAU);

        let c = config.clutter;
        let spot_r = spot_fraction * b;
        let mut clutter = Vec::new();
        // Leaves: large soft ellipses in background colours.
        for _ in 0..count(rng, c, 3.0, 9.0) {
            let color = palette_color(rng, &BG_PALETTE, 25.0);
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(
                    uni(rng, -0.1 * s, 1.1 * s),
                    uni(rng, -0.1 * s, 1.1 * s),
                    uni(rng, 0.06, 0.25) * s,
                    uni(rng, 0.02, 0.09) * s,
                    uni(rng, 0.0, std::f32::consts::TAU),
                ),
                color,
                alpha: uni(rng, 0.5, 1.0),
            });
        }
        // Stems and grass: thin strokes.
        for _ in 0..count(rng, c, 2.0, 7.0) {
            let x0 = uni(rng, 0.0, s);
            let y0 = uni(rng, 0.0, s);
            let t = uni(rng, 0.0, std::f32::consts::TAU);
            let len = uni(rng, 0.15, 0.6) * s;
            let color = palette_color(rng, &BG_PALETTE, 30.0);
            let color = color.map(|x| x * 0.7);
            clutter.push(Clutter::Stroke {
                c: Capsule::new(x0, y0, x0 + len * t.cos(), y0 + len * t.sin(), {
                    uni(rng, 0.3, 1.5) * s / 128.0
                }),
                color,
                alpha: uni(rng, 0.6, 1.0),
            });
        }
        // Pebbles.
        for _ in 0..count(rng, c, 1.0, 5.0) {
            let g = uni(rng, 90.0, 200.0);
            let rx = uni(rng, 0.01, 0.04) * s;
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(
                    uni(rng, 0.0, s),
                    uni(rng, 0.0, s),
                    rx,
                    rx * uni(rng, 0.6, 1.0),
                    uni(rng, 0.0, std::f32::consts::TAU),
                ),
                color: jitter_color(rng, [g; 3], 15.0),
                alpha: 1.0,
            });
        }
        // A "berry" decoy in the shell's palette, with a few dark spots of its own.
        if uni(rng, 0.0, 1.0) < 0.35 * c.min(2.0) {
            let rx = b * uni(rng, 0.5, 1.0);
            let (x, y) = (uni(rng, 0.0, s), uni(rng, 0.0, s));
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(x, y, rx, rx * uni(rng, 0.8, 1.0), 0.0),
                color: palette_color(rng, &BODY_PALETTE, 18.0),
                alpha: 1.0,
            });
            for _ in 0..rng.below(3) {
                let t = uni(rng, 0.0, std::f32::consts::TAU);
                let d = uni(rng, 0.0, 0.5) * rx;
                let rr = spot_r * uni(rng, 0.7, 1.2);
                clutter.push(Clutter::Ellipse {
                    e: Ellipse::new(x + d * t.cos(), y + d * t.sin(), rr, rr, 0.0),
                    color: spot,
                    alpha: 1.0,
                });
            }
        }
        // Spot-like distractors: dark discs the size of the real spots.
        for _ in 0..count(rng, c, 4.0, 14.0) {
            let rr = spot_r * uni(rng, 0.7, 1.4);
            let level = uni(rng, 10.0, 60.0);
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(uni(rng, 0.0, s), uni(rng, 0.0, s), rr, rr, 0.0),
                color: jitter_color(rng, [level; 3], 8.0),
                alpha: 1.0,
            });
        }

        let light = uni(rng, 0.8, 1.15);
        let cast = [
            uni(rng, 0.93, 1.07),
            uni(rng, 0.93, 1.07),
            uni(rng, 0.93, 1.07),
        ];
        let noise_amp = uni(rng, 2.0, 9.0);
        let noise_seed = rng.next_u64();
        Nuisance {
            size: config.size,
            cx,
            cy,
            angle,
            mirror,
            a,
            b,
            body,
            spot,
            dark,
            spot_fraction,
            jitter,
            legs,
            bg,
            bg_angle,
            clutter,
            light,
            cast,
            noise_amp,
            noise_seed,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rasterisation
// ---------------------------------------------------------------------------------------------

/// Pixel coverage from an approximate signed distance (pixels; negative inside): a one-pixel
/// antialiased edge.
#[inline]
fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

#[derive(Debug, Clone, Copy)]
struct Ellipse {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    cos: f32,
    sin: f32,
}

impl Ellipse {
    fn new(cx: f32, cy: f32, rx: f32, ry: f32, angle: f32) -> Self {
        Ellipse {
            cx,
            cy,
            rx: rx.max(0.3),
            ry: ry.max(0.3),
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    /// `(u, v)` in the ellipse's normalised frame (the ellipse is `u² + v² ≤ 1`).
    #[inline]
    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            (dx * self.cos + dy * self.sin) / self.rx,
            (-dx * self.sin + dy * self.cos) / self.ry,
        )
    }

    /// Approximate signed distance in pixels: `(f − 1) / |∇f|` with `f = u² + v²`.
    #[inline]
    fn dist(&self, x: f32, y: f32) -> f32 {
        let (u, v) = self.local(x, y);
        let f = u * u + v * v;
        let gx = u / self.rx;
        let gy = v / self.ry;
        let g = 2.0 * (gx * gx + gy * gy).sqrt();
        if g < 1e-6 {
            -self.rx.min(self.ry)
        } else {
            (f - 1.0) / g
        }
    }

    fn bounds(&self) -> [f32; 4] {
        let ex = ((self.rx * self.cos).powi(2) + (self.ry * self.sin).powi(2)).sqrt();
        let ey = ((self.rx * self.sin).powi(2) + (self.ry * self.cos).powi(2)).sqrt();
        [self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey]
    }
}

#[derive(Debug, Clone, Copy)]
struct Capsule {
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
    r: f32,
}

impl Capsule {
    fn new(x0: f32, y0: f32, x1: f32, y1: f32, r: f32) -> Self {
        Capsule {
            x0,
            y0,
            x1,
            y1,
            r: r.max(0.35),
        }
    }

    fn between(p: [f32; 2], q: [f32; 2], r: f32) -> Self {
        Capsule::new(p[0], p[1], q[0], q[1], r)
    }

    #[inline]
    fn dist(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (self.x1 - self.x0, self.y1 - self.y0);
        let (px, py) = (x - self.x0, y - self.y0);
        let l2 = dx * dx + dy * dy;
        let t = if l2 > 0.0 {
            ((px * dx + py * dy) / l2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt() - self.r
    }

    fn bounds(&self) -> [f32; 4] {
        [
            self.x0.min(self.x1) - self.r,
            self.y0.min(self.y1) - self.r,
            self.x0.max(self.x1) + self.r,
            self.y0.max(self.y1) + self.r,
        ]
    }
}

/// Pixel extents of what was drawn of the object.
#[derive(Debug, Clone, Copy)]
struct Extents {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Extents {
    fn empty() -> Self {
        Extents {
            x0: i32::MAX,
            y0: i32::MAX,
            x1: i32::MIN,
            y1: i32::MIN,
        }
    }

    fn bbox(&self) -> Option<BBox> {
        (self.x0 <= self.x1).then(|| {
            BBox::new(
                self.x0 as f32,
                self.y0 as f32,
                (self.x1 - self.x0 + 1) as f32,
                (self.y1 - self.y0 + 1) as f32,
            )
        })
    }
}

struct Canvas {
    size: usize,
    rgb: Vec<f32>,
}

impl Canvas {
    /// Blends `f(x, y) = (coverage, colour)` over the pixels of `bounds`, pixel centres at
    /// `+0.5`; records the touched pixels in `track`.
    fn draw(
        &mut self,
        bounds: [f32; 4],
        mut track: Option<&mut Extents>,
        mut f: impl FnMut(f32, f32) -> (f32, [f32; 3]),
    ) {
        let s = self.size as f32;
        let x0 = (bounds[0] - 1.0).floor().clamp(0.0, s) as usize;
        let y0 = (bounds[1] - 1.0).floor().clamp(0.0, s) as usize;
        let x1 = (bounds[2] + 1.0).ceil().clamp(0.0, s) as usize;
        let y1 = (bounds[3] + 1.0).ceil().clamp(0.0, s) as usize;
        for y in y0..y1 {
            let row = y * self.size;
            for x in x0..x1 {
                let (c, col) = f(x as f32 + 0.5, y as f32 + 0.5);
                if c <= 0.0 {
                    continue;
                }
                let p = &mut self.rgb[(row + x) * 3..(row + x) * 3 + 3];
                for k in 0..3 {
                    p[k] += c * (col[k] - p[k]);
                }
                if let Some(t) = track.as_deref_mut() {
                    t.x0 = t.x0.min(x as i32);
                    t.y0 = t.y0.min(y as i32);
                    t.x1 = t.x1.max(x as i32);
                    t.y1 = t.y1.max(y as i32);
                }
            }
        }
    }
}

/// A rendered image and, where an object was drawn, its tight box.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub image: RgbImage,
    pub bbox: Option<BBox>,
}

/// Renders `nuisance` with the beetle of class `label`, or the scene without any beetle for
/// `None` (used by tests to find the object's pixels).
///
/// # Panics
/// If `label >= max_classes()`.
pub fn render(label: Option<usize>, n: &Nuisance) -> Rendered {
    let size = n.size as usize;
    let s = size as f32;
    let mut canvas = Canvas {
        size,
        rgb: vec![0.0; size * size * 3],
    };

    // Background gradient.
    let (gc, gs) = (n.bg_angle.cos() / s, n.bg_angle.sin() / s);
    for y in 0..size {
        for x in 0..size {
            let t = ((x as f32 - s / 2.0) * gc + (y as f32 - s / 2.0) * gs + 0.5).clamp(0.0, 1.0);
            let p = &mut canvas.rgb[(y * size + x) * 3..(y * size + x) * 3 + 3];
            for (k, v) in p.iter_mut().enumerate() {
                *v = n.bg[0][k] + t * (n.bg[1][k] - n.bg[0][k]);
            }
        }
    }
    for item in &n.clutter {
        match item {
            Clutter::Ellipse { e, color, alpha } => {
                canvas.draw(e.bounds(), None, |x, y| {
                    (alpha * coverage(e.dist(x, y)), *color)
                });
            }
            Clutter::Stroke { c, color, alpha } => {
                canvas.draw(c.bounds(), None, |x, y| {
                    (alpha * coverage(c.dist(x, y)), *color)
                });
            }
        }
    }

    let bbox = label.map(|label| {
        let pattern = &patterns()[label];
        let mut ext = Extents::empty();
        draw_beetle(&mut canvas, n, pattern, &mut ext);
        ext.bbox().expect("the beetle lies inside the image")
    });

    // Lighting, colour cast and sensor noise, then quantisation.
    let mut image = RgbImage::new(n.size, n.size);
    let out: &mut [u8] = &mut image;
    for (i, (o, c)) in out
        .chunks_exact_mut(3)
        .zip(canvas.rgb.chunks_exact(3))
        .enumerate()
    {
        let h = splitmix64_output(n.noise_seed, i as u64 + 1);
        let luma = ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        let chroma = [
            (h & 0xff) as f32,
            ((h >> 8) & 0xff) as f32,
            ((h >> 16) & 0xff) as f32,
        ];
        for k in 0..3 {
            let noise = n.noise_amp * (luma + 0.3 * (chroma[k] / 127.5 - 1.0));
            o[k] = (c[k] * n.light * n.cast[k] + noise)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    Rendered { image, bbox }
}

fn draw_beetle(canvas: &mut Canvas, n: &Nuisance, pattern: &SpotPattern, ext: &mut Extents) {
    let (a, b, m) = (n.a, n.b, n.mirror);
    let d = [n.angle.cos(), n.angle.sin()]; // forward
    let nv = [-d[1] * m, d[0] * m]; // lateral (mirrored)
                                    // Body frame (u along, v across, both in pixels) to image.
    let at = |u: f32, v: f32| [n.cx + u * d[0] + v * nv[0], n.cy + u * d[1] + v * nv[1]];
    let shell = Ellipse::new(n.cx, n.cy, a, b, n.angle);
    let limb = (0.06 * b).max(0.5);

    // Legs: three a side, femur out, tibia bent.
    for side in [-1.0f32, 1.0] {
        for (k, (u_att, bend)) in [(-0.35f32, -0.25f32), (0.05, 0.0), (0.4, 0.25)]
            .iter()
            .enumerate()
        {
            let j = n.legs[k + if side > 0.0 { 3 } else { 0 }];
            let att = at(u_att * a, side * 0.5 * b);
            let knee = at(u_att * a + (bend * 0.5 + j * 0.5) * b, side * 1.2 * b);
            let foot = at(u_att * a + (bend + j) * b, side * 1.55 * b);
            for seg in [
                Capsule::between(att, knee, limb),
                Capsule::between(knee, foot, limb),
            ] {
                canvas.draw(seg.bounds(), Some(ext), |x, y| {
                    (coverage(seg.dist(x, y)), n.dark)
                });
            }
        }
    }
    // Head and antennae.
    let head = {
        let c = at(a + 0.15 * b, 0.0);
        Ellipse::new(c[0], c[1], 0.36 * b, 0.46 * b, n.angle)
    };
    for side in [-1.0f32, 1.0] {
        let base = at(a + 0.45 * b, side * 0.2 * b);
        let tip = at(a + 1.0 * b, side * 0.45 * b);
        let ant = Capsule::between(base, tip, (0.035 * b).max(0.4));
        canvas.draw(ant.bounds(), Some(ext), |x, y| {
            (coverage(ant.dist(x, y)), n.dark)
        });
    }
    canvas.draw(head.bounds(), Some(ext), |x, y| {
        (coverage(head.dist(x, y)), n.dark)
    });
    // Shell, shaded.
    let body = n.body;
    canvas.draw(shell.bounds(), Some(ext), |x, y| {
        let (u, v) = shell.local(x, y);
        let r2 = ((u - 0.2).powi(2) + (v + 0.3).powi(2)).min(1.5);
        let shade = 0.62 + 0.42 * (1.0 - r2 / 1.5);
        (
            coverage(shell.dist(x, y)),
            body.map(|c| (c * shade).min(255.0)),
        )
    });
    // Spots, clipped to the shell.
    let rs = n.spot_fraction * b * pattern.size;
    for (k, p) in pattern.spots.iter().enumerate() {
        let j = n.jitter[k % MAX_SPOTS];
        let c = at((p[0] + j[0]) * a, (p[1] + j[1]) * b);
        let spot = Ellipse::new(c[0], c[1], rs, rs, 0.0);
        canvas.draw(spot.bounds(), Some(ext), |x, y| {
            let cov = coverage(spot.dist(x, y)).min(coverage(shell.dist(x, y)));
            (cov, n.spot)
        });
    }
    // Seam from the rear to the pronotum, then the pronotum with its two pale marks.
    let seam = Capsule::between(at(-0.97 * a, 0.0), at(0.62 * a, 0.0), (0.03 * b).max(0.45));
    canvas.draw(seam.bounds(), Some(ext), |x, y| {
        let cov = coverage(seam.dist(x, y)).min(coverage(shell.dist(x, y)));
        (0.8 * cov, n.dark)
    });
    canvas.draw(shell.bounds(), Some(ext), |x, y| {
        let (u, _) = shell.local(x, y);
        let front = ((u - 0.62) * a + 0.5).clamp(0.0, 1.0);
        (front.min(coverage(shell.dist(x, y))), n.dark)
    });
    for side in [-1.0f32, 1.0] {
        let c = at(0.8 * a, side * 0.38 * b);
        let mark = Ellipse::new(c[0], c[1], 0.08 * a, 0.14 * b, n.angle);
        canvas.draw(mark.bounds(), Some(ext), |x, y| {
            let cov = coverage(mark.dist(x, y)).min(coverage(shell.dist(x, y)));
            (cov, [225.0, 222.0, 210.0])
        });
    }
}

// ---------------------------------------------------------------------------------------------
// CUB layout
// ---------------------------------------------------------------------------------------------

/// The class directory of `label` in the CUB layout, e.g. `003.pairs3`.
pub fn class_dir(label: usize) -> String {
    format!("{:03}.{}", label + 1, class_name(label))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `n_train` training images (`SyntheticSet` train split, indices `0..n_train`) and
/// `n_test` test images (test split) under `dir` in the CUB-200-2011 layout: `classes.txt`,
/// `images.txt`, `image_class_labels.txt` (1-based), `train_test_split.txt` (1 = train),
/// `bounding_boxes.txt` (`id x y w h`) and `images/<NNN.class>/syn_<split>_<NNNNNN>.jpg`
/// (JPEG quality 95). Image ids are 1-based: the training images first, then the test images.
/// Images are generated and encoded in parallel.
pub fn write_cub_layout(
    dir: &Path,
    config: &SyntheticConfig,
    n_train: usize,
    n_test: usize,
) -> Result<()> {
    let train = SyntheticSet::new(config.clone(), Split::Train, n_train)?;
    let test = SyntheticSet::new(config.clone(), Split::Test, n_test)?;
    let entries: Vec<(&SyntheticSet, usize)> = (0..n_train)
        .map(|i| (&train, i))
        .chain((0..n_test).map(|i| (&test, i)))
        .collect();
    for label in 0..config.classes {
        let d = dir.join("images").join(class_dir(label));
        fs::create_dir_all(&d).map_err(|e| file_error(&d, e))?;
    }
    let rel = |set: &SyntheticSet, i: usize| {
        format!(
            "{}/syn_{}_{i:06}.jpg",
            class_dir(set.label(i)),
            set.split().name()
        )
    };
    let boxes: Vec<BBox> = entries
        .par_iter()
        .map(|&(set, i)| -> Result<BBox> {
            let s = set.get(i);
            let path = dir.join("images").join(rel(set, i));
            let file = fs::File::create(&path).map_err(|e| file_error(&path, e))?;
            let mut w = BufWriter::new(file);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 95)
                .encode_image(&s.image)
                .map_err(|e| file_error(&path, e))?;
            w.flush().map_err(|e| file_error(&path, e))?;
            Ok(s.bbox)
        })
        .collect::<Result<_>>()?;

    let write = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| file_error(&path, e))
    };
    let mut classes = String::new();
    for label in 0..config.classes {
        classes += &format!("{} {}\n", label + 1, class_dir(label));
    }
    write("classes.txt", classes)?;
    let (mut images, mut labels, mut split, mut bbs) =
        (String::new(), String::new(), String::new(), String::new());
    for (k, (&(set, i), bb)) in entries.iter().zip(&boxes).enumerate() {
        let id = k + 1;
        images += &format!("{id} {}\n", rel(set, i));
        labels += &format!("{id} {}\n", set.label(i) + 1);
        split += &format!("{id} {}\n", u8::from(set.split() == Split::Train));
        bbs += &format!("{id} {:.1} {:.1} {:.1} {:.1}\n", bb.x, bb.y, bb.w, bb.h);
    }
    write("images.txt", images)?;
    write("image_class_labels.txt", labels)?;
    write("train_test_split.txt", split)?;
    write("bounding_boxes.txt", bbs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_patterns_distinct_up_to_mirror() {
        let p = patterns();
        assert_eq!(p.len(), 50);
        for (i, a) in p.iter().enumerate() {
            assert!(
                !a.spots.is_empty() && a.spots.len() <= MAX_SPOTS,
                "{}",
                a.name
            );
            for b in &p[i + 1..] {
                assert_ne!(a.name, b.name);
                if a.spots.len() != b.spots.len() || (a.size / b.size - 1.0).abs() > 0.3 {
                    continue;
                }
                let hausdorff = |mirror: f32| {
                    let one_way = |x: &SpotPattern, y: &SpotPattern, mx: f32| {
                        x.spots
                            .iter()
                            .map(|s| {
                                y.spots
                                    .iter()
                                    .map(|t| {
                                        ((s[0] - t[0]).powi(2) + (s[1] * mx - t[1]).powi(2)).sqrt()
                                    })
                                    .fold(f32::MAX, f32::min)
                            })
                            .fold(0.0, f32::max)
                    };
                    one_way(a, b, mirror).max(one_way(b, a, mirror))
                };
                let d = hausdorff(1.0).min(hausdorff(-1.0));
                assert!(d > 0.15, "{} and {} are {d} apart", a.name, b.name);
            }
        }
    }

    #[test]
    fn spots_fit_on_the_shell_and_never_touch() {
        for p in patterns() {
            assert!(p.size >= 0.5, "{}: size {}", p.name, p.size);
            for s in &p.spots {
                let r = (s[0] * s[0] + s[1] * s[1]).sqrt() + SPOT_FRACTION.1 * p.size;
                assert!(r <= 1.0, "{}: spot {s:?} reaches {r}", p.name);
                assert!(
                    s[0] + SPOT_FRACTION.1 * p.size * ASPECT.1 <= 0.62,
                    "{}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn default_classes_share_one_spot_size() {
        for p in &patterns()[..FIRST.len()] {
            assert_eq!(p.size, 1.0, "{}", p.name);
        }
    }
}
