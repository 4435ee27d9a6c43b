//! Data-parallel glue (docs/distributed.md): a rank's collective, its share of the global batch,
//! its epoch's batch slices, and what it adds to each step (the gradients' all-reduce in buckets
//! as backward completes them, the center banks' sync, the global loss terms).

use std::ops::Range;

use c2f_dist::centers::CenterSync;
use c2f_dist::collective::{plan_buckets, Collective, Reduce, DEFAULT_BUCKET_BYTES};
use c2f_dist::shard::ShardPlan;
use c2f_inception::backend::{Backend, Tensor};
use c2f_kernels::Result;

use super::trainee::Trainee;
use crate::config::TrainConfig;
use crate::data::loader::{Batch, Epoch, Prefetched, Skipped};

/// One rank's part in a data-parallel job (docs/distributed.md): the collective that joins it
/// to the other ranks, and the size of the buckets its gradients are all-reduced in.
pub struct DataParallel<'a, B: Backend<Scalar = f32>> {
    pub collective: &'a mut dyn Collective<B>,
    pub bucket_bytes: usize,
}

impl<'a, B: Backend<Scalar = f32>> DataParallel<'a, B> {
    /// With PyTorch DDP's bucket size, 25 MiB.
    pub fn new(collective: &'a mut dyn Collective<B>) -> Self {
        DataParallel {
            collective,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    /// This rank's share of the global batch `cfg.batch`; an error unless it splits evenly.
    pub fn plan(&self, cfg: &TrainConfig) -> Result<ShardPlan> {
        Ok(ShardPlan::new(cfg.batch, self.world_size(), self.rank())?)
    }
}

/// `cfg` with the batch this process's model runs at: the global batch over the ranks.
pub fn rank_config<B: Backend<Scalar = f32>>(
    cfg: &TrainConfig,
    dp: Option<&DataParallel<'_, B>>,
) -> Result<TrainConfig> {
    Ok(match dp {
        Some(dp) => TrainConfig {
            batch: dp.plan(cfg)?.local_batch(),
            ..cfg.clone()
        },
        None => cfg.clone(),
    })
}

/// An epoch's batches: the loader's own epoch for one worker, this rank's slices of the global
/// batches for a data-parallel rank.
pub(super) enum EpochBatches {
    Whole(Epoch),
    Slices(Prefetched),
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match self {
            EpochBatches::Whole(epoch) => epoch.next().map(Ok),
            EpochBatches::Slices(slices) => slices.next(),
        }
    }
}

impl EpochBatches {
    /// The images skipped as unreadable (a rank's slices skip none: one is an error).
    pub(super) fn finish(self) -> Vec<Skipped> {
        match self {
            EpochBatches::Whole(epoch) => epoch.finish().skipped,
            EpochBatches::Slices(_) => Vec::new(),
        }
    }
}

/// What a data-parallel rank adds to the loop: the collective, the center banks' sync and each
/// gradient buffer's buckets.
pub(super) struct RankStep<'d, 'a, B: Backend<Scalar = f32>> {
    dp: &'d mut DataParallel<'a, B>,
    centers: Option<CenterSync>,
    buckets: Vec<GradBuckets>,
}

/// One gradient buffer split into buckets (ascending), all-reduced last bucket first as
/// backward completes them.
struct GradBuckets {
    grads: Tensor,
    plan: Vec<Range<usize>>,
    /// How many buckets, counted from the last, this step has started.
    started: usize,
}

impl<'d, 'a, B: Backend<Scalar = f32>> RankStep<'d, 'a, B> {
    /// Gives every rank rank 0's state (fresh weights, or the checkpoint all ranks loaded).
    pub(super) fn new<M: Trainee<B>>(
        b: &mut B,
        dp: &'d mut DataParallel<'a, B>,
        model: &M,
    ) -> Result<Self> {
        for t in model.state() {
            dp.collective.broadcast(b, t.tensor)?;
        }
        // A bank shared by both passes is listed twice: it is synchronised once.
        let mut banks = model.center_banks();
        banks.dedup();
        let centers = if banks.is_empty() {
            None
        } else {
            Some(CenterSync::new(b, &banks)?)
        };
        let bucket_bytes = dp.bucket_bytes;
        let buckets = model
            .grads()
            .into_iter()
            .map(|grads| {
                Ok(GradBuckets {
                    grads,
                    plan: plan_buckets(grads.len, bucket_bytes)?,
                    started: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(RankStep {
            dp,
            centers,
            buckets,
        })
    }

    /// Starts the mean all-reduce of every bucket of gradient buffer `buffer` that lies at or
    /// above `from`, now complete, not started yet.
    pub(super) fn grads_ready(&mut self, b: &mut B, buffer: usize, from: usize) -> Result<()> {
        let g = &mut self.buckets[buffer];
        while let Some(bucket) = g
            .plan
            .len()
            .checked_sub(g.started + 1)
            .map(|k| g.plan[k].clone())
            .filter(|bucket| bucket.start >= from)
        {
            let part = g.grads.slice(bucket.start, bucket.len());
            self.dp.collective.start_all_reduce(b, part, Reduce::Mean)?;
            g.started += 1;
        }
        Ok(())
    }

    /// Before the step's forward (the buckets' count starts again: a step whose capture failed
    /// part way may have started some).
    pub(super) fn before_step(&mut self, b: &mut B) -> Result<()> {
        self.buckets.iter_mut().for_each(|g| g.started = 0);
        match &self.centers {
            Some(centers) => centers.before_step(b),
            None => Ok(()),
        }
    }

    /// Sums a step's statistics (`stats`, in place) over the ranks on the device: the loss
    /// terms' sum of the ranks' means over equal shares (the reader divides by the world), and
    /// the correct count, the same on every rank.
    pub(super) fn all_reduce_stats(&mut self, b: &mut B, stats: Tensor) -> Result<()> {
        self.dp.collective.all_reduce(b, stats, Reduce::Sum)
    }

    /// Between backward and SGD: the gradients' mean over the ranks (any bucket backward did
    /// not report is started now, then all are waited for), and the center banks' summed
    /// updates.
    pub(super) fn after_backward(&mut self, b: &mut B) -> Result<()> {
        for buffer in 0..self.buckets.len() {
            self.grads_ready(b, buffer, 0)?;
            self.buckets[buffer].started = 0;
        }
        self.dp.collective.wait_started(b)?;
        match &self.centers {
            Some(centers) => centers.after_step(self.dp.collective, b),
            None => Ok(()),
        }
    }

    pub(super) fn barrier(&mut self, b: &mut B) -> Result<()> {
        self.dp.collective.barrier(b)
    }
}
