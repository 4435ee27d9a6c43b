//! The training loop for Coarse2Fine and for the plain InceptionV3 baseline, on any f32 backend,
//! with test-set top-1 for the coarse, fine and averaged predictions.
//!
//! This is the first, minimal trainer: SGD with momentum and weight decay, WS-DAN's step
//! schedule (×0.9 every 2 epochs), BatchNorm in train mode, random initialisation from the
//! shared counter-based generator. Checkpoints, metrics files, config files and the other
//! datasets' command-line wiring are still to come (issue 4).

use std::sync::Arc;
use std::time::Instant;

use c2f_inception::backend::{Backend, BnMode};
use c2f_inception::init::{counter_uniform, golden_init};
use c2f_inception::network::Network;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_kernels::center_loss::CenterLossParams;
use c2f_kernels::rng::SplitMix64;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::softmax_ce::SoftmaxCeShape;
use c2f_kernels::Result;

use crate::data::loader::{Batch, ImageSource, Loader, LoaderConfig};
use crate::data::transform::{TrainCrop, Transform};
use crate::model::{orthogonal_attention, Coarse2Fine, Coarse2FineConfig, FEATURE_SCALE};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub input_size: usize,
    pub width: f64,
    pub classes: usize,
    pub maps: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub center_loss: CenterLossParams,
    pub seed: u64,
    /// The attention conv starts from orthonormal rows (SVD, the paper's Algorithm 1); `false`
    /// keeps the plain uniform start, the ablation of the paper's Table 8.
    pub ortho_init: bool,
}

/// Test-set top-1 accuracy (fractions); the baseline has only `coarse`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub coarse: f64,
    pub fine: Option<f64>,
    pub average: Option<f64>,
}

/// WS-DAN's schedule: the learning rate times 0.9 every 2 epochs.
pub fn learning_rate(base: f64, epoch: usize) -> f64 {
    base * 0.9f64.powi((epoch / 2) as i32)
}

fn loaders(
    cfg: &TrainConfig,
    train: Arc<dyn ImageSource>,
    test: Arc<dyn ImageSource>,
) -> Result<(Loader, Loader)> {
    let size = cfg.input_size as u32;
    let train_transform = Transform::Train {
        size,
        crop: TrainCrop::ResizeRandom {
            resize: size + size / 8,
        },
        hflip: true,
    };
    let train_loader = Loader::new(
        train,
        LoaderConfig {
            seed: cfg.seed,
            drop_last: true,
            cache: true,
            ..LoaderConfig::new(cfg.batch, train_transform)
        },
    )?;
    let test_loader = Loader::new(
        test,
        LoaderConfig {
            shuffle: false,
            cache: true,
            ..LoaderConfig::new(cfg.batch, Transform::test(size))
        },
    )?;
    Ok((train_loader, test_loader))
}

/// A batch's images, padded to the model's fixed batch size by repeating the last image; the
/// padding's predictions are not counted.
fn padded_images(batch: &Batch, size: usize) -> Vec<f32> {
    let image = batch.images.len() / batch.labels.len();
    let mut images = batch.images.clone();
    while images.len() < size * image {
        let last = images[images.len() - image..].to_vec();
        images.extend(last);
    }
    images
}

