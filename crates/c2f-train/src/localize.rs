//! Weakly-supervised localization from a trained model with attention maps ([`Attentive`]:
//! Coarse2Fine, the coarse-only model, WS-DAN; the paper's "Object Localization Results",
//! Table 7, Figure 6). Coarse2Fine and the coarse-only model ([`BoxRule::Map`]):
//!
//! 1. the mean of the attention maps (what [`Coarse2Fine::infer`] feeds the fine branch);
//! 2. through the up-sampler (the coarse-only model's: a fixed bilinear resize), to the input
//!    side `S`;
//! 3. a box-filter (averaging) convolution, `k × k`, averaging only the pixels inside the image
//!    (so the border is not darkened by padding); `k` defaults to one attention-map cell, made odd;
//! 4. the filtered map min-max normalised to [0, 1], then a threshold at a fraction (default 0.1)
//!    of it (strictly above), as CAM's and ACoL's code and Choe et al.'s WSOL evaluation do: for a
//!    ReLU map with zeros this is the fraction of the maximum, and the up-sampler's output, which
//!    has a bias and no ReLU, is measured from its own floor instead of from zero;
//! 5. the box around the largest connected region, **8-connected** (pixels touching at a corner
//!    belong together, as the contours CAM-style code takes), or with [`Region::AllAbove`] the
//!    tight box around every pixel above the threshold (WS-DAN's code);
//! 6. the box mapped back to the original image, undoing the test transform's resize and centre
//!    crop ([`to_original`]).
//!
//! WS-DAN ([`BoxRule::RefinementCrop`]) draws its own box in inference, the refinement crop
//! ([`crate::wsdan`]), which step 6 maps back likewise.
//!
//! Metrics ([`LocalizationMetrics`]): ACoL's localization accuracy (IoU > 0.5 with the
//! ground-truth box *and* the predicted label right) and its error (1 − accuracy) for the
//! coarse, fine and averaged predictions (the coarse alone without a fine pass); GT-known accuracy (IoU > 0.5 alone); the mean IoU; and a
//! centred-box baseline (a box of the mean ground-truth size, relative to the image, at each
//! image's centre).

use c2f_inception::backend::{Backend, Tensor};
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::{Error, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use std::sync::Arc;

use crate::data::loader::ImageSource;
use crate::data::transform::{center_crop_params, crop_box, resized_shorter, CropRect};
use crate::data::{BBox, Transform};
use crate::model::Coarse2Fine;
use crate::task::Task;
use crate::train::evaluate::{argmax, padded_images, prediction_rows};
use crate::train::Trainee;
use crate::wsdan::{WsDan, REFINE_PADDING, REFINE_THRESHOLD};

/// Which pixels above the threshold the box is drawn around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// The largest 8-connected region.
    #[default]
    LargestComponent,
    /// All of them (WS-DAN's way).
    AllAbove,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalizeConfig {
    /// Threshold as a fraction of the filtered map's range above its minimum.
    pub threshold: f64,
    /// Box-filter side in input pixels; `None`: one attention-map cell (`S / h`), made odd.
    pub box_filter: Option<usize>,
    pub region: Region,
    /// Evaluate only the first `limit` images.
    pub limit: Option<usize>,
}

impl Default for LocalizeConfig {
    fn default() -> Self {
        LocalizeConfig {
            threshold: 0.1,
            box_filter: None,
            region: Region::LargestComponent,
            limit: None,
        }
    }
}

impl LocalizeConfig {
    /// The box-filter side for an input side `size` and attention-map side `map`.
    pub fn filter_side(&self, size: usize, map: usize) -> usize {
        self.box_filter.unwrap_or((size / map.max(1)) | 1).max(1)
    }
}

/// `k × k` moving average of `map [h, w]`, each output the mean of the window's pixels that lie
/// inside the map (summed-area table, f64).
pub fn box_filter(map: &[f32], (h, w): (usize, usize), k: usize) -> Vec<f32> {
    assert_eq!(
        map.len(),
        h * w,
        "box filter: map of {} for {h}×{w}",
        map.len()
    );
    let mut sat = vec![0.0f64; (h + 1) * (w + 1)];
    for y in 0..h {
        for x in 0..w {
            sat[(y + 1) * (w + 1) + x + 1] =
                map[y * w + x] as f64 + sat[y * (w + 1) + x + 1] + sat[(y + 1) * (w + 1) + x]
                    - sat[y * (w + 1) + x];
        }
    }
    let (before, after) = ((k - 1) / 2, k / 2);
    (0..h * w)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            let (y0, y1) = (y.saturating_sub(before), (y + after + 1).min(h));
            let (x0, x1) = (x.saturating_sub(before), (x + after + 1).min(w));
            let s = sat[y1 * (w + 1) + x1] - sat[y0 * (w + 1) + x1] - sat[y1 * (w + 1) + x0]
                + sat[y0 * (w + 1) + x0];
            (s / ((y1 - y0) * (x1 - x0)) as f64) as f32
        })
        .collect()
}

