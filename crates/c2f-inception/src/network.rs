//! The InceptionV3 graph's forward and backward, written once over [`Backend`]. Forward keeps
//! what backward needs (each conv's pre-BN output, each BN's batch statistics, each max pool's
//! indices); every buffer is allocated once, in [`Network::new`], for one batch size and
//! resolution, so a training step allocates nothing.

use c2f_kernels::batch_norm::{BatchNormParams, BatchNormShape};
use c2f_kernels::concat::ChannelSlice;
use c2f_kernels::dropout::{step_words, DropoutParams};
use c2f_kernels::layout::Layout;
use c2f_kernels::nvtx;
use c2f_kernels::pool::{Pool2dParams, PoolShape};
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::{Error, Result};
use num_traits::Zero;

use crate::backend::{Backend, BnMode, BnParams, BnStats, IndexTensor, LinearShape, Tensor};
use crate::cpu::conv::Conv2dShape;
use crate::liveness;
use crate::spec::{ActId, ActShape, BasicConv, Graph, Op, BN_EPS, BN_MOMENTUM, DROPOUT};
use crate::table::{TensorEntry, TensorTable};

/// The head's intermediates: globally pooled features `[B, C]`, the same after dropout, and
/// their gradients; and dropout's step slot ([`Network::set_dropout_step`]).
/// The NCHW input and output a channels-last network converts at its ends, so that its
/// callers see NCHW whatever the layout inside ([`crate::backend::Buffers::activation_layout`]).
struct Boundary {
    input: Tensor,
    input_grad: Tensor,
    /// The spatial output (Mixed_6e's features) and its gradient; none after a head, whose
    /// logits are `[B, classes]` in any layout.
    output: Option<(Tensor, Tensor)>,
}

struct HeadBuffers {
    pooled: Tensor,
    dropped: Tensor,
    d_pooled: Tensor,
    d_dropped: Tensor,
    dropout_step: IndexTensor,
}

pub struct Network {
    pub graph: Graph,
    pub batch: usize,
    /// All parameters, flat, in the order of `graph.params`; `grads` and `momentum` likewise.
    pub params: Tensor,
    pub grads: Tensor,
    pub momentum: Tensor,
    /// BatchNorm running statistics, flat, in the order of `graph.buffers`.
    pub buffers: Tensor,
    acts: Vec<Tensor>,
    act_grads: Vec<Tensor>,
    /// Per conv: its output before BatchNorm, and the BN's saved batch statistics.
    pre_bn: Vec<Tensor>,
    bn_saved: Vec<BnStats>,
    /// Per op: the max pool's indices.
    pool_indices: Vec<Option<IndexTensor>>,
    /// Gradient w.r.t. a conv's pre-BN output; one buffer, sized for the largest conv.
    d_pre_bn: Tensor,
    head: Option<HeadBuffers>,
    /// Where the network is channels-last: its NCHW ends.
    boundary: Option<Boundary>,
    /// Dropout before `fc` (torchvision's p = 0.5). The caller sets the step every training
    /// step ([`Network::set_dropout_step`]), and must change neither between a forward and its
    /// backward.
    pub dropout: DropoutParams,
}

/// A parameter group's SGD update: its hyper-parameters, and the 1-value slot its learning rate
/// is read from ([`crate::backend::TrainingOps::sgd_step`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdGroup {
    pub params: SgdParams,
    pub lr: Tensor,
}

/// Which SGD group a parameter tensor is in, `None` to leave it as it is.
pub type SgdRule<'a> = dyn Fn(&TensorEntry) -> Option<SgdGroup> + 'a;

/// One SGD step over the tensors of `table` laid out in `[params, grads, momentum]`, each in the
/// group `rule` gives it: one update per run of consecutive tensors that share a group (the
/// whole buffer at once when all do).
pub fn sgd_step_by_table<B: Backend>(
    b: &mut B,
    table: &TensorTable,
    [params, grads, momentum]: [Tensor; 3],
    rule: &SgdRule<'_>,
) -> Result<()> {
    let entries = table.entries();
    let mut i = 0;
    while i < entries.len() {
        let p = rule(&entries[i]);
        let start = entries[i].offset;
        // The run always takes its first tensor: a NaN hyper-parameter equals nothing, not even
        // itself, and must not stall the walk.
        i += 1;
        while i < entries.len() && rule(&entries[i]) == p {
            i += 1;
        }
        let end = entries[i - 1].offset + entries[i - 1].len();
        if let Some(g) = p {
            let slice = |t: Tensor| t.slice(start, end - start);
            b.sgd_step(
                &g.params,
                g.lr,
                slice(params),
                slice(grads),
                slice(momentum),
            )?;
        }
    }
    Ok(())
}

