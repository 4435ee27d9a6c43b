//! Pretraining of the learnable up-sampler (the paper's "Pre-training of the deconvolutional
//! network"): so that its random start does not feed noisy gradients into the pretrained
//! backbone, it first learns to up-sample on synthetic pairs.
//!
//! - A pair is a random low-resolution map of the attention-map size for the chosen input side
//!   and, as its target, that map resized to the input side by bilinear, bicubic or nearest
//!   interpolation ([`crate::interpolate`]), one third each (pair `k` uses method `k mod 3`).
//! - Pairs are generated on the fly from `(seed, index)` ([`pair`]), never stored; the held-out
//!   pairs come from another stream of the same seed.
//! - The maps ([`random_map`]) imitate attention maps, `ReLU(conv1x1(features))` of a backbone:
//!   non-negative, spatially smooth (the features are a deep layer's, whose receptive fields
//!   overlap heavily), with one to a few peaks (the parts a map attends) on a background that the
//!   ReLU clips to exact zeros, at varying overall strength. So: 1–4 anisotropic Gaussian blobs
//!   anywhere on the map (edges included), widths 0.5–3 cells, plus a weak smooth-less noise
//!   field, through a ReLU, times a log-uniform strength in `[0.5, 2]`.
//! - L2 loss (mean squared error over the output pixels), SGD with momentum (the backend's
//!   `sgd_step`), an epoch over the pairs in a shuffled order, the last short batch dropped.
//!
//! A run's up-sampler starts from [`upsampler_origin`]: with
//! [`UpsamplerWeights::Pretrained`] (the default of `c2f train --weights`), the weights shipped
//! for its input side ([`shipped`]) or, for a side without, its own [`PretrainConfig::short`]
//! pretraining at the start ([`start_upsampler`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use c2f_inception::backend::{Backend, Tensor};
use c2f_inception::table::TensorTable;
use c2f_inception::weights::write_atomically;
use c2f_kernels::rng::{splitmix64_output, SplitMix64};
use c2f_kernels::sgd::{check_learning_rate, SgdParams};
use c2f_kernels::{Error, Result};
use rayon::prelude::*;

use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::epoch_order;
use crate::interpolate::{resize, Interpolation};
use crate::upsampler::{
    attention_map_side, default_channels, init_params, load_into, save, Upsampler, UpsamplerKind,
    UpsamplerOrigin, UpsamplerShape, UpsamplerWeights,
};

/// The pretrained up-sampler files shipped in `c2f`, by input side: what
/// `c2f pretrain-upsampler --device cpu --size S --pairs 4096 --epochs 4` ([`PretrainConfig::short`])
/// wrote on the project's CPU (`docs/method.md`). Each fits the [`default_channels`] stack of its
/// side, the one `c2f train` builds.
const SHIPPED: [(usize, &[u8]); 2] = [
    (299, include_bytes!("../weights/upsampler-299.safetensors")),
    (448, include_bytes!("../weights/upsampler-448.safetensors")),
];

/// The shipped pretrained up-sampler file for input side `size`, if `c2f` has one.
pub fn shipped(size: usize) -> Option<&'static [u8]> {
    SHIPPED.iter().find(|(s, _)| *s == size).map(|(_, b)| *b)
}

/// The default learning rate for `h × w` maps: 0.05 at 3 × 3 (input 75), falling as 1/(h·w)
/// (0.0016 at 299, 0.00067 at 448), a fit to rates tried at four sides (docs/experiments.md):
/// at 0.05 the up-sampler at 299 settled on a constant output (held-out L2 0.034, where 0.001
/// reaches 0.0025).
pub fn default_lr((h, w): (usize, usize)) -> f64 {
    (0.45 / (h * w) as f64).min(0.05)
}

#[derive(Debug, Clone, PartialEq)]
pub struct PretrainConfig {
    /// The model's input side `S`: the targets' size; the maps' size follows from it.
    pub input_size: usize,
    /// Channels between the transposed convolutions; `None`: [`default_channels`], what
    /// `c2f train` builds for the same input side.
    pub channels: Option<Vec<usize>>,
    /// Training pairs per epoch (paper: 60,000).
    pub pairs: usize,
    /// Held-out pairs for the per-epoch error (rounded up to whole batches).
    pub held_out: usize,
    /// Paper: 100.
    pub epochs: usize,
    pub batch: usize,
    /// `None`: [`default_lr`] of the maps.
    pub lr: Option<f64>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Where the weights go (written atomically after every epoch); `None`: not saved.
    pub output: Option<PathBuf>,
}

