//! Data-parallel training for Coarse2Fine: one process per GPU, gradients summed by all-reduce
//! (docs/distributed.md has the design and how to launch).
//!
//! - [`collective`]: the collective interface over the runtime's [`Backend`] (all-reduce,
//!   broadcast from rank 0, barrier), gradient buckets, and the in-process CPU implementation
//!   over threads the tests use; [`nccl`]: the NCCL implementation on the CUDA backend.
//! - [`centers`]: keeping the center-loss banks identical on every rank.
//! - [`launch`]: rank, local rank, world size and master address from the environment
//!   (torchrun, OpenMPI's mpirun, SLURM's srun).
//! - [`rendezvous`]: handing rank 0's 128-byte NCCL unique id to the other ranks, over TCP or
//!   through a file on a shared filesystem.
//! - [`shard`]: each rank's share of an epoch and of the global batch.
//! - [`workers`]: starting one worker process per GPU and waiting for them.
//!
//! [`Backend`]: c2f_inception::backend::Backend

pub mod centers;
pub mod collective;
pub mod launch;
pub mod nccl;
pub mod rendezvous;
pub mod shard;
pub mod workers;

use std::fmt;

/// What can go wrong around the collectives themselves: messages name the variable, rank, port
/// or file at fault.
#[derive(Debug)]
pub enum DistError {
    /// The job cannot be started as asked: no GPU to start a worker on, no free port (a
    /// variable or flag at fault is a [`DistError::Variable`]).
    Launch(String),
    /// A launch environment variable or a launcher flag (`--gpus`, the master address) that is
    /// missing or holds a value that cannot be used: `variable` names it, `value` is what it
    /// holds (`unset` when missing), `message` says what is wrong, naming the variable.
    Variable {
        variable: String,
        value: String,
        message: String,
    },
    /// The ranks could not meet: a timeout, a port in use, a bad rendezvous file.
    Rendezvous(String),
    /// The global batch or the dataset cannot be split over the ranks as asked.
    Shard(String),
    /// A worker process failed (or could not be started).
    Worker { rank: usize, message: String },
}

pub type Result<T> = std::result::Result<T, DistError>;

impl fmt::Display for DistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistError::Launch(m) | DistError::Variable { message: m, .. } => {
                write!(f, "launch environment: {m}")
            }
            DistError::Rendezvous(m) => write!(f, "rendezvous: {m}"),
            DistError::Shard(m) => write!(f, "sharding: {m}"),
            DistError::Worker { rank, message } => write!(f, "rank {rank} failed: {message}"),
        }
    }
}

impl std::error::Error for DistError {}

/// For the trainer, whose errors are `c2f_kernels::Error`: a launch variable's error is a
/// [`c2f_kernels::Error::Config`] naming it; the others keep their message whole.
impl From<DistError> for c2f_kernels::Error {
    fn from(e: DistError) -> Self {
        match e {
            DistError::Variable {
                variable,
                value,
                message,
            } => c2f_kernels::Error::Config {
                key: variable,
                value,
                message,
            },
            e => c2f_kernels::Error::Library {
                library: "c2f-dist",
                message: e.to_string(),
            },
        }
    }
}