/// The buffers a network's parameters live in, which [`Network::sharing`] passes on.
struct ModelState {
    params: Tensor,
    grads: Tensor,
    momentum: Tensor,
    buffers: Tensor,
}

fn bn_params() -> BatchNormParams {
    BatchNormParams {
        eps: BN_EPS,
        momentum: BN_MOMENTUM,
        relu: true,
    }
}

fn max_pool_params() -> Pool2dParams {
    Pool2dParams::square(3, 2, 0)
}

fn avg_pool_params() -> Pool2dParams {
    Pool2dParams::square(3, 1, 1)
}

impl Network {
    pub fn new<B: Backend>(backend: &mut B, graph: Graph, batch: usize) -> Result<Network> {
        let state = ModelState {
            params: backend.alloc(graph.params.total())?,
            grads: backend.alloc(graph.params.total())?,
            momentum: backend.alloc(graph.params.total())?,
            buffers: backend.alloc(graph.buffers.total())?,
        };
        Network::with_state(backend, graph, batch, state)
    }

    /// A second network over the same parameters, gradients, momentum and running statistics,
    /// with activations of its own: Coarse2Fine's fine pass through the shared backbone, whose
    /// parameter gradients add to the coarse pass's.
    pub fn sharing<B: Backend>(&self, backend: &mut B) -> Result<Network> {
        let state = ModelState {
            params: self.params,
            grads: self.grads,
            momentum: self.momentum,
            buffers: self.buffers,
        };
        Network::with_state(backend, self.graph.clone(), self.batch, state)
    }

    fn with_state<B: Backend>(
        backend: &mut B,
        graph: Graph,
        batch: usize,
        state: ModelState,
    ) -> Result<Network> {
        if batch == 0 {
            return Err(Error::config(
                "batch",
                batch,
                "a batch needs at least one sample",
            ));
        }
        let ModelState {
            params,
            grads,
            momentum,
            buffers,
        } = state;
        // Activations and their gradients in the backend's activation storage and layout, but
        // for the logits and their gradient, which stay f32 as the losses do.
        let logits = graph.ops.iter().find_map(|op| match op {
            Op::Head { output, .. } => Some(*output),
            _ => None,
        });
        let layout = backend.activation_layout();
        let mut acts = Vec::new();
        for (id, shape) in graph.activations.iter().enumerate() {
            let len = batch * shape.len();
            acts.push(match Some(id) == logits {
                true => backend.alloc(len)?,
                false => backend.alloc_activation_in(len, layout)?,
            });
        }
        let boundary = match layout {
            Layout::Nchw => None,
            Layout::Nhwc => {
                let (input_len, output_len) = (acts[0].len, acts[graph.output].len);
                Some(Boundary {
                    input: backend.alloc_activation(input_len)?,
                    input_grad: backend.alloc_activation(input_len)?,
                    output: match logits {
                        Some(_) => None,
                        None => Some((
                            backend.alloc_activation(output_len)?,
                            backend.alloc_activation(output_len)?,
                        )),
                    },
                })
            }
        };
        // Activation gradients share one buffer by liveness (crate::liveness).
        let plan = liveness::plan(&graph, batch);
        let arena = backend.alloc_activation_in(plan.total, layout)?;
        let mut act_grads: Vec<Tensor> = plan
            .offsets
            .iter()
            .zip(&plan.lens)
            .map(|(&offset, &len)| arena.slice(offset, len))
            .collect();
        if let Some(id) = logits {
            act_grads[id] = backend.alloc(plan.lens[id])?;
        }
        let mut pre_bn = Vec::new();
        let mut bn_saved = Vec::new();
        let mut largest = 0;
        let mut pool_indices = Vec::new();
        let mut head = None;
        for op in &graph.ops {
            let mut indices = None;
            match op {
                Op::Conv { conv, output, .. } => {
                    let len = batch * graph.activations[*output].len();
                    largest = largest.max(len);
                    pre_bn.push(backend.alloc_activation_in(len, layout)?);
                    let c = graph.convs[*conv].out_channels;
                    bn_saved.push(BnStats {
                        mean: backend.alloc(c)?,
                        invstd: backend.alloc(c)?,
                    });
                }
                Op::MaxPool { output, .. } => {
                    indices = Some(backend.alloc_index(batch * graph.activations[*output].len())?);
                }
                Op::Head { input, .. } => {
                    let c = graph.activations[*input].channels;
                    head = Some(HeadBuffers {
                        pooled: backend.alloc_activation(batch * c)?,
                        dropped: backend.alloc_activation(batch * c)?,
                        d_pooled: backend.alloc_activation(batch * c)?,
                        d_dropped: backend.alloc_activation(batch * c)?,
                        dropout_step: backend.alloc_index(2)?,
                    });
                }
                Op::AvgPool { .. } | Op::Concat { .. } => {}
            }
            pool_indices.push(indices);
        }
        let d_pre_bn = backend.alloc_activation_in(largest, layout)?;
        Ok(Network {
            graph,
            batch,
            params,
            grads,
            momentum,
            buffers,
            acts,
            act_grads,
            pre_bn,
            bn_saved,
            pool_indices,
            d_pre_bn,
            head,
            boundary,
            dropout: DropoutParams {
                p: DROPOUT,
                seed: 0,
                training: true,
            },
        })
    }