impl PretrainConfig {
    /// The paper's length (60,000 pairs, 100 epochs) and our optimiser defaults.
    pub fn new(input_size: usize) -> Self {
        PretrainConfig {
            input_size,
            channels: None,
            pairs: 60_000,
            held_out: 1024,
            epochs: 100,
            batch: 32,
            lr: None,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
            output: None,
        }
    }

    /// The shipped weights' recipe, and what a run pretrains at its start for a side without
    /// them: 4,096 pairs for 4 epochs (16,384 pairs, 0.3% of the paper's 6 million), which the
    /// CPU runs in minutes at 299 and a GPU in seconds.
    pub fn short(input_size: usize) -> Self {
        PretrainConfig {
            pairs: 4096,
            epochs: 4,
            ..PretrainConfig::new(input_size)
        }
    }

    fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::config("--batch", 0, "must be at least 1"));
        }
        if self.pairs < self.batch {
            return Err(Error::config(
                "--pairs",
                self.pairs,
                format!("must be at least the batch, {}", self.batch),
            ));
        }
        if self.held_out == 0 {
            return Err(Error::config("held_out", 0, "must be at least 1"));
        }
        if let Some(lr) = self.lr.filter(|lr| !(*lr > 0.0 && lr.is_finite())) {
            return Err(Error::config("--lr", lr, "must be positive"));
        }
        Ok(())
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    pub held_out_loss: f64,
    pub pairs_per_second: f64,
    pub seconds: f64,
}

/// What the caller hears while pretraining runs: every step (for a progress bar) and every
/// epoch's end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    Step {
        epoch: usize,
        /// 1-based, of `steps`.
        step: usize,
        steps: usize,
        loss: f64,
    },
    Epoch(EpochReport),
}

/// A [`Progress`] sink that prints one line per epoch.
pub fn print_epochs(p: &Progress) {
    if let Progress::Epoch(e) = p {
        println!(
            "upsampler epoch {:>3}  train L2 {:.5}  held-out L2 {:.5}  {:.0} pairs/s",
            e.epoch, e.train_loss, e.held_out_loss, e.pairs_per_second
        );
    }
}

#[derive(Debug, Clone)]
pub struct PretrainReport {
    /// Held-out L2 of the untrained up-sampler (its initialisation).
    pub initial_held_out: f64,
    pub epochs: Vec<EpochReport>,
    /// The up-sampler's parameter table and the trained values.
    pub table: TensorTable,
    pub params: Vec<f32>,
}

impl PretrainReport {
    /// Held-out L2 after the last epoch (the initial one when no epoch ran).
    pub fn final_held_out(&self) -> f64 {
        self.epochs
            .last()
            .map_or(self.initial_held_out, |e| e.held_out_loss)
    }
}

/// A random attention-like map `[h, w]` (see the module's notes), non-negative.
pub fn random_map(h: usize, w: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let blobs = 1 + rng.below(4) as usize;
    let blobs: Vec<[f64; 5]> = (0..blobs)
        .map(|_| {
            [
                rng.uniform(-0.5, h as f64 - 0.5),
                rng.uniform(-0.5, w as f64 - 0.5),
                rng.uniform(0.5, 3.0),
                rng.uniform(0.5, 3.0),
                rng.uniform(0.2, 1.0),
            ]
        })
        .collect();
    let strength = (rng.uniform(0.5f64.ln(), 2.0f64.ln())).exp();
    (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f64, (i % w) as f64);
            let v: f64 = blobs
                .iter()
                .map(|&[cy, cx, sy, sx, a]| {
                    a * (-0.5 * (((y - cy) / sy).powi(2) + ((x - cx) / sx).powi(2))).exp()
                })
                .sum();
            let noise = rng.uniform(-0.1, 0.1);
            strength * (v + noise - 0.05).max(0.0)
        })
        .collect()
}

/// Pair `index` of the stream `seed`: the map `[h, w]`, its target `[size, size]` and the
/// interpolation that made it (`index mod 3`).
pub fn pair(
    seed: u64,
    index: usize,
    (h, w): (usize, usize),
    size: usize,
) -> Result<(Vec<f32>, Vec<f32>, Interpolation)> {
    let mut rng = SplitMix64(splitmix64_output(seed, index as u64 + 1));
    let map = random_map(h, w, &mut rng);
    let method = Interpolation::ALL[index % 3];
    let target = resize(method, 1, (h, w), (size, size), &map)?;
    let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    Ok((narrow(map), narrow(target), method))
}

/// The held-out stream: another seed, the same generator.
fn held_out_seed(seed: u64) -> u64 {
    splitmix64_output(seed ^ 0x4845_4c44_4f55_5421, 1)
}

