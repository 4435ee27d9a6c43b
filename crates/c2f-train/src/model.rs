//! The Coarse2Fine model (the paper's Figure 5 and Algorithm 1), written once over the runtime's
//! [`Backend`]:
//!
//! 1. coarse pass: backbone to Mixed_6e → `F`; attention `A = ReLU(conv1x1(F))`, M maps;
//!    BAP → normalised part features `P`; coarse head `fc_c(100·P)`;
//! 2. fine pass: one attention map per sample, chosen at random, up-sampled by a learnable
//!    stack of stride-2 transposed convolutions (ReLU between) and a fixed bilinear resize to
//!    the input size; normalised to a mask (per-sample max) that multiplies the image; the
//!    masked image through the same backbone and attention conv, BAP, fine head `fc_f(100·P')`;
//! 3. loss `CE(coarse) + CE(fine) + λ·(CL(P) + CL(P'))`, the center loss of the paper's Eq. 2
//!    and 3 (or the WS-DAN reimplementations' rule) over one center bank shared by both passes
//!    ([`CenterBanks`]; or one bank per pass).
//!
//! A multi-label model ([`Task::Attributes`], CelebA in the paper's Table 9) has one binary
//! output per attribute: sigmoid binary cross-entropy replaces the softmax cross-entropy, and
//! there is no center loss, because its centers are per class.
//!
//! The fine loss's gradient flows through the mask into the up-sampler and the attention maps:
//! the paper's contribution. Backward runs in reverse, with the tensors that several ops read
//! (the features `F` and `F'`, the attention maps `A`, the part features) taking their first
//! gradient contribution assigned and the rest added.

use c2f_inception::backend::{Backend, BnMode, IndexTensor, LinearShape, Tensor};
use c2f_inception::cpu::conv::Conv2dShape;
use c2f_inception::network::{sgd_step_by_table, Network, SgdRule};
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::table::TensorTable;
use c2f_kernels::bap::BapShape;
use c2f_kernels::center_loss::{CenterLossParams, CenterLossShape};
use c2f_kernels::map_select::MapShape;
use c2f_kernels::mask::MaskShape;
use c2f_kernels::sgd::SgdParams;
use c2f_kernels::{Error, Result};

pub use crate::config::CenterBanks;
use crate::state::{network_state, table_state, Named};
pub use crate::task::Task;
use crate::upsampler::{Upsampler, UpsamplerKind, UpsamplerShape};

/// WS-DAN's scale of the normalised part features before the classifier.
pub const FEATURE_SCALE: f64 = 100.0;

/// The attention conv's orthogonal initialisation (the paper's Algorithm 1): draw
/// `X [maps, channels]` uniform in `[-1, 1)` from `seed`, take its SVD `X = UΣVᵀ`, and return the
/// first `maps` rows of `Vᵀ`, row-major: `maps` orthonormal rows of length `channels`.
pub fn orthogonal_attention(maps: usize, channels: usize, seed: u64) -> Result<Vec<f32>> {
    if maps == 0 || maps > channels {
        return Err(Error::Shape(format!(
            "orthogonal initialisation needs 1 ≤ maps ≤ channels, got {maps} maps of {channels}"
        )));
    }
    let mut rng = c2f_kernels::rng::SplitMix64(seed);
    let x = nalgebra::DMatrix::<f64>::from_fn(maps, channels, |_, _| rng.uniform(-1.0, 1.0));
    let svd = x.svd(false, true);
    let v_t = svd
        .v_t
        .ok_or_else(|| Error::Shape("SVD did not return Vᵀ".into()))?;
    // Vᵀ is [min(maps, channels), channels] = [maps, channels], rows in singular-value order.
    Ok((0..maps)
        .flat_map(|r| (0..channels).map(move |c| (r, c)))
        .map(|(r, c)| v_t[(r, c)] as f32)
        .collect())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Coarse2FineConfig {
    pub input_size: usize,
    /// Backbone width multiplier (1.0: torchvision's InceptionV3).
    pub width: f64,
    /// Classes, or attributes for [`Task::Attributes`].
    pub classes: usize,
    pub task: Task,
    /// Attention maps M (paper: 8; WS-DAN: 32).
    pub maps: usize,
    /// Channels between the up-sampler's transposed convolutions; one stride-2 layer per entry
    /// plus the last one back to a single map, so `len + 1` layers in all.
    pub upsampler_channels: Vec<usize>,
    pub center_loss: CenterLossParams,
    pub center_banks: CenterBanks,
    pub batch: usize,
}

/// The model's own parameters, beside the backbone's.
struct Heads {
    table: TensorTable,
    attention: usize,
    /// Where the up-sampler's parameters start in the table: its own table's entries, back to
    /// back under the same names.
    upsampler: usize,
    fc_coarse: (usize, usize),
    fc_fine: (usize, usize),
}

/// What one pass (coarse or fine) holds beyond its backbone network.
struct Pass {
    net: Network,
    attention_pre: Tensor,
    attention: Tensor,
    d_attention: Tensor,
    parts: Tensor,
    norms: Tensor,
    d_parts: Tensor,
    scaled: Tensor,
    d_scaled: Tensor,
    logits: Tensor,
    d_logits: Tensor,
    predictions: IndexTensor,
    centers: Tensor,
}

/// Which gradient buffer [`Coarse2Fine::forward_backward_reporting`] reports complete, from
/// which element to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grads {
    Backbone(usize),
    Heads(usize),
}

