//! Crash safety and divergence of a `c2f train` run (CPU, a tiny synthetic set): a run killed
//! with SIGKILL again and again, at seeded random times and in the middle of checkpoint writes,
//! and restarted each time with `--resume`, always has a checkpoint that loads, loses at most
//! one checkpoint interval, and ends bit for bit where an uninterrupted run ends, with the same
//! metrics; a run whose loss or state turns non-finite stops naming the step and the term, and
//! its last good checkpoint loads and is finite; a non-finite state is never saved.

use c2f_train::data::image_io::DEFAULT_MAX_PIXELS;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use c2f_inception::backend::prelude::*;
use c2f_inception::cpu::CpuBackend;
use c2f_inception::weights::PAUSE_BEFORE_RENAME;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::Error;
use c2f_train::checkpoint::{self, CheckpointMeta};
use c2f_train::state::Named;
use c2f_train::train::{
    build_baseline, build_coarse2fine, checkpoint_path, train_baseline, RunOptions, Trainee,
};

use crate::common::train::{synthetic_spec, tiny_config, TINY_TRAIN};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("crash_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// On [`TINY_TRAIN`]'s model: both models, 6 epochs of 4 steps, a checkpoint every
/// [`INTERVAL`] steps and at each epoch's end, a test evaluation at each epoch's end.
const RUN: [&str; 18] = [
    "--epochs",
    "6",
    "--classes",
    "2",
    "--train-images",
    "16",
    "--test-images",
    "4",
    "--checkpoint-every",
    "2",
    "--seed",
    "5",
    "--classifier-lr-scale",
    "1",
    "--warmup-epochs",
    "0.5",
    "--models",
    "both",
];
const INTERVAL: u64 = 2;
const MODELS: [&str; 2] = ["coarse2fine", "baseline"];

/// `c2f train` in `dir`, with `--resume` where `resume` (a run with no checkpoint yet starts
/// afresh); with `pause_ms`, each atomic write pauses that long before its rename.
fn start(dir: &Path, resume: bool, pause_ms: Option<u64>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_c2f"));
    command
        .args(TINY_TRAIN)
        .args(RUN)
        .args(["--run-dir", dir.to_str().unwrap()])
        .args(resume.then_some("--resume"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match pause_ms {
        Some(ms) => command.env(PAUSE_BEFORE_RENAME, ms.to_string()),
        None => command.env_remove(PAUSE_BEFORE_RENAME),
    };
    command.spawn().unwrap()
}

/// The temporary files of the checkpoint writes `child` pauses in, as it announces them.
fn paused_writes(child: &mut Child) -> Receiver<PathBuf> {
    let stderr = child.stderr.take().unwrap();
    let (send, receive) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let announced = line
                .strip_prefix(&format!("{PAUSE_BEFORE_RENAME}: "))
                .and_then(|rest| rest.split_once(" written, "));
            if let Some((tmp, _)) = announced.filter(|(t, _)| t.contains("checkpoint")) {
                let _ = send.send(PathBuf::from(tmp));
            }
        }
    });
    receive
}

/// The model state a checkpoint of `meta`'s model fits.
fn state(cpu: &mut CpuBackend<f32>, meta: &CheckpointMeta) -> Vec<Named> {
    match meta.model.as_str() {
        "coarse2fine" => {
            Trainee::<CpuBackend<f32>>::state(&build_coarse2fine(cpu, &meta.config).unwrap())
        }
        "baseline" => {
            Trainee::<CpuBackend<f32>>::state(&build_baseline(cpu, &meta.config).unwrap())
        }
        other => panic!("model {other}"),
    }
}

/// Loads the checkpoint at `path` into its model (every tensor, checked by name and shape) and
/// returns its metadata; asserts every value is finite.
fn load(path: &Path) -> CheckpointMeta {
    let mut cpu = CpuBackend::<f32>::new();
    let meta = checkpoint::read_meta(path).unwrap();
    let state = state(&mut cpu, &meta);
    let loaded = checkpoint::load(&mut cpu, path, &state)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(loaded, meta);
    for n in &state {
        let values = cpu.read(n.tensor).unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{}", n.name);
    }
    meta
}

