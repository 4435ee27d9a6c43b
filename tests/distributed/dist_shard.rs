//! Each rank's shard of an epoch: disjoint, covering the epoch, equal to the single worker's
//! global batches cut in rank order, and a global batch that does not divide is refused.

use c2f_dist::shard::ShardPlan;
use c2f_kernels::testing::SplitMix64;

/// A seeded permutation standing in for the loader's epoch order.
fn order(len: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let mut o: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        o.swap(i, rng.below(i as u64 + 1) as usize);
    }
    o
}

#[test]
fn shards_are_disjoint_and_cover_the_epoch() {
    for world in 1..=5 {
        for len in [0, 1, 7, 59, 60, 61, 103] {
            for drop_last in [false, true] {
                let global = 4 * world;
                let order = order(len, 100 + len as u64);
                let per_rank: Vec<Vec<Vec<usize>>> = (0..world)
                    .map(|r| {
                        ShardPlan::new(global, world, r)
                            .unwrap()
                            .rank_batches(&order, drop_last)
                    })
                    .collect();
                let steps = if drop_last {
                    len / global
                } else {
                    len.div_ceil(global)
                };
                let mut seen = vec![0usize; len];
                for (rank, batches) in per_rank.iter().enumerate() {
                    assert_eq!(
                        batches.len(),
                        steps,
                        "world {world}, len {len}, rank {rank}"
                    );
                    for batch in batches {
                        batch.iter().for_each(|&i| seen[i] += 1);
                    }
                }
                // Step by step, the ranks' batches in rank order are the one worker's batch.
                for (step, global_batch) in order.chunks(global).take(steps).enumerate() {
                    let joined: Vec<usize> = per_rank
                        .iter()
                        .flat_map(|b| b[step].iter().copied())
                        .collect();
                    assert_eq!(
                        joined, global_batch,
                        "world {world}, len {len}, step {step}"
                    );
                }
                let used = if drop_last { steps * global } else { len };
                for (position, &i) in order.iter().enumerate() {
                    let expected = usize::from(position < used);
                    assert_eq!(seen[i], expected, "world {world}, len {len}: sample {i}");
                }
                // Full global batches give every rank the same local batch.
                for batches in &per_rank {
                    for b in batches.iter().take(len / global) {
                        assert_eq!(b.len(), global / world);
                    }
                }
            }
        }
    }
}

#[test]
fn a_partial_batch_is_split_as_evenly_as_it_can_be() {
    let plan = |r| ShardPlan::new(64, 4, r).unwrap();
    let sizes: Vec<usize> = (0..4).map(|r| plan(r).slice_of(10).len()).collect();
    assert_eq!(sizes, [3, 3, 2, 2]);
    assert_eq!(plan(1).slice_of(10), 3..6);
}

#[test]
fn a_global_batch_that_does_not_divide_is_refused() {
    let e = ShardPlan::new(64, 3, 0).unwrap_err().to_string();
    assert!(
        e.contains("global batch of 64 does not split evenly over 3 ranks"),
        "{e}"
    );
    assert_eq!(ShardPlan::new(64, 4, 3).unwrap().local_batch(), 16);
    let e = ShardPlan::new(64, 4, 4).unwrap_err().to_string();
    assert!(e.contains("rank 4 is outside a world of 4"), "{e}");
}