/// Losses of one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    pub coarse: f64,
    pub fine: f64,
    pub center_coarse: f64,
    pub center_fine: f64,
}

impl Losses {
    pub fn total(&self) -> f64 {
        self.coarse + self.fine + self.center_coarse + self.center_fine
    }
}

pub struct Coarse2Fine {
    pub config: Coarse2FineConfig,
    heads: Heads,
    /// The heads' parameters, gradients and momentum, flat in `heads.table` order.
    pub params: Tensor,
    pub grads: Tensor,
    momentum: Tensor,
    coarse: Pass,
    fine: Pass,
    labels: IndexTensor,
    /// `[B, A]` 0/1 attribute targets ([`Task::Attributes`]; empty otherwise).
    targets: Tensor,
    chosen_maps: IndexTensor,
    /// The chosen attention map per sample, `[B, 1, h, w]`, and its gradient.
    chosen: Tensor,
    d_chosen: Tensor,
    upsampler: Upsampler,
    u_max: Tensor,
    u_argmax: IndexTensor,
}

impl Coarse2Fine {
    /// The model with the learnable up-sampler of `config.upsampler_channels`.
    pub fn new<B: Backend>(b: &mut B, config: Coarse2FineConfig) -> Result<Coarse2Fine> {
        Self::with_upsampler(b, config, UpsamplerKind::Learnable)
    }

    /// The model with the given up-sampler; [`UpsamplerKind::FixedBilinear`] ignores
    /// `config.upsampler_channels` and has no up-sampler parameters.
    pub fn with_upsampler<B: Backend>(
        b: &mut B,
        config: Coarse2FineConfig,
        kind: UpsamplerKind,
    ) -> Result<Coarse2Fine> {
        for (key, value) in [("maps", config.maps), ("classes", config.classes)] {
            if value == 0 {
                return Err(Error::config(key, value, "Coarse2Fine needs at least 1"));
            }
        }
        let graph = Graph::new(InceptionConfig {
            input_size: config.input_size,
            width: config.width,
            depth: Depth::Mixed6e,
        })?;
        let f = graph.activations[graph.mixed_6e];
        let (batch, m, n) = (config.batch, config.maps, f.channels);
        let mut table = TensorTable::default();
        let attention = table.push("attention.weight", vec![m, n, 1, 1]);
        let upsampler = Upsampler::new(
            b,
            UpsamplerShape {
                batch,
                map: (f.height, f.width),
                output: config.input_size,
                kind,
                channels: config.upsampler_channels.clone(),
            },
        )?;
        let upsampler_start = table.total();
        for e in upsampler.table().entries() {
            table.push(e.name.clone(), e.shape.clone());
        }
        let head = |t: &mut TensorTable, name: &str| {
            (
                t.push(format!("{name}.weight"), vec![config.classes, m * n]),
                t.push(format!("{name}.bias"), vec![config.classes]),
            )
        };
        let fc_coarse = head(&mut table, "fc_coarse");
        let fc_fine = head(&mut table, "fc_fine");
        let heads = Heads {
            table,
            attention,
            upsampler: upsampler_start,
            fc_coarse,
            fc_fine,
        };
        let total = heads.table.total();
        let coarse_net = Network::new(b, graph, batch)?;
        let fine_net = coarse_net.sharing(b)?;
        let coarse_centers = b.alloc(config.classes * m * n)?;
        let fine_centers = match config.center_banks {
            CenterBanks::Shared => coarse_centers,
            CenterBanks::Separate => b.alloc(config.classes * m * n)?,
        };
        let coarse = Pass::new(b, coarse_net, &config, m * n, coarse_centers)?;
        let fine = Pass::new(b, fine_net, &config, m * n, fine_centers)?;
        let hw = f.height * f.width;
        Ok(Coarse2Fine {
            params: b.alloc(total)?,
            grads: b.alloc(total)?,
            momentum: b.alloc(total)?,
            heads,
            coarse,
            fine,
            labels: b.alloc_index(batch)?,
            targets: b.alloc(config.task.targets_len(batch, config.classes))?,
            chosen_maps: b.alloc_index(batch)?,
            chosen: b.alloc(batch * hw)?,
            d_chosen: b.alloc(batch * hw)?,
            upsampler,
            u_max: b.alloc(batch)?,
            u_argmax: b.alloc_index(batch)?,
            config,
        })
    }

