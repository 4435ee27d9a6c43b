//! What a model's heads predict, single-label classes or multi-label attributes, and what
//! follows from it: the loss, the probabilities, the right answers.

use c2f_inception::backend::{Backend, IndexTensor, Tensor};
use c2f_kernels::sigmoid_bce::SigmoidBceShape;
use c2f_kernels::softmax_ce::SoftmaxCeShape;
use c2f_kernels::Result;
use serde::{Deserialize, Serialize};

/// What a model's heads predict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// One class per image: softmax cross-entropy, top-1 accuracy, and (Coarse2Fine) the
    /// center loss.
    #[default]
    Classes,
    /// Independent binary attributes per image (CelebA): sigmoid binary cross-entropy per
    /// attribute, each attribute's accuracy, no center loss.
    Attributes,
}

impl Task {
    /// How many predictions of `outputs` are judged per image: one class, or every attribute.
    pub fn answers_per_image(self, outputs: usize) -> usize {
        match self {
            Task::Classes => 1,
            Task::Attributes => outputs,
        }
    }

    /// Per-output probabilities of `[B, outputs]` logits: a softmax over each row's classes,
    /// or each attribute's sigmoid.
    pub fn probabilities(self, logits: &[f32], outputs: usize) -> Vec<f64> {
        match self {
            Task::Classes => softmax(logits, outputs),
            Task::Attributes => logits
                .iter()
                .map(|&x| c2f_kernels::sigmoid_bce::sigmoid(x as f64))
                .collect(),
        }
    }

    /// The loss of `[B, outputs]` logits against a batch's labels (classes) or 0/1 `targets`
    /// (attributes), its gradient assigned to `dlogits`; `predictions` holds `[B]` classes or
    /// `[B, outputs]` 0/1 answers; `stats` (2 values, left in the backend's memory) the loss and
    /// the right answers: classes equal to their label, or answers equal to their target.
    #[allow(clippy::too_many_arguments)]
    pub fn loss<B: Backend>(
        self,
        b: &mut B,
        batch: usize,
        outputs: usize,
        (logits, labels, targets): (Tensor, IndexTensor, Tensor),
        predictions: IndexTensor,
        dlogits: Tensor,
        stats: Tensor,
    ) -> Result<()> {
        match self {
            Task::Classes => b.softmax_cross_entropy(
                &SoftmaxCeShape {
                    batch,
                    classes: outputs,
                },
                logits,
                labels,
                1.0,
                predictions,
                dlogits,
                stats,
            ),
            Task::Attributes => b.sigmoid_binary_cross_entropy(
                &SigmoidBceShape { batch, outputs },
                logits,
                targets,
                1.0,
                predictions,
                dlogits,
                stats,
            ),
        }
    }

    /// The predictions buffer's length for a batch.
    pub fn predictions_len(self, batch: usize, outputs: usize) -> usize {
        batch * self.answers_per_image(outputs)
    }

    /// The targets buffer's length for a batch (none for classes).
    pub fn targets_len(self, batch: usize, outputs: usize) -> usize {
        match self {
            Task::Classes => 0,
            Task::Attributes => batch * outputs,
        }
    }
}

/// Row-wise softmax of `[B, C]` logits.
pub fn softmax(logits: &[f32], classes: usize) -> Vec<f64> {
    logits
        .chunks(classes)
        .flat_map(|row| {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.into_iter().map(move |e| e / sum)
        })
        .collect()
}

/// Targets as the attribute head reads them, from a batch's per-sample attributes.
pub fn attribute_targets(attributes: &[Vec<bool>]) -> Vec<f32> {
    attributes
        .iter()
        .flatten()
        .map(|&a| if a { 1.0 } else { 0.0 })
        .collect()
}
