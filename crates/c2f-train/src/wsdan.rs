//! WS-DAN (Hu et al. 2019, "See Better Before Looking Closer", arXiv 1901.09891), written once
//! over the runtime's [`Backend`], as this project defines it (docs/method.md):
//!
//! 1. raw pass: backbone to Mixed_6e → `F`; attention `A = ReLU(BN(conv1x1(F)))`, M maps; BAP →
//!    part features `f`; head `fc(100·f)`; cross-entropy, and the center loss of `f` against one
//!    center per part (or per class, `--wsdan-centers`);
//! 2. from the raw pass's maps, per sample: a crop map and a drop map, each drawn by attention
//!    mass; the crop box where the crop map, min-max normalised and up-sampled, is at least θ_c
//!    (padded by a tenth of the side); the crop resized to the input, and the image with the
//!    drop map's region at or above θ_d zeroed (no gradient flows through any of it);
//! 3. crop pass and drop pass: the same backbone, attention, BAP and head on those images, with
//!    their cross-entropies;
//! 4. loss `CE(raw) + CE(crop) + CE(drop) + λ·CL(f)`; the three passes' gradients add, and each
//!    pass's train-mode BatchNorms move the running statistics, raw, crop, drop in that order.
//!    `--wsdan-passes` leaves the crop or the drop pass out, loss and gradient ([`WsDanPasses`]).
//!
//! One backbone network serves the three passes in turn, forward then backward each, so only
//! one pass's activations are alive; the images stay in their own buffer, from which the crop
//! and drop inputs are made. Inference: the raw pass, then the refinement crop from the mean of
//! the maps (θ 0.1, padding a twentieth) through the network again: raw and refined logits.
//!
//! A multi-label model ([`Task::Attributes`]) has sigmoid binary cross-entropy heads; its
//! per-part center loss needs no labels and stays.
//!
//! In bf16 the images, the maps and the augmentation's draws and thresholds are activations,
//! stored in bf16 (the augmentation's kernels read the draws and thresholds in the maps'
//! storage, so a θ or a draw is rounded to 8 significant bits); the logits, losses, statistics,
//! centers and parameters stay f32.

use c2f_inception::backend::{Backend, BnMode, BnParams, IndexTensor, Tensor};
use c2f_inception::network::{sgd_step_by_table, Network, SgdRule};
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::table::TensorTable;
use c2f_kernels::augment::AugmentShape;
use c2f_kernels::center_loss::CenterLossParams;
use c2f_kernels::nvtx;
use c2f_kernels::resize::ResizeShape;
use c2f_kernels::{Error, Real, Result};

pub use crate::config::{WsDanCenters, WsDanPasses};
pub use crate::model::Grads;
use crate::pass::{
    feature_shape, write_center_scales, AttentionBn, CenterTerm, HeadTensors, Pass, PassArgs,
    PassShapes, PassSizes, PassStat, PASS_STATS,
};
use crate::state::{network_state, table_state, Named};
pub use crate::task::Task;

/// θ_c, the crop threshold, is drawn uniform in this range per sample.
pub const CROP_THRESHOLDS: (f64, f64) = (0.4, 0.6);
/// θ_d, the drop threshold, likewise.
pub const DROP_THRESHOLDS: (f64, f64) = (0.2, 0.5);
/// The training crop's padding, as a fraction of the image side.
pub const CROP_PADDING: f64 = 0.1;
/// The refinement crop of inference: the mean map's threshold and the padding.
pub const REFINE_THRESHOLD: f64 = 0.1;
pub const REFINE_PADDING: f64 = 0.05;

#[derive(Debug, Clone, PartialEq)]
pub struct WsDanConfig {
    pub input_size: usize,
    /// Backbone width multiplier (1.0: torchvision's InceptionV3).
    pub width: f64,
    /// Classes, or attributes for [`Task::Attributes`].
    pub classes: usize,
    pub task: Task,
    /// Attention maps M (the paper: 32).
    pub maps: usize,
    pub centers: WsDanCenters,
    /// Whether the step runs the crop and the drop pass.
    pub passes: WsDanPasses,
    pub center_loss: CenterLossParams,
    pub batch: usize,
}

