//! The training loop.

use std::fs;
use std::path::Path;
use std::time::Instant;

use c2f_inception::backend::{Backend, BnMode, Tensor};
use c2f_inception::network::SgdRule;
use c2f_kernels::error::check_labels;
use c2f_kernels::nvtx;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::{Error, Result};

use super::evaluate::{evaluate, Evaluation};
use super::graph::DeviceGraph;
use super::loaders::{test_loader, train_loader};
use super::metrics::{EpochTally, Report};
use super::parallel::{rank_config, DataParallel, EpochBatches, RankStep};
use super::progress::progress_bar;
use super::resume::{checkpoint_path, resumes, start_or_resume};
use super::trainee::{BatchShare, StepStats, Trainee};
use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{LearningRates, RunOptions, TrainConfig};
use crate::data::spec::OpenedData;
use crate::state::Named;
use crate::task::Task;

/// [`fit`] as one rank of a data-parallel job when `dp` is given: the model must run at the
/// batch [`rank_config`] gives. Each rank trains on its slice of every global batch, the
/// gradients are averaged and the center banks synced between backward and SGD, so the ranks
/// take one worker's steps; rank 0's state is broadcast first. Only rank 0 logs, draws the
/// progress bar, evaluates and writes metrics and checkpoints (the others wait at a barrier)
/// and returns the accuracy; the others return `None`. Logged losses and training accuracy are
/// the global batch's.
pub fn fit<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    model: &mut M,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
) -> Result<Option<Evaluation>> {
    let plan = dp.as_deref().map(|dp| dp.plan(cfg)).transpose()?;
    let leader = plan.is_none_or(|p| p.rank == 0);
    let world = plan.map_or(1, |p| p.world);
    let share = match plan {
        None => BatchShare::whole(cfg.batch),
        Some(p) => BatchShare {
            global: cfg.batch,
            slice: p.slice_of(cfg.batch),
            rank: p.rank,
            world: p.world,
        },
    };
    if leader {
        fs::create_dir_all(&run.dir).map_err(|e| Error::io(&run.dir, e))?;
    }
    let ckpt = checkpoint_path(&run.dir);
    let train_loader = train_loader(cfg, data.train.clone())?;
    let test_loader = if leader {
        Some(test_loader(
            &rank_config(cfg, dp.as_deref())?,
            data.test.clone(),
        )?)
    } else {
        None
    };
    let state = model.state();
    let (name, loss_terms) = (model.name(), model.loss_terms());
    let mut meta = start_or_resume(b, cfg, run, data, &train_loader, &*model, leader)?;
    let mut ranked = match dp {
        Some(dp) => Some(RankStep::new(b, dp, model)?),
        None => None,
    };
    let mut pending = PendingStats::new(b, model.stats(), run.log_every, world)?;
    let rates = LearningRates::new(b)?;
    let sgd_rule = cfg.sgd_rule(&rates);
    let mut graph = DeviceGraph::new("training step", run.cuda_graph);
    let mut eval_graph = DeviceGraph::new("evaluation", run.cuda_graph);
    let mut report = match test_loader {
        Some(test) => {
            let names = (loss_terms, model.head_names());
            Some(Report::open(&run.dir, names, test, meta.epoch)?)
        }
        None => None,
    };
    let mode = cfg.bn.mode();
    let steps_per_epoch = train_loader.batches_per_epoch();
    let mut draw = SplitMix64(meta.rng);
    let mut last_evaluation = None;
    // A resumed run's checkpoint is good until this run writes another.
    let mut last_good = (meta.step > 0).then_some((meta.epoch, meta.step));
    for epoch in meta.epoch..cfg.epochs {
        let first_batch = meta.batch_in_epoch;
        let start = Instant::now();
        let bar = progress_bar(
            run.progress && leader,
            steps_per_epoch,
            first_batch,
            cfg.batch,
            name,
            epoch,
        );
        let mut loader_epoch = match plan {
            None => EpochBatches::Whole(train_loader.epoch_from(epoch as u64, first_batch)),
            Some(plan) => {
                let order = train_loader.order(epoch as u64);
                let mut slices = plan.rank_batches(&order, true);
                slices.drain(..first_batch.min(slices.len()));
                EpochBatches::Slices(train_loader.load_batches(epoch as u64, slices))
            }
        };
        // The rate of the epoch's last step, for its record: a run resumed after the epoch's
        // last step but before its end takes no step in it.
        let mut lr = cfg.learning_rate(epoch, first_batch.saturating_sub(1), steps_per_epoch);
        let mut images_this_run = 0usize;
        for (k, batch) in nvtx::each("wait for batch", &mut loader_epoch).enumerate() {
            let batch = batch?;
            // The device backs this up with a NaN loss; here the error names the label.
            if model.task() == Task::Classes {
                check_labels(&batch.labels, cfg.classes)?;
            }
            let batch_index = first_batch + k;
            let step_range = nvtx::range(format_args!("{name} step {}", meta.step + 1));
            lr = cfg.learning_rate(epoch, batch_index, steps_per_epoch);
            // The host's part of the step: every value it gives the step, written before the
            // step's device work, which may be a replay of a captured graph.
            nvtx::within("forward and backward", || {
                rates.write(b, cfg, lr)?;
                let lambda = cfg.center_lambda_at(epoch, batch_index, steps_per_epoch);
                model.set_center_lambda(b, lambda)?;
                model.write_step_inputs(b, &batch, &mut draw, meta.step, &share)
            })?;
            let stats = pending.stats.tensor;
            graph.run(b, name, &mut |b| {
                device_step(b, &mut *model, ranked.as_mut(), stats, (mode, &sgd_rule))
            })?;
            meta.step += 1;
            let images = batch.labels.len() * world;
            pending.push(b, (meta.step, epoch, batch_index), images)?;
            images_this_run += images;
            meta.batch_in_epoch = batch_index + 1;
            meta.rng = draw.0;
            let checkpoint_due =
                run.checkpoint_every > 0 && meta.step.is_multiple_of(run.checkpoint_every);
            if pending.full() || checkpoint_due || run.stop_after == Some(meta.step) {
                let checked = (name, loss_terms, last_good, ckpt.as_path());
                pending.flush(b, &mut meta.epoch_sums, checked)?;
            }
            bar.inc(images as u64);
            if checkpoint_due {
                if leader {
                    let _range = nvtx::range("checkpoint");
                    save_checkpoint(b, name, &ckpt, &state, &meta, last_good)?;
                }
                last_good = Some((epoch, meta.step));
                if let Some(r) = &mut ranked {
                    r.barrier(b)?;
                }
            }
            drop(step_range);
            if run.stop_after == Some(meta.step) {
                bar.finish_and_clear();
                return Ok(None);
            }
        }
        let checked = (name, loss_terms, last_good, ckpt.as_path());
        pending.flush(b, &mut meta.epoch_sums, checked)?;
        bar.finish_and_clear();
        let skipped = loader_epoch.finish();
        let seconds = start.elapsed().as_secs_f64();
        if let Some(report) = &mut report {
            let tally = EpochTally {
                epoch,
                lr,
                cuda_graph: graph.replays(),
                images: images_this_run,
                seconds,
                skipped: &skipped,
            };
            let _range = nvtx::range("evaluate");
            let evaluation =
                report.epoch_end((b, &mut eval_graph), model, cfg, run, data, &meta, &tally)?;
            last_evaluation = evaluation.or(last_evaluation);
        }
        meta.epoch = epoch + 1;
        meta.batch_in_epoch = 0;
        meta.epoch_sums.iter_mut().for_each(|s| *s = 0.0);
        if leader {
            nvtx::within("checkpoint", || {
                save_checkpoint(b, name, &ckpt, &state, &meta, last_good)
            })?;
        }
        last_good = Some((epoch + 1, meta.step));
        if let Some(r) = &mut ranked {
            r.barrier(b)?;
        }
    }
    match (last_evaluation, &report) {
        (Some(a), _) => Ok(Some(a)),
        // A resumed run that had already finished its epochs: evaluate what it holds.
        (None, Some(report)) => {
            evaluate(b, model, &report.test, cfg.classes, &mut eval_graph).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// A step's device work, which touches only the backend's memory: forward and backward, the
/// data-parallel hooks (the center banks' sync, the statistics' and the gradients' all-reduce,
/// all on the device) and SGD, with BatchNorm in `mode` and each tensor's SGD group from
/// `sgd_rule`.
fn device_step<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    model: &mut M,
    mut ranked: Option<&mut RankStep<'_, '_, B>>,
    stats: Tensor,
    (mode, sgd_rule): (BnMode, &SgdRule<'_>),
) -> Result<()> {
    if let Some(r) = ranked.as_deref_mut() {
        r.before_step(b)?;
    }
    nvtx::within("forward and backward", || {
        model.step(
            b,
            mode,
            &mut |b, buffer, from| match ranked.as_deref_mut() {
                Some(r) => r.grads_ready(b, buffer, from),
                None => Ok(()),
            },
        )
    })?;
    if let Some(r) = ranked {
        nvtx::within("all-reduce stats", || r.all_reduce_stats(b, stats))?;
        nvtx::within("all-reduce gradients", || r.after_backward(b))?;
    }
    nvtx::within("sgd", || model.sgd_step(b, sgd_rule))
}

/// Builds a model with `build` at this process's batch, initialises it with `init` unless the
/// run resumes from a checkpoint (in a data-parallel job only rank 0: [`fit`] broadcasts its
/// state), and trains it with [`fit`].
pub(super) fn build_and_fit<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    cfg: &TrainConfig,
    run: &RunOptions,
    data: &OpenedData,
    dp: Option<&mut DataParallel<'_, B>>,
    build: impl FnOnce(&mut B, &TrainConfig) -> Result<M>,
    init: impl FnOnce(&mut B, &M) -> Result<()>,
) -> Result<Option<Evaluation>> {
    let mut model = build(b, &rank_config(cfg, dp.as_deref())?)?;
    if !resumes(run) && dp.as_ref().is_none_or(|dp| dp.rank() == 0) {
        init(b, &model)?;
    }
    fit(b, &mut model, cfg, run, data, dp)
}

/// The steps whose statistics are still on the device: each step's [`StepStats`] copied to its
/// row of `rows` (no host read), read back together every `capacity` steps, at checkpoints and
/// at the epoch's end, then checked and added to the epoch sums row by row as one read per step
/// would, so the sums do not depend on how often they are read.
struct PendingStats {
    stats: StepStats,
    rows: Tensor,
    capacity: usize,
    /// The pending steps' (step, epoch, batch) and images.
    steps: Vec<((u64, usize, usize), usize)>,
    /// The ranks whose loss means the all-reduced stats sum.
    world: usize,
}

impl PendingStats {
    fn new<B: Backend<Scalar = f32>>(
        b: &mut B,
        stats: StepStats,
        capacity: usize,
        world: usize,
    ) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Config {
                key: "--log-every".to_string(),
                value: capacity.to_string(),
                message: "must be at least 1".to_string(),
            });
        }
        let rows = b.alloc(capacity * stats.tensor.len)?;
        Ok(PendingStats {
            stats,
            rows,
            capacity,
            steps: Vec::with_capacity(capacity),
            world,
        })
    }

    /// Keeps the step just taken, `at` (step, epoch, batch), on `images` images.
    fn push<B: Backend<Scalar = f32>>(
        &mut self,
        b: &mut B,
        at: (u64, usize, usize),
        images: usize,
    ) -> Result<()> {
        let len = self.stats.tensor.len;
        let row = self.rows.slice(self.steps.len() * len, len);
        b.axpby(1.0, self.stats.tensor, 0.0, row)?;
        self.steps.push((at, images));
        Ok(())
    }

    fn full(&self) -> bool {
        self.steps.len() == self.capacity
    }

    /// Reads the pending steps back (one read) and adds each to `sums` (the loss terms, the
    /// right answers, the images); stops at the first loss term that is not finite, naming
    /// its step ([`check_finite`] says what `checked` is).
    fn flush<B: Backend<Scalar = f32>>(
        &mut self,
        b: &mut B,
        sums: &mut [f64],
        checked: (&str, &[&str], Option<(usize, u64)>, &Path),
    ) -> Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        let _range = nvtx::range("read stats");
        let len = self.stats.tensor.len;
        let values = b.read(self.rows.slice(0, self.steps.len() * len))?;
        let terms = self.stats.losses.len();
        for (row, &(at, images)) in values.chunks(len).zip(&self.steps) {
            let losses: Vec<f64> = self
                .stats
                .losses
                .iter()
                .map(|&slot| row[slot] as f64 / self.world as f64)
                .collect();
            check_finite(checked, &losses, at)?;
            for (sum, v) in sums.iter_mut().zip(&losses) {
                *sum += v;
            }
            sums[terms] += row[self.stats.correct].round() as f64;
            sums[terms + 1] += images as f64;
        }
        self.steps.clear();
        Ok(())
    }
}