/// Row-wise softmax of `[B, C]` logits.
fn softmax(logits: &[f32], classes: usize) -> Vec<f64> {
    logits
        .chunks(classes)
        .flat_map(|row| {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.into_iter().map(move |e| e / sum)
        })
        .collect()
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

fn init_network<B: Backend<Scalar = f32>>(b: &mut B, net: &Network) -> Result<()> {
    let mut params = vec![0.0; net.graph.params.total()];
    let mut buffers = vec![0.0; net.graph.buffers.total()];
    golden_init(&net.graph, &mut params, &mut buffers);
    // Fresh BatchNorm statistics, as a new torchvision model has.
    for e in net.graph.buffers.entries() {
        let fill = if e.name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        buffers[e.range()].fill(fill);
    }
    b.write(net.params, &params)?;
    b.write(net.buffers, &buffers)
}

/// Trains Coarse2Fine, printing one line per epoch, and returns its test accuracy.
pub fn train_coarse2fine<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    train: Arc<dyn ImageSource>,
    test: Arc<dyn ImageSource>,
) -> Result<Accuracy> {
    let mut model = Coarse2Fine::new(
        b,
        Coarse2FineConfig {
            input_size: cfg.input_size,
            width: cfg.width,
            classes: cfg.classes,
            maps: cfg.maps,
            upsampler_channels: vec![8; upsampler_layers(&model_graph(cfg)?) - 1],
            center_loss: cfg.center_loss,
            batch: cfg.batch,
        },
    )?;
    init_network(b, model.backbone())?;
    let mut heads = vec![0.0f32; model.params.len];
    for e in model.head_table().entries() {
        let (lo, hi) = head_range(&e.name, &e.shape);
        counter_uniform(&e.name, lo, hi, &mut heads[e.range()]);
    }
    let attention = model
        .head_table()
        .get("attention.weight")
        .expect("the model declares it");
    if cfg.ortho_init {
        let (maps, channels) = (attention.shape[0], attention.shape[1]);
        heads[attention.range()].copy_from_slice(&orthogonal_attention(maps, channels, cfg.seed)?);
    }
    b.write(model.params, &heads)?;
    let (train_loader, test_loader) = loaders(cfg, train, test)?;
    let mut rng = SplitMix64(cfg.seed ^ 0xc2f);
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let sgd = SgdParams::new(learning_rate(cfg.lr, epoch), cfg.momentum, cfg.weight_decay);
        let (mut sum, mut steps, mut images) = (0.0, 0, 0);
        for batch in train_loader.epoch(epoch as u64) {
            b.write(model.input(), &batch.images)?;
            b.write_index(model.labels(), &batch.labels)?;
            let chosen: Vec<i32> = (0..cfg.batch)
                .map(|_| rng.below(cfg.maps as u64) as i32)
                .collect();
            b.write_index(model.chosen_maps(), &chosen)?;
            model.zero_grads(b)?;
            let losses = model.forward_backward(b, BnMode::Train)?;
            if !losses.total().is_finite() {
                return Err(c2f_kernels::Error::Shape(format!(
                    "epoch {epoch}, step {steps}: non-finite loss {losses:?}"
                )));
            }
            model.sgd_step(b, &sgd)?;
            sum += losses.total();
            steps += 1;
            images += batch.labels.len();
        }
        println!(
            "coarse2fine epoch {:>3}  loss {:.4}  lr {:.2e}  {:.1} img/s",
            epoch + 1,
            sum / steps.max(1) as f64,
            sgd.lr,
            images as f64 / start.elapsed().as_secs_f64()
        );
    }
    let (mut right, mut total) = ([0usize; 3], 0);
    for batch in test_loader.epoch(0) {
        let n = batch.labels.len();
        b.write(model.input(), &padded_images(&batch, cfg.batch))?;
        model.infer(b)?;
        let (lc, lf) = model.logits();
        let pc = softmax(&b.read(lc)?, cfg.classes);
        let pf = softmax(&b.read(lf)?, cfg.classes);
        for (i, &label) in batch.labels.iter().enumerate().take(n) {
            let row = |p: &[f64]| p[i * cfg.classes..][..cfg.classes].to_vec();
            let avg: Vec<f64> = row(&pc)
                .iter()
                .zip(row(&pf))
                .map(|(a, b)| (a + b) / 2.0)
                .collect();
            for (k, probs) in [row(&pc), row(&pf), avg].iter().enumerate() {
                right[k] += (argmax(probs) == label as usize) as usize;
            }
        }
        total += n;
    }
    let acc = |k: usize| right[k] as f64 / total.max(1) as f64;
    Ok(Accuracy {
        coarse: acc(0),
        fine: Some(acc(1)),
        average: Some(acc(2)),
    })
}