/// Each model's checkpoint step in run folder `dir` (0 where there is none yet).
fn steps(dir: &Path) -> [u64; 2] {
    MODELS.map(|m| {
        let ckpt = checkpoint_path(&dir.join(m));
        if ckpt.exists() {
            load(&ckpt).step
        } else {
            0
        }
    })
}

/// A run's metrics as CSV rows without their timing.
fn csv_rows(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let timing = header.iter().position(|c| *c == "images_per_s").unwrap();
    text.lines()
        .map(|l| {
            let mut cells: Vec<String> = l.split(',').map(String::from).collect();
            cells.remove(timing);
            cells
        })
        .collect()
}

/// A run's metrics records without their timing.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut record: serde_json::Value = serde_json::from_str(l).unwrap();
            record.as_object_mut().unwrap().remove("images_per_s");
            record
        })
        .collect()
}

#[test]
fn a_run_killed_again_and_again_resumes_to_the_uninterrupted_result() {
    let whole = scratch("whole");
    let out = start(&whole, false, None).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = scratch("killed");
    let mut rng = SplitMix64(2024);
    let mut last = [0u64; 2];
    let (mut kills, mut in_writes, mut epoch_ends) = (0, 0, 0);
    for round in 0..24 {
        if kills == 16 {
            break;
        }
        // Every other round is killed in a checkpoint write, between the synced temporary file
        // and the rename: its k-th (1 to 3), or every other time its first at an epoch's end
        // (the epoch's record is written then, before the checkpoint). The others are killed
        // after their n-th write (0 to 3) and a random fraction of a second. Counting writes,
        // not seconds, spreads the kills over the whole run on a fast machine or a slow one.
        let in_write = round % 2 == 1;
        let at_epoch_end = round % 4 == 3;
        // The first round too resumes: a run with nothing to resume starts afresh.
        let mut child = start(&killed, true, Some(if in_write { 500 } else { 0 }));
        let writes = paused_writes(&mut child);
        let mut tmp = None;
        let k = rng.below(4) as usize;
        if in_write {
            tmp = writes
                .iter()
                .enumerate()
                .find(|(i, t)| match at_epoch_end {
                    // The paused temporary file is whole: its position can be read.
                    true => checkpoint::read_meta(t).unwrap().batch_in_epoch == 0,
                    false => i + 1 >= k.max(1),
                })
                .map(|(_, t)| t)
                .filter(|_| child.try_wait().unwrap().is_none());
        } else {
            writes.iter().take(k).for_each(drop);
            std::thread::sleep(Duration::from_secs_f64(rng.uniform(0.0, 0.1)));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.signal() != Some(9) {
            // It finished first.
            assert!(status.success(), "round {round}: {status}");
            continue;
        }
        kills += 1;
        let now = steps(&killed);
        for m in 0..2 {
            assert!(now[m] >= last[m], "round {round}: {} went back", MODELS[m]);
        }
        last = now;
        if let Some(tmp) = tmp {
            // The write that was cut holds a whole checkpoint; the one on disk is the one
            // before it, at most one interval (or an epoch's end) behind.
            let cut = load(&tmp);
            let m = MODELS.iter().position(|m| *m == cut.model).unwrap();
            assert!(
                now[m] <= cut.step && cut.step - now[m] <= INTERVAL,
                "round {round}: {} on disk at step {}, cut at {}",
                cut.model,
                now[m],
                cut.step
            );
            println!(
                "round {round}: killed writing {} step {} (epoch {}, batch {}), step {} kept",
                cut.model, cut.step, cut.epoch, cut.batch_in_epoch, now[m]
            );
            in_writes += 1;
            epoch_ends += usize::from(cut.batch_in_epoch == 0);
        }
    }
    println!(
        "{kills} kills, {in_writes} in checkpoint writes ({epoch_ends} at an epoch's end); \
         steps on disk {last:?}"
    );
    assert!(
        kills >= 12 && in_writes >= 6 && epoch_ends >= 2,
        "{kills} kills, {in_writes} in writes, {epoch_ends} at an epoch's end"
    );

    let out = start(&killed, true, None).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for model in MODELS {
        let (a, b) = (whole.join(model), killed.join(model));
        let same = std::fs::read(checkpoint_path(&a)).unwrap()
            == std::fs::read(checkpoint_path(&b)).unwrap();
        assert!(same, "{model}: the resumed run's checkpoint differs");
        assert_eq!(records(&a), records(&b), "{model}");
        assert_eq!(csv_rows(&a), csv_rows(&b), "{model}");
        let files: Vec<String> = std::fs::read_dir(&b)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(
            files.iter().all(|f| !f.starts_with('.')),
            "{model}: leftovers {files:?}"
        );
    }
}

/// A learning rate that drives the state to infinity: the run stops with status 1 naming the
/// step and the term, and the checkpoint it keeps (the one it names) loads, finite.
#[test]
fn a_diverging_run_stops_naming_step_and_term_and_keeps_a_good_checkpoint() {
    let dir = scratch("diverge");
    // Later flags win over [`RUN`]'s.
    let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(TINY_TRAIN)
        .args(RUN)
        .args([
            "--models",
            "baseline",
            "--checkpoint-every",
            "1",
            "--lr",
            "10",
            "--classifier-lr-scale",
            "1000",
            "--warmup-epochs",
            "0",
            "--run-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let ckpt = checkpoint_path(&dir.join("baseline"));
    let line = stderr
        .lines()
        .find(|l| l.starts_with("c2f: training diverged at step "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let step: u64 = line["c2f: training diverged at step ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        line.contains(": baseline loss term `") || line.contains(": baseline tensor `"),
        "{line}"
    );
    let meta = load(&ckpt);
    assert!(
        stderr.contains(&format!(
            "the last good checkpoint, {} (epoch {}, step {}), is kept",
            ckpt.display(),
            meta.epoch,
            meta.step
        )),
        "{stderr}"
    );
    assert!(
        meta.step >= 1 && meta.step < step,
        "{line}: kept step {}",
        meta.step
    );
}

/// `checkpoint::save` refuses a state with a value that is not finite, naming the tensor, and
/// leaves the file there as it was.
#[test]
fn a_non_finite_state_is_not_saved() {
    let dir = scratch("save_nan");
    let ckpt = checkpoint_path(&dir);
    let data = synthetic_spec(4, 4, 3, (0.6, 0.9))
        .open(75, DEFAULT_MAX_PIXELS)
        .unwrap();
    let mut cpu = CpuBackend::<f32>::new();
    train_baseline(
        &mut cpu,
        &tiny_config(0.02, 1),
        &RunOptions::new(&dir),
        &data,
        None,
    )
    .unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    let meta = checkpoint::read_meta(&ckpt).unwrap();
    let state = state(&mut cpu, &meta);
    checkpoint::load(&mut cpu, &ckpt, &state).unwrap();
    let bad = state
        .iter()
        .find(|n| n.name.ends_with("running_var"))
        .unwrap();
    let mut values = cpu.read(bad.tensor).unwrap();
    values[1] = f32::INFINITY;
    cpu.write(bad.tensor, &values).unwrap();
    match checkpoint::save(&mut cpu, &ckpt, &state, &meta) {
        Err(Error::Divergence { step, term, value }) => {
            assert_eq!(step as u64, meta.step);
            assert_eq!(term, format!("baseline tensor `{}`", bad.name));
            assert_eq!(value, f64::INFINITY);
        }
        other => panic!("{other:?}"),
    }
    assert!(std::fs::read(&ckpt).unwrap() == before);
}
