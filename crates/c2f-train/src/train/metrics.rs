//! What a run reports at each epoch's end: the test-set evaluation when due, a record of the
//! epoch in the metrics files (one JSON object per line in `metrics.jsonl`, the same as CSV with
//! fixed columns in `metrics.csv`), and its line on the terminal.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use c2f_inception::backend::Backend;
use c2f_inception::weights::write_atomically;
use c2f_kernels::{Error, Result};

use super::centers::{center_spread, spread_columns, MergedCenters};
use super::evaluate::{evaluate, format_accuracy, Evaluation};
use super::graph::DeviceGraph;
use super::trainee::Trainee;
use crate::checkpoint::CheckpointMeta;
use crate::config::{RunOptions, TrainConfig};
use crate::data::loader::{Loader, Skipped};
use crate::data::spec::OpenedData;
use crate::task::Task;

/// What only rank 0 (or the one worker) keeps: the metrics files, the test loader, and whether
/// the merged-centers warning was given.
pub(super) struct Report {
    metrics: Metrics,
    pub(super) test: Loader,
    merged: MergedCenters,
}

/// An epoch's figures beside the running sums in the checkpoint's metadata.
pub(super) struct EpochTally<'a> {
    pub epoch: usize,
    /// The learning rate of its last step.
    pub lr: f64,
    /// Images trained on in this process's run (a resumed epoch's earlier ones not counted).
    pub images: usize,
    pub seconds: f64,
    pub skipped: &'a [Skipped],
    /// Whether its steps were replayed from a captured CUDA graph.
    pub cuda_graph: bool,
}

impl Report {
    /// The report of a run in `dir` that starts after `epochs_done` epochs, of a model with
    /// `loss_terms` and heads named `heads` ([`Trainee::head_names`]).
    pub(super) fn open(
        dir: &Path,
        (loss_terms, heads): (&[&str], [&str; 2]),
        test: Loader,
        epochs_done: usize,
    ) -> Result<Report> {
        Ok(Report {
            metrics: Metrics::open(dir, loss_terms, heads, epochs_done)?,
            test,
            merged: MergedCenters::default(),
        })
    }

    /// Evaluates on the test split when due (every [`RunOptions::eval_every`] epochs, and after
    /// the last), appends the epoch's record to the metrics files and prints its line.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn epoch_end<B: Backend<Scalar = f32>, M: Trainee<B>>(
        &mut self,
        (b, eval_graph): (&mut B, &mut DeviceGraph),
        model: &mut M,
        cfg: &TrainConfig,
        run: &RunOptions,
        data: &OpenedData,
        meta: &CheckpointMeta,
        tally: &EpochTally<'_>,
    ) -> Result<Option<Evaluation>> {
        let (name, loss_terms, heads) = (model.name(), model.loss_terms(), model.head_names());
        let (epoch, lr, terms) = (tally.epoch, tally.lr, loss_terms.len());
        let last = epoch + 1 == cfg.epochs;
        let due = run.eval_every > 0 && (epoch + 1).is_multiple_of(run.eval_every);
        let evaluation = if last || due {
            Some(evaluate(b, model, &self.test, cfg.classes, eval_graph)?)
        } else {
            None
        };
        let accuracy = evaluation.as_ref().map(|e| e.accuracy);
        let batches = (meta.batch_in_epoch).max(1) as f64;
        let mean: Vec<f64> = meta.epoch_sums[..terms]
            .iter()
            .map(|s| s / batches)
            .collect();
        let total: f64 = mean.iter().sum();
        let answers = cfg.task.answers_per_image(cfg.classes) as f64;
        let train_acc = meta.epoch_sums[terms] / (answers * meta.epoch_sums[terms + 1]).max(1.0);
        let images_per_s = tally.images as f64 / tally.seconds;
        let mut record = serde_json::json!({
            "model": name,
            "epoch": epoch + 1,
            "step": meta.step,
            "lr": lr,
            "loss": total,
            "train_acc": train_acc,
            "test_average": accuracy.and_then(|a| a.average),
            "images_per_s": images_per_s,
            "skipped": tally.skipped.len(),
        });
        record[format!("test_{}", heads[0])] = serde_json::json!(accuracy.map(|a| a.coarse));
        record[format!("test_{}", heads[1])] = serde_json::json!(accuracy.and_then(|a| a.fine));
        for (term, v) in loss_terms.iter().zip(&mean) {
            record[format!("loss_{term}")] = serde_json::json!(v);
        }
        // JSON lines only: a CSV column more would make a resumed older run's rows unreadable
        // to `Metrics::open`, which keeps only rows of the current columns.
        record["precision"] = serde_json::json!(meta.precision);
        record["cuda_graph"] = serde_json::json!(tally.cuda_graph);
        if model.task() == Task::Classes {
            // Warned of once λ is at full weight: during its warmup a run that goes on to
            // learn can dip this low for an epoch.
            let full_lambda = (epoch + 1) as f64 >= cfg.center_warmup_epochs;
            for (column, bank) in spread_columns(loss_terms).iter().zip(model.center_banks()) {
                let spread = center_spread(&b.read(bank)?, cfg.classes);
                record[column] = serde_json::json!(spread);
                if full_lambda {
                    self.merged.check(name, epoch, column, spread);
                }
            }
        }
        // Each attribute's accuracy, by name (JSON lines only: the CSV keeps fixed columns).
        if let Some(e) = evaluation.as_ref().filter(|e| !e.per_attribute.is_empty()) {
            let by_name: serde_json::Map<String, serde_json::Value> = data
                .class_names
                .iter()
                .zip(&e.per_attribute)
                .map(|(name, a)| (name.clone(), serde_json::json!(a)))
                .collect();
            record["test_attributes"] = serde_json::Value::Object(by_name);
        }
        self.metrics.append(&run.dir, &record)?;
        let test_part = accuracy.map_or(String::new(), |a| {
            format!("  test {}", format_accuracy(&a, heads))
        });
        println!(
            "{:<11} epoch {:>3}  loss {total:.4}  train {:.1}%  lr {lr:.2e}  {images_per_s:.1} img/s{}{test_part}",
            name,
            epoch + 1,
            100.0 * train_acc,
            if tally.skipped.is_empty() {
                String::new()
            } else {
                format!("  {} unreadable images skipped", tally.skipped.len())
            },
        );
        for s in tally.skipped {
            eprintln!("  skipped {}: {}", s.name, s.message);
        }
        Ok(evaluation)
    }
}

