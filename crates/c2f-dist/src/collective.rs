//! The collective interface data-parallel training needs, over the runtime's [`Backend`] and its
//! [`Tensor`] handles: all-reduce (sum or mean), broadcast from rank 0, and a barrier. Two
//! implementations: [`crate::nccl::NcclCollective`] on the CUDA backend, and
//! [`ThreadCollective`], ranks as threads of one process (each with its own backend), for the
//! CPU tests.
//!
//! Gradients are all-reduced in buckets of about [`DEFAULT_BUCKET_BYTES`] ([`plan_buckets`]),
//! each started ([`Collective::start_all_reduce`]) as backward completes it, so that on the GPU
//! a bucket's communication runs while the rest of backward does; the trainer waits for them
//! all ([`Collective::wait_started`]) before SGD. [`all_reduce_bucketed`] does the same for a
//! whole buffer at once.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use c2f_inception::backend::{Backend, Tensor};
use c2f_kernels::{Error, Result};

/// How an all-reduce combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    /// The sum times `1/world`: the gradient of the mean loss over the global batch, when each
    /// rank's gradient is that of the mean over its equal share.
    Mean,
}

/// Collectives among the ranks of one job, each rank holding its own backend `B`. Every rank
/// must make the same calls in the same order with tensors of the same lengths.
pub trait Collective<B: Backend<Scalar = f32>> {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Combines `t` over all ranks, in place; every rank gets the same bits.
    fn all_reduce(&mut self, b: &mut B, t: Tensor, op: Reduce) -> Result<()>;
    /// Starts all-reducing `t` without making the backend's later ops wait for it (NCCL: on
    /// its own stream, after the work queued so far), so backward goes on while a completed
    /// bucket travels; `t` holds the result only after [`Collective::wait_started`]. By
    /// default it is [`Collective::all_reduce`].
    fn start_all_reduce(&mut self, b: &mut B, t: Tensor, op: Reduce) -> Result<()> {
        self.all_reduce(b, t, op)
    }
    /// Makes the backend's later ops wait for every started all-reduce.
    fn wait_started(&mut self, _b: &mut B) -> Result<()> {
        Ok(())
    }
    /// Overwrites `t` on every rank with rank 0's `t`.
    fn broadcast(&mut self, b: &mut B, t: Tensor) -> Result<()>;
    /// Returns once every rank has called it (and, on a device, once this rank's queued work is
    /// done).
    fn barrier(&mut self, b: &mut B) -> Result<()>;
}

/// PyTorch DDP's default bucket size (`bucket_cap_mb = 25`, MiB).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Splits a flat f32 buffer of `len` elements into consecutive ranges of at most
/// `bucket_bytes` bytes each (the last one shorter); together they cover `0..len` in order.
/// A bucket smaller than one f32 is an error.
pub fn plan_buckets(len: usize, bucket_bytes: usize) -> Result<Vec<Range<usize>>> {
    let per_bucket = bucket_bytes / std::mem::size_of::<f32>();
    if per_bucket == 0 {
        return Err(Error::config(
            "bucket_bytes",
            bucket_bytes,
            format!("a gradient bucket of {bucket_bytes} bytes holds no f32 value; use at least 4"),
        ));
    }
    Ok((0..len)
        .step_by(per_bucket)
        .map(|start| start..(start + per_bucket).min(len))
        .collect())
}

/// All-reduces `t` in buckets ([`plan_buckets`]): starts each, last to first (the order
/// backward completes gradients in: the graph's parameters are laid out in forward order), then
/// waits for them all, as the trainer does during backward.
pub fn all_reduce_bucketed<B: Backend<Scalar = f32>>(
    c: &mut (impl Collective<B> + ?Sized),
    b: &mut B,
    t: Tensor,
    op: Reduce,
    bucket_bytes: usize,
) -> Result<()> {
    for bucket in plan_buckets(t.len, bucket_bytes)?.into_iter().rev() {
        c.start_all_reduce(b, t.slice(bucket.start, bucket.len()), op)?;
    }
    c.wait_started(b)
}

/// How long a [`ThreadCollective`] waits for the other ranks before it fails.
pub const DEFAULT_THREAD_TIMEOUT: Duration = Duration::from_secs(120);

/// One rank of an in-process group: the ranks are threads, each with its own backend, and
/// values travel through host memory. Sums run in rank order 0, 1, …, so every rank gets the
/// same bits, run after run.
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
    timeout: Duration,
}

struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
}

/// The collective under way: the values deposited so far, and the result of the last one
/// completed (which every rank has read before the next can complete, since that one needs
/// every rank to arrive).
struct Round {
    deposits: Vec<Option<Vec<f32>>>,
    arrived: usize,
    generation: u64,
    result: Arc<std::result::Result<Vec<f32>, String>>,
}

impl ThreadCollective {
    /// The `world` ranks of one group, rank `r` at index `r`; move each into its thread.
    pub fn group(world: usize) -> Vec<ThreadCollective> {
        let shared = Arc::new(Shared {
            world,
            round: Mutex::new(Round {
                deposits: vec![None; world],
                arrived: 0,
                generation: 0,
                result: Arc::new(Ok(Vec::new())),
            }),
            done: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadCollective {
                rank,
                shared: shared.clone(),
                timeout: DEFAULT_THREAD_TIMEOUT,
            })
            .collect()
    }

    /// How long to wait for the other ranks (default [`DEFAULT_THREAD_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Deposits `value`; the last rank to arrive combines all deposits (in rank order) with
    /// `combine`, and every rank returns the result.
    fn exchange(
        &self,
        what: &str,
        value: Vec<f32>,
        combine: impl FnOnce(&[Vec<f32>]) -> std::result::Result<Vec<f32>, String>,
    ) -> Result<Vec<f32>> {
        let fail = |message: String| Error::Library {
            library: "thread collective",
            message: format!("rank {}: {what}: {message}", self.rank),
        };
        let mut round = self
            .shared
            .round
            .lock()
            .map_err(|_| fail("poisoned".into()))?;
        round.deposits[self.rank] = Some(value);
        round.arrived += 1;
        let generation = round.generation;
        if round.arrived == self.shared.world {
            let deposits: Vec<Vec<f32>> =
                round.deposits.iter_mut().flat_map(Option::take).collect();
            round.result = Arc::new(combine(&deposits));
            round.arrived = 0;
            round.generation += 1;
            self.shared.done.notify_all();
        } else {
            let (waited, timeout) = self
                .shared
                .done
                .wait_timeout_while(round, self.timeout, |r| r.generation == generation)
                .map_err(|_| fail("poisoned".into()))?;
            round = waited;
            if timeout.timed_out() {
                let missing: Vec<usize> = (0..self.shared.world)
                    .filter(|&r| round.deposits[r].is_none())
                    .collect();
                return Err(fail(format!(
                    "ranks {missing:?} did not arrive within {} s",
                    self.timeout.as_secs_f64()
                )));
            }
        }
        round.result.as_ref().clone().map_err(fail)
    }
}

/// The deposits' common length, or an error naming the ranks' lengths.
fn common_len(deposits: &[Vec<f32>]) -> std::result::Result<usize, String> {
    let len = deposits[0].len();
    if deposits.iter().all(|d| d.len() == len) {
        Ok(len)
    } else {
        let lens: Vec<usize> = deposits.iter().map(Vec::len).collect();
        Err(format!("the ranks' tensors differ in length: {lens:?}"))
    }
}

impl<B: Backend<Scalar = f32>> Collective<B> for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce(&mut self, b: &mut B, t: Tensor, op: Reduce) -> Result<()> {
        let world = self.shared.world;
        let reduced = self.exchange("all-reduce", b.read(t)?, |deposits| {
            common_len(deposits)?;
            let mut sum = deposits[0].clone();
            for d in &deposits[1..] {
                sum.iter_mut().zip(d).for_each(|(s, v)| *s += v);
            }
            if op == Reduce::Mean {
                let scale = 1.0 / world as f32;
                sum.iter_mut().for_each(|s| *s *= scale);
            }
            Ok(sum)
        })?;
        b.write(t, &reduced)
    }

    fn broadcast(&mut self, b: &mut B, t: Tensor) -> Result<()> {
        let root = self.exchange("broadcast", b.read(t)?, |deposits| {
            common_len(deposits)?;
            Ok(deposits[0].clone())
        })?;
        b.write(t, &root)
    }

    fn barrier(&mut self, _b: &mut B) -> Result<()> {
        self.exchange("barrier", Vec::new(), |_| Ok(Vec::new()))
            .map(drop)
    }
}
