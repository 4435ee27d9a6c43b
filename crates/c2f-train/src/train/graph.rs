//! How the loop runs a sequence of device work it repeats with the same shapes (a training step,
//! an evaluation batch's inference): op by op, or captured once into a CUDA graph and replayed
//! ([`c2f_inception::backend::Buffers::capture_ops`]).

use c2f_inception::backend::Backend;
use c2f_inception::cuda::CapturedOps;
use c2f_kernels::{Error, Result};

/// The first run goes op by op (it makes every buffer, launcher and plan the graph needs), the
/// second is captured and replayed, and so are all later ones: the work's shapes are fixed
/// (the training loader drops an epoch's last partial batch, evaluation pads its last batch)
/// and every value that changes between runs is written to the backend's memory before each.
/// A backend that records nothing (the CPU's), `--no-cuda-graph`, or work holding an op a graph
/// cannot hold (one warning naming it) stays op by op.
pub struct DeviceGraph {
    /// What the work is, for the warning: "training step", "evaluation".
    what: &'static str,
    state: State,
}

enum State {
    Eager,
    WarmUp,
    Capture,
    Replay(CapturedOps),
}

impl DeviceGraph {
    /// Replaying `what` once it can when `enabled`, else always op by op.
    pub fn new(what: &'static str, enabled: bool) -> DeviceGraph {
        let state = if enabled { State::WarmUp } else { State::Eager };
        DeviceGraph { what, state }
    }

    /// Whether the work is replayed from a captured graph.
    pub fn replays(&self) -> bool {
        matches!(self.state, State::Replay(_))
    }

    /// Runs the device work `work` of model `name` once.
    pub fn run<B: Backend<Scalar = f32>>(
        &mut self,
        b: &mut B,
        name: &str,
        work: &mut dyn FnMut(&mut B) -> Result<()>,
    ) -> Result<()> {
        match &self.state {
            State::Eager => work(b),
            State::WarmUp => {
                work(b)?;
                self.state = State::Capture;
                Ok(())
            }
            State::Capture => match b.capture_ops(work) {
                Ok(Some(ops)) => {
                    b.replay_ops(&ops)?;
                    self.state = State::Replay(ops);
                    Ok(())
                }
                Ok(None) => {
                    self.state = State::Eager;
                    work(b)
                }
                Err(Error::Capture { op, reason }) => {
                    eprintln!(
                        "{name}: the {} runs op by op, not as a CUDA graph: {op} cannot be \
                         captured ({reason})",
                        self.what
                    );
                    self.state = State::Eager;
                    work(b)
                }
                Err(e) => Err(e),
            },
            State::Replay(ops) => match b.replay_ops(ops) {
                // A buffer the graph addresses was replaced (a shape first met since, e.g. in
                // an evaluation): capture the work again.
                Err(Error::Capture { .. }) => {
                    self.state = State::Capture;
                    self.run(b, name, work)
                }
                replayed => replayed,
            },
        }
    }
}
