//! InceptionV3 exactly as torchvision's `Inception3` defines it (aux head off,
//! `transform_input=False`), as data: a list of ops over numbered activation tensors, and the
//! tables of named parameters and BatchNorm buffers with torchvision's state-dict names.
//! Forward walks the ops in order, backward in reverse, on any backend.

use c2f_kernels::{Error, Result};

use crate::table::TensorTable;

/// The smallest input side torchvision's InceptionV3 accepts.
pub const MIN_INPUT: usize = 75;
/// Channels of the Mixed_6e output at width 1.0, the features Coarse2Fine attends over.
pub const MIXED_6E_CHANNELS: usize = 768;
/// BatchNorm settings of every `BasicConv2d`.
pub const BN_EPS: f64 = 0.001;
pub const BN_MOMENTUM: f64 = 0.1;
/// Dropout before `fc`.
pub const DROPOUT: f64 = 0.5;

/// How far the network runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The backbone up to Mixed_6e: the later blocks are not built and cost nothing.
    Mixed6e,
    /// Through avg-pool, dropout and `fc` with this many classes: the plain InceptionV3.
    Full { classes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InceptionConfig {
    /// Square input side, at least [`MIN_INPUT`].
    pub input_size: usize,
    /// Scales every block's channels; 1.0 is exactly torchvision's network.
    pub width: f64,
    pub depth: Depth,
}

/// Per-sample shape of an activation, `[channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ActShape {
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of an activation tensor in [`Graph::activations`].
pub type ActId = usize;

/// One `BasicConv2d`: conv without bias, BatchNorm, ReLU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicConv {
    /// torchvision module path, e.g. `Mixed_5b.branch1x1`.
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    /// Indices of `conv.weight`, `bn.weight`, `bn.bias` in the parameter table.
    pub weight: usize,
    pub bn_weight: usize,
    pub bn_bias: usize,
    /// Indices of `bn.running_mean`, `bn.running_var` in the buffer table.
    pub running_mean: usize,
    pub running_var: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `BasicConv2d` number `conv` of [`Graph::convs`].
    Conv {
        conv: usize,
        input: ActId,
        output: ActId,
    },
    /// Max pool, kernel 3, stride 2, no padding.
    MaxPool { input: ActId, output: ActId },
    /// Average pool, kernel 3, stride 1, padding 1, padding counted (PyTorch's default).
    AvgPool { input: ActId, output: ActId },
    /// Channel concat, in order.
    Concat { inputs: Vec<ActId>, output: ActId },
    /// Adaptive average pool to 1×1, dropout, then `fc` (indices into the parameter table).
    Head {
        input: ActId,
        output: ActId,
        fc_weight: usize,
        fc_bias: usize,
    },
}

/// The network for one configuration.
#[derive(Debug, Clone)]
pub struct Graph {
    pub config: InceptionConfig,
    pub convs: Vec<BasicConv>,
    pub ops: Vec<Op>,
    /// Per-sample shapes; activation 0 is the input image.
    pub activations: Vec<ActShape>,
    /// Trainable parameters (conv weights, BN weight and bias, fc).
    pub params: TensorTable,
    /// BatchNorm running statistics.
    pub buffers: TensorTable,
    /// The Mixed_6e output.
    pub mixed_6e: ActId,
    /// The last activation: Mixed_6e's, or the logits for [`Depth::Full`].
    pub output: ActId,
    /// torchvision's top-level modules in order (`Conv2d_1a_3x3`, `maxpool1`, `Mixed_5b`, …;
    /// the head is [`HEAD_LAYER`]), and for each op the one it belongs to: what a profile's
    /// ranges are named by.
    pub layers: Vec<String>,
    pub op_layers: Vec<usize>,
}

/// The layer name of the head: torchvision's `avgpool`, `dropout` and `fc`, one op here.
pub const HEAD_LAYER: &str = "avgpool+dropout+fc";

