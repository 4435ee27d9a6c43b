//! What the loop asks of a model: [`Trainee`], one step's outcome, and which part of the global
//! batch a step sees.

use std::ops::Range;

use c2f_inception::backend::{Backend, BnMode, IndexTensor, Staged, Tensor};
use c2f_inception::network::SgdRule;
use c2f_kernels::nvtx;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::Result;

use super::evaluate::{batch_probabilities, COARSE_FINE};
use super::graph::DeviceGraph;
use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::Batch;
use crate::state::Named;
use crate::task::{attribute_targets, Task};
use crate::upsampler::UpsamplerOrigin;

/// Where a model's step leaves its statistics: in `tensor`, in the backend's memory, read by
/// the loop when it chooses (a captured step cannot read the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepStats {
    pub tensor: Tensor,
    /// Each loss term's slot, in [`Trainee::loss_terms`] order.
    pub losses: Vec<usize>,
    /// The slot of the (coarse) head's right answers: samples classified right, or for
    /// attributes right (sample, attribute) answers.
    pub correct: usize,
}

/// Which part of a step's global batch this process's batch is: all of it for one worker,
/// slice `rank` of `world` for a data-parallel rank (`c2f_dist::shard::ShardPlan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchShare {
    pub global: usize,
    pub slice: Range<usize>,
    pub rank: usize,
    pub world: usize,
}

impl BatchShare {
    /// One worker's: the whole batch.
    pub fn whole(batch: usize) -> BatchShare {
        BatchShare {
            global: batch,
            slice: 0..batch,
            rank: 0,
            world: 1,
        }
    }
}

/// Called during a step's backward as gradients become complete: `ready(b, buffer, from)` says
/// that [`Trainee::grads`]`[buffer]` holds its final values from element `from` to its end, so
/// a data-parallel rank can start all-reducing that part while backward goes on.
pub type GradsReady<'a, B> = dyn FnMut(&mut B, usize, usize) -> Result<()> + 'a;

/// A model the loop can train, evaluate and checkpoint.
pub trait Trainee<B: Backend<Scalar = f32>> {
    /// The model's name in checkpoints, run folders and metrics
    /// ([`ModelKind::name`](super::ModelKind::name)).
    fn name(&self) -> &'static str;
    /// The names of the loss terms [`Trainee::step`] leaves in [`Trainee::stats`].
    fn loss_terms(&self) -> &'static [&'static str];
    /// Where [`Trainee::step`] leaves its losses and right answers.
    fn stats(&self) -> StepStats;
    /// What its two heads' predictions are called, where it has two.
    fn head_names(&self) -> [&'static str; 2] {
        COARSE_FINE
    }
    /// Every tensor a checkpoint holds.
    fn state(&self) -> Vec<Named>;
    /// Writes what step `step` (counting all steps) takes from the host into the model's
    /// buffers: `batch`, and the random choices per sample, drawn from `draw` for the whole
    /// global batch with `share`'s slice kept, so data-parallel ranks together do what one
    /// worker does. The host's part of a step ends here, so that [`Trainee::step`] can be
    /// captured.
    fn write_step_inputs(
        &mut self,
        b: &mut B,
        batch: &Batch,
        draw: &mut SplitMix64,
        step: u64,
        share: &BatchShare,
    ) -> Result<()>;
    /// Forward and backward of the batch [`Trainee::write_step_inputs`] wrote (gradients zeroed
    /// first), its statistics left in [`Trainee::stats`]. `ready` hears of each part of the
    /// gradients as it becomes complete.
    fn step(&mut self, b: &mut B, mode: BnMode, ready: &mut GradsReady<'_, B>) -> Result<()>;
    /// The gradient buffers [`Trainee::step`] fills, all-reduced between the ranks before SGD.
    fn grads(&self) -> Vec<Tensor>;
    /// State each rank's step updates from its own samples, which must then be made the same
    /// on every rank (Coarse2Fine's center banks, `c2f_dist::centers`), in the order of the
    /// `center_*` loss terms.
    fn center_banks(&self) -> Vec<Tensor> {
        Vec::new()
    }
    /// Writes the center loss weight λ of the coming steps (its warmup) where the step reads it
    /// (a host write, before the step); models without one ignore it.
    fn set_center_lambda(&mut self, _b: &mut B, _lambda: f64) -> Result<()> {
        Ok(())
    }
    /// One SGD step, each parameter tensor with the hyper-parameters `rule` gives it.
    fn sgd_step(&mut self, b: &mut B, rule: &SgdRule<'_>) -> Result<()>;
    /// Where inference reads a full batch of images.
    fn eval_input(&self) -> Tensor;
    /// Inference on the images in [`Trainee::eval_input`], each head's logits left in
    /// [`Trainee::eval_logits`]: device work only, so that it can be captured.
    fn infer(&mut self, b: &mut B) -> Result<()>;
    /// Each head's logits after [`Trainee::infer`]: coarse (raw), then fine (refined) if any.
    fn eval_logits(&self) -> Vec<Tensor>;
    /// Classes, or attributes, per image.
    fn outputs(&self) -> usize;
    /// Class probabilities `[B·C]` (attributes: each one's probability `[B·A]`) per head
    /// (coarse, then fine if any) for a full batch of images, op by op.
    fn probabilities(&mut self, b: &mut B, images: &[f32]) -> Result<Vec<Vec<f64>>> {
        let outputs = self.outputs();
        let mut eager = DeviceGraph::new("inference", false);
        batch_probabilities(b, self, images, outputs, &mut eager)
    }
    /// What the heads predict.
    fn task(&self) -> Task;
    /// Where a fresh run's up-sampler starts, for its checkpoint (`None`: the model has none).
    fn upsampler_origin(&self, _cfg: &TrainConfig, _run: &RunOptions) -> Option<UpsamplerOrigin> {
        None
    }
}

/// Puts a batch's images, labels and (attributes) 0/1 targets into a model's `input`,
/// `labels` and `targets`: staged and taken at once
/// ([`c2f_inception::backend::Buffers::stage`]; on a GPU through page-locked memory on a copy
/// stream).
pub(super) fn write_batch<B: Backend<Scalar = f32>>(
    b: &mut B,
    batch: &Batch,
    task: Task,
    (input, labels, targets): (Tensor, IndexTensor, Tensor),
) -> Result<()> {
    let _range = nvtx::range("write batch");
    let target_values = attribute_targets(&batch.attributes);
    let mut parts = vec![
        Staged::Values(input, &batch.images),
        Staged::Indices(labels, &batch.labels),
    ];
    if task == Task::Attributes {
        parts.push(Staged::Values(targets, &target_values));
    }
    b.stage(&parts)?;
    b.take_staged()
}