/// How one step picks each sample's crop (or drop) map.
#[derive(Debug, Clone, PartialEq)]
pub enum MapChoice {
    /// Uniform draws in `[0, 1)`, one per sample: its map drawn with probability ∝ the square
    /// root of each map's mass ([`c2f_inception::backend::AugmentOps::maps_by_mass`]).
    ByMass(Vec<f64>),
    /// The maps themselves, each in `[0, maps)` (the golden test's fixed choices).
    Given(Vec<i32>),
    /// Each sample's map `[B, h, w]` itself, in place of one of the raw pass's: the same crop
    /// or drop whatever the raw pass computes (the bf16 step test's, whose maps differ from
    /// f64's beyond any threshold's margin).
    Maps(Vec<f64>),
}

/// Where the step's crop (or drop) maps come from: [`MapChoice`] without its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapSource {
    ByMass,
    Given,
    Maps,
}

/// The random choices of one training step's augmentation, one per sample of the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    pub crop_maps: MapChoice,
    pub drop_maps: MapChoice,
    /// θ_c: the crop keeps the rows and columns where the normalised map is at least this.
    pub crop_thresholds: Vec<f64>,
    /// θ_d: the drop zeroes the pixels where the normalised map is at least this.
    pub drop_thresholds: Vec<f64>,
}

/// Losses of one training step (a pass left out: 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WsDanLosses {
    pub raw: f64,
    pub crop: f64,
    pub drop: f64,
    /// λ times the center loss of the raw pass's part features.
    pub center: f64,
}

impl WsDanLosses {
    pub fn total(&self) -> f64 {
        self.raw + self.crop + self.drop + self.center
    }
}

/// The heads' parameters: where each lies in the table.
struct Heads {
    table: TensorTable,
    attention: usize,
    bn_weight: usize,
    bn_bias: usize,
    fc: (usize, usize),
}

/// The augmentation's buffers: the choices, the maps they pick and the crop boxes.
struct AugmentBuffers {
    /// Per sample, the crop's and the drop's: draws in `[0, 1)`, map indices, maps `[B, h, w]`
    /// and thresholds.
    draws: [Tensor; 2],
    indices: [IndexTensor; 2],
    maps: [Tensor; 2],
    thresholds: [Tensor; 2],
    /// [`REFINE_THRESHOLD`] per sample.
    refine_thresholds: Tensor,
    /// `[y0, x0, y1, x1]` per sample: the training crop's, after inference the refinement's.
    boxes: IndexTensor,
}

/// What [`WsDan::forward_backward_reporting`] tells as gradients become complete.
pub type Reporter<'a, B> = dyn FnMut(&mut B, Grads) -> Result<()> + 'a;

/// Which of the step's passes: the slot of its logits and predictions.
const RAW: usize = 0;
const CROP: usize = 1;
const DROP: usize = 2;

pub struct WsDan {
    pub config: WsDanConfig,
    heads: Heads,
    /// The heads' parameters, gradients and momentum, flat in `heads.table` order.
    pub params: Tensor,
    pub grads: Tensor,
    momentum: Tensor,
    /// The attention BN's running mean and variance, laid out as `running_table`.
    running_table: TensorTable,
    running: Tensor,
    centers: Tensor,
    /// The center loss's λ as its ops read it ([`Self::set_center_lambda`]).
    center_scales: Tensor,
    /// The one pass over the backbone, run as the raw, crop and drop passes in turn.
    pass: Pass,
    images: Tensor,
    labels: IndexTensor,
    /// `[B, A]` 0/1 attribute targets ([`Task::Attributes`]; empty otherwise).
    targets: Tensor,
    /// Every label 0 (one center per part), or `labels` (one per class).
    center_labels: IndexTensor,
    /// Raw, crop and drop (after inference: raw and refined, then unused).
    logits: [Tensor; 3],
    predictions: [IndexTensor; 3],
    /// The raw, crop and drop runs' statistics, [`PASS_STATS`] values each.
    pub stats: Tensor,
    augment: AugmentBuffers,
    /// Whether the crop and the drop maps of the step are drawn by mass (from the draws
    /// [`Self::write_choices`] wrote), picked by the indices it wrote, or written whole.
    map_sources: [MapSource; 2],
    /// After inference: the raw pass's attention maps `[B, M, h, w]`, and their mean
    /// up-sampled to `[B, 1, S, S]` (bilinear).
    raw_maps: Tensor,
    upsampled: Tensor,
}