    /// Writes the training step whose dropout mask the next forward and backward draw (a host
    /// write, before the step: the ops read it from the backend's memory). Nothing without a
    /// head.
    pub fn set_dropout_step<B: Backend>(&self, b: &mut B, step: u64) -> Result<()> {
        match &self.head {
            Some(head) => b.write_index(head.dropout_step, &step_words(step)),
            None => Ok(()),
        }
    }

    fn dropout_active(&self) -> bool {
        self.dropout.training && self.dropout.p > 0.0
    }

    /// Sets every parameter gradient to zero, before a step's backward.
    pub fn zero_grads<B: Backend>(&self, b: &mut B) -> Result<()> {
        b.fill(self.grads, B::Scalar::zero())
    }

    /// One SGD step over all parameters with their gradients and momentum, as one group.
    pub fn sgd_step<B: Backend>(&self, b: &mut B, group: &SgdGroup) -> Result<()> {
        self.sgd_step_by(b, &|_| Some(*group))
    }

    /// One SGD step with each parameter tensor in its own group (`None`: left as it is), e.g.
    /// frozen BatchNorm or a classifier's own learning rate.
    pub fn sgd_step_by<B: Backend>(&self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        sgd_step_by_table(
            b,
            &self.graph.params,
            [self.params, self.grads, self.momentum],
            rule,
        )
    }

    /// The input images `[B, 3, S, S]` (NCHW in every layout), to be written before
    /// [`Network::forward`].
    pub fn input(&self) -> Tensor {
        self.boundary.as_ref().map_or(self.acts[0], |b| b.input)
    }

    /// The gradient w.r.t. the input (NCHW), written by a backward with `input_grad`; it keeps
    /// its value until the next backward.
    pub fn input_grad(&self) -> Tensor {
        self.boundary
            .as_ref()
            .map_or(self.act_grads[0], |b| b.input_grad)
    }

    /// Any activation: `[B, C, H, W]` of [`Graph::activations`], in the network's layout
    /// ([`crate::backend::Buffers::activation_layout`]).
    pub fn activation(&self, id: ActId) -> Tensor {
        self.acts[id]
    }

    /// Activation `id` read back in NCHW, whatever the network's layout.
    pub fn read_activation<B: Backend>(&self, b: &mut B, id: ActId) -> Result<Vec<B::Scalar>> {
        let values = b.read(self.acts[id])?;
        let s = self.act_shape(id);
        let hw = s.height * s.width;
        Ok(match self.boundary {
            Some(_) => Layout::Nhwc.convert(Layout::Nchw, &values, s.channels, hw),
            None => values,
        })
    }

    /// The last activation: Mixed_6e's features (NCHW in every layout), or the logits.
    pub fn output(&self) -> Tensor {
        match self.boundary.as_ref().and_then(|b| b.output) {
            Some((features, _)) => features,
            None => self.acts[self.graph.output],
        }
    }

