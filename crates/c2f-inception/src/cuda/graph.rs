//! A sequence of the backend's ops captured once into a CUDA graph and replayed: one launch for
//! the whole sequence, where running it eagerly launches every kernel and library call from the
//! host ([`c2f_kernels::device::capture_graph`] underneath).
//!
//! What the captured ops need must exist before the capture: the buffers, each op's launcher
//! (made on its first eager run), every convolution's plan and workspace and the `fc`'s vector
//! of ones. So the sequence runs once eagerly first (a warm-up step); an op that would allocate
//! during the capture is refused with [`Error::Capture`], as is a host read or write (the loss
//! ops write their losses to device slots, which the host reads after the replay). What an op
//! takes by
//! value (shapes, dropout's seed, momentum) is fixed at the capture: every replay uses the
//! captured values, so anything that changes from step to step lives in device memory (the SGD
//! rate, the center loss's λ and dropout's step are read from slots the host writes first).

use std::sync::atomic::{AtomicU64, Ordering};

use c2f_kernels::device::{capture_graph, CapturedGraph};
use c2f_kernels::{Error, Result};

use super::CudaBackend;

/// A new backend's [`CudaBackend::capture`] identity.
pub(super) fn next_backend_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Ops captured by [`CudaBackend::capture`], for [`CudaBackend::replay`] on the same backend.
pub struct CapturedOps {
    graph: CapturedGraph,
    /// The backend whose buffers the graph addresses.
    backend: u64,
    /// The cuDNN workspaces, `fc` vectors of ones and bf16 conversion scratch made before the
    /// capture: one made since replaced a buffer the graph addresses.
    scratch_made: usize,
}

impl CudaBackend {
    /// Captures the ops `work` runs on this backend into a CUDA graph instead of running them;
    /// [`Self::replay`] runs them. `work` fails with [`Error::Capture`] at an op that a graph
    /// cannot hold (see the module documentation), and the capture with it.
    pub fn capture(
        &mut self,
        work: impl FnOnce(&mut CudaBackend) -> Result<()>,
    ) -> Result<CapturedOps> {
        self.bind()?;
        let stream = self.gpu.stream().clone();
        let graph = capture_graph(&stream, || work(self))?;
        Ok(CapturedOps {
            graph,
            backend: self.id,
            scratch_made: self.scratch_made(),
        })
    }

    /// Queues one run of `ops` on the backend's stream, on what the buffers hold now. Refused
    /// for ops captured on another backend, and once a new convolution shape or a larger `fc`
    /// batch has replaced a scratch buffer the ops use (capture them again).
    pub fn replay(&mut self, ops: &CapturedOps) -> Result<()> {
        let refuse = |reason: &str| {
            Err(Error::Capture {
                op: "replaying captured ops".into(),
                reason: reason.into(),
            })
        };
        if ops.backend != self.id {
            return refuse("they were captured on another backend, whose buffers they address");
        }
        if ops.scratch_made != self.scratch_made() {
            return refuse(
                "a cuDNN workspace, the fc's vector of ones or a conversion scratch buffer they \
                 use was replaced since the capture (a shape first met after it); capture them \
                 again",
            );
        }
        self.bind()?;
        ops.graph.launch()
    }

    fn scratch_made(&self) -> usize {
        self.conv.workspaces_made() + self.linear.ones_made() + self.conversions.made
    }
}
