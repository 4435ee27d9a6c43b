//! The NCCL collective's bucketed all-reduce inside a captured CUDA graph (a world of one; these
//! machines have one GPU): the communication stream joins the capture through the events the
//! collective records between the streams and is joined back, so a captured training step can
//! hold its gradient buckets, and a replay gives the bits of the same ops run one by one. Prints
//! `skipped: no CUDA device` without a GPU.

use c2f_dist::collective::{all_reduce_bucketed, Reduce};
use c2f_dist::nccl::NcclCollective;
use c2f_inception::backend::{prelude::*, Tensor};
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::testing::{assert_bit_identical, SplitMix64};
use c2f_kernels::Result;

use crate::dist_nccl::world_of_one;

const LEN: usize = 1000;
/// Four buckets of the 1,000 values.
const BUCKET_BYTES: usize = 1024;

/// `u = 2t`, the mean of `u` over the world in buckets, then `t = u + t/2`.
fn step(nccl: &mut NcclCollective, b: &mut CudaBackend, t: Tensor, u: Tensor) -> Result<()> {
    b.axpby(2.0, t, 0.0, u)?;
    all_reduce_bucketed(nccl, b, u, Reduce::Mean, BUCKET_BYTES)?;
    b.axpby(1.0, u, 0.5, t)
}

#[test]
fn gpu_captured_all_reduce_buckets_replay_like_eager_ones() {
    let test = "gpu_captured_all_reduce_buckets_replay_like_eager_ones";
    let Some(mut b) = cuda_or_skip(test) else {
        return;
    };
    let mut nccl = world_of_one(&b);
    let mut rng = SplitMix64(0x9a);
    let values: Vec<f32> = (0..LEN).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let [eager_t, eager_u, replayed_t, replayed_u] = [0; 4].map(|_| b.alloc(LEN).unwrap());
    for t in [eager_t, replayed_t] {
        b.write(t, &values).unwrap();
    }
    // The first run of the ops makes their launchers.
    step(&mut nccl, &mut b, eager_t, eager_u).unwrap();
    let graph = b
        .capture(|b| step(&mut nccl, b, replayed_t, replayed_u))
        .unwrap();
    for _ in 0..3 {
        b.replay(&graph).unwrap();
    }
    for _ in 0..2 {
        step(&mut nccl, &mut b, eager_t, eager_u).unwrap();
    }
    let (eager, replayed) = (b.read(eager_t).unwrap(), b.read(replayed_t).unwrap());
    assert_bit_identical("t after three steps", &replayed, &eager);
    let expected = values[0] * 2.5f32.powi(3);
    assert!(
        (eager[0] - expected).abs() <= 1e-5 * expected.abs(),
        "{} after three steps, not about {expected}",
        eager[0]
    );
}