    /// The backbone's parameter tables (torchvision names) and the heads'.
    pub fn backbone(&self) -> &Network {
        &self.coarse.net
    }

    pub fn head_table(&self) -> &TensorTable {
        &self.heads.table
    }

    /// The input images `[B, 3, S, S]`, written by the caller before a step.
    pub fn input(&self) -> Tensor {
        self.coarse.net.input()
    }

    /// The coarse and fine passes' center banks `[C, M·N]` (state, not parameters): the same
    /// tensor twice with [`CenterBanks::Shared`].
    pub fn centers(&self) -> (Tensor, Tensor) {
        (self.coarse.centers, self.fine.centers)
    }

    pub fn labels(&self) -> IndexTensor {
        self.labels
    }

    /// The attribute targets `[B, A]`, written by the caller before a step of a
    /// [`Task::Attributes`] model.
    pub fn targets(&self) -> Tensor {
        self.targets
    }

    /// Which attention map each sample's fine pass uses, written by the caller before a step
    /// (drawn at random in training), each in `[0, maps)`.
    pub fn chosen_maps(&self) -> IndexTensor {
        self.chosen_maps
    }

    /// The coarse and fine logits `[B, C]`.
    pub fn logits(&self) -> (Tensor, Tensor) {
        (self.coarse.logits, self.fine.logits)
    }

    /// The up-sampler (its table names the `upsampler.*` entries of [`Self::head_table`]).
    pub fn upsampler(&self) -> &Upsampler {
        &self.upsampler
    }

    /// The up-sampler's parameters inside [`Self::params`], laid out as its table.
    pub fn upsampler_params(&self) -> Tensor {
        self.params
            .slice(self.heads.upsampler, self.upsampler.table().total())
    }

    fn upsampler_grads(&self) -> Tensor {
        self.grads
            .slice(self.heads.upsampler, self.upsampler.table().total())
    }

    /// The attention map's `(height, width)`.
    pub fn map_side(&self) -> (usize, usize) {
        let (_, h, w) = self.feature_shape();
        (h, w)
    }

    /// The coarse pass's attention maps `[B, M, h, w]`, after [`Self::infer`] or a step.
    pub fn attention_maps(&self) -> Tensor {
        self.coarse.attention
    }

    /// The map the fine branch up-sampled, `[B, 1, h, w]`: after [`Self::infer`] the mean of
    /// the attention maps, after a training step the chosen ones.
    pub fn fine_map(&self) -> Tensor {
        self.chosen
    }

    /// [`Self::fine_map`] up-sampled to the input size, `[B, 1, S, S]`, before the mask's
    /// normalisation.
    pub fn upsampled_map(&self) -> Tensor {
        self.upsampler.output()
    }

    fn head_param(&self, index: usize) -> Tensor {
        let e = self.heads.table.entry(index);
        self.params.slice(e.offset, e.len())
    }

    fn head_grad(&self, index: usize) -> Tensor {
        let e = self.heads.table.entry(index);
        self.grads.slice(e.offset, e.len())
    }

    fn feature_shape(&self) -> (usize, usize, usize) {
        let g = &self.coarse.net.graph;
        let f = g.activations[g.mixed_6e];
        (f.channels, f.height, f.width)
    }