impl WsDan {
    pub fn new<B: Backend>(b: &mut B, config: WsDanConfig) -> Result<WsDan> {
        for (key, value) in [("maps", config.maps), ("classes", config.classes)] {
            if value == 0 {
                return Err(Error::config(key, value, "WS-DAN needs at least 1"));
            }
        }
        if (config.task, config.centers) == (Task::Attributes, WsDanCenters::PerClass) {
            return Err(Error::config(
                "--wsdan-centers",
                "per-class",
                "an attribute model has no classes to keep centers for: use per-part",
            ));
        }
        let graph = Graph::new(InceptionConfig {
            input_size: config.input_size,
            width: config.width,
            depth: Depth::Mixed6e,
        })?;
        let f = graph.activations[graph.mixed_6e];
        let (batch, m, n, classes) = (config.batch, config.maps, f.channels, config.classes);
        let mut table = TensorTable::default();
        let heads = Heads {
            attention: table.push("attention.weight", vec![m, n, 1, 1]),
            bn_weight: table.push("attention.bn.weight", vec![m]),
            bn_bias: table.push("attention.bn.bias", vec![m]),
            fc: (
                table.push("fc.weight", vec![classes, m * n]),
                table.push("fc.bias", vec![classes]),
            ),
            table,
        };
        let mut running_table = TensorTable::default();
        running_table.push("attention.bn.running_mean", vec![m]);
        running_table.push("attention.bn.running_var", vec![m]);
        let net = Network::new(b, graph, batch)?;
        let centers = b.alloc(center_rows(&config) * m * n)?;
        let sizes = PassSizes {
            batch,
            maps: m,
            outputs: classes,
            task: config.task,
            attention_bn: true,
        };
        // The raw, crop and drop runs' statistics in one tensor, read at once.
        let stats = b.alloc(3 * PASS_STATS)?;
        let pass = Pass::new(b, net, &sizes, m * n, centers, stats.slice(0, PASS_STATS))?;
        let total = heads.table.total();
        let (params, grads, momentum) = (b.alloc(total)?, b.alloc(total)?, b.alloc(total)?);
        let running = b.alloc(running_table.total())?;
        let labels = b.alloc_index(batch)?;
        let center_labels = match config.centers {
            // Allocated zero and never written.
            WsDanCenters::PerPart => b.alloc_index(batch)?,
            WsDanCenters::PerClass => labels,
        };
        let predictions_len = config.task.predictions_len(batch, classes);
        let input = batch * 3 * config.input_size * config.input_size;
        let map_len = batch * f.height * f.width;
        // The augmentation's kernels read the draws and thresholds in the maps' storage.
        let pair = |b: &mut B, len| -> Result<[Tensor; 2]> {
            Ok([b.alloc_activation(len)?, b.alloc_activation(len)?])
        };
        let augment = AugmentBuffers {
            draws: pair(b, batch)?,
            indices: [b.alloc_index(batch)?, b.alloc_index(batch)?],
            maps: pair(b, map_len)?,
            thresholds: pair(b, batch)?,
            refine_thresholds: b.alloc_activation(batch)?,
            boxes: b.alloc_index(4 * batch)?,
        };
        b.fill(
            augment.refine_thresholds,
            B::Scalar::from_f64(REFINE_THRESHOLD),
        )?;
        let center_scales = b.alloc(2)?;
        write_center_scales(b, center_scales, &config.center_loss, batch)?;
        Ok(WsDan {
            stats,
            center_scales,
            logits: [
                pass.logits,
                b.alloc(batch * classes)?,
                b.alloc(batch * classes)?,
            ],
            predictions: [
                pass.predictions,
                b.alloc_index(predictions_len)?,
                b.alloc_index(predictions_len)?,
            ],
            images: b.alloc_activation(input)?,
            targets: b.alloc(config.task.targets_len(batch, classes))?,
            raw_maps: b.alloc_activation(batch * m * f.height * f.width)?,
            upsampled: b.alloc_activation(batch * config.input_size * config.input_size)?,
            heads,
            params,
            grads,
            momentum,
            running_table,
            running,
            centers,
            pass,
            labels,
            center_labels,
            augment,
            map_sources: [MapSource::ByMass; 2],
            config,
        })
    }

