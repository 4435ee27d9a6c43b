//! Where this process stands in the job, from the variables its launcher set:
//!
//! | launcher | rank | local rank | world size | master |
//! | --- | --- | --- | --- | --- |
//! | torchrun (and `c2f train --gpus`) | `RANK` | `LOCAL_RANK` | `WORLD_SIZE` | `MASTER_ADDR`, `MASTER_PORT` |
//! | OpenMPI's mpirun | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_LOCAL_RANK` | `OMPI_COMM_WORLD_SIZE` | `MASTER_ADDR`/`MASTER_PORT` or the flag |
//! | SLURM's srun | `SLURM_PROCID` | `SLURM_LOCALID` | `SLURM_NTASKS` | `MASTER_ADDR`/`MASTER_PORT` or the flag |
//!
//! The first family present wins, in that order: inside a SLURM allocation the batch script's
//! own `SLURM_*` variables are inherited by whatever it starts, so torchrun's or mpirun's
//! variables, when present, are the ones that describe this process. With none, the process is
//! alone (rank 0 of 1).
//!
//! The GPU: `C2F_DEVICE` if set (the `--gpus` launcher sets it), else device 0 when
//! `CUDA_VISIBLE_DEVICES` shows one device (srun's `--gpus-per-task=1` binds one per task),
//! else the local rank.
//!
//! Parsing is a pure function of a variable map ([`LaunchInfo::from_vars`]), so it is tested
//! without touching the process environment.

use std::collections::HashMap;
use std::fmt::Display;

use crate::{DistError, Result};

/// torchrun's default `MASTER_PORT`.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Which launcher's variables were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher variables: one process.
    Single,
    Torchrun,
    OpenMpi,
    Slurm,
}

/// The address rank 0 serves the rendezvous on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub addr: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchInfo {
    pub launcher: Launcher,
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    /// The CUDA device ordinal this rank opens.
    pub device: usize,
    /// `None` only for a world of one, which needs no rendezvous.
    pub master: Option<Master>,
}

/// The variable names of one launcher family.
struct Family {
    launcher: Launcher,
    rank: &'static str,
    local_rank: &'static str,
    world: &'static str,
}

const FAMILIES: [Family; 3] = [
    Family {
        launcher: Launcher::Torchrun,
        rank: "RANK",
        local_rank: "LOCAL_RANK",
        world: "WORLD_SIZE",
    },
    Family {
        launcher: Launcher::OpenMpi,
        rank: "OMPI_COMM_WORLD_RANK",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
        world: "OMPI_COMM_WORLD_SIZE",
    },
    Family {
        launcher: Launcher::Slurm,
        rank: "SLURM_PROCID",
        local_rank: "SLURM_LOCALID",
        world: "SLURM_NTASKS",
    },
];

/// An error about launch variable (or flag) `variable`, which holds `value`.
fn bad(variable: &str, value: impl Display, message: String) -> DistError {
    DistError::Variable {
        variable: variable.to_string(),
        value: value.to_string(),
        message,
    }
}

const UNSET: &str = "unset";

fn parse_number(vars: &HashMap<String, String>, name: &str) -> Result<usize> {
    let value = &vars[name];
    value.trim().parse().map_err(|_| {
        bad(
            name,
            value,
            format!("{name}={value:?} is not a non-negative integer"),
        )
    })
}

/// `host` or `host:port` (the port defaults to [`DEFAULT_MASTER_PORT`]); `what` names the source.
pub fn parse_master(spec: &str, what: &str) -> Result<Master> {
    let (addr, port) = match spec.rsplit_once(':') {
        // A bare IPv6 address has colons but no port; `[::1]:29500` has both.
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (spec, None),
    };
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    if addr.is_empty() {
        return Err(bad(what, spec, format!("{what}={spec:?} has no host")));
    }
    let port = match port {
        None => DEFAULT_MASTER_PORT,
        Some(p) => parse_port(p, what)?,
    };
    Ok(Master {
        addr: addr.to_string(),
        port,
    })
}

fn parse_port(value: &str, what: &str) -> Result<u16> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(bad(
            what,
            value,
            format!("{what}={value:?} is not a port in 1..=65535"),
        )),
    }
}

impl LaunchInfo {
    /// From the process environment; `master_flag` is an explicit `host[:port]` (a command-line
    /// flag), which takes precedence over `MASTER_ADDR`/`MASTER_PORT`.
    pub fn from_env(master_flag: Option<&str>) -> Result<LaunchInfo> {
        LaunchInfo::from_vars(&std::env::vars().collect(), master_flag)
    }