/// Device buffers of one pretraining run.
struct Run {
    upsampler: Upsampler,
    params: Tensor,
    grads: Tensor,
    momentum: Tensor,
    input: Tensor,
    target: Tensor,
    d_input: Tensor,
    map: (usize, usize),
    size: usize,
    batch: usize,
}

impl Run {
    /// Writes the pairs `indices` of stream `seed` into the input and target buffers.
    fn load<B: Backend<Scalar = f32>>(
        &self,
        b: &mut B,
        seed: u64,
        indices: &[usize],
    ) -> Result<()> {
        let pairs: Vec<_> = indices
            .par_iter()
            .map(|&k| pair(seed, k, self.map, self.size))
            .collect::<Result<_>>()?;
        let (mut input, mut target) = (Vec::new(), Vec::new());
        for (m, t, _) in pairs {
            input.extend(m);
            target.extend(t);
        }
        b.write(self.input, &input)?;
        b.write(self.target, &target)
    }

    /// Forward, and the loss gradient into the up-sampler's output gradient; returns the loss.
    fn forward_loss<B: Backend<Scalar = f32>>(&self, b: &mut B) -> Result<f64> {
        self.upsampler.forward(b, self.params, self.input)?;
        let (out, d) = (self.upsampler.output(), self.upsampler.output_grad());
        // d = (2/N)·(y − t), the gradient of mean((y − t)²); the loss is then (N/4)·Σ d².
        let n = out.len as f64;
        let c = 2.0 / n;
        b.axpby(c, out, 0.0, d)?;
        b.axpby(-c, self.target, 1.0, d)?;
        let sum: f64 = b.read(d)?.iter().map(|&v| (v as f64).powi(2)).sum();
        Ok(n / 4.0 * sum)
    }

    fn held_out<B: Backend<Scalar = f32>>(
        &self,
        b: &mut B,
        seed: u64,
        count: usize,
    ) -> Result<f64> {
        let batches = count.div_ceil(self.batch);
        let mut sum = 0.0;
        for i in 0..batches {
            let indices: Vec<usize> = (i * self.batch..(i + 1) * self.batch).collect();
            self.load(b, held_out_seed(seed), &indices)?;
            sum += self.forward_loss(b)?;
        }
        Ok(sum / batches as f64)
    }
}

/// Pretrains a learnable up-sampler for `cfg.input_size` on the backend `b`, reporting to
/// `progress`, saving to `cfg.output` after every epoch, and returns the figures and weights.
pub fn pretrain_upsampler<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &PretrainConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<PretrainReport> {
    cfg.validate()?;
    let map = attention_map_side(cfg.input_size)?;
    let channels = cfg
        .channels
        .clone()
        .unwrap_or_else(|| default_channels(map.0, cfg.input_size));
    let upsampler = Upsampler::new(
        b,
        UpsamplerShape {
            batch: cfg.batch,
            map,
            output: cfg.input_size,
            kind: UpsamplerKind::Learnable,
            channels,
        },
    )?;
    let table = upsampler.table().clone();
    let total = table.total();
    let input_len = upsampler.input_len();
    // The maps, targets and input gradient are the up-sampler's activations (bf16 in bf16).
    let run = Run {
        params: b.alloc(total)?,
        grads: b.alloc(total)?,
        momentum: b.alloc(total)?,
        input: b.alloc_activation(input_len)?,
        target: b.alloc_activation(upsampler.output().len)?,
        d_input: b.alloc_activation(input_len)?,
        upsampler,
        map,
        size: cfg.input_size,
        batch: cfg.batch,
    };
    b.write(run.params, &init_params(&table))?;
    let initial_held_out = run.held_out(b, cfg.seed, cfg.held_out)?;
    let lr = cfg.lr.unwrap_or_else(|| default_lr(map));
    let sgd = SgdParams::new(cfg.momentum, cfg.weight_decay);
    // One rate for the whole run, in the slot the SGD op reads it from.
    check_learning_rate(lr)?;
    let lr_slot = b.alloc(1)?;
    b.write(lr_slot, &[lr as f32])?;
    let steps = cfg.pairs / cfg.batch;
    let mut epochs = Vec::new();
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let order = epoch_order(cfg.pairs, cfg.seed, epoch as u64, true);
        let mut sum = 0.0;
        for (step, indices) in order.chunks_exact(cfg.batch).enumerate() {
            run.load(b, cfg.seed, indices)?;
            b.fill(run.grads, 0.0)?;
            let loss = run.forward_loss(b)?;
            if !loss.is_finite() {
                eprintln!(
                    "up-sampler pretraining: stopped in epoch {}, step {}; lower the learning \
                     rate {lr}",
                    epoch + 1,
                    step + 1,
                );
                return Err(Error::Divergence {
                    step: epoch * steps + step + 1,
                    term: "up-sampler pretraining loss".into(),
                    value: loss,
                });
            }
            run.upsampler
                .backward(b, run.params, run.grads, run.input, run.d_input)?;
            b.sgd_step(&sgd, lr_slot, run.params, run.grads, run.momentum)?;
            sum += loss;
            progress(&Progress::Step {
                epoch: epoch + 1,
                step: step + 1,
                steps,
                loss,
            });
        }
        let seconds = start.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: sum / steps as f64,
            held_out_loss: run.held_out(b, cfg.seed, cfg.held_out)?,
            pairs_per_second: (steps * cfg.batch) as f64 / seconds,
            seconds,
        };
        if let Some(path) = &cfg.output {
            save(path, &table, &b.read(run.params)?)?;
        }
        progress(&Progress::Epoch(report));
        epochs.push(report);
    }
    Ok(PretrainReport {
        initial_held_out,
        epochs,
        params: b.read(run.params)?,
        table,
    })
}

