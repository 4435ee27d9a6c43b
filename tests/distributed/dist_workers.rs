//! The `--gpus` launcher: one worker process per GPU with torchrun's variables (the workers are
//! this test binary re-run as its ignored `child` test), and a failing rank stopping the rest.

use std::time::Duration;

use c2f_dist::launch::{LaunchInfo, Launcher};
use c2f_dist::workers::{run_workers, WorkerCommand};
use c2f_dist::DistError;

/// What the children are told: the GPU list as given to the launcher, and which rank fails.
const GPUS_ENV: &str = "C2F_TEST_GPUS";
const FAIL_ENV: &str = "C2F_TEST_FAIL_RANK";

/// One worker: checks that the launcher's variables give it the right place and GPU, then
/// exits; the rank named by `C2F_TEST_FAIL_RANK` fails with a message, the others then wait to
/// be stopped.
#[test]
#[ignore = "a worker process of the launcher tests, which run it"]
fn child() {
    let info = LaunchInfo::from_env(None).unwrap();
    let gpus: Vec<usize> = std::env::var(GPUS_ENV)
        .unwrap()
        .split(',')
        .map(|g| g.parse().unwrap())
        .collect();
    assert_eq!(info.launcher, Launcher::Torchrun);
    assert_eq!(info.world_size, gpus.len());
    assert_eq!(info.device, gpus[info.rank]);
    assert_eq!(info.local_rank, info.rank);
    assert!(info.master.is_some());
    match std::env::var(FAIL_ENV)
        .ok()
        .map(|r| r.parse::<usize>().unwrap())
    {
        Some(fail) if fail == info.rank => {
            eprintln!("loss is NaN at step 3");
            // The exit status itself, not libtest's 101 for a failed test.
            std::process::exit(3)
        }
        Some(_) => {
            // Stopped by the launcher long before this ends.
            std::thread::sleep(Duration::from_secs(600))
        }
        None => {}
    }
}

fn workers(gpus: &str, fail: Option<usize>) -> WorkerCommand {
    let mut env = vec![(GPUS_ENV.into(), gpus.into())];
    if let Some(rank) = fail {
        env.push((FAIL_ENV.into(), rank.to_string().into()));
    }
    WorkerCommand {
        program: std::env::current_exe().unwrap(),
        args: [
            "--exact",
            &crate::common::child::exact_test_name(module_path!(), "child"),
            "--ignored",
            "--nocapture",
        ]
        .map(Into::into)
        .to_vec(),
        env,
    }
}

#[test]
fn every_worker_gets_its_rank_and_gpu() {
    run_workers(&workers("2,0,3", None), &[2, 0, 3], None).unwrap();
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let err = run_workers(&workers("0,1,2,3", Some(2)), &[0, 1, 2, 3], None).unwrap_err();
    let DistError::Worker { rank, message } = &err else {
        panic!("not a worker error: {err}");
    };
    assert_eq!(*rank, 2, "{err}");
    assert!(message.contains("exited with status 3"), "{err}");
    assert!(
        message.contains("stopped the other ranks still running: [0, 1, 3]"),
        "{err}"
    );
    assert!(message.contains("loss is NaN at step 3"), "{err}");
}

#[test]
fn a_program_that_cannot_start_is_named() {
    let cmd = WorkerCommand {
        program: "/nonexistent/c2f".into(),
        ..WorkerCommand::default()
    };
    let err = run_workers(&cmd, &[0, 1], None).unwrap_err().to_string();
    assert!(
        err.contains("rank 0 failed: could not start /nonexistent/c2f"),
        "{err}"
    );
}
