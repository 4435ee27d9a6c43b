//! The [`Collective`] interface through NCCL, one rank per process and GPU, on the CUDA backend.
//!
//! The collectives run on a communication stream of their own. Each waits (by an event) for
//! the work queued on the backend's compute stream so far; [`Collective::start_all_reduce`]
//! returns there, so a gradient bucket travels while backward goes on, and
//! [`Collective::wait_started`] makes the compute stream wait for the communication stream
//! before SGD reads the gradients. The other collectives wait at once, so to the compute
//! stream they are ordered like its own ops. The host waits only in [`Collective::barrier`].
//!
//! Setting up: rank 0 makes a unique id ([`unique_id`]), the ranks exchange it
//! ([`crate::rendezvous`]), and each makes its communicator ([`NcclCollective::new`]).

use c2f_inception::backend::Tensor;
use c2f_inception::cuda::CudaBackend;
use std::sync::Arc;

use c2f_kernels::{Error, Result};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
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
                      or put libnccl.so on LD_LIBRARY_PATH (tools/cuda-libs.sh)"
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

/// One rank's NCCL communicator on a CUDA backend's device, with its own stream.
pub struct NcclCollective {
    comm: Comm,
    /// The backend's stream, where the tensors are written and read.
    compute: Arc<CudaStream>,
    /// The communicator's stream.
    communication: Arc<CudaStream>,
    /// Recorded on the compute stream for the communication stream to wait on, and the other
    /// way round; made once and re-recorded, so a step makes no driver objects.
    compute_done: CudaEvent,
    communication_done: CudaEvent,
    /// One value all-reduced by [`Collective::barrier`].
    token: CudaSlice<f32>,
}

impl NcclCollective {
    /// Joins the job `id` (rank 0's [`unique_id`]) as `rank` of `world` on `b`'s device, on a
    /// new stream. Blocks until every rank has joined (NCCL's own rendezvous over the network).
    pub fn new(
        b: &CudaBackend,
        rank: usize,
        world: usize,
        id: &[u8; UNIQUE_ID_BYTES],
    ) -> Result<NcclCollective> {
        check_library()?;
        if rank >= world {
            return Err(Error::config(
                "rank",
                rank,
                format!("is outside a world of {world} ranks (0..{world})"),
            ));
        }
        // ncclCommInitRank uses the thread's current device.
        b.gpu().context().bind_to_thread()?;
        let compute = b.gpu().stream().clone();
        let communication = compute.fork()?;
        let id = Id::uninit(id.map(|c| c as std::ffi::c_char));
        let comm = Comm::from_rank(communication.clone(), rank, world, id)
            .map_err(|e| nccl_error(&format!("ncclCommInitRank (rank {rank} of {world})"), e))?;
        let context = compute.context().clone();
        Ok(NcclCollective {
            comm,
            token: compute.alloc_zeros(1)?,
            compute_done: context.new_event(None)?,
            communication_done: context.new_event(None)?,
            compute,
            communication,
        })
    }

    /// Queues `collective` on the communication stream after the compute stream's work so far.
    fn after_compute<T>(
        &mut self,
        what: &str,
        collective: impl FnOnce(&Comm) -> std::result::Result<T, cudarc::nccl::result::NcclError>,
    ) -> Result<()> {
        self.communication_waits_for_compute()?;
        collective(&self.comm).map_err(|e| nccl_error(what, e))?;
        Ok(())
    }

    fn communication_waits_for_compute(&self) -> Result<()> {
        self.compute_done.record(&self.compute)?;
        Ok(self.communication.wait(&self.compute_done)?)
    }
}

impl Collective<CudaBackend> for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce(&mut self, b: &mut CudaBackend, t: Tensor, op: Reduce) -> Result<()> {
        self.start_all_reduce(b, t, op)?;
        self.wait_started(b)
    }

    /// `Mean` is NCCL's `ncclAvg` (the sum scaled by `1/world` inside the reduction).
    fn start_all_reduce(&mut self, b: &mut CudaBackend, t: Tensor, op: Reduce) -> Result<()> {
        if t.len == 0 {
            return Ok(());
        }
        let op = match op {
            Reduce::Sum => ReduceOp::Sum,
            Reduce::Mean => ReduceOp::Avg,
        };
        let mut range = b.device_range(t)?;
        self.after_compute("ncclAllReduce", |comm| {
            comm.all_reduce_in_place(&mut range, &op)
        })
    }

    fn wait_started(&mut self, _b: &mut CudaBackend) -> Result<()> {
        self.communication_done.record(&self.communication)?;
        Ok(self.compute.wait(&self.communication_done)?)
    }

    fn broadcast(&mut self, b: &mut CudaBackend, t: Tensor) -> Result<()> {
        if t.len == 0 {
            return Ok(());
        }
        let mut range = b.device_range(t)?;
        self.after_compute("ncclBroadcast", |comm| {
            comm.broadcast_in_place(&mut range, 0)
        })?;
        self.wait_started(b)
    }

    fn barrier(&mut self, b: &mut CudaBackend) -> Result<()> {
        self.communication_waits_for_compute()?;
        self.comm
            .all_reduce_in_place(&mut self.token, &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclAllReduce (barrier)", e))?;
        self.wait_started(b)?;
        b.synchronize()
    }
}