    /// The backbone (its parameter tables have torchvision's names).
    pub fn backbone(&self) -> &Network {
        &self.pass.net
    }

    /// The heads' parameter table: `attention.weight`, `attention.bn.weight`,
    /// `attention.bn.bias`, `fc.weight`, `fc.bias`.
    pub fn head_table(&self) -> &TensorTable {
        &self.heads.table
    }

    /// The attention BN's running statistics (state, not parameters), named as in
    /// [`Self::state`].
    pub fn running_stats(&self) -> Vec<Named> {
        table_state(&self.running_table, self.running, "")
    }

    /// The input images `[B, 3, S, S]`, written by the caller before a step; the crop and drop
    /// inputs are made from them.
    pub fn input(&self) -> Tensor {
        self.images
    }

    pub fn labels(&self) -> IndexTensor {
        self.labels
    }

    /// The attribute targets `[B, A]`, written by the caller before a step of a
    /// [`Task::Attributes`] model.
    pub fn targets(&self) -> Tensor {
        self.targets
    }

    /// The center bank, `[1, M·N]` (one center per part) or `[C, M·N]` (per class).
    pub fn center_bank(&self) -> Tensor {
        self.centers
    }

    /// The logits `[B, C]` of the raw, crop and drop passes after a step; after
    /// [`Self::infer`] the first two are the raw and the refined ones.
    pub fn logits(&self) -> [Tensor; 3] {
        self.logits
    }

    /// The predictions `[B]` (attributes: 0/1 answers `[B, A]`) of the raw, crop and drop
    /// passes, written by each training step.
    pub fn predictions(&self) -> [IndexTensor; 3] {
        self.predictions
    }

    /// `[y0, x0, y1, x1]` per sample, in input pixels, half-open: the crop boxes of the last
    /// step, or after [`Self::infer`] the refinement boxes.
    pub fn boxes(&self) -> IndexTensor {
        self.augment.boxes
    }

    /// The crop and the drop map `[B, h, w]` of each sample in the last step (after
    /// [`Self::infer`] the first is the mean map the refinement crop came from).
    pub fn augment_maps(&self) -> [Tensor; 2] {
        self.augment.maps
    }

    /// The attention map's `(height, width)`.
    pub fn map_side(&self) -> (usize, usize) {
        let (_, h, w) = self.feature_shape();
        (h, w)
    }

    /// The raw pass's attention maps `[B, M, h, w]` after [`Self::infer`].
    pub fn attention_maps(&self) -> Tensor {
        self.raw_maps
    }

    /// The mean of the raw pass's attention maps up-sampled to `[B, 1, S, S]` (bilinear), after
    /// [`Self::infer`].
    pub fn upsampled_map(&self) -> Tensor {
        self.upsampled
    }

    fn feature_shape(&self) -> (usize, usize, usize) {
        feature_shape(&self.pass.net)
    }

    /// What each pass reads beside its own buffers; `center`: whether it has the center loss.
    fn pass_args(&self, mode: BnMode, center: bool) -> PassArgs {
        let heads = HeadTensors {
            table: &self.heads.table,
            params: self.params,
            grads: self.grads,
        };
        let running = |i: usize| {
            let e = &self.running_table.entries()[i];
            self.running.slice(e.offset, e.len())
        };
        let [gamma, d_gamma] = heads.pair(self.heads.bn_weight);
        let [beta, d_beta] = heads.pair(self.heads.bn_bias);
        let (fc, fc_bias) = heads.classifier(self.heads.fc);
        PassArgs {
            shapes: PassShapes::new(
                self.config.batch,
                self.config.maps,
                self.feature_shape(),
                self.config.classes,
                center_rows(&self.config),
            ),
            center_loss: center.then_some(CenterTerm {
                update: self.config.center_loss.update(),
                scales: self.center_scales,
            }),
            task: self.config.task,
            attention: heads.pair(self.heads.attention),
            attention_bn: Some(AttentionBn {
                params: BnParams {
                    gamma,
                    beta,
                    running_mean: running(0),
                    running_var: running(1),
                },
                grads: [d_gamma, d_beta],
                mode,
            }),
            fc,
            fc_bias,
            labels: self.labels,
            center_labels: self.center_labels,
            targets: self.targets,
        }
    }