    /// Where the caller writes the loss gradient w.r.t. [`Network::output`] before backward.
    /// Backward may reuse its memory once it has read it (activation gradients share one
    /// buffer by liveness, [`crate::liveness`]), so it holds no value afterwards.
    pub fn output_grad(&self) -> Tensor {
        match self.boundary.as_ref().and_then(|b| b.output) {
            Some((_, grad)) => grad,
            None => self.act_grads[self.graph.output],
        }
    }

    /// Parameter number `index` of `graph.params`, and its gradient.
    pub fn param(&self, index: usize) -> Tensor {
        let e = self.graph.params.entry(index);
        self.params.slice(e.offset, e.len())
    }

    pub fn grad(&self, index: usize) -> Tensor {
        let e = self.graph.params.entry(index);
        self.grads.slice(e.offset, e.len())
    }

    fn buffer(&self, index: usize) -> Tensor {
        let e = self.graph.buffers.entry(index);
        self.buffers.slice(e.offset, e.len())
    }

    fn act_shape(&self, id: ActId) -> ActShape {
        self.graph.activations[id]
    }

    /// The shape of convolution `conv` reading activation `input` at this network's batch.
    pub fn conv_shape(&self, conv: &BasicConv, input: ActId) -> Conv2dShape {
        let s = self.act_shape(input);
        Conv2dShape {
            batch: self.batch,
            in_channels: s.channels,
            height: s.height,
            width: s.width,
            out_channels: conv.out_channels,
            kernel: conv.kernel,
            stride: conv.stride,
            padding: conv.padding,
        }
    }

    fn bn_shape(&self, output: ActId) -> BatchNormShape {
        let s = self.act_shape(output);
        BatchNormShape {
            batch: self.batch,
            channels: s.channels,
            height: s.height,
            width: s.width,
        }
    }

    fn pool_shape(&self, input: ActId) -> PoolShape {
        let s = self.act_shape(input);
        PoolShape {
            batch: self.batch,
            channels: s.channels,
            height: s.height,
            width: s.width,
        }
    }

    fn bn(&self, conv: &BasicConv) -> BnParams {
        BnParams {
            gamma: self.param(conv.bn_weight),
            beta: self.param(conv.bn_bias),
            running_mean: self.buffer(conv.running_mean),
            running_var: self.buffer(conv.running_var),
        }
    }

    /// The concat layout of part `i` of `inputs` in `output`.
    fn channel_slice(&self, inputs: &[ActId], i: usize, output: ActId) -> ChannelSlice {
        let whole = self.act_shape(output);
        ChannelSlice {
            batch: self.batch,
            channels: self.act_shape(inputs[i]).channels,
            whole_channels: whole.channels,
            offset: inputs[..i]
                .iter()
                .map(|&p| self.act_shape(p).channels)
                .sum(),
            height: whole.height,
            width: whole.width,
        }
    }

    fn linear_shape(&self, input: ActId, output: ActId) -> LinearShape {
        LinearShape {
            batch: self.batch,
            inputs: self.act_shape(input).channels,
            outputs: self.act_shape(output).channels,
        }
    }

