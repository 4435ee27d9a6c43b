//! The rendezvous that hands rank 0's 128-byte NCCL id to the other ranks: three real processes
//! on loopback (this test binary re-run as its ignored `child` test), a rank that never
//! arrives, a port in use, and the shared-file variant.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use c2f_dist::launch::{LaunchInfo, Master};
use c2f_dist::rendezvous::{exchange_id, remove_rendezvous_file, Rendezvous, UniqueId};
use c2f_dist::workers::free_port;
use c2f_kernels::testing::SplitMix64;

const ID_ENV: &str = "C2F_TEST_RENDEZVOUS_ID";

fn random_id(seed: u64) -> UniqueId {
    let mut rng = SplitMix64(seed);
    std::array::from_fn(|_| rng.below(256) as u8)
}

fn hex(id: &UniqueId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> UniqueId {
    std::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
}

fn loopback(port: u16) -> Rendezvous {
    Rendezvous::Tcp(Master {
        addr: "127.0.0.1".into(),
        port,
    })
}

/// One rank of `three_processes_exchange_the_id`: reads its place from torchrun's variables,
/// rank 0 brings the id from the environment, and every rank prints the id it ends with.
#[test]
#[ignore = "a child process of three_processes_exchange_the_id, which runs it"]
fn child() {
    let info = LaunchInfo::from_env(None).unwrap();
    let id = std::env::var(ID_ENV).ok().map(|h| unhex(&h));
    let rendezvous = Rendezvous::Tcp(info.master.clone().unwrap());
    let got = exchange_id(
        &rendezvous,
        info.rank,
        info.world_size,
        id.as_ref(),
        Duration::from_secs(30),
    )
    .unwrap();
    println!("rank {} id {}", info.rank, hex(&got));
}

#[test]
fn three_processes_exchange_the_id() {
    let id = random_id(7);
    let port = free_port().unwrap();
    let exe = std::env::current_exe().unwrap();
    // Rank 0 last, so the others first find nobody listening and must retry.
    let children: Vec<_> = (0..3)
        .rev()
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--exact",
                &crate::common::child::exact_test_name(module_path!(), "child"),
                "--ignored",
                "--nocapture",
            ])
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", "3")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            if rank == 0 {
                cmd.env(ID_ENV, hex(&id));
            }
            (rank, cmd.spawn().unwrap())
        })
        .collect();
    for (rank, child) in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "rank {rank}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = format!("rank {rank} id {}", hex(&id));
        assert!(stdout.contains(&line), "rank {rank} printed: {stdout}");
    }
}

#[test]
fn a_rank_that_never_arrives_fails_the_others_with_its_number() {
    let port = free_port().unwrap();
    let id = random_id(8);
    let timeout = Duration::from_millis(700);
    let errors: Vec<String> = std::thread::scope(|s| {
        let rank0 = s.spawn(|| exchange_id(&loopback(port), 0, 3, Some(&id), timeout));
        let rank1 = s.spawn(|| exchange_id(&loopback(port), 1, 3, None, timeout));
        [rank0, rank1]
            .into_iter()
            .map(|h| h.join().unwrap().unwrap_err().to_string())
            .collect()
    });
    assert!(
        errors[0].contains("rank 2 did not arrive within 0.7 s"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("rank 1: rank 0 gave up") && errors[1].contains("rank 2 did not arrive"),
        "{}",
        errors[1]
    );
}

#[test]
fn rank_zero_missing_fails_the_others() {
    let port = free_port().unwrap();
    let e = exchange_id(&loopback(port), 2, 3, None, Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "rank 2 could not reach rank 0 at 127.0.0.1:{port} within 0.3 s"
        )),
        "{e}"
    );
}

#[test]
fn a_port_in_use_is_named() {
    let taken = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = exchange_id(
        &loopback(port),
        0,
        2,
        Some(&random_id(9)),
        Duration::from_secs(5),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("port {port} already in use")), "{e}");
}

fn scratch_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("c2f-dist-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn ranks_meet_through_a_shared_file() {
    let path = scratch_file("id");
    let spec = format!("file:{}", path.display());
    let rendezvous = Rendezvous::parse(&spec).unwrap();
    assert_eq!(rendezvous, Rendezvous::File(path.clone()));
    let id = random_id(10);
    let got: Vec<UniqueId> = std::thread::scope(|s| {
        // The readers start first and poll until rank 0 has written the file.
        let readers: Vec<_> = (1..4)
            .map(|r| {
                s.spawn({
                    let rv = &rendezvous;
                    move || exchange_id(rv, r, 4, None, Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let own = exchange_id(&rendezvous, 0, 4, Some(&id), Duration::from_secs(10)).unwrap();
        let mut all = vec![own];
        all.extend(readers.into_iter().map(|h| h.join().unwrap()));
        all
    });
    assert!(got.iter().all(|g| *g == id));
    // A second run must not pick up the first run's id.
    let e = exchange_id(&rendezvous, 0, 4, Some(&id), Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    // A reader of another world size refuses the file.
    let e = exchange_id(&rendezvous, 1, 5, None, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is for a world of 4, this one has 5"), "{e}");
    remove_rendezvous_file(&rendezvous).unwrap();
    let e = exchange_id(&rendezvous, 1, 4, None, Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(e.contains("did not appear within 0.2 s"), "{e}");
}

#[test]
fn rendezvous_specs() {
    assert_eq!(
        Rendezvous::parse("tcp://node0:29400").unwrap(),
        Rendezvous::Tcp(Master {
            addr: "node0".into(),
            port: 29400
        })
    );
    for bad in ["file:", "node0:29400", "tcp://node0:0"] {
        assert!(Rendezvous::parse(bad).is_err(), "{bad}");
    }
}
