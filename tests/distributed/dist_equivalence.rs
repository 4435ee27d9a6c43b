//! Data-parallel training is one worker's training: 4 CPU ranks (threads, each with its own
//! backend and model) with 16 samples each against one worker with the global batch of 64,
//! BatchNorm on running statistics (so splitting the batch changes nothing), the same data
//! order and initial weights. Rank 0's weights and center banks reach the others by broadcast;
//! each step all-reduces (mean) the gradients in buckets between backward and SGD, and syncs the
//! center banks ([`CenterSync`]). After 3 SGD steps every parameter tensor and both center
//! banks match one worker's within 1e-5 relative (norm-wise, per tensor: ‖a − b‖/‖b‖), and the
//! ranks hold bit-identical parameters and centers.

use c2f_dist::centers::CenterSync;
use c2f_dist::collective::{all_reduce_bucketed, Collective, Reduce, ThreadCollective};
use c2f_dist::shard::ShardPlan;
use c2f_inception::backend::{prelude::*, BnMode};
use c2f_inception::cpu::CpuBackend;
use c2f_inception::init::golden_init;
use c2f_inception::network::SgdGroup;
use c2f_kernels::center_loss::{CenterLossParams, CenterRule};
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::testing::{rel_error, SplitMix64};
use c2f_train::data::loader::epoch_order;
use c2f_train::model::{CenterBanks, Coarse2Fine, Coarse2FineConfig, Task};

const GLOBAL_BATCH: usize = 64;
const WORLD: usize = 4;
const STEPS: usize = 3;
const SAMPLES: usize = GLOBAL_BATCH * STEPS;
const CLASSES: usize = 3;
const MAPS: usize = 2;
const INPUT: usize = 75;
const SEED: u64 = 11;
/// Small buckets, so the gradients go in many of them (the default is 25 MiB).
const BUCKET_BYTES: usize = 64 << 10;

/// A small synthetic dataset: images, labels and the attention map each sample's fine pass
/// uses (drawn per sample, so it does not depend on which rank holds the sample).
struct Data {
    images: Vec<f32>,
    labels: Vec<i32>,
    chosen: Vec<i32>,
}

impl Data {
    fn new() -> Data {
        let mut rng = SplitMix64(SEED);
        Data {
            images: (0..SAMPLES * 3 * INPUT * INPUT)
                .map(|_| rng.uniform(-1.0, 1.0) as f32)
                .collect(),
            labels: (0..SAMPLES)
                .map(|_| rng.below(CLASSES as u64) as i32)
                .collect(),
            chosen: (0..SAMPLES)
                .map(|_| rng.below(MAPS as u64) as i32)
                .collect(),
        }
    }

    fn write_batch(&self, b: &mut CpuBackend<f32>, model: &Coarse2Fine, indices: &[usize]) {
        let image = 3 * INPUT * INPUT;
        let images: Vec<f32> = indices
            .iter()
            .flat_map(|&i| self.images[i * image..][..image].iter().copied())
            .collect();
        b.write(model.input(), &images).unwrap();
        let pick = |v: &[i32]| indices.iter().map(|&i| v[i]).collect::<Vec<i32>>();
        b.write_index(model.labels(), &pick(&self.labels)).unwrap();
        b.write_index(model.chosen_maps().unwrap(), &pick(&self.chosen))
            .unwrap();
    }
}

fn model(b: &mut CpuBackend<f32>, batch: usize) -> Coarse2Fine {
    let config = Coarse2FineConfig {
        input_size: INPUT,
        width: 0.125,
        classes: CLASSES,
        task: Task::Classes,
        maps: MAPS,
        upsampler_channels: vec![4, 4],
        // The rule and banks under which the ranks' combined center update is one worker's
        // exactly (c2f_dist::centers); the paper's rule agrees to first order in β.
        center_loss: CenterLossParams {
            rule: CenterRule::Normalized,
            ..CenterLossParams::default()
        },
        center_banks: CenterBanks::Separate,
        batch,
    };
    Coarse2Fine::new(b, config).unwrap()
}

