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
//! Without its fine pass ([`Coarse2Fine::coarse_only`]) the model is the coarse-only ablation:
//! step 1 alone, trained on `CE(coarse) + λ·CL(P)`, the same code with the fine pass left out.
//!
//! A multi-label model ([`Task::Attributes`], CelebA in the paper's Table 9) has one binary
//! output per attribute: sigmoid binary cross-entropy replaces the softmax cross-entropy, and
//! there is no center loss, because its centers are per class.
//!
//! The fine loss's gradient flows through the mask into the up-sampler and the attention maps:
//! the paper's contribution. Backward runs in reverse, with the tensors that several ops read
//! (the features `F` and `F'`, the attention maps `A`, the part features) taking their first
//! gradient contribution assigned and the rest added.

use c2f_inception::backend::{Backend, BnMode, IndexTensor, Tensor};
use c2f_inception::network::{sgd_step_by_table, Network, SgdGroup, SgdRule};
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::table::TensorTable;
use c2f_kernels::center_loss::CenterLossParams;
use c2f_kernels::map_select::MapShape;
use c2f_kernels::mask::MaskShape;
use c2f_kernels::nvtx;
use c2f_kernels::{Error, Real, Result};

pub use crate::config::CenterBanks;
pub use crate::pass::FEATURE_SCALE;
use crate::pass::{
    feature_shape, write_center_scales, CenterTerm, HeadTensors, Pass, PassArgs, PassShapes,
    PassSizes, PassStat, PASS_STATS,
};
use crate::state::{network_state, table_state, Named};
pub use crate::task::Task;
use crate::upsampler::{Upsampler, UpsamplerKind, UpsamplerShape};

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
    /// plus the last one back to a single map, so `len + 1` layers in all (unused by the
    /// coarse-only model).
    pub upsampler_channels: Vec<usize>,
    pub center_loss: CenterLossParams,
    /// One bank for both passes or one each (the coarse-only model has one pass, so one bank).
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
}

/// What the fine pass adds to the coarse one: its own pass, its classifier, the maps chosen
/// for it and the mask's scratch.
struct Fine {
    pass: Pass,
    fc: (usize, usize),
    chosen_maps: IndexTensor,
    d_chosen: Tensor,
    u_max: Tensor,
    u_argmax: IndexTensor,
}

/// Which gradient buffer [`Coarse2Fine::forward_backward_reporting`] (and WS-DAN's) reports
/// complete, from which element to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grads {
    Backbone(usize),
    Heads(usize),
}

impl Grads {
    /// The trainer's gradient buffer (0 the backbone's, 1 the heads') and the element from
    /// which it is complete.
    pub fn buffer(self) -> (usize, usize) {
        match self {
            Grads::Backbone(from) => (0, from),
            Grads::Heads(from) => (1, from),
        }
    }
}

/// Where each pass's statistics begin in [`Coarse2Fine::stats`].
pub const COARSE_STATS: usize = 0;
pub const FINE_STATS: usize = PASS_STATS;

/// Losses of one training step; the fine terms are 0 for the coarse-only model.
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