    fn augment_shape(&self) -> AugmentShape {
        let (_, h, w) = self.feature_shape();
        AugmentShape {
            batch: self.config.batch,
            channels: 3,
            height: self.config.input_size,
            width: self.config.input_size,
            map_height: h,
            map_width: w,
        }
    }

    /// Points the pass's logits, predictions and statistics at those of `slot` (raw, crop or
    /// drop).
    fn use_slot(&mut self, slot: usize) {
        self.pass.logits = self.logits[slot];
        self.pass.predictions = self.predictions[slot];
        self.pass.stats = self.stats.slice(slot * PASS_STATS, PASS_STATS);
    }

    /// Where each term of [`WsDanLosses`] (raw, crop, drop, center) lies in [`Self::stats`],
    /// and the raw head's right answers.
    pub fn stat_slots() -> ([usize; 4], usize) {
        let head = |slot: usize| PassStat::HeadLoss.at(slot * PASS_STATS);
        let center = PassStat::CenterLoss.at(RAW * PASS_STATS);
        (
            [head(RAW), head(CROP), head(DROP), center],
            PassStat::Correct.at(RAW * PASS_STATS),
        )
    }

    /// The last step's losses, read from [`Self::stats`].
    pub fn losses<B: Backend>(&self, b: &mut B) -> Result<WsDanLosses> {
        let v = b.read(self.stats)?;
        let [raw, crop, drop, center] = Self::stat_slots().0.map(|i| v[i].to_f64());
        Ok(WsDanLosses {
            raw,
            crop,
            drop,
            center,
        })
    }

    /// Writes the step's thresholds and given map choices (or draws, or maps), checking that
    /// each has one value (or map) per sample and that given maps exist.
    pub(crate) fn write_choices<B: Backend>(
        &mut self,
        b: &mut B,
        aug: &Augmentation,
    ) -> Result<()> {
        let batch = self.config.batch;
        let a = &self.augment;
        let scalars = |v: &[f64]| {
            v.iter()
                .map(|&x| B::Scalar::from_f64(x))
                .collect::<Vec<_>>()
        };
        let thresholds = [&aug.crop_thresholds, &aug.drop_thresholds];
        for ((what, values), t) in ["crop", "drop"].iter().zip(thresholds).zip(a.thresholds) {
            check_count(&format!("{what} thresholds"), values.len(), batch)?;
            b.write(t, &scalars(values))?;
        }
        let choices = [&aug.crop_maps, &aug.drop_maps];
        for (k, (what, choice)) in ["crop", "drop"].iter().zip(choices).enumerate() {
            match choice {
                MapChoice::ByMass(draws) => {
                    check_count(&format!("{what} map draws"), draws.len(), batch)?;
                    b.write(a.draws[k], &scalars(draws))?;
                }
                MapChoice::Given(maps) => {
                    check_count(&format!("{what} maps"), maps.len(), batch)?;
                    let m = self.config.maps;
                    if let Some(bad) = maps.iter().find(|&&i| i < 0 || i as usize >= m) {
                        return Err(Error::Shape(format!(
                            "WS-DAN {what} map {bad}: the model has maps 0..{m}"
                        )));
                    }
                    b.write_index(a.indices[k], maps)?;
                }
                MapChoice::Maps(maps) => {
                    let len = a.maps[k].len;
                    if maps.len() != len {
                        return Err(Error::Shape(format!(
                            "WS-DAN {what} maps: {} values given for {batch} maps of {} pixels",
                            maps.len(),
                            len / batch
                        )));
                    }
                    b.write(a.maps[k], &scalars(maps))?;
                }
            }
        }
        self.map_sources = choices.map(|c| match c {
            MapChoice::ByMass(_) => MapSource::ByMass,
            MapChoice::Given(_) => MapSource::Given,
            MapChoice::Maps(_) => MapSource::Maps,
        });
        Ok(())
    }

