//! Multi-process training: `--gpus` starting one worker per GPU, and a rank joining its job
//! (docs/distributed.md).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use c2f_dist::launch::{parse_master, LaunchInfo, Launcher};
use c2f_dist::nccl::{unique_id, NcclCollective};
use c2f_dist::rendezvous::{exchange_id, remove_rendezvous_file, Rendezvous, DEFAULT_TIMEOUT};
use c2f_dist::workers::{parse_gpus, run_workers, WorkerCommand};
use c2f_dist::DistError;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::device::device_count;
use c2f_kernels::{Error, Result};

use super::args::TrainArgs;

/// Multi-process training runs one process per GPU, with NCCL between them.
pub(super) fn no_cpu_ranks() -> Error {
    Error::config(
        "--device",
        "cpu",
        "data-parallel training across processes needs one GPU per rank (NCCL); with --device \
         cpu train in one process (without --gpus or a launcher's WORLD_SIZE > 1)",
    )
}

/// `--gpus`: this same command once per GPU, without `--gpus` (and without `--config`, whose
/// keys `argv` already holds), with one run folder for all; each worker reads its rank from the
/// environment. Fails naming the first rank that failed.
pub(super) fn launch_workers(args: &TrainArgs, spec: &str, argv: &[String]) -> Result<()> {
    if args.device.as_deref() == Some("cpu") {
        return Err(no_cpu_ranks());
    }
    if LaunchInfo::from_env(None)?.launcher != Launcher::Single {
        return Err(DistError::Launch(
            "--gpus starts its own workers, but this process was started by a launcher \
             (torchrun, srun or mpirun variables are set); leave --gpus out"
                .into(),
        )
        .into());
    }
    let gpus = parse_gpus(spec, device_count()?)?;
    let mut worker_args = Vec::new();
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--gpus" | "--config" => {
                rest.next();
            }
            a if a.starts_with("--gpus=") => {}
            a => worker_args.push(a.into()),
        }
    }
    if args.run_dir.is_none() {
        worker_args.push("--run-dir".into());
        worker_args.push(default_run_dir().into_os_string());
    }
    let program =
        std::env::current_exe().map_err(|e| Error::io("this program, to start the workers", e))?;
    let port = match &args.master {
        Some(m) => Some(parse_master(m, "--master")?.port),
        None => None,
    };
    println!("c2f: one worker per GPU, GPUs {gpus:?}");
    let command = WorkerCommand {
        program,
        args: worker_args,
        env: Vec::new(),
    };
    Ok(run_workers(&command, &gpus, port)?)
}

/// Joins the job `launch` describes as its rank on `b`'s GPU: rank 0's NCCL id through the
/// rendezvous, then the communicator.
pub(super) fn join_job(
    b: &CudaBackend,
    launch: &LaunchInfo,
    rendezvous: &str,
) -> Result<NcclCollective> {
    let rendezvous = match rendezvous {
        "tcp" => Rendezvous::Tcp(launch.master.clone().ok_or_else(|| {
            DistError::Launch("the TCP rendezvous needs rank 0's address (--master)".into())
        })?),
        spec => Rendezvous::parse(spec)?,
    };
    let id = match launch.rank {
        0 => Some(unique_id()?),
        _ => None,
    };
    let id = exchange_id(
        &rendezvous,
        launch.rank,
        launch.world_size,
        id.as_ref(),
        DEFAULT_TIMEOUT,
    )?;
    let nccl = NcclCollective::new(b, launch.rank, launch.world_size, &id)?;
    if launch.rank == 0 {
        // Every rank has read it: the communicator is up.
        remove_rendezvous_file(&rendezvous)?;
    }
    Ok(nccl)
}

pub(super) fn default_run_dir() -> PathBuf {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("runs/run-{now}"))
}