/// Coarse2Fine, or without its fine pass the coarse-only ablation ([`Coarse2Fine::coarse_only`]):
/// the same backbone, attention conv, BAP, coarse head and center loss, trained alone.
pub struct Coarse2Fine {
    pub config: Coarse2FineConfig,
    heads: Heads,
    /// The heads' parameters, gradients and momentum, flat in `heads.table` order.
    pub params: Tensor,
    pub grads: Tensor,
    momentum: Tensor,
    /// The step's statistics: the coarse pass's [`PASS_STATS`] values, then the fine pass's
    /// (left 0 by the coarse-only model).
    pub stats: Tensor,
    /// The center loss's λ as its ops read it ([`Self::set_center_lambda`]).
    center_scales: Tensor,
    coarse: Pass,
    /// `None` for the coarse-only model.
    fine: Option<Fine>,
    labels: IndexTensor,
    /// `[B, A]` 0/1 attribute targets ([`Task::Attributes`]; empty otherwise).
    targets: Tensor,
    /// The map per sample that the up-sampler reads, `[B, 1, h, w]`.
    chosen: Tensor,
    /// The fine pass's up-sampler; the coarse-only model's is the fixed bilinear one, which
    /// only up-samples the mean map in inference, for localization.
    upsampler: Upsampler,
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
        Self::build(b, config, kind, true)
    }

    /// The coarse-only ablation: no fine pass, so no up-sampler parameters, no fine head and
    /// one center bank whatever `config.center_banks` says; its loss is `CE(coarse) + λ·CL(P)`.
    pub fn coarse_only<B: Backend>(b: &mut B, config: Coarse2FineConfig) -> Result<Coarse2Fine> {
        Self::build(b, config, UpsamplerKind::FixedBilinear, false)
    }

    fn build<B: Backend>(
        b: &mut B,
        config: Coarse2FineConfig,
        kind: UpsamplerKind,
        fine: bool,
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
        let fc_fine = fine.then(|| head(&mut table, "fc_fine"));
        let heads = Heads {
            table,
            attention,
            upsampler: upsampler_start,
            fc_coarse,
        };
        let total = heads.table.total();
        // Coarse2Fine's allocation order, kept so that its runs reproduce: the fine pass's
        // buffers come between the coarse pass's.
        let coarse_net = Network::new(b, graph, batch)?;
        let fine_net = match fc_fine {
            Some(_) => Some(coarse_net.sharing(b)?),
            None => None,
        };
        let coarse_centers = b.alloc(config.classes * m * n)?;
        let fine_centers = match config.center_banks {
            CenterBanks::Separate if fine_net.is_some() => b.alloc(config.classes * m * n)?,
            _ => coarse_centers,
        };
        let sizes = PassSizes {
            batch,
            maps: m,
            outputs: config.classes,
            task: config.task,
            attention_bn: false,
        };
        // Both passes' statistics in one tensor, so that a step's are read at once.
        let stats = b.alloc(2 * PASS_STATS)?;
        let coarse_stats = stats.slice(COARSE_STATS, PASS_STATS);
        let coarse = Pass::new(b, coarse_net, &sizes, m * n, coarse_centers, coarse_stats)?;
        let fine_stats = stats.slice(FINE_STATS, PASS_STATS);
        let fine_pass = match fine_net {
            Some(net) => Some(Pass::new(b, net, &sizes, m * n, fine_centers, fine_stats)?),
            None => None,
        };
        let (params, grads, momentum) = (b.alloc(total)?, b.alloc(total)?, b.alloc(total)?);
        let labels = b.alloc_index(batch)?;
        let targets = b.alloc(config.task.targets_len(batch, config.classes))?;
        let hw = f.height * f.width;
        let chosen_maps = fine_pass
            .as_ref()
            .map(|_| b.alloc_index(batch))
            .transpose()?;
        let chosen = b.alloc_activation(batch * hw)?;
        let fine = match (fine_pass, fc_fine, chosen_maps) {
            (Some(pass), Some(fc), Some(chosen_maps)) => Some(Fine {
                pass,
                fc,
                chosen_maps,
                d_chosen: b.alloc_activation(batch * hw)?,
                u_max: b.alloc(batch)?,
                u_argmax: b.alloc_index(batch)?,
            }),
            _ => None,
        };
        let center_scales = b.alloc(2)?;
        write_center_scales(b, center_scales, &config.center_loss, batch)?;
        Ok(Coarse2Fine {
            params,
            grads,
            stats,
            center_scales,
            momentum,
            heads,
            coarse,
            fine,
            labels,
            targets,
            chosen,
            upsampler,
            config,
        })
    }

    /// Whether the model has its fine pass (`false`: the coarse-only ablation).
    pub fn has_fine_pass(&self) -> bool {
        self.fine.is_some()
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

    /// The center banks `[C, M·N]` (state, not parameters): the coarse pass's, then the fine
    /// pass's if there is one (the same tensor twice with [`CenterBanks::Shared`]).
    pub fn center_banks(&self) -> Vec<Tensor> {
        self.passes().map(|p| p.centers).collect()
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
    /// (drawn at random in training), each in `[0, maps)`; `None` without a fine pass.
    pub fn chosen_maps(&self) -> Option<IndexTensor> {
        self.fine.as_ref().map(|f| f.chosen_maps)
    }

    /// The logits `[B, C]` of the coarse pass, then of the fine pass if there is one.
    pub fn logits(&self) -> Vec<Tensor> {
        self.passes().map(|p| p.logits).collect()
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

    /// The map the up-sampler read, `[B, 1, h, w]`: after [`Self::infer`] the mean of the
    /// attention maps, after a training step the chosen ones (not written by the coarse-only
    /// model's steps).
    pub fn fine_map(&self) -> Tensor {
        self.chosen
    }

    /// [`Self::fine_map`] up-sampled to the input size, `[B, 1, S, S]`, before the mask's
    /// normalisation.
    pub fn upsampled_map(&self) -> Tensor {
        self.upsampler.output()
    }

    fn passes(&self) -> impl Iterator<Item = &Pass> {
        std::iter::once(&self.coarse).chain(self.fine.as_ref().map(|f| &f.pass))
    }

    fn heads(&self) -> HeadTensors<'_> {
        HeadTensors {
            table: &self.heads.table,
            params: self.params,
            grads: self.grads,
        }
    }

    fn feature_shape(&self) -> (usize, usize, usize) {
        feature_shape(&self.coarse.net)
    }

    /// What a pass with the classifier `(weight, bias)` (table indices) reads beside its own
    /// buffers.
    fn pass_args(&self, classifier: (usize, usize)) -> PassArgs {
        let classes = self.config.classes;
        let heads = self.heads();
        let (fc, fc_bias) = heads.classifier(classifier);
        PassArgs {
            shapes: PassShapes::new(
                self.config.batch,
                self.config.maps,
                self.feature_shape(),
                classes,
                classes,
            ),
            // Attributes have no center loss: its centers are per class.
            center_loss: match self.config.task {
                Task::Classes => Some(CenterTerm {
                    update: self.config.center_loss.update(),
                    scales: self.center_scales,
                }),
                Task::Attributes => None,
            },
            task: self.config.task,
            attention: heads.pair(self.heads.attention),
            attention_bn: None,
            fc,
            fc_bias,
            labels: self.labels,
            center_labels: self.labels,
            targets: self.targets,
        }
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

    /// Up-samples a map per sample: in training the chosen ones, in inference (`mean_map`, or
    /// any time without a fine pass) the mean of the attention maps; with a fine pass, masks
    /// the images with it into the fine pass's input.
    fn fine_input_forward<B: Backend>(&self, b: &mut B, mean_map: bool) -> Result<()> {
        let _range = nvtx::range("fine input forward");
        match (&self.fine, mean_map) {
            (Some(fine), false) => b.select_map_forward(
                &self.map_shape(),
                self.coarse.attention,
                fine.chosen_maps,
                self.chosen,
            )?,
            _ => b.mean_maps_forward(&self.map_shape(), self.coarse.attention, self.chosen)?,
        }
        self.upsampler
            .forward(b, self.upsampler_params(), self.chosen)?;
        let Some(fine) = &self.fine else {
            return Ok(());
        };
        b.mask_forward(
            &self.mask_shape(),
            self.upsampler.output(),
            self.coarse.net.input(),
            fine.pass.net.input(),
            fine.u_max,
            fine.u_argmax,
        )
    }

    /// From the fine backbone's input gradient back to the chosen maps, adding to the coarse
    /// attention maps' gradient; the up-sampler's parameter gradients accumulate. Nothing
    /// without a fine pass.
    fn fine_input_backward<B: Backend>(&self, b: &mut B) -> Result<()> {
        let _range = nvtx::range("fine input backward");
        let Some(fine) = &self.fine else {
            return Ok(());
        };
        b.mask_backward(
            &self.mask_shape(),
            self.upsampler.output(),
            self.coarse.net.input(),
            fine.pass.net.input_grad(),
            fine.u_max,
            fine.u_argmax,
            self.upsampler.output_grad(),
        )?;
        let (params, grads) = (self.upsampler_params(), self.upsampler_grads());
        self.upsampler
            .backward(b, params, grads, self.chosen, fine.d_chosen)?;
        b.select_map_backward(
            &self.map_shape(),
            fine.chosen_maps,
            fine.d_chosen,
            self.coarse.d_attention,
            true,
        )
    }

    /// The fine pass, with what its steps read; `None` for the coarse-only model.
    fn fine_pass(&mut self) -> Option<(&mut Pass, PassArgs)> {
        let args = self.pass_args(self.fine.as_ref()?.fc);
        self.fine.as_mut().map(|f| (&mut f.pass, args))
    }

    /// The fine pass's forward and backward, from its masked input (written by
    /// [`Self::fine_input_forward`]) to its input's gradient; its classification and center
    /// losses, zero without a fine pass.
    fn fine_forward_backward<B: Backend>(&mut self, b: &mut B, mode: BnMode) -> Result<()> {
        let Some((pass, args)) = self.fine_pass() else {
            return Ok(());
        };
        let _range = nvtx::range("fine pass");
        nvtx::within("fine backbone forward", || pass.net.forward(b, mode))?;
        nvtx::within("fine head forward", || pass.head_forward(b, &args))?;
        nvtx::within("fine head backward", || pass.head_backward(b, &args))?;
        nvtx::within("fine attention backward", || {
            pass.attention_backward(b, &args)
        })?;
        nvtx::within("fine backbone backward", || {
            pass.net.backward(b, mode, true)
        })
    }

    /// One forward and backward of the whole model on [`Self::input`], [`Self::labels`] and
    /// [`Self::chosen_maps`]: parameter gradients accumulate into the backbone's and the
    /// heads' gradient buffers (zero them first with [`Self::zero_grads`]); the center banks
    /// take their moving-average step. Returns the losses.
    pub fn forward_backward<B: Backend>(&mut self, b: &mut B, mode: BnMode) -> Result<Losses> {
        self.forward_backward_reporting(b, mode, &mut |_, _| Ok(()))?;
        self.losses(b)
    }

    /// The last step's losses, read from [`Self::stats`].
    pub fn losses<B: Backend>(&self, b: &mut B) -> Result<Losses> {
        let v = b.read(self.stats)?;
        let at = |start: usize, stat: PassStat| v[stat.at(start)].to_f64();
        Ok(Losses {
            coarse: at(COARSE_STATS, PassStat::HeadLoss),
            fine: at(FINE_STATS, PassStat::HeadLoss),
            center_coarse: at(COARSE_STATS, PassStat::CenterLoss),
            center_fine: at(FINE_STATS, PassStat::CenterLoss),
        })
    }

    /// [`Self::forward_backward`] without reading the losses (they stay in [`Self::stats`]),
    /// calling `ready(b, grads)` as gradients become complete, as
    /// [`Network::backward_reporting`] does: `Grads::Heads(0)` once the heads' are (before the
    /// coarse backbone's backward, the last to add to the shared backbone's), then
    /// `Grads::Backbone(from)` as that backward goes down the backbone.
    pub fn forward_backward_reporting<B: Backend>(
        &mut self,
        b: &mut B,
        mode: BnMode,
        ready: &mut dyn FnMut(&mut B, Grads) -> Result<()>,
    ) -> Result<()> {
        let coarse_args = self.pass_args(self.heads.fc_coarse);
        nvtx::within("coarse backbone forward", || {
            self.coarse.net.forward(b, mode)
        })?;
        nvtx::within("coarse head forward", || {
            self.coarse.head_forward(b, &coarse_args)
        })?;
        if self.fine.is_some() {
            self.fine_input_forward(b, false)?;
        }
        self.fine_forward_backward(b, mode)?;
        nvtx::within("coarse head backward", || {
            self.coarse.head_backward(b, &coarse_args)
        })?;
        self.fine_input_backward(b)?;
        let coarse_attention = nvtx::range("coarse attention backward");
        self.coarse.attention_backward(b, &coarse_args)?;
        drop(coarse_attention);
        ready(b, Grads::Heads(0))?;
        let _range = nvtx::range("coarse backbone backward");
        self.coarse
            .net
            .backward_reporting(b, mode, false, &mut |b, from| {
                ready(b, Grads::Backbone(from))
            })
    }

    /// Inference on [`Self::input`]: BatchNorm with running statistics, the mean attention map
    /// up-sampled (for the fine pass, and for localization), no loss. The logits are then in
    /// [`Self::logits`].
    pub fn infer<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        let mode = BnMode::Inference;
        let coarse_args = self.pass_args(self.heads.fc_coarse);
        nvtx::within("coarse backbone forward", || {
            self.coarse.net.forward(b, mode)
        })?;
        nvtx::within("coarse head forward", || {
            self.coarse.attend(b, &coarse_args)
        })?;
        self.fine_input_forward(b, true)?;
        if let Some((pass, args)) = self.fine_pass() {
            nvtx::within("fine backbone forward", || pass.net.forward(b, mode))?;
            nvtx::within("fine head forward", || pass.attend(b, &args))?;
        }
        Ok(())
    }

    /// The predicted classes `[B]` (attributes: 0/1 answers `[B, A]`) of the coarse pass, then
    /// of the fine pass if there is one, written by each training step.
    pub fn predictions(&self) -> Vec<IndexTensor> {
        self.passes().map(|p| p.predictions).collect()
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
        let shape = vec![
            self.config.classes,
            self.config.maps * self.feature_shape().0,
        ];
        let banks = match (&self.fine, self.config.center_banks) {
            (Some(fine), CenterBanks::Separate) => vec![
                ("centers.coarse", self.coarse.centers),
                ("centers.fine", fine.pass.centers),
            ],
            _ => vec![("centers", self.coarse.centers)],
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

    /// The center loss weight λ of the coming steps (a host write, before the step).
    pub fn set_center_lambda<B: Backend>(&mut self, b: &mut B, lambda: f64) -> Result<()> {
        self.config.center_loss.lambda = lambda;
        let batch = self.config.batch;
        write_center_scales(b, self.center_scales, &self.config.center_loss, batch)
    }

    /// One SGD step over the backbone's and the heads' parameters, as one group.
    pub fn sgd_step<B: Backend>(&self, b: &mut B, group: &SgdGroup) -> Result<()> {
        self.sgd_step_by(b, &|_| Some(*group))
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