impl Graph {
    pub fn new(config: InceptionConfig) -> Result<Graph> {
        if config.input_size < MIN_INPUT {
            return Err(Error::config(
                "input_size",
                config.input_size,
                format!("is below InceptionV3's minimum of {MIN_INPUT}; use at least {MIN_INPUT}"),
            ));
        }
        if !(config.width > 0.0 && config.width.is_finite()) {
            return Err(Error::config(
                "width",
                config.width,
                "the width multiplier must be positive and finite (1.0 is torchvision's InceptionV3)",
            ));
        }
        if let Depth::Full { classes: 0 } = config.depth {
            return Err(Error::config(
                "classes",
                0,
                "the fc layer needs at least one class",
            ));
        }
        let mut b = Builder {
            width: config.width,
            graph: Graph {
                config,
                convs: Vec::new(),
                ops: Vec::new(),
                activations: vec![ActShape {
                    channels: 3,
                    height: config.input_size,
                    width: config.input_size,
                }],
                params: TensorTable::default(),
                buffers: TensorTable::default(),
                mixed_6e: 0,
                output: 0,
                layers: Vec::new(),
                op_layers: Vec::new(),
            },
        };
        b.begin("Conv2d_1a_3x3");
        let x = b.conv("Conv2d_1a_3x3", 0, 32, (3, 3), (2, 2), (0, 0));
        b.begin("Conv2d_2a_3x3");
        let x = b.conv("Conv2d_2a_3x3", x, 32, (3, 3), (1, 1), (0, 0));
        b.begin("Conv2d_2b_3x3");
        let x = b.conv("Conv2d_2b_3x3", x, 64, (3, 3), (1, 1), (1, 1));
        b.begin("maxpool1");
        let x = b.max_pool(x);
        b.begin("Conv2d_3b_1x1");
        let x = b.conv("Conv2d_3b_1x1", x, 80, (1, 1), (1, 1), (0, 0));
        b.begin("Conv2d_4a_3x3");
        let x = b.conv("Conv2d_4a_3x3", x, 192, (3, 3), (1, 1), (0, 0));
        b.begin("maxpool2");
        let x = b.max_pool(x);
        let x = b.inception_a("Mixed_5b", x, 32);
        let x = b.inception_a("Mixed_5c", x, 64);
        let x = b.inception_a("Mixed_5d", x, 64);
        let x = b.inception_b("Mixed_6a", x);
        let x = b.inception_c("Mixed_6b", x, 128);
        let x = b.inception_c("Mixed_6c", x, 160);
        let x = b.inception_c("Mixed_6d", x, 160);
        let x = b.inception_c("Mixed_6e", x, 192);
        b.graph.mixed_6e = x;
        b.graph.output = x;
        if let Depth::Full { classes } = config.depth {
            let x = b.inception_d("Mixed_7a", x);
            let x = b.inception_e("Mixed_7b", x);
            let x = b.inception_e("Mixed_7c", x);
            b.graph.output = b.head(x, classes);
        }
        for (id, shape) in b.graph.activations.iter().enumerate() {
            if shape.height == 0 || shape.width == 0 {
                return Err(Error::config(
                    "input_size",
                    config.input_size,
                    format!("leaves activation {id} empty; use a larger input"),
                ));
            }
        }
        Ok(b.graph)
    }

    /// The conv of a [`Op::Conv`].
    pub fn conv(&self, index: usize) -> &BasicConv {
        &self.convs[index]
    }
}

struct Builder {
    width: f64,
    graph: Graph,
}

/// Output side of a window op: `(n + 2p − k)/s + 1`, 0 when the window does not fit.
fn out_side(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p).checked_sub(k).map_or(0, |r| r / s + 1)
}

impl Builder {
    fn scaled(&self, channels: usize) -> usize {
        ((channels as f64 * self.width).round() as usize).max(1)
    }

    fn act(&mut self, shape: ActShape) -> ActId {
        self.graph.activations.push(shape);
        self.graph.activations.len() - 1
    }

    /// Starts top-level module `name`: the ops pushed from here on belong to it.
    fn begin(&mut self, name: &str) {
        self.graph.layers.push(name.to_string());
    }

    fn push_op(&mut self, op: Op) {
        self.graph.ops.push(op);
        self.graph.op_layers.push(self.graph.layers.len() - 1);
    }