/// The uniform range a head parameter starts from: ±1/sqrt(fan_in), except that the up-sampler
/// starts non-negative (so the first masks are not all ones: the attention maps it reads are
/// non-negative), and the classifiers 100× smaller, because they see 100× the unit-norm part
/// features and should start with logits of order one.
fn head_range(name: &str, shape: &[usize]) -> (f64, f64) {
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f64).sqrt();
    if name.starts_with("upsampler.") {
        (0.0, if name.ends_with("bias") { 0.1 } else { bound })
    } else if name.starts_with("fc_") {
        (-bound / FEATURE_SCALE, bound / FEATURE_SCALE)
    } else {
        (-bound, bound)
    }
}

fn model_graph(cfg: &TrainConfig) -> Result<Graph> {
    Graph::new(InceptionConfig {
        input_size: cfg.input_size,
        width: cfg.width,
        depth: Depth::Mixed6e,
    })
}

/// Stride-2 layers that take the Mixed_6e side to at least a quarter of the input side (the
/// bilinear resize does the rest).
fn upsampler_layers(graph: &Graph) -> usize {
    let side = graph.activations[graph.mixed_6e].height;
    let input = graph.config.input_size;
    let mut layers = 1;
    while (side << layers) * 4 < input {
        layers += 1;
    }
    layers
}

/// Trains the plain InceptionV3 baseline (global average pool, dropout, fc) and returns its
/// test accuracy.
pub fn train_baseline<B: Backend<Scalar = f32>>(
    b: &mut B,
    cfg: &TrainConfig,
    train: Arc<dyn ImageSource>,
    test: Arc<dyn ImageSource>,
) -> Result<Accuracy> {
    let graph = Graph::new(InceptionConfig {
        input_size: cfg.input_size,
        width: cfg.width,
        depth: Depth::Full {
            classes: cfg.classes,
        },
    })?;
    let mut net = Network::new(b, graph, cfg.batch)?;
    init_network(b, &net)?;
    let labels = b.alloc_index(cfg.batch)?;
    let predictions = b.alloc_index(cfg.batch)?;
    let ce = SoftmaxCeShape {
        batch: cfg.batch,
        classes: cfg.classes,
    };
    let (train_loader, test_loader) = loaders(cfg, train, test)?;
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let sgd = SgdParams::new(learning_rate(cfg.lr, epoch), cfg.momentum, cfg.weight_decay);
        let (mut sum, mut steps, mut images) = (0.0, 0, 0);
        for batch in train_loader.epoch(epoch as u64) {
            b.write(net.input(), &batch.images)?;
            b.write_index(labels, &batch.labels)?;
            net.dropout.step = (epoch * 100_000 + steps) as u64;
            net.dropout.training = true;
            net.zero_grads(b)?;
            net.forward(b, BnMode::Train)?;
            let loss = b.softmax_cross_entropy(
                &ce,
                net.output(),
                labels,
                1.0,
                predictions,
                net.output_grad(),
            )?;
            net.backward(b, BnMode::Train, false)?;
            net.sgd_step(b, &sgd)?;
            sum += loss;
            steps += 1;
            images += batch.labels.len();
        }
        println!(
            "baseline    epoch {:>3}  loss {:.4}  lr {:.2e}  {:.1} img/s",
            epoch + 1,
            sum / steps.max(1) as f64,
            sgd.lr,
            images as f64 / start.elapsed().as_secs_f64()
        );
    }
    net.dropout.training = false;
    let (mut right, mut total) = (0, 0);
    for batch in test_loader.epoch(0) {
        let n = batch.labels.len();
        b.write(net.input(), &padded_images(&batch, cfg.batch))?;
        net.forward(b, BnMode::Inference)?;
        let probs = softmax(&b.read(net.output())?, cfg.classes);
        for (i, &label) in batch.labels.iter().enumerate().take(n) {
            right += (argmax(&probs[i * cfg.classes..][..cfg.classes]) == label as usize) as usize;
        }
        total += n;
    }
    Ok(Accuracy {
        coarse: right as f64 / total.max(1) as f64,
        fine: None,
        average: None,
    })
}
