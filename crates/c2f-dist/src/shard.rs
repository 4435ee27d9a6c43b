//! Each rank's share of an epoch. Every rank computes the same epoch order from the shared seed
//! (`c2f_train::data::loader::epoch_order`); the order is cut into global batches as one worker
//! would cut it, and each global batch into `world` equal consecutive slices, rank `r` taking
//! slice `r`. So the ranks' shards are disjoint, together they are exactly the single worker's
//! batches, and step `s` of the job sees the same samples as step `s` of one worker with the
//! global batch: the premise of the equivalence test. A rank loads its slice with
//! `Loader::load_batch(indices, epoch)`, whose augmentation depends only on `(seed, epoch,
//! index)`, not on which rank loads it.

use std::ops::Range;

use crate::{DistError, Result};

/// How one rank takes its part of each global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    pub global_batch: usize,
    pub world: usize,
    pub rank: usize,
}

impl ShardPlan {
    /// A global batch that the ranks cannot split evenly is an error naming both numbers.
    pub fn new(global_batch: usize, world: usize, rank: usize) -> Result<ShardPlan> {
        if world == 0 || rank >= world {
            return Err(DistError::Shard(format!(
                "rank {rank} is outside a world of {world}"
            )));
        }
        if global_batch == 0 || !global_batch.is_multiple_of(world) {
            return Err(DistError::Shard(format!(
                "the global batch of {global_batch} does not split evenly over {world} ranks; \
                 choose a multiple of {world}"
            )));
        }
        Ok(ShardPlan {
            global_batch,
            world,
            rank,
        })
    }

    /// Samples per rank and step.
    pub fn local_batch(&self) -> usize {
        self.global_batch / self.world
    }

    /// This rank's positions in a global batch of `len` samples (`len < global_batch` only
    /// for an epoch's last, partial batch): equal slices when `len` divides, else the first
    /// `len % world` ranks take one more.
    pub fn slice_of(&self, len: usize) -> Range<usize> {
        let (base, extra) = (len / self.world, len % self.world);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }

    /// This rank's batches of an epoch whose order is `order`: one per global batch, with the
    /// last partial global batch dropped when `drop_last` (as training does) or split by
    /// [`Self::slice_of`].
    pub fn rank_batches(&self, order: &[usize], drop_last: bool) -> Vec<Vec<usize>> {
        order
            .chunks(self.global_batch)
            .filter(|global| !drop_last || global.len() == self.global_batch)
            .map(|global| global[self.slice_of(global.len())].to_vec())
            .collect()
    }
}
