//! The roofline estimates of `docs/perf.md` ("Roofline estimates (never run)"): FLOPs and the
//! memory-bound ops' bytes of a batch-64 training step, counted from the network's own layer
//! table (`c2f_inception::spec::Graph`), and the images/s they allow on an H100 SXM and an
//! H200 in bf16 and tf32. `cargo run --release --example roofline`. Estimates, not
//! measurements: no GPU has run the bf16 step.

use c2f_inception::spec::{Depth, Graph, InceptionConfig, Op, MIXED_6E_CHANNELS};

const BATCH: f64 = 64.0;
/// The full network's classes in `tools/torch_baseline.py` (torchvision's default).
const FULL_CLASSES: usize = 1000;
/// Coarse2Fine at the GPU preset: M attention maps, 200 classes (CUB).
const MAPS: f64 = 8.0;
const C2F_CLASSES: f64 = 200.0;
/// The up-sampler's output side at 299² (17² maps, three stride-2 layers) and 448² (26²).
const UPSAMPLED: [(usize, f64); 2] = [(299, 136.0), (448, 208.0)];

/// Dense tensor-core peaks (no sparsity) and HBM bandwidth, from NVIDIA's data sheets.
struct Card {
    name: &'static str,
    bf16_flops: f64,
    tf32_flops: f64,
    hbm: f64,
}

const CARDS: [Card; 2] = [
    Card {
        name: "H100 SXM",
        bf16_flops: 989.4e12,
        tf32_flops: 494.7e12,
        hbm: 3.35e12,
    },
    Card {
        name: "H200",
        bf16_flops: 989.4e12,
        tf32_flops: 494.7e12,
        hbm: 4.8e12,
    },
];

/// Copy bandwidth over the data sheet's: 4.22 of 4.8 TB/s measured on the H200
/// (`docs/perf.md`), assumed the same on the H100.
const COPY_FRACTION: f64 = 4.22 / 4.8;
/// The memory-bound ops' target: 80% of copy bandwidth (issue 20).
const MEMORY_OP_FRACTION: f64 = 0.8;
/// The share of PyTorch AMP's step its convolutions take (assumed; not measured): calibrates
/// cuDNN's bf16 convolution rate from PyTorch's measured images/s, since both call cuDNN.
const TORCH_CONV_SHARE: f64 = 0.6;

/// Per image, one training step: convolution (and `fc`) FLOPs, and the bytes the memory-bound
/// ops move counted in elements of activation storage, plus f32 bytes apart.
#[derive(Default, Clone, Copy)]
struct Cost {
    conv_flops: f64,
    /// Other FLOPs (BAP, the heads): small, counted at the convolutions' rate.
    other_flops: f64,
    /// Elements read or written by BN + ReLU, pooling, concat, BAP, the mask and resize.
    elements: f64,
}

impl Cost {
    fn add(self, o: Cost) -> Cost {
        Cost {
            conv_flops: self.conv_flops + o.conv_flops,
            other_flops: self.other_flops + o.other_flops,
            elements: self.elements + o.elements,
        }
    }
}

/// One backbone pass, forward and backward, per image. `input_grad`: the first convolution's
/// backward-data runs too (Coarse2Fine's fine pass). Convolutions: 2·K·C·R·S·H'·W' forward,
/// the same again for each of backward-data and backward-filter. BN + ReLU: 3 passes over the
/// conv output forward (statistics, apply), 5 backward (reduction: dy, x; apply: dy, x, dx).
/// Max pool: in + out + int32 indices forward, out + indices + 2·in (zero, scatter) backward.
/// Average pool: in + out each way. Concat: read and write the output each way.
fn backbone(graph: &Graph, input_grad: bool) -> Cost {
    let mut c = Cost::default();
    let len = |id: usize| graph.activations[id].len() as f64;
    for op in &graph.ops {
        match op {
            Op::Conv {
                conv,
                input,
                output,
            } => {
                let k = &graph.convs[*conv];
                let s = graph.activations[*output];
                let fwd = 2.0
                    * (k.out_channels * k.in_channels * k.kernel.0 * k.kernel.1) as f64
                    * (s.height * s.width) as f64;
                let passes = if *input == 0 && !input_grad { 2.0 } else { 3.0 };
                c.conv_flops += passes * fwd;
                c.elements += 8.0 * len(*output);
            }
            Op::MaxPool { input, output } => {
                // int32 indices: 2 elements of bf16, counted as such (1 of f32 would be less).
                c.elements += len(*input) + 3.0 * len(*output);
                c.elements += 3.0 * len(*output) + 2.0 * len(*input);
            }
            Op::AvgPool { input, output } => c.elements += 2.0 * (len(*input) + len(*output)),
            Op::Concat { output, .. } => c.elements += 4.0 * len(*output),
            Op::Head { input, output, .. } => {
                let (features, classes) = (graph.activations[*input].channels, len(*output));
                c.other_flops += 3.0 * 2.0 * features as f64 * classes;
                c.elements += 2.0 * len(*input);
            }
        }
    }
    c
}

/// Coarse2Fine's step beyond its two backbone passes, per image: the attention conv (1×1,
/// 768 → M, with BN), BAP forward (2·M·C·HW) and backward (twice that), the two heads' `fc`
/// (M·C → classes), the mask and resize at the input side (fwd: image, map, fine input;
/// bwd: d input, image, d map) and BAP's reads of the features.
fn coarse2fine_extra(graph: &Graph, upsampled: f64) -> Cost {
    let f = graph.activations[graph.mixed_6e];
    let (c, hw) = (f.channels as f64, (f.height * f.width) as f64);
    let side = graph.config.input_size as f64;
    let pass = Cost {
        conv_flops: 3.0 * 2.0 * MAPS * c * hw,
        other_flops: 6.0 * MAPS * c * hw + 3.0 * 2.0 * MAPS * c * C2F_CLASSES,
        elements: 4.0 * c * hw + 8.0 * MAPS * hw,
    };
    let fine_input = Cost {
        elements: 14.0 * side * side + 4.0 * upsampled * upsampled,
        ..Cost::default()
    };
    pass.add(pass).add(fine_input)
}

