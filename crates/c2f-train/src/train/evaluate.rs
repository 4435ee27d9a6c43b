//! Test-set evaluation: every head's accuracy (and their average's), and the helpers that turn
//! a batch's probabilities into predictions.

use c2f_inception::backend::Backend;
use c2f_kernels::Result;
use serde::{Deserialize, Serialize};

use super::graph::DeviceGraph;
use super::trainee::Trainee;
use crate::data::loader::Loader;
use crate::task::Task;

/// What the two heads of a two-head model are called in output and metrics: Coarse2Fine's
/// coarse and fine predictions.
pub const COARSE_FINE: [&str; 2] = ["coarse", "fine"];
/// WS-DAN's raw and refined predictions, which [`Accuracy`] keeps as `coarse` and `fine`.
pub const RAW_REFINED: [&str; 2] = ["raw", "refined"];

/// Test-set accuracy (fractions): top-1 for classes, the mean over the attributes for
/// attributes; the baseline and the coarse-only model have only `coarse`. WS-DAN's raw and
/// refined predictions are `coarse` and `fine`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub coarse: f64,
    pub fine: Option<f64>,
    pub average: Option<f64>,
}

/// What [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub accuracy: Accuracy,
    /// [`Task::Attributes`]: each attribute's accuracy, in the data's order (the paper's
    /// Table 9); empty for classes.
    pub per_attribute: Vec<Accuracy>,
}

/// The per-head probability rows of sample `i`, plus their average when there are two heads:
/// the coarse, fine and average predictions the paper reports.
pub fn prediction_rows(heads: &[Vec<f64>], i: usize, classes: usize) -> Vec<Vec<f64>> {
    let mut rows: Vec<Vec<f64>> = heads
        .iter()
        .map(|p| p[i * classes..][..classes].to_vec())
        .collect();
    if let [coarse, fine] = rows.as_slice() {
        let average = coarse
            .iter()
            .zip(fine)
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        rows.push(average);
    }
    rows
}

/// The index of the largest value (the first of equal ones).
pub fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

/// A batch's images, padded to the model's fixed batch size by repeating the last image; the
/// padding's predictions are not counted.
pub fn padded_images(images: &[f32], n: usize, batch: usize) -> Vec<f32> {
    let image = images.len() / n;
    let mut out = images.to_vec();
    while out.len() < batch * image {
        out.extend_from_slice(&images[images.len() - image..]);
    }
    out
}

/// Each head's probabilities `[B·outputs]` (coarse, then fine or refined if any) for a full
/// batch of `images`: written to the model's input, inferred through `graph` (replayed once
/// captured: inference holds no host work) and read.
pub fn batch_probabilities<B: Backend<Scalar = f32>, M: Trainee<B> + ?Sized>(
    b: &mut B,
    model: &mut M,
    images: &[f32],
    outputs: usize,
    graph: &mut DeviceGraph,
) -> Result<Vec<Vec<f64>>> {
    b.write(model.eval_input(), images)?;
    graph.run(b, model.name(), &mut |b| model.infer(b))?;
    let task = model.task();
    model
        .eval_logits()
        .iter()
        .map(|&l| Ok(task.probabilities(&b.read(l)?, outputs)))
        .collect()
}

/// The accuracy of every head (and of the average of two) on the test loader: top-1 for
/// classes; for attributes each attribute's (probability above ½ against its target) and
/// their mean. Each batch's inference runs through `graph`.
pub fn evaluate<B: Backend<Scalar = f32>, M: Trainee<B>>(
    b: &mut B,
    model: &mut M,
    test: &Loader,
    outputs: usize,
    graph: &mut DeviceGraph,
) -> Result<Evaluation> {
    let batch_size = test.config().batch_size;
    let task = model.task();
    let answers = task.answers_per_image(outputs);
    // right[head][answer]: head 0 coarse, 1 fine, 2 average.
    let (mut right, mut total) = (vec![vec![0usize; answers]; 3], 0);
    let mut two = false;
    let mut epoch = test.epoch(0);
    for batch in &mut epoch {
        let n = batch.labels.len();
        let images = padded_images(&batch.images, n, batch_size);
        let heads = batch_probabilities(b, model, &images, outputs, graph)?;
        two = heads.len() > 1;
        for i in 0..n {
            for (k, row) in prediction_rows(&heads, i, outputs).iter().enumerate() {
                match task {
                    Task::Classes => {
                        right[k][0] += (argmax(row) == batch.labels[i] as usize) as usize
                    }
                    Task::Attributes => {
                        for ((r, &p), &t) in right[k].iter_mut().zip(row).zip(&batch.attributes[i])
                        {
                            *r += ((p > 0.5) == t) as usize;
                        }
                    }
                }
            }
        }
        total += n;
    }
    let fraction = |count: usize| count as f64 / total.max(1) as f64;
    let accuracy_of = |pick: &dyn Fn(&[usize]) -> f64| Accuracy {
        coarse: pick(&right[0]),
        fine: two.then(|| pick(&right[1])),
        average: two.then(|| pick(&right[2])),
    };
    let mean = |counts: &[usize]| counts.iter().map(|&c| fraction(c)).sum::<f64>() / answers as f64;
    Ok(Evaluation {
        accuracy: accuracy_of(&mean),
        per_attribute: match task {
            Task::Classes => Vec::new(),
            Task::Attributes => (0..answers)
                .map(|a| accuracy_of(&|counts: &[usize]| fraction(counts[a])))
                .collect(),
        },
    })
}

/// `coarse 41.0% fine 38.5% average 43.0%` (with `heads`' names: [`COARSE_FINE`] or
/// [`RAW_REFINED`]), or the one number of a one-head model.
pub fn format_accuracy(a: &Accuracy, [first, second]: [&str; 2]) -> String {
    match (a.fine, a.average) {
        (Some(f), Some(avg)) => format!(
            "{first} {:.1}% {second} {:.1}% average {:.1}%",
            100.0 * a.coarse,
            100.0 * f,
            100.0 * avg
        ),
        _ => format!("{:.1}%", 100.0 * a.coarse),
    }
}
