//! The NCCL collective on one GPU (world size 1; these machines have one GPU): the id through
//! the TCP rendezvous, all-reduce and broadcast leaving the values as they are, and a bucketed
//! all-reduce equal to the whole one. Prints `skipped: no CUDA device` without a GPU.

use std::time::Duration;

use c2f_dist::collective::{all_reduce_bucketed, Collective, Reduce};
use c2f_dist::launch::Master;
use c2f_dist::nccl::{unique_id, NcclCollective};
use c2f_dist::rendezvous::{exchange_id, Rendezvous};
use c2f_dist::workers::free_port;
use c2f_inception::backend::prelude::*;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::testing::SplitMix64;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// An NCCL communicator on `b`'s device for a world of one, its id through the TCP rendezvous.
pub(crate) fn world_of_one(b: &CudaBackend) -> NcclCollective {
    let id = unique_id().unwrap();
    let rendezvous = Rendezvous::Tcp(Master {
        addr: "127.0.0.1".into(),
        port: free_port().unwrap(),
    });
    let id = exchange_id(&rendezvous, 0, 1, Some(&id), Duration::from_secs(10)).unwrap();
    NcclCollective::new(b, 0, 1, &id).unwrap()
}

#[test]
fn gpu_world_of_one_all_reduce_and_broadcast() {
    let Some(mut b) = cuda_or_skip("gpu_world_of_one_all_reduce_and_broadcast") else {
        return;
    };
    let mut nccl = world_of_one(&b);
    assert_eq!((nccl.rank(), nccl.world_size()), (0, 1));

    let len = 3_000_001;
    let mut rng = SplitMix64(3);
    let values: Vec<f32> = (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    // The tensor sits inside a NaN-filled buffer: a write outside it shows.
    let whole = b.alloc(len + 64).unwrap();
    b.fill(whole, f32::NAN).unwrap();
    let t = whole.slice(32, len);
    let other = b.alloc(len).unwrap();
    for op in [Reduce::Sum, Reduce::Mean] {
        b.write(t, &values).unwrap();
        b.write(other, &values).unwrap();
        nccl.all_reduce(&mut b, t, op).unwrap();
        // 1 MB buckets: 4 of them, the last short.
        all_reduce_bucketed(&mut nccl, &mut b, other, op, 1 << 20).unwrap();
        nccl.barrier(&mut b).unwrap();
        let (got, bucketed) = (b.read(t).unwrap(), b.read(other).unwrap());
        assert_eq!(
            bits(&got),
            bits(&values),
            "{op:?}: a world of one is the identity"
        );
        assert_eq!(
            bits(&bucketed),
            bits(&got),
            "{op:?}: bucketed differs from whole"
        );
    }
    nccl.broadcast(&mut b, t).unwrap();
    let all = b.read(whole).unwrap();
    assert_eq!(bits(&all[32..32 + len]), bits(&values));
    assert!(all[..32].iter().chain(&all[32 + len..]).all(|v| v.is_nan()));
}