/// The box (in the map's pixels) of the pixels above `min + fraction · (max − min)` of
/// `map [h, w]`: around the largest 8-connected region of them, or around all of them. `None`
/// when the map has no positive maximum (nothing attended) or is flat (nothing stands out).
pub fn extract_box(
    map: &[f32],
    (h, w): (usize, usize),
    fraction: f64,
    region: Region,
) -> Option<BBox> {
    let max = map.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let min = map.iter().cloned().fold(f32::INFINITY, f32::min);
    // `f32::max` and `f32::min` skip NaN, so both are numbers (±∞ for an all-NaN map).
    if max <= 0.0 || max <= min {
        return None;
    }
    let cut = (min as f64 + fraction * (max - min) as f64) as f32;
    let above: Vec<bool> = map.iter().map(|&v| v > cut).collect();
    // (x0, y0, x1, y1), inclusive.
    let bounds = match region {
        Region::AllAbove => bounds_of((0..h * w).filter(|&i| above[i]), w),
        Region::LargestComponent => {
            let mut seen = vec![false; h * w];
            let mut best: (usize, Option<[usize; 4]>) = (0, None);
            let mut stack = Vec::new();
            for start in 0..h * w {
                if !above[start] || seen[start] {
                    continue;
                }
                seen[start] = true;
                stack.push(start);
                let mut members = Vec::new();
                while let Some(i) = stack.pop() {
                    members.push(i);
                    let (y, x) = ((i / w) as isize, (i % w) as isize);
                    for (dy, dx) in NEIGHBOURS_8 {
                        let (ny, nx) = (y + dy, x + dx);
                        if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if above[j] && !seen[j] {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
                if members.len() > best.0 {
                    best = (members.len(), bounds_of(members.into_iter(), w));
                }
            }
            best.1
        }
    }?;
    let [x0, y0, x1, y1] = bounds;
    Some(BBox::new(
        x0 as f32,
        y0 as f32,
        (x1 - x0 + 1) as f32,
        (y1 - y0 + 1) as f32,
    ))
}

const NEIGHBOURS_8: [(isize, isize); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

fn bounds_of(pixels: impl Iterator<Item = usize>, w: usize) -> Option<[usize; 4]> {
    pixels.fold(None, |b, i| {
        let (y, x) = (i / w, i % w);
        Some(match b {
            None => [x, y, x, y],
            Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
        })
    })
}

/// The test transform's resize size and centre crop for an original `w × h` image.
fn test_geometry(transform: &Transform, (w, h): (u32, u32)) -> Result<((u32, u32), CropRect)> {
    match *transform {
        Transform::Test { resize, size } => {
            transform.validate()?;
            let (rw, rh) = resized_shorter(w, h, resize);
            Ok(((rw, rh), center_crop_params(rw, rh, size)))
        }
        Transform::Train { .. } => Err(Error::config(
            "transform",
            "train",
            "localization maps boxes through the test transform only",
        )),
    }
}

/// A box in the test transform's output pixels → the original `w × h` image's pixels (undoing
/// the centre crop, then the resize), clipped to the image.
pub fn to_original(b: BBox, transform: &Transform, original: (u32, u32)) -> Result<BBox> {
    let ((rw, rh), c) = test_geometry(transform, original)?;
    let (sx, sy) = (original.0 as f32 / rw as f32, original.1 as f32 / rh as f32);
    let (w, h) = (original.0 as f32, original.1 as f32);
    let x0 = ((b.x + c.x as f32) * sx).clamp(0.0, w);
    let y0 = ((b.y + c.y as f32) * sy).clamp(0.0, h);
    let x1 = ((b.right() + c.x as f32) * sx).clamp(0.0, w);
    let y1 = ((b.bottom() + c.y as f32) * sy).clamp(0.0, h);
    Ok(BBox::new(x0, y0, x1 - x0, y1 - y0))
}

/// The other way: an original box in the test transform's output pixels, clipped to the crop
/// (`None` when the crop leaves none of it), as the transform maps a dataset's boxes.
pub fn to_input(b: BBox, transform: &Transform, original: (u32, u32)) -> Result<Option<BBox>> {
    let ((rw, rh), c) = test_geometry(transform, original)?;
    let (sx, sy) = (rw as f32 / original.0 as f32, rh as f32 / original.1 as f32);
    let scaled = BBox::new(b.x * sx, b.y * sy, b.w * sx, b.h * sy);
    Ok(crop_box(scaled, c, 1.0, 1.0, c.w))
}

/// Where a model's predicted boxes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxRule {
    /// The up-sampled mean map, box-filtered and thresholded as the [`LocalizeConfig`] says.
    Map,
    /// WS-DAN's refinement crop: the mean map min-max normalised and up-sampled, the rows and
    /// columns at least [`REFINE_THRESHOLD`], padded by [`REFINE_PADDING`] of the side (the
    /// config's threshold, box filter and region do not apply).
    RefinementCrop,
}

/// The sizes localization and the pictures read a model's outputs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub input_size: usize,
    pub batch: usize,
    pub classes: usize,
    pub maps: usize,
    pub map_side: (usize, usize),
}

/// A model with attention maps, as localization and the pictures read it after
/// [`Trainee::probabilities`] on a batch.
pub trait Attentive<B: Backend<Scalar = f32>>: Trainee<B> {
    fn attention_shape(&self) -> AttentionShape;
    /// The attention maps `[B, M, h, w]`.
    fn attention_maps(&self) -> Tensor;
    /// The mean map up-sampled to `[B, 1, S, S]`, shown as a heat map (and with
    /// [`BoxRule::Map`] the boxes' source).
    fn upsampled_map(&self) -> Tensor;
    fn box_rule(&self) -> BoxRule;
    /// With [`BoxRule::RefinementCrop`], each sample's box in input pixels.
    fn own_boxes(&self, _b: &mut B) -> Result<Vec<BBox>> {
        Ok(Vec::new())
    }
}

/// The parts of [`Attentive`] that Coarse2Fine and WS-DAN implement alike, from their config
/// and their own methods of the same names.
macro_rules! attentive_from_config {
    ($model:ty) => {
        fn attention_shape(&self) -> AttentionShape {
            let c = &self.config;
            AttentionShape {
                input_size: c.input_size,
                batch: c.batch,
                classes: c.classes,
                maps: c.maps,
                map_side: self.map_side(),
            }
        }

        fn attention_maps(&self) -> Tensor {
            <$model>::attention_maps(self)
        }

        fn upsampled_map(&self) -> Tensor {
            <$model>::upsampled_map(self)
        }
    };
}

impl<B: Backend<Scalar = f32>> Attentive<B> for Coarse2Fine {
    attentive_from_config!(Coarse2Fine);

    fn box_rule(&self) -> BoxRule {
        BoxRule::Map
    }
}

impl<B: Backend<Scalar = f32>> Attentive<B> for WsDan {
    attentive_from_config!(WsDan);

    fn box_rule(&self) -> BoxRule {
        BoxRule::RefinementCrop
    }

    fn own_boxes(&self, b: &mut B) -> Result<Vec<BBox>> {
        let boxes = b.read_index(self.boxes())?;
        Ok(boxes
            .chunks_exact(4)
            .map(|c| {
                let [y0, x0, y1, x1] = [c[0], c[1], c[2], c[3]].map(|v| v as f32);
                BBox::new(x0, y0, x1 - x0, y1 - y0)
            })
            .collect())
    }
}

/// What the model made of one image.
#[derive(Debug, Clone)]
pub struct ImageInference {
    /// Index in the source.
    pub index: usize,
    pub name: String,
    pub image: Arc<RgbImage>,
    pub label: usize,
    /// The ground-truth box in original pixels, where the dataset has one.
    pub truth: Option<BBox>,
    /// Class probabilities: coarse, then for a model with a fine pass fine and their average.
    pub probs: Vec<Vec<f64>>,
    /// The attention maps `[M, h, w]`.
    pub attention: Vec<f32>,
    /// The mean map up-sampled to `S × S` (before the box filter).
    pub upsampled: Vec<f32>,
    /// The predicted box in input and in original pixels; `None` when nothing was attended.
    pub box_input: Option<BBox>,
    pub box_original: Option<BBox>,
}

impl ImageInference {
    /// The predicted class of each of [`Self::probs`].
    pub fn predicted(&self) -> Vec<usize> {
        self.probs.iter().map(|p| argmax(p)).collect()
    }

    /// IoU of the predicted box with the true one (0 when either is missing).
    pub fn iou(&self) -> f64 {
        match (self.box_original, self.truth) {
            (Some(p), Some(t)) => p.iou(&t) as f64,
            _ => 0.0,
        }
    }

    /// The `k` most probable classes of the averaged prediction (the coarse one for a model
    /// without a fine pass), with their probabilities.
    pub fn top(&self, k: usize) -> Vec<(usize, f64)> {
        let last = self.probs.last().map_or(&[][..], Vec::as_slice);
        let mut order: Vec<(usize, f64)> = last.iter().cloned().enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        order.truncate(k);
        order
    }
}

/// Runs the model (inference mode) on the source's images `indices` through the test transform
/// and localizes each: maps, probabilities and boxes.
pub fn infer_images<B: Backend<Scalar = f32>, M: Attentive<B> + ?Sized>(
    b: &mut B,
    model: &mut M,
    source: &dyn ImageSource,
    indices: &[usize],
    cfg: &LocalizeConfig,
) -> Result<Vec<ImageInference>> {
    if model.task() == Task::Attributes {
        return Err(Error::config(
            "task",
            "attributes",
            "localization and pictures need a single-label model (they report its top \
             classes); this one predicts attributes",
        ));
    }
    let AttentionShape {
        input_size: size,
        batch,
        classes,
        maps,
        map_side: (mh, mw),
    } = model.attention_shape();
    let transform = Transform::test(size as u32);
    let k = cfg.filter_side(size, mh);
    let mut out = Vec::new();
    for chunk in indices.chunks(batch) {
        let items = chunk
            .par_iter()
            .map(|&i| {
                let item = source.load(i)?;
                let mut rng = SplitMix64(0); // the test transform draws nothing
                let t = transform.apply(&item.image, None, &mut rng)?;
                Ok((item, t.pixels))
            })
            .collect::<Result<Vec<_>>>()?;
        let images: Vec<f32> = items.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let heads = model.probabilities(b, &padded_images(&images, items.len(), batch))?;
        let attention = b.read(model.attention_maps())?;
        let upsampled = b.read(model.upsampled_map())?;
        let own_boxes = model.own_boxes(b)?;
        for (j, ((item, _), &index)) in items.into_iter().zip(chunk).enumerate() {
            let up = upsampled[j * size * size..][..size * size].to_vec();
            let box_input = match model.box_rule() {
                BoxRule::Map => {
                    let filtered = box_filter(&up, (size, size), k);
                    extract_box(&filtered, (size, size), cfg.threshold, cfg.region)
                }
                BoxRule::RefinementCrop => own_boxes.get(j).copied(),
            };
            let dims = item.image.dimensions();
            let box_original = box_input
                .map(|bx| to_original(bx, &transform, dims))
                .transpose()?;
            out.push(ImageInference {
                index,
                name: source.name(index),
                label: item.label,
                truth: item.bbox,
                image: item.image,
                probs: prediction_rows(&heads, j, classes),
                attention: attention[j * maps * mh * mw..][..maps * mh * mw].to_vec(),
                upsampled: up,
                box_input,
                box_original,
            });
        }
    }
    Ok(out)
}

/// Accuracy (and error) per prediction: fine and average only for a model with a fine pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerHead {
    pub coarse: f64,
    pub fine: Option<f64>,
    pub average: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalizationMetrics {
    pub images: usize,
    /// IoU > 0.5 and the label right (ACoL's metric, the paper's Table 7).
    pub accuracy: PerHead,
    pub error: PerHead,
    /// IoU > 0.5 alone.
    pub gt_known: f64,
    pub mean_iou: f64,
    /// Classification top-1, for reference.
    pub top1: PerHead,
    /// GT-known accuracy of the centred box of mean ground-truth size.
    pub centered_baseline_gt_known: f64,
    pub config: LocalizeConfig,
    pub box_rule: BoxRule,
    /// What the two heads (`coarse` and `fine` above) are called: WS-DAN's raw and refined.
    pub heads: [&'static str; 2],
}

/// The metrics over localized images (each must have a true box), whose boxes came by `rule`
/// from a model whose heads are called `heads`.
pub fn metrics(
    results: &[ImageInference],
    cfg: &LocalizeConfig,
    rule: BoxRule,
    heads: [&'static str; 2],
) -> LocalizationMetrics {
    let n = results.len().max(1) as f64;
    let hit = |r: &ImageInference| r.iou() > 0.5;
    let two_heads = results.first().is_some_and(|r| r.probs.len() > 1);
    let per = |f: &dyn Fn(&ImageInference, usize) -> bool| {
        let rate = |k: usize| results.iter().filter(|r| f(r, k)).count() as f64 / n;
        PerHead {
            coarse: rate(0),
            fine: two_heads.then(|| rate(1)),
            average: two_heads.then(|| rate(2)),
        }
    };
    let accuracy = per(&|r, k| hit(r) && r.predicted()[k] == r.label);
    let top1 = per(&|r, k| r.predicted()[k] == r.label);
    let truths: Vec<(BBox, (u32, u32))> = results
        .iter()
        .filter_map(|r| r.truth.map(|t| (t, r.image.dimensions())))
        .collect();
    LocalizationMetrics {
        images: results.len(),
        accuracy,
        error: PerHead {
            coarse: 1.0 - accuracy.coarse,
            fine: accuracy.fine.map(|a| 1.0 - a),
            average: accuracy.average.map(|a| 1.0 - a),
        },
        gt_known: results.iter().filter(|r| hit(r)).count() as f64 / n,
        mean_iou: results.iter().map(|r| r.iou()).sum::<f64>() / n,
        top1,
        centered_baseline_gt_known: centered_baseline(&truths),
        config: cfg.clone(),
        box_rule: rule,
        heads,
    }
}

/// GT-known accuracy of a box of the mean ground-truth size (as fractions of each image's
/// sides) at every image's centre, over `(true box, image size)` pairs.
pub fn centered_baseline(truths: &[(BBox, (u32, u32))]) -> f64 {
    if truths.is_empty() {
        return 0.0;
    }
    let n = truths.len() as f64;
    let fw = truths
        .iter()
        .map(|(t, (w, _))| (t.w / *w as f32) as f64)
        .sum::<f64>()
        / n;
    let fh = truths
        .iter()
        .map(|(t, (_, h))| (t.h / *h as f32) as f64)
        .sum::<f64>()
        / n;
    let hits = truths
        .iter()
        .filter(|(t, (w, h))| {
            let (bw, bh) = (fw as f32 * *w as f32, fh as f32 * *h as f32);
            let centred = BBox::new((*w as f32 - bw) / 2.0, (*h as f32 - bh) / 2.0, bw, bh);
            centred.iou(t) > 0.5
        })
        .count();
    hits as f64 / n
}

impl LocalizationMetrics {
    /// The terminal table.
    pub fn table(&self) -> String {
        let pct = |v: f64| format!("{:>7.2} %", 100.0 * v);
        let boxes = match self.box_rule {
            BoxRule::Map => format!(
                "threshold {} of the min-max range, {}, box filter {}",
                self.config.threshold,
                match self.config.region {
                    Region::LargestComponent => "largest 8-connected region",
                    Region::AllAbove => "all pixels above threshold",
                },
                self.config
                    .box_filter
                    .map_or("one map cell".to_string(), |k| format!("{k} px")),
            ),
            BoxRule::RefinementCrop => format!(
                "the refinement crop: threshold {REFINE_THRESHOLD} of the mean map's min-max \
                 range, padding {REFINE_PADDING} of the side"
            ),
        };
        let mut s = format!("localization on {} images ({boxes})\n", self.images);
        let [first, second] = self.heads;
        s += &format!("               {first:>8}  {second:>8}    average\n");
        // A model without a fine pass has no fine or averaged prediction: `-`.
        let cell = |v: Option<f64>| v.map_or(format!("{:>9}", "-"), pct);
        for (name, h) in [
            ("loc. accuracy", self.accuracy),
            ("loc. error   ", self.error),
            ("top-1        ", self.top1),
        ] {
            s += &format!(
                "{name}  {} {} {}\n",
                pct(h.coarse),
                cell(h.fine),
                cell(h.average)
            );
        }
        s += &format!("GT-known loc. accuracy   {}\n", pct(self.gt_known));
        s += &format!("mean IoU                 {:>7.4}\n", self.mean_iou);
        s += &format!(
            "centred-box baseline     {} (GT-known)\n",
            pct(self.centered_baseline_gt_known)
        );
        s
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain numbers and strings serialise")
    }
}

/// Localizes the source's images (the first `cfg.limit`, or all) with a trained model and
/// returns the per-image results and the metrics. A source without boxes is refused with a
/// message naming it; so is an image without one.
pub fn localize<B: Backend<Scalar = f32>, M: Attentive<B> + ?Sized>(
    b: &mut B,
    model: &mut M,
    source: &dyn ImageSource,
    cfg: &LocalizeConfig,
) -> Result<(Vec<ImageInference>, LocalizationMetrics)> {
    let n = cfg.limit.map_or(source.len(), |l| l.min(source.len()));
    if n == 0 {
        return Err(Error::config(
            "--limit",
            n,
            "localization needs at least one test image",
        ));
    }
    if source.load(0)?.bbox.is_none() {
        return Err(Error::Data {
            path: source.name(0),
            line: None,
            message: "localization needs bounding boxes, and this dataset has none: use \
                      CUB-200-2011, Stanford Dogs, Stanford Cars or the synthetic set"
                .into(),
        });
    }
    let indices: Vec<usize> = (0..n).collect();
    let results = infer_images(b, model, source, &indices, cfg)?;
    if let Some(r) = results.iter().find(|r| r.truth.is_none()) {
        return Err(Error::Data {
            path: r.name.clone(),
            line: None,
            message: "no bounding box, which localization needs".into(),
        });
    }
    let m = metrics(&results, cfg, model.box_rule(), model.head_names());
    Ok((results, m))
}
