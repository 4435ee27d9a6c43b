//! One pass of an attention model after its backbone, forward and backward: the attention maps
//! `A = ReLU(conv1x1(F))` (WS-DAN: `ReLU(BN(conv1x1(F)))`), BAP to the normalised part features
//! `P`, the classifier `fc(100·P)`, its loss and the center loss. Coarse2Fine runs one per pass
//! ([`crate::model`]), WS-DAN one for its raw, crop and drop passes in turn ([`crate::wsdan`]).

use c2f_inception::backend::{
    Backend, BnMode, BnParams, BnStats, IndexTensor, LinearShape, Tensor,
};
use c2f_inception::cpu::conv::Conv2dShape;
use c2f_inception::network::Network;
use c2f_inception::table::TensorTable;
use c2f_kernels::bap::BapShape;
use c2f_kernels::batch_norm::{BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{CenterLossParams, CenterLossShape, CenterUpdate};
use c2f_kernels::map_select::MapShape;
use c2f_kernels::{Real, Result};

use crate::task::Task;

/// WS-DAN's scale of the normalised part features before the classifier.
pub const FEATURE_SCALE: f64 = 100.0;

/// The features' `(channels, height, width)`: Mixed_6e's output.
pub(crate) fn feature_shape(net: &Network) -> (usize, usize, usize) {
    let f = net.graph.activations[net.graph.mixed_6e];
    (f.channels, f.height, f.width)
}

/// A model's head parameters and their gradients, flat in `table`'s order.
#[derive(Clone, Copy)]
pub(crate) struct HeadTensors<'a> {
    pub table: &'a TensorTable,
    pub params: Tensor,
    pub grads: Tensor,
}

impl HeadTensors<'_> {
    pub fn param(&self, index: usize) -> Tensor {
        let e = self.table.entry(index);
        self.params.slice(e.offset, e.len())
    }

    pub fn grad(&self, index: usize) -> Tensor {
        let e = self.table.entry(index);
        self.grads.slice(e.offset, e.len())
    }

    /// Table entry `index`'s parameter and gradient.
    pub fn pair(&self, index: usize) -> [Tensor; 2] {
        [self.param(index), self.grad(index)]
    }

    /// The classifier `(weight, bias)` (table indices) as [`PassArgs`] takes it: the weight, its
    /// gradient and the bias's gradient, then the bias.
    pub fn classifier(&self, (w, b): (usize, usize)) -> ([Tensor; 3], Tensor) {
        ([self.param(w), self.grad(w), self.grad(b)], self.param(b))
    }
}

/// The shapes of a pass's ops, from the features' `(channels, height, width)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassShapes {
    pub conv: Conv2dShape,
    pub bn: BatchNormShape,
    pub bap: BapShape,
    pub head: LinearShape,
    pub center: CenterLossShape,
    pub maps: MapShape,
}

impl PassShapes {
    /// `outputs` classifier outputs; `center_rows` centers in the center bank.
    pub fn new(
        batch: usize,
        maps: usize,
        (channels, height, width): (usize, usize, usize),
        outputs: usize,
        center_rows: usize,
    ) -> PassShapes {
        PassShapes {
            conv: Conv2dShape {
                batch,
                in_channels: channels,
                height,
                width,
                out_channels: maps,
                kernel: (1, 1),
                stride: (1, 1),
                padding: (0, 0),
            },
            bn: BatchNormShape {
                batch,
                channels: maps,
                height,
                width,
            },
            bap: BapShape {
                batch,
                maps,
                channels,
                height,
                width,
            },
            head: LinearShape {
                batch,
                inputs: maps * channels,
                outputs,
            },
            center: CenterLossShape {
                batch,
                dim: maps * channels,
                classes: center_rows,
            },
            maps: MapShape {
                batch,
                maps,
                height,
                width,
            },
        }
    }
}

/// The attention BN's parameters and running statistics, its weight's and bias's gradients, and
/// the mode it runs in.
#[derive(Clone, Copy)]
pub(crate) struct AttentionBn {
    pub params: BnParams,
    pub grads: [Tensor; 2],
    pub mode: BnMode,
}