/// Stops the run of model `name` at the first loss term (named by `terms`) that is not finite,
/// `at` (step, epoch, batch), saying on stderr which checkpoint is kept (`last_good`: its epoch
/// and step, if any was written; `ckpt` its file).
fn check_finite(
    (name, terms, last_good, ckpt): (&str, &[&str], Option<(usize, u64)>, &Path),
    losses: &[f64],
    (step, epoch, batch): (u64, usize, usize),
) -> Result<()> {
    let Some((term, &value)) = terms.iter().zip(losses).find(|(_, v)| !v.is_finite()) else {
        return Ok(());
    };
    eprintln!(
        "{name}: stopped in epoch {}, batch {batch}; {}",
        epoch + 1,
        kept(last_good, ckpt)
    );
    Err(Error::Divergence {
        step: step as usize,
        term: format!("{name} loss term `{term}`"),
        value,
    })
}

/// Writes the checkpoint; where the state holds a value that is not finite ([`checkpoint::save`]
/// refuses it), says on stderr which checkpoint is kept.
fn save_checkpoint<B: Backend<Scalar = f32>>(
    b: &mut B,
    name: &str,
    ckpt: &Path,
    state: &[Named],
    meta: &CheckpointMeta,
    last_good: Option<(usize, u64)>,
) -> Result<()> {
    checkpoint::save(b, ckpt, state, meta).inspect_err(|e| {
        if matches!(e, Error::Divergence { .. }) {
            eprintln!("{name}: stopped; {}", kept(last_good, ckpt));
        }
    })
}

/// Which checkpoint a stopped run keeps: `last_good` (its epoch and step), if this run wrote one.
fn kept(last_good: Option<(usize, u64)>, ckpt: &Path) -> String {
    match last_good {
        Some((e, s)) => format!(
            "the last good checkpoint, {} (epoch {e}, step {s}), is kept",
            ckpt.display()
        ),
        None => "no checkpoint was written".to_string(),
    }
}