    fn conv(
        &mut self,
        name: &str,
        input: ActId,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> ActId {
        let out_channels = self.scaled(out_channels);
        let in_shape = self.graph.activations[input];
        let g = &mut self.graph;
        let weight = g.params.push(
            format!("{name}.conv.weight"),
            vec![out_channels, in_shape.channels, kernel.0, kernel.1],
        );
        let bn_weight = g
            .params
            .push(format!("{name}.bn.weight"), vec![out_channels]);
        let bn_bias = g.params.push(format!("{name}.bn.bias"), vec![out_channels]);
        let running_mean = g
            .buffers
            .push(format!("{name}.bn.running_mean"), vec![out_channels]);
        let running_var = g
            .buffers
            .push(format!("{name}.bn.running_var"), vec![out_channels]);
        g.convs.push(BasicConv {
            name: name.to_string(),
            in_channels: in_shape.channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            bn_weight,
            bn_bias,
            running_mean,
            running_var,
        });
        let output = self.act(ActShape {
            channels: out_channels,
            height: out_side(in_shape.height, kernel.0, stride.0, padding.0),
            width: out_side(in_shape.width, kernel.1, stride.1, padding.1),
        });
        let conv = self.graph.convs.len() - 1;
        self.push_op(Op::Conv {
            conv,
            input,
            output,
        });
        output
    }

    fn max_pool(&mut self, input: ActId) -> ActId {
        let s = self.graph.activations[input];
        let output = self.act(ActShape {
            channels: s.channels,
            height: out_side(s.height, 3, 2, 0),
            width: out_side(s.width, 3, 2, 0),
        });
        self.push_op(Op::MaxPool { input, output });
        output
    }

    fn avg_pool(&mut self, input: ActId) -> ActId {
        let s = self.graph.activations[input];
        let output = self.act(s);
        self.push_op(Op::AvgPool { input, output });
        output
    }

    fn concat(&mut self, inputs: Vec<ActId>) -> ActId {
        let first = self.graph.activations[inputs[0]];
        let channels = inputs
            .iter()
            .map(|&i| {
                let s = self.graph.activations[i];
                debug_assert_eq!((s.height, s.width), (first.height, first.width));
                s.channels
            })
            .sum();
        let output = self.act(ActShape { channels, ..first });
        self.push_op(Op::Concat { inputs, output });
        output
    }

    fn inception_a(&mut self, name: &str, x: ActId, pool_features: usize) -> ActId {
        self.begin(name);
        let n = |branch: &str| format!("{name}.{branch}");
        let b1 = self.conv(&n("branch1x1"), x, 64, (1, 1), (1, 1), (0, 0));
        let b5 = self.conv(&n("branch5x5_1"), x, 48, (1, 1), (1, 1), (0, 0));
        let b5 = self.conv(&n("branch5x5_2"), b5, 64, (5, 5), (1, 1), (2, 2));
        let b3 = self.conv(&n("branch3x3dbl_1"), x, 64, (1, 1), (1, 1), (0, 0));
        let b3 = self.conv(&n("branch3x3dbl_2"), b3, 96, (3, 3), (1, 1), (1, 1));
        let b3 = self.conv(&n("branch3x3dbl_3"), b3, 96, (3, 3), (1, 1), (1, 1));
        let bp = self.avg_pool(x);
        let bp = self.conv(&n("branch_pool"), bp, pool_features, (1, 1), (1, 1), (0, 0));
        self.concat(vec![b1, b5, b3, bp])
    }

    fn inception_b(&mut self, name: &str, x: ActId) -> ActId {
        self.begin(name);
        let n = |branch: &str| format!("{name}.{branch}");
        let b3 = self.conv(&n("branch3x3"), x, 384, (3, 3), (2, 2), (0, 0));
        let bd = self.conv(&n("branch3x3dbl_1"), x, 64, (1, 1), (1, 1), (0, 0));
        let bd = self.conv(&n("branch3x3dbl_2"), bd, 96, (3, 3), (1, 1), (1, 1));
        let bd = self.conv(&n("branch3x3dbl_3"), bd, 96, (3, 3), (2, 2), (0, 0));
        let bp = self.max_pool(x);
        self.concat(vec![b3, bd, bp])
    }

    fn inception_c(&mut self, name: &str, x: ActId, c7: usize) -> ActId {
        self.begin(name);
        let n = |branch: &str| format!("{name}.{branch}");
        let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
        let b1 = self.conv(&n("branch1x1"), x, 192, (1, 1), (1, 1), (0, 0));
        let b7 = self.conv(&n("branch7x7_1"), x, c7, (1, 1), (1, 1), (0, 0));
        let b7 = self.conv(&n("branch7x7_2"), b7, c7, row.0, (1, 1), row.1);
        let b7 = self.conv(&n("branch7x7_3"), b7, 192, col.0, (1, 1), col.1);
        let bd = self.conv(&n("branch7x7dbl_1"), x, c7, (1, 1), (1, 1), (0, 0));
        let bd = self.conv(&n("branch7x7dbl_2"), bd, c7, col.0, (1, 1), col.1);
        let bd = self.conv(&n("branch7x7dbl_3"), bd, c7, row.0, (1, 1), row.1);
        let bd = self.conv(&n("branch7x7dbl_4"), bd, c7, col.0, (1, 1), col.1);
        let bd = self.conv(&n("branch7x7dbl_5"), bd, 192, row.0, (1, 1), row.1);
        let bp = self.avg_pool(x);
        let bp = self.conv(&n("branch_pool"), bp, 192, (1, 1), (1, 1), (0, 0));
        self.concat(vec![b1, b7, bd, bp])
    }

    fn inception_d(&mut self, name: &str, x: ActId) -> ActId {
        self.begin(name);
        let n = |branch: &str| format!("{name}.{branch}");
        let b3 = self.conv(&n("branch3x3_1"), x, 192, (1, 1), (1, 1), (0, 0));
        let b3 = self.conv(&n("branch3x3_2"), b3, 320, (3, 3), (2, 2), (0, 0));
        let b7 = self.conv(&n("branch7x7x3_1"), x, 192, (1, 1), (1, 1), (0, 0));
        let b7 = self.conv(&n("branch7x7x3_2"), b7, 192, (1, 7), (1, 1), (0, 3));
        let b7 = self.conv(&n("branch7x7x3_3"), b7, 192, (7, 1), (1, 1), (3, 0));
        let b7 = self.conv(&n("branch7x7x3_4"), b7, 192, (3, 3), (2, 2), (0, 0));
        let bp = self.max_pool(x);
        self.concat(vec![b3, b7, bp])
    }

    fn inception_e(&mut self, name: &str, x: ActId) -> ActId {
        self.begin(name);
        let n = |branch: &str| format!("{name}.{branch}");
        let (row, col) = (((1, 3), (0, 1)), ((3, 1), (1, 0)));
        let b1 = self.conv(&n("branch1x1"), x, 320, (1, 1), (1, 1), (0, 0));
        let b3 = self.conv(&n("branch3x3_1"), x, 384, (1, 1), (1, 1), (0, 0));
        let b3a = self.conv(&n("branch3x3_2a"), b3, 384, row.0, (1, 1), row.1);
        let b3b = self.conv(&n("branch3x3_2b"), b3, 384, col.0, (1, 1), col.1);
        let bd = self.conv(&n("branch3x3dbl_1"), x, 448, (1, 1), (1, 1), (0, 0));
        let bd = self.conv(&n("branch3x3dbl_2"), bd, 384, (3, 3), (1, 1), (1, 1));
        let bda = self.conv(&n("branch3x3dbl_3a"), bd, 384, row.0, (1, 1), row.1);
        let bdb = self.conv(&n("branch3x3dbl_3b"), bd, 384, col.0, (1, 1), col.1);
        let bp = self.avg_pool(x);
        let bp = self.conv(&n("branch_pool"), bp, 192, (1, 1), (1, 1), (0, 0));
        self.concat(vec![b1, b3a, b3b, bda, bdb, bp])
    }

    fn head(&mut self, x: ActId, classes: usize) -> ActId {
        self.begin(HEAD_LAYER);
        let features = self.graph.activations[x].channels;
        let fc_weight = self.graph.params.push("fc.weight", vec![classes, features]);
        let fc_bias = self.graph.params.push("fc.bias", vec![classes]);
        let output = self.act(ActShape {
            channels: classes,
            height: 1,
            width: 1,
        });
        self.push_op(Op::Head {
            input: x,
            output,
            fc_weight,
            fc_bias,
        });
        output
    }
}