    /// From the variables `vars`; see the module documentation for the rules. Missing partners
    /// (`RANK` without `WORLD_SIZE`), values that are not numbers, a rank outside the world, a
    /// local rank above the rank, and a world of several ranks with no master address are
    /// errors naming the variables.
    pub fn from_vars(
        vars: &HashMap<String, String>,
        master_flag: Option<&str>,
    ) -> Result<LaunchInfo> {
        let family = FAMILIES.iter().find(|f| {
            [f.rank, f.local_rank, f.world]
                .iter()
                .any(|v| vars.contains_key(*v))
        });
        let Some(family) = family else {
            return Ok(LaunchInfo {
                launcher: Launcher::Single,
                rank: 0,
                local_rank: 0,
                world_size: 1,
                device: device(vars, 0)?,
                master: master(vars, master_flag, 1)?,
            });
        };
        let names = [family.rank, family.local_rank, family.world];
        if let Some(missing) = names.iter().find(|v| !vars.contains_key(**v)) {
            let present: Vec<&str> = names
                .into_iter()
                .filter(|v| vars.contains_key(*v))
                .collect();
            return Err(bad(
                missing,
                UNSET,
                format!(
                    "{} {} set but {missing} is not; set it too",
                    present.join(" and "),
                    if present.len() == 1 { "is" } else { "are" }
                ),
            ));
        }
        let rank = parse_number(vars, family.rank)?;
        let local_rank = parse_number(vars, family.local_rank)?;
        let world_size = parse_number(vars, family.world)?;
        if world_size == 0 {
            return Err(bad(
                family.world,
                0,
                format!("{}=0: a job needs at least one rank", family.world),
            ));
        }
        if rank >= world_size {
            return Err(bad(
                family.rank,
                rank,
                format!(
                    "{}={rank} is outside {}={world_size} (ranks are 0..{world_size})",
                    family.rank, family.world
                ),
            ));
        }
        if local_rank > rank {
            return Err(bad(
                family.local_rank,
                local_rank,
                format!(
                    "{}={local_rank} is above {}={rank}: a node's ranks are a subset of the job's",
                    family.local_rank, family.rank
                ),
            ));
        }
        if vars.contains_key("LOCAL_WORLD_SIZE") && family.launcher == Launcher::Torchrun {
            let local_world = parse_number(vars, "LOCAL_WORLD_SIZE")?;
            if local_rank >= local_world || local_world > world_size {
                return Err(bad(
                    "LOCAL_WORLD_SIZE",
                    local_world,
                    format!(
                        "LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world} and \
                         WORLD_SIZE={world_size} do not fit together"
                    ),
                ));
            }
        }
        Ok(LaunchInfo {
            launcher: family.launcher,
            rank,
            local_rank,
            world_size,
            device: device(vars, local_rank)?,
            master: master(vars, master_flag, world_size)?,
        })
    }
}

fn device(vars: &HashMap<String, String>, local_rank: usize) -> Result<usize> {
    if vars.contains_key("C2F_DEVICE") {
        return parse_number(vars, "C2F_DEVICE");
    }
    let visible: Vec<&str> = vars
        .get("CUDA_VISIBLE_DEVICES")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default();
    match visible.len() {
        0 => Ok(local_rank),
        1 => Ok(0),
        n if local_rank < n => Ok(local_rank),
        n => Err(bad(
            "CUDA_VISIBLE_DEVICES",
            &vars["CUDA_VISIBLE_DEVICES"],
            format!(
                "local rank {local_rank} has no device: CUDA_VISIBLE_DEVICES={:?} shows {n}",
                vars["CUDA_VISIBLE_DEVICES"]
            ),
        )),
    }
}

fn master(
    vars: &HashMap<String, String>,
    flag: Option<&str>,
    world_size: usize,
) -> Result<Option<Master>> {
    if let Some(spec) = flag {
        return parse_master(spec, "the master flag").map(Some);
    }
    match (vars.get("MASTER_ADDR"), vars.get("MASTER_PORT")) {
        (Some(addr), port) => {
            let mut m = parse_master(addr, "MASTER_ADDR")?;
            if let Some(port) = port {
                m.port = parse_port(port, "MASTER_PORT")?;
            }
            Ok(Some(m))
        }
        (None, Some(_)) if world_size > 1 => Err(bad(
            "MASTER_ADDR",
            UNSET,
            "MASTER_PORT is set but MASTER_ADDR is not; set both".into(),
        )),
        _ if world_size > 1 => Err(bad(
            "MASTER_ADDR",
            UNSET,
            format!(
                "a world of {world_size} ranks needs rank 0's address: set MASTER_ADDR (and \
             MASTER_PORT, default {DEFAULT_MASTER_PORT}) or pass it as a flag"
            ),
        )),
        _ => Ok(None),
    }
}
