//! `c2f train --gpus 0,1,2,3` on one machine: one worker process per GPU, the same command
//! with torchrun's variables set (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR=127.0.0.1`, `MASTER_PORT`) and `C2F_DEVICE` naming its GPU, so a worker reads
//! its place with [`crate::launch::LaunchInfo::from_env`] exactly as under torchrun.
//!
//! Each worker's stderr is passed through with a `[rank N]` prefix, and its last lines are
//! kept: when a worker fails, the others are killed and the error names the rank, its exit
//! status and those lines.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{DistError, Result};

/// Lines of a failed worker's stderr quoted in the error.
const TAIL_LINES: usize = 20;
const POLL: Duration = Duration::from_millis(50);

/// What each worker runs: the program, its arguments and extra environment.
#[derive(Debug, Clone, Default)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

/// `all` (GPUs `0..count`) or a comma-separated list of distinct ordinals below `count`.
pub fn parse_gpus(spec: &str, count: usize) -> Result<Vec<usize>> {
    let bad = |m: String| DistError::Variable {
        variable: "--gpus".into(),
        value: spec.into(),
        message: format!("--gpus {spec:?}: {m}"),
    };
    if spec.trim() == "all" {
        return match count {
            0 => Err(bad("this machine shows no GPU".into())),
            n => Ok((0..n).collect()),
        };
    }
    let mut gpus = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let gpu: usize = part
            .parse()
            .map_err(|_| bad(format!("{part:?} is not a GPU ordinal")))?;
        if gpu >= count {
            return Err(bad(format!(
                "GPU {gpu} does not exist (this machine shows {count})"
            )));
        }
        if gpus.contains(&gpu) {
            return Err(bad(format!("GPU {gpu} is listed twice")));
        }
        gpus.push(gpu);
    }
    Ok(gpus)
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DistError::Launch(format!("cannot find a free port: {e}")))
}

struct Worker {
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    relay: Option<JoinHandle<()>>,
}

impl Worker {
    fn last_lines(&mut self) -> String {
        if let Some(relay) = self.relay.take() {
            // The pipe closes when the process ends, so this returns.
            let _ = relay.join();
        }
        let tail = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        tail.into_iter().collect::<Vec<_>>().join("\n")
    }
}

fn start(cmd: &WorkerCommand, gpus: &[usize], rank: usize, port: u16) -> Result<Worker> {
    let world = gpus.len().to_string();
    let mut child = Command::new(&cmd.program)
        .args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", &world)
        .env("LOCAL_WORLD_SIZE", &world)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("C2F_DEVICE", gpus[rank].to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DistError::Worker {
            rank,
            message: format!("could not start {}: {e}", cmd.program.display()),
        })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let kept = tail.clone();
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            let _ = writeln!(std::io::stderr(), "[rank {rank}] {line}");
            if let Ok(mut t) = kept.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    });
    Ok(Worker {
        child,
        tail,
        relay: Some(relay),
    })
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended with {status}"),
    }
}

/// Runs `cmd` once per GPU in `gpus` (rank `r` on `gpus[r]`), with `master_port` for the
/// rendezvous (a [`free_port`] when `None`), and waits for all of them. When one fails, the
/// rest are killed and the error names the first failed rank, how it ended and the last lines
/// of its stderr.
pub fn run_workers(cmd: &WorkerCommand, gpus: &[usize], master_port: Option<u16>) -> Result<()> {
    if gpus.is_empty() {
        return Err(DistError::Launch("no GPU to start a worker on".into()));
    }
    let port = match master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let mut workers: Vec<Worker> = Vec::new();
    for rank in 0..gpus.len() {
        match start(cmd, gpus, rank, port) {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop(&mut workers);
                return Err(e);
            }
        }
    }
    let mut finished = vec![false; workers.len()];
    loop {
        for (rank, w) in workers.iter_mut().enumerate() {
            if finished[rank] {
                continue;
            }
            let status = w.child.try_wait().map_err(|e| DistError::Worker {
                rank,
                message: format!("cannot wait for it: {e}"),
            })?;
            let Some(status) = status else { continue };
            finished[rank] = true;
            if !status.success() {
                let lines = w.last_lines();
                let stopped = stop(&mut workers);
                let stopped = match stopped.as_slice() {
                    [] => String::new(),
                    ranks => format!("; stopped the other ranks still running: {ranks:?}"),
                };
                return Err(DistError::Worker {
                    rank,
                    message: format!(
                        "{}{stopped}; its last lines of stderr:\n{lines}",
                        describe(status)
                    ),
                });
            }
        }
        if finished.iter().all(|&f| f) {
            workers.iter_mut().for_each(|w| drop(w.last_lines()));
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Kills the workers still running and reaps them all; returns the ranks it killed.
fn stop(workers: &mut [Worker]) -> Vec<usize> {
    let mut killed = Vec::new();
    for (rank, w) in workers.iter_mut().enumerate() {
        if matches!(w.child.try_wait(), Ok(None)) && w.child.kill().is_ok() {
            killed.push(rank);
        }
        let _ = w.child.wait();
        drop(w.last_lines());
    }
    killed
}