    /// Runs the graph on [`Network::input`]. `Train` uses batch statistics and updates the
    /// running ones; `Inference` uses the running statistics.
    pub fn forward<B: Backend>(&mut self, b: &mut B, mode: BnMode) -> Result<()> {
        if let Some(boundary) = &self.boundary {
            b.convert_layout(&self.pool_shape(0), boundary.input, self.acts[0])?;
        }
        let mut conv_index = 0;
        let mut layer = LayerRange::new(&self.graph, "forward");
        for (op_index, op) in self.graph.ops.iter().enumerate() {
            layer.enter(op_index);
            match op {
                Op::Conv {
                    conv,
                    input,
                    output,
                } => {
                    let conv = &self.graph.convs[*conv];
                    let s = self.conv_shape(conv, *input);
                    let pre = self.pre_bn[conv_index];
                    b.conv2d_forward(&s, self.acts[*input], self.param(conv.weight), pre)?;
                    b.batch_norm_forward(
                        &self.bn_shape(*output),
                        &bn_params(),
                        mode,
                        &self.bn(conv),
                        pre,
                        self.acts[*output],
                        &self.bn_saved[conv_index],
                    )?;
                    conv_index += 1;
                }
                Op::MaxPool { input, output } => {
                    let indices = self.pool_indices[op_index].expect("allocated in new");
                    b.max_pool_forward(
                        &self.pool_shape(*input),
                        &max_pool_params(),
                        self.acts[*input],
                        self.acts[*output],
                        indices,
                    )?;
                }
                Op::AvgPool { input, output } => b.avg_pool_forward(
                    &self.pool_shape(*input),
                    &avg_pool_params(),
                    self.acts[*input],
                    self.acts[*output],
                )?,
                Op::Concat { inputs, output } => {
                    for (i, &part) in inputs.iter().enumerate() {
                        let slice = self.channel_slice(inputs, i, *output);
                        b.copy_channels(&slice, self.acts[part], self.acts[*output])?;
                    }
                }
                Op::Head {
                    input,
                    output,
                    fc_weight,
                    fc_bias,
                } => {
                    let head = self.head.as_ref().expect("allocated in new");
                    b.global_avg_pool_forward(
                        &self.pool_shape(*input),
                        self.acts[*input],
                        head.pooled,
                    )?;
                    let features = if self.dropout_active() {
                        b.dropout_forward(
                            &self.dropout,
                            head.dropout_step,
                            head.pooled,
                            head.dropped,
                        )?;
                        head.dropped
                    } else {
                        head.pooled
                    };
                    b.linear_forward(
                        &self.linear_shape(*input, *output),
                        features,
                        self.param(*fc_weight),
                        self.param(*fc_bias),
                        self.acts[*output],
                    )?;
                }
            }
        }
        if let Some((features, _)) = self.boundary.as_ref().and_then(|b| b.output) {
            let output = self.graph.output;
            b.convert_layout(&self.pool_shape(output), self.acts[output], features)?;
        }
        Ok(())
    }

