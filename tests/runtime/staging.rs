//! Batches staged for the device (`Buffers::stage`, `take_staged`): on the CUDA backend through
//! page-locked buffers copied on a copy stream, two slots in turn. Staged batches reach their
//! destinations bit for bit as direct writes do, ops queued before a take still see the batch
//! before, training steps fed by staging (op by op and replayed from a captured graph) equal
//! steps fed by writes bit for bit, and a capture refuses staging. On the emulator a copy from
//! page-locked memory runs late, so a slot refilled before its copy ran would show here. On
//! the CPU backend staging writes at once.

use c2f_inception::backend::{prelude::*, IndexTensor, Staged, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_inception::cuda::CudaBackend;
use c2f_kernels::concat::ChannelSlice;
use c2f_kernels::testing::{assert_bit_identical, SplitMix64};
use c2f_kernels::Error;

use crate::common::skip::or_return;
use crate::cuda_graph::{images, same_bits, state, train_step, warmed_up};

const BATCHES: usize = 6;
const LEN: usize = 1000;
const LABELS: usize = 5;

/// Batch `k`: random values and labels.
fn batch(k: usize) -> (Vec<f32>, Vec<i32>) {
    let mut rng = SplitMix64(0x57a9 + k as u64);
    let values = (0..LEN).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
    let labels = (0..LABELS).map(|_| rng.below(1000) as i32).collect();
    (values, labels)
}

/// A copy of the whole of a `len`-value tensor, queued like any op.
fn copy_whole(len: usize) -> ChannelSlice {
    ChannelSlice {
        batch: 1,
        channels: 1,
        whole_channels: 1,
        offset: 0,
        height: 1,
        width: len,
    }
}

#[test]
fn gpu_staged_batches_reach_the_device_like_direct_writes() {
    let mut b = or_return!(cuda_or_skip(
        "staging gpu_staged_batches_reach_the_device_like_direct_writes"
    ));
    let input = b.alloc(LEN).unwrap();
    let copies: Vec<Tensor> = (0..BATCHES).map(|_| b.alloc(LEN).unwrap()).collect();
    let labels: Vec<IndexTensor> = (0..BATCHES)
        .map(|_| b.alloc_index(LABELS).unwrap())
        .collect();
    b.fill(input, f32::NAN).unwrap();
    for &c in &copies {
        b.fill(c, f32::NAN).unwrap();
    }
    for &l in &labels {
        b.write_index(l, &[-1; LABELS]).unwrap();
    }
    let stage = |b: &mut CudaBackend, k: usize| {
        let (values, label_values) = batch(k);
        let parts = [
            Staged::Values(input, &values),
            Staged::Indices(labels[k % BATCHES], &label_values),
        ];
        b.stage(&parts).unwrap();
    };
    // As the trainer runs it: batch k + 1 staged while the ops of batch k are queued (here a
    // copy of the input), taken after them. No read until the end, so nothing waits for the
    // copies but the staging itself: both slots are refilled twice and more.
    stage(&mut b, 0);
    b.take_staged().unwrap();
    for (k, &copy) in copies.iter().enumerate() {
        if k + 1 < BATCHES {
            if k == 2 {
                // Replaced before it was taken: the last batch staged is the one taken.
                stage(&mut b, BATCHES + 7);
            }
            stage(&mut b, k + 1);
        }
        b.copy_channels(&copy_whole(LEN), input, copy).unwrap();
        b.take_staged().unwrap();
    }
    // Nothing waits: a take is then nothing.
    b.take_staged().unwrap();
    for (k, &copy) in copies.iter().enumerate() {
        let (values, label_values) = batch(k);
        assert_bit_identical(&format!("batch {k}"), &b.read(copy).unwrap(), &values);
        assert_eq!(
            b.read_index(labels[k]).unwrap(),
            label_values,
            "batch {k}'s labels"
        );
    }
    assert_bit_identical(
        "the last batch",
        &b.read(input).unwrap(),
        &batch(BATCHES - 1).0,
    );
}

#[test]
fn gpu_training_steps_fed_by_staging_equal_steps_fed_by_writes() {
    let test = "staging gpu_training_steps_fed_by_staging_equal_steps_fed_by_writes";
    let (mut written, mut written_net) = or_return!(warmed_up(test));
    let (mut staged, mut staged_net) = or_return!(warmed_up(test));
    let (mut replayed, mut replayed_net) = or_return!(warmed_up(test));
    let step = replayed
        .capture(|b| train_step(b, &mut replayed_net))
        .unwrap();
    let input = staged_net.input();
    let batches: Vec<Vec<f32>> = (0..=4).map(|i| images(&written_net, i)).collect();
    let stage =
        |b: &mut CudaBackend, i: usize| b.stage(&[Staged::Values(input, &batches[i])]).unwrap();
    stage(&mut staged, 1);
    stage(&mut replayed, 1);
    for (i, images) in batches.iter().enumerate().take(4).skip(1) {
        written.write(written_net.input(), images).unwrap();
        train_step(&mut written, &mut written_net).unwrap();
        // Batch i is taken, then batch i + 1 staged while step i is queued.
        staged.take_staged().unwrap();
        train_step(&mut staged, &mut staged_net).unwrap();
        stage(&mut staged, i + 1);
        replayed.take_staged().unwrap();
        replayed.replay(&step).unwrap();
        stage(&mut replayed, i + 1);
    }
    let want = state(&mut written, &written_net);
    same_bits(&state(&mut staged, &staged_net), &want);
    same_bits(&state(&mut replayed, &replayed_net), &want);
}

#[test]
fn gpu_capture_refuses_staging() {
    let (mut b, net) = or_return!(warmed_up("staging gpu_capture_refuses_staging"));
    let input = net.input();
    let values = vec![0.5f32; input.len];
    for (what, refused) in [
        (
            "staging a batch",
            b.capture(|b| b.stage(&[Staged::Values(input, &values)])),
        ),
        ("taking a staged batch", b.capture(|b| b.take_staged())),
    ] {
        match refused {
            Err(Error::Capture { op, .. }) => assert_eq!(op, what),
            Err(e) => panic!("{what} refused otherwise: {e}"),
            Ok(_) => panic!("{what} captured"),
        }
    }
}

#[test]
fn gpu_staging_checks_its_destinations() {
    let mut b = or_return!(cuda_or_skip("staging gpu_staging_checks_its_destinations"));
    let t = b.alloc(4).unwrap();
    let e = b.stage(&[Staged::Values(t, &[1.0; 5])]).unwrap_err();
    assert!(e.to_string().contains("staged values"), "{e}");
    let beyond = Tensor { len: 8, ..t };
    assert!(b.stage(&[Staged::Values(beyond, &[1.0; 8])]).is_err());
}

#[test]
fn staging_on_the_cpu_writes_at_once() {
    let mut b = CpuBackend::<f32>::new();
    let (t, l) = (b.alloc(LEN).unwrap(), b.alloc_index(LABELS).unwrap());
    b.fill(t, f32::NAN).unwrap();
    let (values, labels) = batch(0);
    b.stage(&[Staged::Values(t, &values), Staged::Indices(l, &labels)])
        .unwrap();
    assert_bit_identical("staged", &b.read(t).unwrap(), &values);
    assert_eq!(b.read_index(l).unwrap(), labels);
    b.take_staged().unwrap();
    assert_bit_identical("taken", &b.read(t).unwrap(), &values);
}