/// SGD's bytes per parameter: f32 master weights, gradients and momentum read, weights and
/// momentum written; in bf16 also the bf16 working copy written.
fn sgd_bytes(params: f64, bf16: bool) -> f64 {
    params * if bf16 { 22.0 } else { 20.0 }
}

struct Row {
    name: String,
    graph: Graph,
    cost: Cost,
    params: f64,
    /// PyTorch AMP's measured images/s on the H200 (`docs/perf.md`); for Coarse2Fine, half
    /// the Mixed_6e row's (two backbone passes; not measured).
    torch_amp: f64,
    torch_measured: bool,
}

fn graph(input: usize, depth: Depth) -> Graph {
    Graph::new(InceptionConfig {
        input_size: input,
        width: 1.0,
        depth,
    })
    .expect("torchvision's InceptionV3 at 299² and 448²")
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (input, upsampled) in UPSAMPLED {
        let (mixed, full) = match input {
            299 => (1634.0, 1547.0),
            _ => (1151.0, 1035.0),
        };
        let m6e = graph(input, Depth::Mixed6e);
        let params = m6e.params.total() as f64;
        let c2f_params = params + MAPS * MIXED_6E_CHANNELS as f64 + 2.0 * MAPS * 768.0 * 200.0;
        let cost = backbone(&m6e, false);
        let c2f = cost
            .add(backbone(&m6e, true))
            .add(coarse2fine_extra(&m6e, upsampled));
        let full_graph = graph(
            input,
            Depth::Full {
                classes: FULL_CLASSES,
            },
        );
        rows.push(Row {
            name: format!("up to Mixed_6e, {input}²"),
            cost,
            params,
            graph: m6e.clone(),
            torch_amp: mixed,
            torch_measured: true,
        });
        rows.push(Row {
            name: format!("full network, {input}²"),
            cost: backbone(&full_graph, false),
            params: full_graph.params.total() as f64,
            graph: full_graph,
            torch_amp: full,
            torch_measured: true,
        });
        rows.push(Row {
            name: format!("Coarse2Fine step, {input}²"),
            cost: c2f,
            params: c2f_params,
            graph: m6e,
            torch_amp: mixed / 2.0,
            torch_measured: false,
        });
    }
    rows
}

fn main() {
    println!(
        "batch {BATCH}; per image: training GFLOP (convolutions + other), memory-bound GB in \
         bf16 / f32 storage"
    );
    let rows = rows();
    for r in &rows {
        let c = r.cost;
        println!(
            "COST\t{}\t{:.2} GFLOP ({:.2} conv + {:.3} other)\t{:.3} GB bf16\t{:.3} GB f32\t\
             SGD {:.1} M params\t{} layers",
            r.name,
            (c.conv_flops + c.other_flops) / 1e9,
            c.conv_flops / 1e9,
            c.other_flops / 1e9,
            c.elements * 2.0 / 1e9,
            c.elements * 4.0 / 1e9,
            r.params / 1e6,
            r.graph.layers.len(),
        );
    }
    // cuDNN's bf16 convolution rate on these shapes, from PyTorch AMP's H200 figure for the
    // row up to Mixed_6e at 299²: its convolutions take TORCH_CONV_SHARE of its step.
    let reference = &rows[0];
    let conv_rate = reference.torch_amp * (reference.cost.conv_flops + reference.cost.other_flops)
        / TORCH_CONV_SHARE;
    println!(
        "cuDNN bf16 convolutions, calibrated: {:.0} TFLOP/s ({:.1}% of the dense bf16 peak), \
         assuming they take {:.0}% of PyTorch AMP's step",
        conv_rate / 1e12,
        100.0 * conv_rate / CARDS[1].bf16_flops,
        100.0 * TORCH_CONV_SHARE
    );
    for card in &CARDS {
        for (precision, peak, bytes) in [
            ("bf16", card.bf16_flops, 2.0),
            ("tf32", card.tf32_flops, 4.0),
        ] {
            // TF32 runs the same convolutions at half the peak: half the calibrated rate.
            let rate = conv_rate * peak / card.bf16_flops;
            let memory = card.hbm * COPY_FRACTION * MEMORY_OP_FRACTION;
            for r in &rows {
                let c = r.cost;
                let flops = BATCH * (c.conv_flops + c.other_flops);
                let moved = BATCH * c.elements * bytes + sgd_bytes(r.params, bytes == 2.0);
                let bound = BATCH / (flops / peak + moved / card.hbm);
                let conv_time = flops / rate;
                let memory_time = moved / memory;
                let expected = BATCH / (conv_time + memory_time);
                let torch = if card.name == "H200" && precision == "bf16" {
                    let mark = if r.torch_measured { "" } else { " (est.)" };
                    format!("{:.0}{mark}\t{:.2}x", r.torch_amp, expected / r.torch_amp)
                } else {
                    "-\t-".to_string()
                };
                println!(
                    "ROOFLINE\t{}\t{precision}\t{}\tbound {:.0} img/s\texpected {:.0} img/s \
                     (convs {:.1} ms, memory-bound ops {:.1} ms per step)\tPyTorch AMP {torch}",
                    card.name,
                    r.name,
                    bound,
                    expected,
                    conv_time * 1e3,
                    memory_time * 1e3,
                );
            }
        }
    }
}