/// Rank 0's (and the one worker's) starting point: the backbone's deterministic initialisation,
/// random heads (the up-sampler positive, so the masks are not all ones) and random, non-zero
/// center banks. Other ranks start from other random values, which the broadcast replaces.
fn initialise(b: &mut CpuBackend<f32>, model: &Coarse2Fine, seed: u64) {
    let net = model.backbone();
    let mut rng = SplitMix64(seed);
    let mut random = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
        (0..n).map(|_| rng.uniform(lo, hi) as f32).collect()
    };
    let (mut params, mut buffers) = (
        vec![0.0f32; net.graph.params.total()],
        vec![0.0f32; net.graph.buffers.total()],
    );
    if seed == SEED {
        golden_init(&net.graph, &mut params, &mut buffers);
    } else {
        params = random(params.len(), -0.1, 0.1);
        buffers = random(buffers.len(), 0.5, 1.0);
    }
    b.write(net.params, &params).unwrap();
    b.write(net.buffers, &buffers).unwrap();
    let mut heads = random(model.params.len, -0.1, 0.1);
    for e in model.head_table().entries() {
        if e.name.starts_with("upsampler.") {
            heads[e.range()].copy_from_slice(&random(e.len(), 0.05, 0.3));
        }
    }
    b.write(model.params, &heads).unwrap();
    for bank in model.center_banks() {
        b.write(bank, &random(bank.len, -0.2, 0.2)).unwrap();
    }
}

/// A rank's (or the one worker's) state after training: backbone parameters, head parameters,
/// and the coarse and fine center banks.
#[derive(Clone)]
struct State {
    backbone: Vec<f32>,
    heads: Vec<f32>,
    centers: [Vec<f32>; 2],
}

fn state(b: &mut CpuBackend<f32>, model: &Coarse2Fine) -> State {
    let [cc, cf] = model.center_banks()[..] else {
        panic!("two banks")
    };
    State {
        backbone: b.read(model.backbone().params).unwrap(),
        heads: b.read(model.params).unwrap(),
        centers: [b.read(cc).unwrap(), b.read(cf).unwrap()],
    }
}

/// One SGD group for every parameter, its rate in a slot of `b`.
fn sgd(b: &mut CpuBackend<f32>) -> SgdGroup {
    let lr = b.alloc(1).unwrap();
    b.write(lr, &[0.01]).unwrap();
    SgdGroup {
        params: SgdParams::new(0.9, 1e-4),
        lr,
    }
}

/// One worker, the global batch: the plain training step, no collective. Returns the state
/// before and after.
fn one_worker(data: &Data) -> (State, State) {
    let mut b = CpuBackend::<f32>::new();
    let mut m = model(&mut b, GLOBAL_BATCH);
    initialise(&mut b, &m, SEED);
    let start = state(&mut b, &m);
    let sgd = sgd(&mut b);
    let order = epoch_order(SAMPLES, SEED, 0, true);
    let plan = ShardPlan::new(GLOBAL_BATCH, 1, 0).unwrap();
    for batch in plan.rank_batches(&order, true) {
        data.write_batch(&mut b, &m, &batch);
        m.zero_grads(&mut b).unwrap();
        m.forward_backward(&mut b, BnMode::Inference).unwrap();
        m.sgd_step(&mut b, &sgd).unwrap();
    }
    (start, state(&mut b, &m))
}

