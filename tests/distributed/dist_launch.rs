//! Rank, local rank, world size, device and master address from torchrun's, OpenMPI's and
//! SLURM's variables, and the errors for missing or inconsistent ones.

use std::collections::HashMap;

use c2f_dist::launch::{LaunchInfo, Launcher, Master, DEFAULT_MASTER_PORT};
use c2f_dist::workers::parse_gpus;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn master(addr: &str, port: u16) -> Option<Master> {
    Some(Master {
        addr: addr.into(),
        port,
    })
}

fn error(pairs: &[(&str, &str)], flag: Option<&str>) -> String {
    LaunchInfo::from_vars(&vars(pairs), flag)
        .unwrap_err()
        .to_string()
}

#[test]
fn torchrun_variables() {
    let info = LaunchInfo::from_vars(
        &vars(&[
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29511"),
            // A SLURM batch script's own variables are inherited but do not describe us.
            ("SLURM_PROCID", "0"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NTASKS", "2"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(
        info,
        LaunchInfo {
            launcher: Launcher::Torchrun,
            rank: 5,
            local_rank: 1,
            world_size: 8,
            device: 1,
            master: master("node0", 29511),
        }
    );
}

#[test]
fn slurm_variables_with_the_master_from_a_flag() {
    let slurm = [
        ("SLURM_PROCID", "6"),
        ("SLURM_LOCALID", "2"),
        ("SLURM_NTASKS", "8"),
    ];
    let info = LaunchInfo::from_vars(&vars(&slurm), Some("gpu-07:1234")).unwrap();
    assert_eq!(
        (
            info.launcher,
            info.rank,
            info.local_rank,
            info.world_size,
            info.device
        ),
        (Launcher::Slurm, 6, 2, 8, 2)
    );
    assert_eq!(info.master, master("gpu-07", 1234));
    // From MASTER_ADDR alone: the default port.
    let mut with_env = slurm.to_vec();
    with_env.push(("MASTER_ADDR", "gpu-07"));
    let info = LaunchInfo::from_vars(&vars(&with_env), None).unwrap();
    assert_eq!(info.master, master("gpu-07", DEFAULT_MASTER_PORT));
    // srun --gpus-per-task=1 shows each task one GPU: device 0 whatever the local rank.
    with_env.push(("CUDA_VISIBLE_DEVICES", "3"));
    assert_eq!(
        LaunchInfo::from_vars(&vars(&with_env), None)
            .unwrap()
            .device,
        0
    );
    let e = error(&slurm, None);
    assert!(e.contains("set MASTER_ADDR"), "{e}");
}

#[test]
fn openmpi_variables_and_the_device_override() {
    let info = LaunchInfo::from_vars(
        &vars(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "[::1]:29600"),
            ("C2F_DEVICE", "7"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(
        (info.launcher, info.rank, info.world_size, info.device),
        (Launcher::OpenMpi, 3, 4, 7)
    );
    assert_eq!(info.master, master("::1", 29600));
}

#[test]
fn no_launcher_is_a_single_process() {
    let info = LaunchInfo::from_vars(&vars(&[("CUDA_VISIBLE_DEVICES", "2,3")]), None).unwrap();
    assert_eq!(
        (
            info.launcher,
            info.rank,
            info.world_size,
            info.device,
            info.master
        ),
        (Launcher::Single, 0, 1, 0, None)
    );
}

#[test]
fn inconsistent_values_are_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("RANK", "1"), ("WORLD_SIZE", "2")],
            "RANK and WORLD_SIZE are set but LOCAL_RANK is not",
        ),
        (
            &[("SLURM_PROCID", "1")],
            "SLURM_PROCID is set but SLURM_LOCALID is not",
        ),
        (
            &[
                ("RANK", "4"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "4"),
                ("MASTER_ADDR", "h"),
            ],
            "RANK=4 is outside WORLD_SIZE=4",
        ),
        (
            &[
                ("RANK", "1"),
                ("LOCAL_RANK", "2"),
                ("WORLD_SIZE", "4"),
                ("MASTER_ADDR", "h"),
            ],
            "LOCAL_RANK=2 is above RANK=1",
        ),
        (
            &[("RANK", "x"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "4")],
            "RANK=\"x\" is not a non-negative integer",
        ),
        (
            &[("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "0")],
            "WORLD_SIZE=0",
        ),
        (
            &[
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "70000"),
            ],
            "MASTER_PORT=\"70000\" is not a port",
        ),
        (
            &[
                ("RANK", "1"),
                ("LOCAL_RANK", "1"),
                ("WORLD_SIZE", "2"),
                ("MASTER_PORT", "29500"),
            ],
            "MASTER_PORT is set but MASTER_ADDR is not",
        ),
        (
            &[
                ("RANK", "3"),
                ("LOCAL_RANK", "3"),
                ("WORLD_SIZE", "8"),
                ("LOCAL_WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
            ],
            "LOCAL_RANK=3, LOCAL_WORLD_SIZE=2 and WORLD_SIZE=8 do not fit together",
        ),
        (
            &[
                ("RANK", "2"),
                ("LOCAL_RANK", "2"),
                ("WORLD_SIZE", "4"),
                ("MASTER_ADDR", "h"),
                ("CUDA_VISIBLE_DEVICES", "0,1"),
            ],
            "local rank 2 has no device",
        ),
    ];
    for (pairs, expected) in cases {
        let e = error(pairs, None);
        assert!(e.contains(expected), "{pairs:?}: {e}");
    }
}

#[test]
fn gpu_lists() {
    assert_eq!(parse_gpus("0,1,2,3", 4).unwrap(), [0, 1, 2, 3]);
    assert_eq!(parse_gpus("all", 3).unwrap(), [0, 1, 2]);
    assert_eq!(parse_gpus(" 2, 0", 4).unwrap(), [2, 0]);
    for (spec, count, expected) in [
        ("0,4", 4, "GPU 4 does not exist"),
        ("1,1", 4, "GPU 1 is listed twice"),
        ("0,a", 4, "\"a\" is not a GPU ordinal"),
        ("all", 0, "no GPU"),
    ] {
        let e = parse_gpus(spec, count).unwrap_err().to_string();
        assert!(e.contains(expected), "{spec}: {e}");
    }
}