/// The file in a run's folder that the up-sampler of [`UpsamplerWeights::Pretrained`] starts
/// from, for input side `size`.
pub fn start_file(dir: &Path, size: usize) -> PathBuf {
    dir.join(format!("upsampler-{size}.safetensors"))
}

/// Where the up-sampler of a fresh Coarse2Fine run with `cfg` and `run` starts; `None` for the
/// fixed bilinear one, which has no parameters (unless weights are asked for, which loading
/// then refuses).
pub fn upsampler_origin(cfg: &TrainConfig, run: &RunOptions) -> Option<UpsamplerOrigin> {
    let origin = match &run.upsampler_weights {
        Some(UpsamplerWeights::File(path)) => UpsamplerOrigin::File { path: path.clone() },
        Some(UpsamplerWeights::Pretrained) => {
            let path = start_file(&run.dir, cfg.input_size);
            match shipped(cfg.input_size) {
                Some(_) => UpsamplerOrigin::Shipped { path },
                None => UpsamplerOrigin::Pretrained { path },
            }
        }
        None => match &run.init_from {
            Some(path) => UpsamplerOrigin::Checkpoint { path: path.clone() },
            None => UpsamplerOrigin::Fresh,
        },
    };
    (cfg.upsampler == UpsamplerKind::Learnable || run.upsampler_weights.is_some()).then_some(origin)
}

/// Fills the `upsampler.*` entries of `table` in `heads` (laid out as `table`) as `origin`
/// says, for input side `size`, and says where they came from on stdout: a shipped file is
/// first copied into the run's folder; [`UpsamplerOrigin::Pretrained`] pretrains on `b` by
/// [`PretrainConfig::short`] unless an earlier start in the same folder left the file. Fresh
/// and checkpoint starts leave `heads` alone.
pub fn start_upsampler<B: Backend<Scalar = f32>>(
    b: &mut B,
    origin: &UpsamplerOrigin,
    size: usize,
    table: &TensorTable,
    heads: &mut [f32],
) -> Result<()> {
    let (path, from) = match origin {
        UpsamplerOrigin::Fresh | UpsamplerOrigin::Checkpoint { .. } => return Ok(()),
        UpsamplerOrigin::File { path } => (path, "from".to_string()),
        UpsamplerOrigin::Shipped { path } => {
            let bytes = shipped(size).ok_or_else(|| {
                Error::config("--size", size, "c2f ships no pretrained up-sampler for it")
            })?;
            create_parent(path)?;
            write_atomically(path, bytes)?;
            (
                path,
                format!("pretrained for {size}², shipped in c2f, copied to"),
            )
        }
        UpsamplerOrigin::Pretrained { path } if path.exists() => (
            path,
            format!("pretrained for {size}² by an earlier start, in"),
        ),
        UpsamplerOrigin::Pretrained { path } => {
            println!("up-sampler: c2f ships none for {size}²; pretraining it (4,096 pairs × 4)");
            let report = pretrain_upsampler(b, &PretrainConfig::short(size), &mut print_epochs)?;
            create_parent(path)?;
            save(path, &report.table, &report.params)?;
            let (before, after) = (report.initial_held_out, report.final_held_out());
            let from =
                format!("pretrained for {size}² (held-out L2 {before:.5} → {after:.5}), saved to");
            (path, from)
        }
    };
    load_into(path, table, heads)?;
    println!("up-sampler: {from} {}", path.display());
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}