    fn attention_conv(&self) -> Conv2dShape {
        let (n, h, w) = self.feature_shape();
        Conv2dShape {
            batch: self.config.batch,
            in_channels: n,
            height: h,
            width: w,
            out_channels: self.config.maps,
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0),
        }
    }

    fn bap_shape(&self) -> BapShape {
        let (n, h, w) = self.feature_shape();
        BapShape {
            batch: self.config.batch,
            maps: self.config.maps,
            channels: n,
            height: h,
            width: w,
        }
    }

    fn head_shape(&self) -> LinearShape {
        LinearShape {
            batch: self.config.batch,
            inputs: self.config.maps * self.feature_shape().0,
            outputs: self.config.classes,
        }
    }

    fn center_shape(&self) -> CenterLossShape {
        CenterLossShape {
            batch: self.config.batch,
            dim: self.config.maps * self.feature_shape().0,
            classes: self.config.classes,
        }
    }

    /// Attention, BAP, head and losses of one pass, after its backbone's forward. Returns the
    /// classification and center losses (no center loss for attributes).
    fn head_forward<B: Backend>(&mut self, b: &mut B, fine: bool) -> Result<(f64, f64)> {
        self.attend(b, fine)?;
        let cl = self.center_shape();
        let (labels, targets) = (self.labels, self.targets);
        let lambda = self.config.center_loss;
        let (task, batch, outputs) = (self.config.task, self.config.batch, self.config.classes);
        let pass = if fine {
            &mut self.fine
        } else {
            &mut self.coarse
        };
        let head_loss = task.loss(
            b,
            batch,
            outputs,
            pass.logits,
            labels,
            targets,
            pass.predictions,
            pass.d_logits,
        )?;
        let cl_loss = match task {
            Task::Classes => {
                b.center_loss(&cl, &lambda, pass.parts, labels, pass.centers, pass.d_parts)?
            }
            Task::Attributes => 0.0,
        };
        Ok((head_loss, cl_loss))
    }

    /// Backward of [`Self::head_forward`]: parameter gradients accumulate; the features'
    /// gradient lands in the pass's backbone output gradient and `d_attention` holds the
    /// attention maps' gradient (the fine branch may add to it before [`Self::attention_backward`]).
    fn head_backward<B: Backend>(&mut self, b: &mut B, fine: bool) -> Result<()> {
        let bap = self.bap_shape();
        let head = self.head_shape();
        let task = self.config.task;
        let (fc_w, fc_b) = if fine {
            self.heads.fc_fine
        } else {
            self.heads.fc_coarse
        };
        let (w, dw, db) = (
            self.head_param(fc_w),
            self.head_grad(fc_w),
            self.head_grad(fc_b),
        );
        let pass = if fine {
            &mut self.fine
        } else {
            &mut self.coarse
        };
        b.linear_backward(&head, pass.scaled, w, pass.d_logits, pass.d_scaled, dw, db)?;
        // d_parts holds the center loss's gradient, and the classifier's adds to it; without a
        // center loss the classifier's is assigned.
        let center_grad = match task {
            Task::Classes => 1.0,
            Task::Attributes => 0.0,
        };
        b.axpby(FEATURE_SCALE, pass.d_scaled, center_grad, pass.d_parts)?;
        let features = pass.net.output();
        b.bap_backward(
            &bap,
            pass.attention,
            features,
            pass.parts,
            pass.norms,
            pass.d_parts,
            pass.d_attention,
            pass.net.output_grad(),
        )
    }

    /// From `d_attention` through the ReLU and the attention conv: its weight gradient
    /// accumulates, and its input gradient adds to the backbone output gradient.
    fn attention_backward<B: Backend>(&mut self, b: &mut B, fine: bool) -> Result<()> {
        let conv = self.attention_conv();
        let w = self.head_param(self.heads.attention);
        let dw = self.head_grad(self.heads.attention);
        let pass = if fine {
            &mut self.fine
        } else {
            &mut self.coarse
        };
        // ReLU backward in place: the pre-activation buffer is free once forward has read it.
        b.relu_backward(pass.attention, pass.d_attention, pass.attention_pre)?;
        let d_pre = pass.attention_pre;
        let features = pass.net.output();
        b.conv2d_backward_filter(&conv, features, d_pre, dw)?;
        b.conv2d_backward_data(&conv, d_pre, w, pass.net.output_grad(), true)
    }

    fn map_shape(&self) -> MapShape {
        let (_, h, w) = self.feature_shape();
        MapShape {
            batch: self.config.batch,
            maps: self.config.maps,
            height: h,
            width: w,
        }
    }

    fn mask_shape(&self) -> MaskShape {
        MaskShape {
            batch: self.config.batch,
            channels: 3,
            height: self.config.input_size,
            width: self.config.input_size,
        }
    }

    /// The fine branch's input: the chosen maps (in inference, the mean map) up-sampled into
    /// masks over the images.
    fn fine_input_forward<B: Backend>(&mut self, b: &mut B, mean_map: bool) -> Result<()> {
        if mean_map {
            b.mean_maps_forward(&self.map_shape(), self.coarse.attention, self.chosen)?;
        } else {
            b.select_map_forward(
                &self.map_shape(),
                self.coarse.attention,
                self.chosen_maps,
                self.chosen,
            )?;
        }
        let params = self.upsampler_params();
        self.upsampler.forward(b, params, self.chosen)?;
        b.mask_forward(
            &self.mask_shape(),
            self.upsampler.output(),
            self.coarse.net.input(),
            self.fine.net.input(),
            self.u_max,
            self.u_argmax,
        )
    }

    /// From the fine backbone's input gradient back to the chosen maps, adding to the coarse
    /// attention maps' gradient; the up-sampler's parameter gradients accumulate.
    fn fine_input_backward<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        b.mask_backward(
            &self.mask_shape(),
            self.upsampler.output(),
            self.coarse.net.input(),
            self.fine.net.input_grad(),
            self.u_max,
            self.u_argmax,
            self.upsampler.output_grad(),
        )?;
        let (params, grads) = (self.upsampler_params(), self.upsampler_grads());
        self.upsampler
            .backward(b, params, grads, self.chosen, self.d_chosen)?;
        b.select_map_backward(
            &self.map_shape(),
            self.chosen_maps,
            self.d_chosen,
            self.coarse.d_attention,
            true,
        )
    }

    /// One forward and backward of the whole model on [`Self::input`], [`Self::labels`] and
    /// [`Self::chosen_maps`]: parameter gradients accumulate into the backbone's and the
    /// heads' gradient buffers (zero them first with [`Self::zero_grads`]); the center banks
    /// take their moving-average step. Returns the losses.
    pub fn forward_backward<B: Backend>(&mut self, b: &mut B, mode: BnMode) -> Result<Losses> {
        self.forward_backward_reporting(b, mode, &mut |_, _| Ok(()))
    }

    /// [`Self::forward_backward`], calling `ready(b, grads)` as gradients become complete, as
    /// [`Network::backward_reporting`] does: `Grads::Heads(0)` once the heads' are (before the
    /// coarse backbone's backward, the last to add to the shared backbone's), then
    /// `Grads::Backbone(from)` as that backward goes down the backbone.
    pub fn forward_backward_reporting<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        ready: &mut dyn FnMut(&mut B, Grads) -> Result<()>,
    ) -> Result<Losses> {
        self.coarse.net.forward(b, mode)?;
        let (coarse, center_coarse) = self.head_forward(b, false)?;
        self.fine_input_forward(b, false)?;
        self.fine.net.forward(b, mode)?;
        let (fine, center_fine) = self.head_forward(b, true)?;

        self.head_backward(b, true)?;
        self.attention_backward(b, true)?;
        self.fine.net.backward(b, mode, true)?;
        self.head_backward(b, false)?;
        self.fine_input_backward(b)?;
        self.attention_backward(b, false)?;
        ready(b, Grads::Heads(0))?;
        self.coarse
            .net
            .backward_reporting(b, mode, false, &mut |b, from| {
                ready(b, Grads::Backbone(from))
            })?;
        Ok(Losses {
            coarse,
            fine,
            center_coarse,
            center_fine,
        })
    }

    /// Inference on [`Self::input`]: BatchNorm with running statistics, the mean attention map
    /// for the fine pass, no loss. The coarse and fine logits are then in [`Self::logits`].
    pub fn infer<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let mode = BnMode::Inference;
        self.coarse.net.forward(b, mode)?;
        self.attend(b, false)?;
        self.fine_input_forward(b, true)?;
        self.fine.net.forward(b, mode)?;
        self.attend(b, true)
    }

    /// Attention maps, BAP and the head of one pass, after its backbone's forward.
    fn attend<B: Backend>(&mut self, b: &mut B, fine: bool) -> Result<()> {
        let conv = self.attention_conv();
        let bap = self.bap_shape();
        let head = self.head_shape();
        let w_att = self.head_param(self.heads.attention);
        let (fc_w, fc_b) = if fine {
            self.heads.fc_fine
        } else {
            self.heads.fc_coarse
        };
        let (fc_w, fc_b) = (self.head_param(fc_w), self.head_param(fc_b));
        let pass = if fine {
            &mut self.fine
        } else {
            &mut self.coarse
        };
        let features = pass.net.output();
        b.conv2d_forward(&conv, features, w_att, pass.attention_pre)?;
        b.relu_forward(pass.attention_pre, pass.attention)?;
        b.bap_forward(&bap, pass.attention, features, pass.parts, pass.norms)?;
        b.axpby(FEATURE_SCALE, pass.parts, 0.0, pass.scaled)?;
        b.linear_forward(&head, pass.scaled, fc_w, fc_b, pass.logits)
    }

    /// The coarse and fine passes' predicted classes `[B]` (attributes: 0/1 answers `[B, A]`),
    /// written by each training step.
    pub fn predictions(&self) -> (IndexTensor, IndexTensor) {
        (self.coarse.predictions, self.fine.predictions)
    }

    /// Everything a checkpoint holds: the backbone's state, the heads' parameters and momentum,
    /// and the center banks, `centers` or `centers.coarse` and `centers.fine` (a
    /// [`Task::Attributes`] model has none in use).
    pub fn state(&self) -> Vec<Named> {
        let mut state = network_state(&self.coarse.net);
        state.extend(table_state(&self.heads.table, self.params, ""));
        state.extend(table_state(&self.heads.table, self.momentum, "momentum."));
        if self.config.task == Task::Attributes {
            return state;
        }
        let shape = vec![self.config.classes, self.center_shape().dim];
        let banks = match self.config.center_banks {
            CenterBanks::Shared => vec![("centers", self.coarse.centers)],
            CenterBanks::Separate => vec![
                ("centers.coarse", self.coarse.centers),
                ("centers.fine", self.fine.centers),
            ],
        };
        for (name, tensor) in banks {
            state.push(Named {
                name: name.into(),
                shape: shape.clone(),
                tensor,
            });
        }
        state
    }

    pub fn zero_grads<B: Backend>(&self, b: &mut B) -> Result<()> {
        self.coarse.net.zero_grads(b)?;
        b.fill(self.grads, num_traits::Zero::zero())
    }

    /// One SGD step over the backbone's and the heads' parameters.
    pub fn sgd_step<B: Backend>(&self, b: &mut B, p: &SgdParams) -> Result<()> {
        self.sgd_step_by(b, &|_| Some(*p))
    }

    /// One SGD step with each parameter tensor's own hyper-parameters (see
    /// [`Network::sgd_step_by`]), the backbone's and the heads' alike.
    pub fn sgd_step_by<B: Backend>(&self, b: &mut B, rule: &SgdRule<'_>) -> Result<()> {
        self.coarse.net.sgd_step_by(b, rule)?;
        sgd_step_by_table(
            b,
            &self.heads.table,
            [self.params, self.grads, self.momentum],
            rule,
        )
    }
}

impl Pass {
    fn new<B: Backend>(
        b: &mut B,
        net: Network,
        config: &Coarse2FineConfig,
        part_len: usize,
        centers: Tensor,
    ) -> Result<Pass> {
        let graph = &net.graph;
        let f = graph.activations[graph.mixed_6e];
        let batch = config.batch;
        let maps = batch * config.maps * f.height * f.width;
        let parts = batch * part_len;
        let logits = batch * config.classes;
        let predictions = config.task.predictions_len(batch, config.classes);
        Ok(Pass {
            attention_pre: b.alloc(maps)?,
            attention: b.alloc(maps)?,
            d_attention: b.alloc(maps)?,
            parts: b.alloc(parts)?,
            norms: b.alloc(batch)?,
            d_parts: b.alloc(parts)?,
            scaled: b.alloc(parts)?,
            d_scaled: b.alloc(parts)?,
            logits: b.alloc(logits)?,
            d_logits: b.alloc(logits)?,
            predictions: b.alloc_index(predictions)?,
            centers,
            net,
        })
    }
}
