//! The [`Collective`] interface through NCCL, one rank per process and GPU, on the CUDA backend.
//!
//! The collectives are queued on the backend's own stream, so they are ordered after the ops
//! that wrote their tensors and before those that read them, with no event to manage; the
//! host does not wait for them except in [`Collective::barrier`]. (A second, communication
//! stream with events, to overlap the buckets' all-reduce with the rest of backward, is the
//! next step; see docs/distributed.md.)
//!
//! Setting up: rank 0 makes a unique id ([`unique_id`]), the ranks exchange it
//! ([`crate::rendezvous`]), and each makes its communicator ([`NcclCollective::new`]).

use c2f_inception::backend::Tensor;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::{Error, Result};
use cudarc::driver::CudaSlice;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use crate::collective::{Collective, Reduce};

/// The length of NCCL's unique id, what the rendezvous carries.
pub const UNIQUE_ID_BYTES: usize = 128;

fn nccl_error(what: &str, e: cudarc::nccl::result::NcclError) -> Error {
    Error::Library {
        library: "NCCL",
        message: format!("{what}: {:?}", e.0),
    }
}

/// cudarc panics on the first call into a library it cannot load; this makes that an error.
fn check_library() -> Result<()> {
    // SAFETY: only tries to dlopen libnccl.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Library {
            library: "NCCL",
            message: "libnccl could not be loaded; install NCCL 2 (the nvidia-nccl-cu* wheel) \
                      or put libnccl.so on LD_LIBRARY_PATH"
                .into(),
        })
    }
}

/// A new NCCL unique id (rank 0 makes it, once per job).
pub fn unique_id() -> Result<[u8; UNIQUE_ID_BYTES]> {
    check_library()?;
    let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
    Ok(id.internal().map(|c| c as u8))
}

/// One rank's NCCL communicator on a CUDA backend's device and stream.
pub struct NcclCollective {
    comm: Comm,
    /// One value all-reduced by [`Collective::barrier`].
    token: CudaSlice<f32>,
}

impl NcclCollective {
    /// Joins the job `id` (rank 0's [`unique_id`]) as `rank` of `world` on `b`'s device and
    /// stream. Blocks until every rank has joined (NCCL's own rendezvous over the network).
    pub fn new(
        b: &CudaBackend,
        rank: usize,
        world: usize,
        id: &[u8; UNIQUE_ID_BYTES],
    ) -> Result<NcclCollective> {
        check_library()?;
        if rank >= world {
            return Err(Error::Shape(format!(
                "NCCL rank {rank} is outside a world of {world}"
            )));
        }
        // ncclCommInitRank uses the thread's current device.
        b.gpu().context().bind_to_thread()?;
        let stream = b.gpu().stream().clone();
        let id = Id::uninit(id.map(|c| c as std::ffi::c_char));
        let comm = Comm::from_rank(stream.clone(), rank, world, id)
            .map_err(|e| nccl_error(&format!("ncclCommInitRank (rank {rank} of {world})"), e))?;
        Ok(NcclCollective {
            comm,
            token: stream.alloc_zeros(1)?,
        })
    }
}

impl Collective<CudaBackend> for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// `Mean` is NCCL's `ncclAvg` (the sum scaled by `1/world` inside the reduction).
    fn all_reduce(&mut self, b: &mut CudaBackend, t: Tensor, op: Reduce) -> Result<()> {
        if t.len == 0 {
            return Ok(());
        }
        let op = match op {
            Reduce::Sum => ReduceOp::Sum,
            Reduce::Mean => ReduceOp::Avg,
        };
        let mut range = b.device_range(t)?;
        self.comm
            .all_reduce_in_place(&mut range, &op)
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
        Ok(())
    }

    fn broadcast(&mut self, b: &mut CudaBackend, t: Tensor) -> Result<()> {
        if t.len == 0 {
            return Ok(());
        }
        let mut range = b.device_range(t)?;
        self.comm
            .broadcast_in_place(&mut range, 0)
            .map_err(|e| nccl_error("ncclBroadcast", e))?;
        Ok(())
    }

    fn barrier(&mut self, b: &mut CudaBackend) -> Result<()> {
        self.comm
            .all_reduce_in_place(&mut self.token, &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclAllReduce (barrier)", e))?;
        b.synchronize()
    }
}