    /// From the raw pass's attention maps, before the crop pass overwrites them: each
    /// sample's crop and drop maps (drawn by mass where `aug` does not give them, as they are
    /// where it gives them whole) and the crop boxes.
    fn choose_maps<B: Backend>(&self, b: &mut B, a: &PassArgs) -> Result<()> {
        let s = &a.shapes.maps;
        let buffers = &self.augment;
        for (k, source) in self.map_sources.into_iter().enumerate() {
            if source == MapSource::ByMass {
                b.maps_by_mass(s, self.pass.attention, buffers.draws[k], buffers.indices[k])?;
            }
            if source != MapSource::Maps {
                let (indices, maps) = (buffers.indices[k], buffers.maps[k]);
                b.select_map_forward(s, self.pass.attention, indices, maps)?;
            }
        }
        b.attention_boxes(
            &self.augment_shape(),
            CROP_PADDING,
            buffers.maps[0],
            buffers.thresholds[0],
            buffers.boxes,
        )
    }

    /// One forward and backward of the whole step on [`Self::input`], [`Self::labels`] and
    /// `aug`'s choices: parameter gradients accumulate into the backbone's and the heads'
    /// gradient buffers (zero them first with [`Self::zero_grads`]); the center bank takes its
    /// moving-average step. Returns the losses.
    pub fn forward_backward<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        aug: &Augmentation,
    ) -> Result<WsDanLosses> {
        self.write_choices(b, aug)?;
        self.forward_backward_reporting(b, mode, &mut |_, _| Ok(()))?;
        self.losses(b)
    }

    /// [`Self::forward_backward`] on the choices [`Self::write_choices`] wrote, without
    /// reading the losses (they stay in [`Self::stats`]; a pass left out keeps its zeros),
    /// touching only the backend's memory; calling `ready(b, grads)` as gradients become
    /// complete: `Grads::Heads(0)` once the heads' are (after the last pass's head and attention
    /// backward: the drop pass's, or the last that runs), then `Grads::Backbone(from)` as its
    /// backward goes down the backbone.
    pub fn forward_backward_reporting<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        ready: &mut Reporter<'_, B>,
    ) -> Result<()> {
        let with_center = self.pass_args(mode, true);
        let without = self.pass_args(mode, false);
        let passes = self.config.passes;
        // The gradients are complete in the last pass's backward, the one that reports them.
        let last = match (passes.crop, passes.drop) {
            (_, true) => DROP,
            (true, false) => CROP,
            (false, false) => RAW,
        };
        let mut ready = Some(ready);
        let mut reporter = |slot: usize| if slot == last { ready.take() } else { None };
        b.axpby(1.0, self.images, 0.0, self.pass.net.input())?;
        self.use_slot(RAW);
        let raw_range = nvtx::range("raw pass");
        self.pass.net.forward(b, mode)?;
        self.pass.head_forward(b, &with_center)?;
        nvtx::within("choose maps", || self.choose_maps(b, &with_center))?;
        self.backward(b, mode, &with_center, &mut reporter(RAW))?;
        drop(raw_range);

        let shape = self.augment_shape();
        let (images, input) = (self.images, self.pass.net.input());
        if passes.crop {
            nvtx::within("crop input", || {
                b.crop_resize(&shape, images, self.augment.boxes, input)
            })?;
            self.augmented_pass(b, mode, &without, CROP, &mut reporter(CROP))?;
        }
        if passes.drop {
            let (map, thresholds) = (self.augment.maps[1], self.augment.thresholds[1]);
            nvtx::within("drop input", || {
                b.drop_mask(&shape, map, thresholds, images, input)
            })?;
            self.augmented_pass(b, mode, &without, DROP, &mut reporter(DROP))?;
        }
        Ok(())
    }

    /// The forward and backward of the crop or drop pass (`slot`) on the input already made.
    fn augmented_pass<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        args: &PassArgs,
        slot: usize,
        ready: &mut Option<&mut Reporter<'_, B>>,
    ) -> Result<()> {
        self.use_slot(slot);
        let _range = nvtx::range(if slot == CROP {
            "crop pass"
        } else {
            "drop pass"
        });
        self.pass.net.forward(b, mode)?;
        self.pass.head_forward(b, args)?;
        self.backward(b, mode, args, ready)
    }

    /// The pass's backward from its logits down the backbone; with `ready`, reporting the
    /// heads' gradients complete, then the backbone's as they become so.
    fn backward<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        args: &PassArgs,
        ready: &mut Option<&mut Reporter<'_, B>>,
    ) -> Result<()> {
        nvtx::within("head backward", || self.pass.head_backward(b, args))?;
        nvtx::within("attention backward", || {
            self.pass.attention_backward(b, args)
        })?;
        match ready {
            Some(ready) => {
                ready(b, Grads::Heads(0))?;
                self.pass
                    .net
                    .backward_reporting(b, mode, false, &mut |b, from| {
                        ready(b, Grads::Backbone(from))
                    })
            }
            None => self.pass.net.backward(b, mode, false),
        }
    }

    /// Inference on [`Self::input`]: BatchNorm with running statistics; the raw pass, then the
    /// refinement crop of the mean map through the network again. The raw and refined logits
    /// are then the first two of [`Self::logits`], the refinement boxes in [`Self::boxes`],
    /// and the raw maps and their up-sampled mean in [`Self::attention_maps`] and
    /// [`Self::upsampled_map`].
    pub fn infer<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let mode = BnMode::Inference;
        let args = self.pass_args(mode, false);
        let shape = self.augment_shape();
        let (images, input) = (self.images, self.pass.net.input());
        let (mean, boxes) = (self.augment.maps[0], self.augment.boxes);
        b.axpby(1.0, images, 0.0, input)?;
        self.use_slot(RAW);
        self.pass.net.forward(b, mode)?;
        self.pass.attend(b, &args)?;
        b.axpby(1.0, self.pass.attention, 0.0, self.raw_maps)?;
        b.mean_maps_forward(&args.shapes.maps, self.pass.attention, mean)?;
        let thresholds = self.augment.refine_thresholds;
        b.attention_boxes(&shape, REFINE_PADDING, mean, thresholds, boxes)?;
        let resize = ResizeShape {
            batch: shape.batch,
            channels: 1,
            in_height: shape.map_height,
            in_width: shape.map_width,
            out_height: shape.height,
            out_width: shape.width,
        };
        b.resize_bilinear_forward(&resize, mean, self.upsampled)?;
        b.crop_resize(&shape, images, boxes, input)?;
        self.use_slot(CROP);
        self.pass.net.forward(b, mode)?;
        self.pass.attend(b, &args)
    }

    /// Everything a checkpoint holds: the backbone's state, the heads' parameters, the
    /// attention BN's running statistics, the heads' momentum and the center bank `centers`.
    pub fn state(&self) -> Vec<Named> {
        let mut state = network_state(&self.pass.net);
        state.extend(table_state(&self.heads.table, self.params, ""));
        state.extend(self.running_stats());
        state.extend(table_state(&self.heads.table, self.momentum, "momentum."));
        let n = self.feature_shape().0;
        state.push(Named {
            name: "centers".into(),
            shape: vec![center_rows(&self.config), self.config.maps * n],
            tensor: self.centers,
        });
        state
    }

    pub fn zero_grads<B: Backend>(&self, b: &mut B) -> Result<()> {
        self.pass.net.zero_grads(b)?;
        b.fill(self.grads, num_traits::Zero::zero())
    }

    /// The center loss weight λ of the coming steps (a host write, before the step).
    pub fn set_center_lambda<B: Backend>(&mut self, b: &mut B, lambda: f64) -> Result<()> {
        self.config.center_loss.lambda = lambda;
        let batch = self.config.batch;
        write_center_scales(b, self.center_scales, &self.config.center_loss, batch)
    }

    /// One SGD step with each parameter tensor's own hyper-parameters (see
    /// [`Network::sgd_step_by`]), the backbone's and the heads' alike.
    pub fn sgd_step_by<B: Backend>(&self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        self.pass.net.sgd_step_by(b, rule)?;
        sgd_step_by_table(
            b,
            &self.heads.table,
            [self.params, self.grads, self.momentum],
            rule,
        )
    }
}

/// The center bank's rows: one center per part (one row of M·N), or one per class.
fn center_rows(config: &WsDanConfig) -> usize {
    match config.centers {
        WsDanCenters::PerPart => 1,
        WsDanCenters::PerClass => config.classes,
    }
}

/// An error unless `count` values were given for a batch of `batch`.
fn check_count(what: &str, count: usize, batch: usize) -> Result<()> {
    if count == batch {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "WS-DAN {what}: {count} given for a batch of {batch}"
    )))
}