/// One rank of the data-parallel job. Returns its state after the broadcast and at the end.
fn rank(data: &Data, mut c: ThreadCollective) -> (State, State) {
    let r = <ThreadCollective as Collective<CpuBackend<f32>>>::rank(&c);
    let mut b = CpuBackend::<f32>::new();
    let mut m = model(&mut b, GLOBAL_BATCH / WORLD);
    initialise(&mut b, &m, if r == 0 { SEED } else { SEED + 1 + r as u64 });
    let [cc, cf] = m.center_banks()[..] else {
        panic!("two banks")
    };
    let net = m.backbone();
    for t in [net.params, net.buffers, m.params, cc, cf] {
        c.broadcast(&mut b, t).unwrap();
    }
    let start = state(&mut b, &m);
    let centers = CenterSync::new(&mut b, &[cc, cf]).unwrap();
    let sgd = sgd(&mut b);
    let order = epoch_order(SAMPLES, SEED, 0, true);
    let plan = ShardPlan::new(GLOBAL_BATCH, WORLD, r).unwrap();
    for batch in plan.rank_batches(&order, true) {
        data.write_batch(&mut b, &m, &batch);
        centers.before_step(&mut b).unwrap();
        m.zero_grads(&mut b).unwrap();
        m.forward_backward(&mut b, BnMode::Inference).unwrap();
        for grads in [m.backbone().grads, m.grads] {
            all_reduce_bucketed(&mut c, &mut b, grads, Reduce::Mean, BUCKET_BYTES).unwrap();
        }
        centers.after_step(&mut c, &mut b).unwrap();
        m.sgd_step(&mut b, &sgd).unwrap();
    }
    (start, state(&mut b, &m))
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn four_ranks_of_16_train_like_one_worker_of_64() {
    let data = Data::new();
    let (single_start, single) = one_worker(&data);
    let ranks: Vec<(State, State)> = std::thread::scope(|s| {
        let handles: Vec<_> = ThreadCollective::group(WORLD)
            .into_iter()
            .map(|c| s.spawn(|| rank(&data, c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The broadcast gave every rank the one worker's starting point, bit for bit.
    for (r, (start, _)) in ranks.iter().enumerate() {
        assert_eq!(
            bits(&start.backbone),
            bits(&single_start.backbone),
            "rank {r}"
        );
        assert_eq!(bits(&start.heads), bits(&single_start.heads), "rank {r}");
        for k in 0..2 {
            assert_eq!(
                bits(&start.centers[k]),
                bits(&single_start.centers[k]),
                "rank {r}"
            );
        }
    }
    // Every rank ends with the same bits.
    let last = &ranks[0].1;
    for (r, (_, end)) in ranks.iter().enumerate().skip(1) {
        assert_eq!(
            bits(&end.backbone),
            bits(&last.backbone),
            "rank {r}: backbone"
        );
        assert_eq!(bits(&end.heads), bits(&last.heads), "rank {r}: heads");
        for k in 0..2 {
            assert_eq!(
                bits(&end.centers[k]),
                bits(&last.centers[k]),
                "rank {r}: centers {k}"
            );
        }
    }

    // Training moved everything well beyond the tolerance, so the comparison can fail.
    let moved = |a: &[f32], b: &[f32]| rel_error(&widen(a), &widen(b));
    for (what, a, b) in [
        ("backbone", &single.backbone, &single_start.backbone),
        ("heads", &single.heads, &single_start.heads),
        (
            "coarse centers",
            &single.centers[0],
            &single_start.centers[0],
        ),
        ("fine centers", &single.centers[1], &single_start.centers[1]),
    ] {
        let m = moved(a, b);
        assert!(m > 1e-3, "{what} moved only {m:e} in {STEPS} steps");
    }

    // The data-parallel result is the one worker's, tensor by tensor (a batch-1 model only
    // lends its parameter tables).
    let mut cpu = CpuBackend::<f32>::new();
    let reference = model(&mut cpu, 1);
    let tables = [
        (
            &reference.backbone().graph.params,
            &last.backbone,
            &single.backbone,
        ),
        (reference.head_table(), &last.heads, &single.heads),
    ];
    let mut worst = (0.0f64, String::new());
    for (table, dist, one) in tables {
        for e in table.entries() {
            let err = rel_error(&widen(&dist[e.range()]), &widen(&one[e.range()]));
            if err > worst.0 {
                worst = (err, e.name.clone());
            }
            assert!(err < 1e-5, "{}: relative error {err:e}", e.name);
        }
    }
    for (k, name) in ["coarse", "fine"].iter().enumerate() {
        let err = rel_error(&widen(&last.centers[k]), &widen(&single.centers[k]));
        assert!(err < 1e-5, "{name} centers: relative error {err:e}");
        println!("{name} centers: relative error {err:e}");
    }
    println!("worst parameter tensor: {} at {:e}", worst.1, worst.0);
}