    /// Backpropagates [`Network::output_grad`] (written by the caller) through the graph:
    /// parameter gradients accumulate into `grads`; with `input_grad` the gradient w.r.t. the
    /// input images is assigned to [`Network::input_grad`]. `mode` must be the forward's.
    pub fn backward<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        input_grad: bool,
    ) -> Result<()> {
        self.backward_reporting(b, mode, input_grad, &mut |_, _| Ok(()))
    }

    /// [`Network::backward`], calling `ready(b, from)` each time the gradients from element
    /// `from` of `grads` to its end are complete (no later op of this backward writes them), so
    /// a data-parallel rank can start all-reducing them while backward goes on. The graph's
    /// ops are in the parameter table's order, so `from` only falls; an op that would write
    /// above an earlier `from` is an error.
    pub fn backward_reporting<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        input_grad: bool,
        ready: &mut dyn FnMut(&mut B, usize) -> Result<()>,
    ) -> Result<()> {
        // Which activation gradients hold a value yet: a tensor read by several ops gets its
        // first contribution assigned and the rest added.
        let mut written = vec![false; self.acts.len()];
        written[self.graph.output] = true;
        if let Some((_, grad)) = self.boundary.as_ref().and_then(|b| b.output) {
            let output = self.graph.output;
            b.convert_layout(&self.pool_shape(output), grad, self.act_grads[output])?;
        }
        let mut conv_index = self.pre_bn.len();
        let mut complete_from = self.grads.len;
        let mut report = |b: &mut B, params: &[usize]| -> Result<()> {
            let entries = params.iter().map(|&p| self.graph.params.entry(p));
            let from = entries.clone().map(|e| e.offset).min().unwrap_or(0);
            let end = entries.map(|e| e.offset + e.len()).max().unwrap_or(0);
            if end > complete_from {
                return Err(Error::Shape(format!(
                    "backward writes gradients up to {end} after reporting them complete from \
                     {complete_from}: the graph's ops are not in parameter order"
                )));
            }
            complete_from = from;
            ready(b, from)
        };
        let mut layer = LayerRange::new(&self.graph, "backward");
        for (op_index, op) in self.graph.ops.iter().enumerate().rev() {
            layer.enter(op_index);
            match op {
                Op::Conv {
                    conv,
                    input,
                    output,
                } => {
                    conv_index -= 1;
                    let conv = &self.graph.convs[*conv];
                    let s = self.conv_shape(conv, *input);
                    let pre = self.pre_bn[conv_index];
                    let d_pre = self.d_pre_bn.slice(0, pre.len);
                    b.batch_norm_backward(
                        &self.bn_shape(*output),
                        &bn_params(),
                        mode,
                        &self.bn(conv),
                        &self.bn_saved[conv_index],
                        pre,
                        self.acts[*output],
                        self.act_grads[*output],
                        d_pre,
                        self.grad(conv.bn_weight),
                        self.grad(conv.bn_bias),
                    )?;
                    b.conv2d_backward_filter(&s, self.acts[*input], d_pre, self.grad(conv.weight))?;
                    report(b, &[conv.weight, conv.bn_weight, conv.bn_bias])?;
                    if *input != 0 || input_grad {
                        let dx = self.act_grads[*input];
                        b.conv2d_backward_data(
                            &s,
                            d_pre,
                            self.param(conv.weight),
                            dx,
                            written[*input],
                        )?;
                        written[*input] = true;
                    }
                }
                Op::MaxPool { input, output } => {
                    assign_first(&mut written, *input, "max pool")?;
                    let indices = self.pool_indices[op_index].expect("allocated in new");
                    b.max_pool_backward(
                        &self.pool_shape(*input),
                        &max_pool_params(),
                        indices,
                        self.act_grads[*output],
                        self.act_grads[*input],
                    )?;
                }
                Op::AvgPool { input, output } => {
                    assign_first(&mut written, *input, "average pool")?;
                    b.avg_pool_backward(
                        &self.pool_shape(*input),
                        &avg_pool_params(),
                        self.act_grads[*output],
                        self.act_grads[*input],
                    )?;
                }
                Op::Concat { inputs, output } => {
                    for (i, &part) in inputs.iter().enumerate() {
                        assign_first(&mut written, part, "concat")?;
                        let slice = self.channel_slice(inputs, i, *output);
                        b.slice_channels(&slice, self.act_grads[*output], self.act_grads[part])?;
                    }
                }
                Op::Head {
                    input,
                    output,
                    fc_weight,
                    fc_bias,
                } => {
                    assign_first(&mut written, *input, "head")?;
                    let head = self.head.as_ref().expect("allocated in new");
                    let dropout = self.dropout_active();
                    let (features, d_features) = if dropout {
                        (head.dropped, head.d_dropped)
                    } else {
                        (head.pooled, head.d_pooled)
                    };
                    b.linear_backward(
                        &self.linear_shape(*input, *output),
                        features,
                        self.param(*fc_weight),
                        self.act_grads[*output],
                        d_features,
                        self.grad(*fc_weight),
                        self.grad(*fc_bias),
                    )?;
                    report(b, &[*fc_weight, *fc_bias])?;
                    if dropout {
                        b.dropout_backward(
                            &self.dropout,
                            head.dropout_step,
                            head.d_dropped,
                            head.d_pooled,
                        )?;
                    }
                    b.global_avg_pool_backward(
                        &self.pool_shape(*input),
                        head.d_pooled,
                        self.act_grads[*input],
                    )?;
                }
            }
        }
        if let (Some(boundary), true) = (&self.boundary, input_grad) {
            b.convert_layout(&self.pool_shape(0), self.act_grads[0], boundary.input_grad)?;
        }
        Ok(())
    }
}

/// The NVTX range of the layer whose ops are running, named `"<layer> <pass>"` (`"Mixed_6e
/// forward"`): ops run layer by layer, so it moves on when an op of another layer comes.
struct LayerRange<'g> {
    graph: &'g Graph,
    pass: &'static str,
    layer: Option<usize>,
    range: Option<nvtx::Range>,
}

impl<'g> LayerRange<'g> {
    fn new(graph: &'g Graph, pass: &'static str) -> Self {
        LayerRange {
            graph,
            pass,
            layer: None,
            range: None,
        }
    }

    fn enter(&mut self, op_index: usize) {
        let layer = self.graph.op_layers[op_index];
        if self.layer != Some(layer) {
            // The last layer's range closes before the next one opens: ranges nest.
            self.range = None;
            let name = &self.graph.layers[layer];
            self.range = Some(nvtx::range(format_args!("{name} {}", self.pass)));
            self.layer = Some(layer);
        }
    }
}

/// Ops that can only assign their input's gradient must be its first contribution in backward,
/// i.e. its last reader in forward; the graph is built that way.
fn assign_first(written: &mut [bool], id: ActId, op: &str) -> Result<()> {
    if written[id] {
        return Err(Error::Shape(format!(
            "{op} backward would overwrite the gradient of activation {id}: the graph must make \
             it the last reader of its input"
        )));
    }
    written[id] = true;
    Ok(())
}