/// The metrics files of a run: one JSON object per line, and the same as CSV.
struct Metrics {
    jsonl: fs::File,
    csv: fs::File,
    columns: Vec<String>,
}

impl Metrics {
    /// The metrics files in `dir`, holding the records of the first `epochs_done` epochs only: a
    /// run killed after an epoch's record but before its checkpoint, or in the middle of a line,
    /// left records that its resumed run writes again. The test accuracies' columns are named
    /// by `heads` (`test_coarse`, `test_fine`; WS-DAN's `test_raw`, `test_refined`).
    fn open(
        dir: &Path,
        loss_terms: &[&str],
        heads: [&str; 2],
        epochs_done: usize,
    ) -> Result<Metrics> {
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))
        };
        let mut columns: Vec<String> = ["model", "epoch", "step", "lr", "loss"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        columns.extend(loss_terms.iter().map(|t| format!("loss_{t}")));
        columns.extend(spread_columns(loss_terms));
        columns.push("train_acc".into());
        columns.extend(heads.iter().map(|h| format!("test_{h}")));
        columns.extend(
            ["test_average", "images_per_s", "skipped"]
                .iter()
                .map(|s| s.to_string()),
        );
        let done = |epoch: Option<u64>| epoch.is_some_and(|e| e as usize <= epochs_done);
        keep_lines(&dir.join("metrics.jsonl"), |line| {
            let record = serde_json::from_str::<serde_json::Value>(line).ok();
            done(record.and_then(|r| r["epoch"].as_u64()))
        })?;
        let header = columns.join(",");
        keep_lines(&dir.join("metrics.csv"), |line| {
            let cells: Vec<&str> = line.split(',').collect();
            line == header || (cells.len() == columns.len() && done(cells[1].parse().ok()))
        })?;
        let mut csv = open("metrics.csv")?;
        let empty = csv.metadata().map(|m| m.len() == 0).unwrap_or(true);
        if empty {
            writeln!(csv, "{header}").map_err(|e| Error::io(dir.join("metrics.csv"), e))?;
        }
        Ok(Metrics {
            jsonl: open("metrics.jsonl")?,
            csv,
            columns,
        })
    }

    /// Appends one record (a JSON object with exactly [`Self::columns`]).
    fn append(&mut self, dir: &Path, record: &serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(record).expect("a JSON value serialises");
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|c| match &record[c] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        // One write a line: a crash can cut a line short but not interleave two.
        self.jsonl
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| {
                self.csv
                    .write_all(format!("{}\n", cells.join(",")).as_bytes())
            })
            .map_err(|e| Error::io(dir, e))
    }
}

/// Rewrites the file at `path` (atomically) with only its lines that `keep`, if it exists and
/// any other is there.
fn keep_lines(path: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    if kept.len() == text.lines().count() && (text.is_empty() || text.ends_with('\n')) {
        return Ok(());
    }
    let bytes: String = kept.iter().map(|l| format!("{l}\n")).collect();
    write_atomically(path, bytes.as_bytes())
}