/// What a pass's attention, BAP, head and losses read and write beside its own buffers: the
/// shapes and the tensors of the shared attention conv and of the pass's classifier (handles,
/// so that a pass can be borrowed mutably beside them).
#[derive(Clone, Copy)]
pub(crate) struct PassArgs {
    pub shapes: PassShapes,
    /// The center loss, `None` for a pass without one.
    pub center_loss: Option<CenterTerm>,
    pub task: Task,
    /// The attention conv's weight and its gradient.
    pub attention: [Tensor; 2],
    /// WS-DAN's BN after the attention conv.
    pub attention_bn: Option<AttentionBn>,
    /// The classifier's weight and its gradient, and its bias's gradient.
    pub fc: [Tensor; 3],
    pub fc_bias: Tensor,
    pub labels: IndexTensor,
    /// The center loss's labels (WS-DAN's one center per part: all 0).
    pub center_labels: IndexTensor,
    pub targets: Tensor,
}

/// A pass's center loss: its update rate and rule, and the model's 2-value slot its λ is read
/// from ([`write_center_scales`]).
#[derive(Clone, Copy)]
pub(crate) struct CenterTerm {
    pub update: CenterUpdate,
    pub scales: Tensor,
}

/// Writes the λ of `params` into a model's center-loss `scales` slot, as the ops of a batch of
/// `batch` read it (a host write, before the step).
pub(crate) fn write_center_scales<B: Backend>(
    b: &mut B,
    scales: Tensor,
    params: &CenterLossParams,
    batch: usize,
) -> Result<()> {
    b.write(scales, &params.scales(batch).map(B::Scalar::from_f64))
}

/// The values of a pass's [`Pass::stats`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassStat {
    /// The head's loss.
    HeadLoss,
    /// The head's right answers: classes equal to their label, or attributes to their target.
    Correct,
    /// The center loss (0 for a pass without one: never written).
    CenterLoss,
}

/// How many values a pass's [`Pass::stats`] holds.
pub(crate) const PASS_STATS: usize = 3;

impl PassStat {
    /// This value's slot in a pass's stats that begin at slot `start` of a model's.
    pub fn at(self, start: usize) -> usize {
        start + self as usize
    }
}

/// What one pass holds beyond its backbone network.
pub(crate) struct Pass {
    pub net: Network,
    pub attention_pre: Tensor,
    pub attention: Tensor,
    pub d_attention: Tensor,
    parts: Tensor,
    norms: Tensor,
    d_parts: Tensor,
    scaled: Tensor,
    d_scaled: Tensor,
    /// Where [`Self::head_forward`] writes the logits and the predictions (a model running one
    /// pass several times points them at each run's own).
    pub logits: Tensor,
    pub predictions: IndexTensor,
    /// Where [`Self::head_forward`] writes its statistics, [`PASS_STATS`] values laid out as
    /// [`PassStat`] says; they stay in the backend's memory until the model reads them.
    pub stats: Tensor,
    d_logits: Tensor,
    pub centers: Tensor,
    /// The attention BN's batch statistics and its input's gradient (WS-DAN).
    bn: Option<(BnStats, Tensor)>,
}

/// A pass's sizes: the batch, the maps, the classifier's outputs and what they predict.
pub(crate) struct PassSizes {
    pub batch: usize,
    pub maps: usize,
    pub outputs: usize,
    pub task: Task,
    /// Whether a BN follows the attention conv.
    pub attention_bn: bool,
}

impl Pass {
    pub fn new<B: Backend>(
        b: &mut B,
        net: Network,
        sizes: &PassSizes,
        part_len: usize,
        centers: Tensor,
        stats: Tensor,
    ) -> Result<Pass> {
        let graph = &net.graph;
        let f = graph.activations[graph.mixed_6e];
        let batch = sizes.batch;
        let maps = batch * sizes.maps * f.height * f.width;
        let parts = batch * part_len;
        let logits = batch * sizes.outputs;
        let predictions = sizes.task.predictions_len(batch, sizes.outputs);
        Ok(Pass {
            attention_pre: b.alloc_activation(maps)?,
            attention: b.alloc_activation(maps)?,
            d_attention: b.alloc_activation(maps)?,
            parts: b.alloc_activation(parts)?,
            norms: b.alloc(batch)?,
            d_parts: b.alloc_activation(parts)?,
            scaled: b.alloc_activation(parts)?,
            d_scaled: b.alloc_activation(parts)?,
            logits: b.alloc(logits)?,
            d_logits: b.alloc(logits)?,
            predictions: b.alloc_index(predictions)?,
            stats,
            centers,
            bn: match sizes.attention_bn {
                true => Some((
                    BnStats {
                        mean: b.alloc(sizes.maps)?,
                        invstd: b.alloc(sizes.maps)?,
                    },
                    b.alloc_activation(maps)?,
                )),
                false => None,
            },
            net,
        })
    }

