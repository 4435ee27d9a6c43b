//! The in-process collective (ranks as threads, each with its own CPU backend) against sums
//! computed here, and the gradient bucket plan.

use std::time::Duration;

use c2f_dist::collective::{
    all_reduce_bucketed, plan_buckets, Collective, Reduce, ThreadCollective, DEFAULT_BUCKET_BYTES,
};
use c2f_inception::backend::{prelude::*, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_kernels::testing::{rel_error, SplitMix64};

/// Runs `body(rank, collective, backend)` on `world` threads and returns their results in rank
/// order.
fn on_ranks<T: Send>(
    world: usize,
    body: impl Fn(usize, ThreadCollective, &mut CpuBackend<f32>) -> T + Sync,
) -> Vec<T> {
    let group = ThreadCollective::group(world);
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .enumerate()
            .map(|(rank, c)| {
                let body = &body;
                s.spawn(move || body(rank, c, &mut CpuBackend::<f32>::new()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

/// A tensor in the middle of a buffer whose other values are NaN, so a write outside the
/// tensor shows.
fn tensor_with(b: &mut CpuBackend<f32>, values: &[f32]) -> (Tensor, Tensor) {
    let whole = b.alloc(values.len() + 10).unwrap();
    b.fill(whole, f32::NAN).unwrap();
    let t = whole.slice(5, values.len());
    b.write(t, values).unwrap();
    (whole, t)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn all_reduce_sums_in_rank_order_on_every_rank() {
    let (world, len) = (4, 1000);
    let results = on_ranks(world, |rank, mut c, b| {
        let (whole, t) = tensor_with(b, &random(rank as u64 + 1, len));
        c.all_reduce(b, t, Reduce::Sum).unwrap();
        let all = b.read(whole).unwrap();
        assert!(all[..5].iter().chain(&all[5 + len..]).all(|v| v.is_nan()));
        all[5..5 + len].to_vec()
    });
    let mut in_order = random(1, len);
    for rank in 1..world {
        in_order
            .iter_mut()
            .zip(random(rank as u64 + 1, len))
            .for_each(|(s, v)| *s += v);
    }
    let exact: Vec<f64> = (0..len)
        .map(|i| {
            (0..world)
                .map(|r| random(r as u64 + 1, len)[i] as f64)
                .sum()
        })
        .collect();
    for (rank, r) in results.iter().enumerate() {
        assert_eq!(
            bits(r),
            bits(&in_order),
            "rank {rank}: not the rank-order sum"
        );
    }
    let widened: Vec<f64> = results[0].iter().map(|&v| v as f64).collect();
    assert!(rel_error(&widened, &exact) < 1e-6);
}

#[test]
fn all_reduce_mean_is_the_sum_over_world() {
    let (world, len) = (3, 257);
    let results = on_ranks(world, |rank, mut c, b| {
        let (_, t) = tensor_with(b, &random(rank as u64 + 10, len));
        c.all_reduce(b, t, Reduce::Mean).unwrap();
        b.read(t).unwrap()
    });
    let mean: Vec<f64> = (0..len)
        .map(|i| {
            (0..world)
                .map(|r| random(r as u64 + 10, len)[i] as f64)
                .sum::<f64>()
                / 3.0
        })
        .collect();
    for r in &results {
        assert_eq!(bits(r), bits(&results[0]));
        let widened: Vec<f64> = r.iter().map(|&v| v as f64).collect();
        assert!(rel_error(&widened, &mean) < 1e-6);
    }
}

#[test]
fn broadcast_gives_every_rank_rank_zeros_values() {
    let results = on_ranks(4, |rank, mut c, b| {
        let (_, t) = tensor_with(b, &random(rank as u64 + 20, 100));
        c.broadcast(b, t).unwrap();
        b.read(t).unwrap()
    });
    for r in &results {
        assert_eq!(bits(r), bits(&random(20, 100)));
    }
}

#[test]
fn bucketed_all_reduce_equals_the_whole_all_reduce() {
    let len = 1003;
    // 40-byte buckets: 10 values each, the last 3.
    let results = on_ranks(3, |rank, mut c, b| {
        let values = random(rank as u64 + 30, len);
        let (whole_a, a) = tensor_with(b, &values);
        let (_, whole) = tensor_with(b, &values);
        all_reduce_bucketed(&mut c, b, a, Reduce::Mean, 40).unwrap();
        c.all_reduce(b, whole, Reduce::Mean).unwrap();
        c.barrier(b).unwrap();
        let around = b.read(whole_a).unwrap();
        assert!(around[..5]
            .iter()
            .chain(&around[5 + len..])
            .all(|v| v.is_nan()));
        (b.read(a).unwrap(), b.read(whole).unwrap())
    });
    for (bucketed, whole) in &results {
        assert_eq!(bits(bucketed), bits(whole));
        assert_ne!(
            bits(bucketed),
            bits(&random(30, len)),
            "nothing was reduced"
        );
    }
}

#[test]
fn bucket_plan_covers_the_buffer_in_order() {
    for (len, bytes) in [
        (0, 40),
        (1, 4),
        (10, 40),
        (1003, 40),
        (1003, 41),
        (7, 1 << 20),
    ] {
        let plan = plan_buckets(len, bytes).unwrap();
        let per = bytes / 4;
        let mut next = 0;
        for (i, b) in plan.iter().enumerate() {
            assert_eq!(b.start, next);
            assert!(!b.is_empty() && b.len() <= per);
            if i + 1 < plan.len() {
                assert_eq!(b.len(), per, "only the last bucket may be short");
            }
            next = b.end;
        }
        assert_eq!(next, len);
    }
    // InceptionV3-sized: 100 M values (400 MB) in 25 MiB buckets.
    let plan = plan_buckets(100_000_000, DEFAULT_BUCKET_BYTES).unwrap();
    assert_eq!(plan.len(), 16);
    assert_eq!(plan[0].len(), 25 * 1024 * 1024 / 4);
    let err = plan_buckets(10, 3).unwrap_err().to_string();
    assert!(err.contains("3 bytes"), "{err}");
}

#[test]
fn mismatched_lengths_fail_on_every_rank() {
    let results = on_ranks(2, |rank, mut c, b| {
        let (_, t) = tensor_with(b, &random(1, 10 + rank));
        c.all_reduce(b, t, Reduce::Sum).unwrap_err().to_string()
    });
    for (rank, e) in results.iter().enumerate() {
        assert!(
            e.contains(&format!("rank {rank}")) && e.contains("[10, 11]"),
            "{e}"
        );
    }
}

#[test]
fn a_missing_rank_makes_the_others_fail_with_its_number() {
    let mut group = ThreadCollective::group(3);
    group.truncate(2);
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let mut c = c.with_timeout(Duration::from_millis(300));
                    let mut b = CpuBackend::<f32>::new();
                    c.barrier(&mut b).unwrap_err().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errors {
        assert!(e.contains("ranks [2] did not arrive within 0.3 s"), "{e}");
    }
}