    /// Attention maps, BAP and the head, after the backbone's forward.
    pub fn attend<B: Backend>(&self, b: &mut B, a: &PassArgs) -> Result<()> {
        let features = self.net.output();
        let s = &a.shapes;
        b.conv2d_forward(&s.conv, features, a.attention[0], self.attention_pre)?;
        match (&a.attention_bn, &self.bn) {
            (Some(bn), Some((saved, _))) => b.batch_norm_forward(
                &s.bn,
                &BatchNormParams::default(),
                bn.mode,
                &bn.params,
                self.attention_pre,
                self.attention,
                saved,
            )?,
            _ => b.relu_forward(self.attention_pre, self.attention)?,
        }
        b.bap_forward(&s.bap, self.attention, features, self.parts, self.norms)?;
        b.axpby(FEATURE_SCALE, self.parts, 0.0, self.scaled)?;
        b.linear_forward(&s.head, self.scaled, a.fc[0], a.fc_bias, self.logits)
    }

    /// [`Self::attend`] and the losses, written to [`Self::stats`] (no host read).
    pub fn head_forward<B: Backend>(&self, b: &mut B, a: &PassArgs) -> Result<()> {
        self.attend(b, a)?;
        let head = &a.shapes.head;
        a.task.loss(
            b,
            head.batch,
            head.outputs,
            (self.logits, a.labels, a.targets),
            self.predictions,
            self.d_logits,
            self.stats.slice(PassStat::HeadLoss.at(0), 2),
        )?;
        match &a.center_loss {
            Some(term) => b.center_loss(
                &a.shapes.center,
                &term.update,
                term.scales,
                self.parts,
                a.center_labels,
                self.centers,
                self.d_parts,
                self.stats.slice(PassStat::CenterLoss.at(0), 1),
            ),
            None => Ok(()),
        }
    }

    /// Backward of [`Self::head_forward`]: parameter gradients accumulate; the features'
    /// gradient lands in the backbone's output gradient and `d_attention` holds the attention
    /// maps' gradient (the fine pass may add to the coarse one's before
    /// [`Self::attention_backward`]).
    pub fn head_backward<B: Backend>(&self, b: &mut B, a: &PassArgs) -> Result<()> {
        let [w, dw, db] = a.fc;
        b.linear_backward(
            &a.shapes.head,
            self.scaled,
            w,
            self.d_logits,
            self.d_scaled,
            dw,
            db,
        )?;
        // d_parts holds the center loss's gradient, and the classifier's adds to it; without a
        // center loss the classifier's is assigned.
        let center_grad = match a.center_loss {
            Some(_) => 1.0,
            None => 0.0,
        };
        b.axpby(FEATURE_SCALE, self.d_scaled, center_grad, self.d_parts)?;
        b.bap_backward(
            &a.shapes.bap,
            self.attention,
            self.net.output(),
            self.parts,
            self.norms,
            self.d_parts,
            self.d_attention,
            self.net.output_grad(),
        )
    }

    /// From `d_attention` through the ReLU (and the BN) and the attention conv: its weight
    /// gradient (and the BN's) accumulates, and its input gradient adds to the backbone output
    /// gradient.
    pub fn attention_backward<B: Backend>(&self, b: &mut B, a: &PassArgs) -> Result<()> {
        let [w, dw] = a.attention;
        let s = &a.shapes;
        let d_pre = match (&a.attention_bn, &self.bn) {
            (Some(bn), Some((saved, d_pre))) => {
                b.batch_norm_backward(
                    &s.bn,
                    &BatchNormParams::default(),
                    bn.mode,
                    &bn.params,
                    saved,
                    self.attention_pre,
                    self.attention,
                    self.d_attention,
                    *d_pre,
                    bn.grads[0],
                    bn.grads[1],
                )?;
                *d_pre
            }
            _ => {
                // ReLU backward in place: the pre-activation buffer is free once forward has
                // read it.
                b.relu_backward(self.attention, self.d_attention, self.attention_pre)?;
                self.attention_pre
            }
        };
        let features = self.net.output();
        b.conv2d_backward_filter(&s.conv, features, d_pre, dw)?;
        b.conv2d_backward_data(&s.conv, d_pre, w, self.net.output_grad(), true)
    }
}
