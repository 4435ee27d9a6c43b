//! The up-sampler between an attention map `[B, 1, h, w]` and the input image's side `S`:
//!
//! - [`UpsamplerKind::Learnable`], the paper's deconvolutional network: stride-2 transposed
//!   convolutions (kernel 4, padding 1, so each doubles the side), ReLU between them, none after
//!   the last, then the fixed bilinear resize from `(h·2^L, w·2^L)` to `S × S`;
//! - [`UpsamplerKind::FixedBilinear`], the paper's comparison (`--upsampler bilinear`): no
//!   parameters, the map resized bilinearly straight to `S × S`.
//!
//! [`Upsampler`] owns its activation buffers and runs forward and backward on any [`Backend`],
//! reading its parameters from (and accumulating gradients into) tensors the caller passes, laid
//! out as [`Upsampler::table`] says: `upsampler.{i}.weight [Cin, Cout, 4, 4]`,
//! `upsampler.{i}.bias [Cout]`, back to back. Coarse2Fine keeps them inside its heads' buffer
//! under the same names, and [`save`] / [`load_into`] use them, so a pretrained file lines up
//! with the model's table.

use std::path::{Path, PathBuf};

use c2f_inception::backend::{Backend, Tensor};
use c2f_inception::init::counter_uniform;
use c2f_inception::spec::{Depth, Graph, InceptionConfig};
use c2f_inception::table::TensorTable;
use c2f_inception::weights::{read_checked, write_tensors};
use c2f_kernels::conv_transpose::ConvTransposeParams;
use c2f_kernels::resize::ResizeShape;
use c2f_kernels::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which up-sampler the fine branch uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpsamplerKind {
    /// Transposed convolutions, then the fixed bilinear resize.
    #[default]
    Learnable,
    /// Only the bilinear resize, no parameters.
    FixedBilinear,
}

/// What replaces a run's learnable up-sampler after the model's own start (its fresh draw, or
/// the checkpoint of `--init-from`).
#[derive(Debug, Clone, PartialEq)]
pub enum UpsamplerWeights {
    /// A `c2f pretrain-upsampler` file (`--upsampler FILE`).
    File(PathBuf),
    /// Pretrained on interpolation pairs by [`crate::pretrain::PretrainConfig::short`] for the
    /// run's input side: the weights shipped in `c2f` where it has them, else pretrained at the
    /// run's start (`--upsampler pretrained`, the default with `--weights`).
    Pretrained,
}

/// Where a run's learnable up-sampler started, as its checkpoint records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "from")]
pub enum UpsamplerOrigin {
    /// The heads' fresh draw ([`init_params`]).
    Fresh,
    /// The earlier run's checkpoint (`--init-from`).
    Checkpoint { path: PathBuf },
    /// `--upsampler FILE`.
    File { path: PathBuf },
    /// The weights shipped for the input side, copied to `path` in the run's folder.
    Shipped { path: PathBuf },
    /// Pretrained at the run's start (or an earlier start in the same folder), kept at `path`
    /// in the run's folder.
    Pretrained { path: PathBuf },
}

/// The up-sampler's geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsamplerShape {
    pub batch: usize,
    /// The attention map's `(height, width)`.
    pub map: (usize, usize),
    /// The output's side, the input image's.
    pub output: usize,
    pub kind: UpsamplerKind,
    /// Learnable only (ignored by the fixed one): channels between the transposed convolutions,
    /// one stride-2 layer per entry plus the last one back to a single map, `len + 1` layers.
    pub channels: Vec<usize>,
}

/// Side of the Mixed_6e feature map (the attention map) for a square input of `input_size`
/// (the backbone's width does not change it).
pub fn attention_map_side(input_size: usize) -> Result<(usize, usize)> {
    let graph = Graph::new(InceptionConfig {
        input_size,
        width: 1.0,
        depth: Depth::Mixed6e,
    })?;
    let f = graph.activations[graph.mixed_6e];
    Ok((f.height, f.width))
}

/// The project's default learnable stack for an input side: 8 channels between layers, and as
/// many stride-2 layers as take the map side to at least a quarter of the input side (the
/// bilinear resize does the rest). `c2f train` and `c2f pretrain-upsampler` must agree on it for
/// a pretrained file to fit.
pub fn default_channels(map_side: usize, input_size: usize) -> Vec<usize> {
    let mut layers = 1;
    while (map_side << layers) * 4 < input_size {
        layers += 1;
    }
    vec![8; layers - 1]
}

/// The uniform range up-sampler parameter `name` of `shape` starts from: non-negative (the
/// attention maps it reads are non-negative, so the first masks are not all ones), weights up to
/// 1/sqrt(fan_in), biases up to 0.1.
pub fn init_range(name: &str, shape: &[usize]) -> (f64, f64) {
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0.0, if name.ends_with("bias") { 0.1 } else { bound })
}

/// Fresh parameters for `table` (the up-sampler's own), from the shared counter-based generator
/// with [`init_range`]: the same values `c2f train` starts the up-sampler from.
pub fn init_params(table: &TensorTable) -> Vec<f32> {
    let mut params = vec![0.0; table.total()];
    for e in table.entries() {
        let (lo, hi) = init_range(&e.name, &e.shape);
        counter_uniform(&e.name, lo, hi, &mut params[e.range()]);
    }
    params
}

/// One transposed-conv layer and where its parameters sit in [`Upsampler::table`].
struct Layer {
    conv: ConvTransposeParams,
    weight: usize,
    bias: usize,
}

pub struct Upsampler {
    shape: UpsamplerShape,
    table: TensorTable,
    layers: Vec<Layer>,
    /// Per layer: its output before ReLU and after (the last has no ReLU), and the gradient
    /// buffers.
    pre: Vec<Tensor>,
    post: Vec<Tensor>,
    grad: Vec<Tensor>,
    resize: ResizeShape,
    output: Tensor,
    d_output: Tensor,
}

impl Upsampler {
    pub fn new<B: Backend>(b: &mut B, shape: UpsamplerShape) -> Result<Upsampler> {
        let (h, w) = shape.map;
        if shape.batch == 0 || h == 0 || w == 0 || shape.output == 0 {
            return Err(Error::Shape(format!(
                "up-sampler needs non-empty shapes: batch {}, map {h}×{w}, output {}",
                shape.batch, shape.output
            )));
        }
        let mut table = TensorTable::default();
        let mut layers = Vec::new();
        let (mut pre, mut post, mut grad) = (Vec::new(), Vec::new(), Vec::new());
        let mut side = (h, w);
        if shape.kind == UpsamplerKind::Learnable {
            let mut channels = vec![1];
            channels.extend(&shape.channels);
            channels.push(1);
            for (i, pair) in channels.windows(2).enumerate() {
                let weight = table.push(
                    format!("upsampler.{i}.weight"),
                    vec![pair[0], pair[1], 4, 4],
                );
                let bias = table.push(format!("upsampler.{i}.bias"), vec![pair[1]]);
                let conv = ConvTransposeParams {
                    batch: shape.batch,
                    in_channels: pair[0],
                    out_channels: pair[1],
                    height: side.0,
                    width: side.1,
                    kernel_size: 4,
                    stride: 2,
                    padding: 1,
                    output_padding: 0,
                };
                conv.validate()?;
                layers.push(Layer { conv, weight, bias });
                side = (side.0 * 2, side.1 * 2);
                let len = conv.output_len();
                pre.push(b.alloc_activation(len)?);
                post.push(b.alloc_activation(len)?);
                grad.push(b.alloc_activation(len)?);
            }
        }
        let resize = ResizeShape {
            batch: shape.batch,
            channels: 1,
            in_height: side.0,
            in_width: side.1,
            out_height: shape.output,
            out_width: shape.output,
        };
        Ok(Upsampler {
            output: b.alloc_activation(resize.out_len())?,
            d_output: b.alloc_activation(resize.out_len())?,
            shape,
            table,
            layers,
            pre,
            post,
            grad,
            resize,
        })
    }

    pub fn shape(&self) -> &UpsamplerShape {
        &self.shape
    }

    /// The parameters' names, shapes and offsets in the tensors [`Self::forward`] and
    /// [`Self::backward`] take (empty for the fixed bilinear one).
    pub fn table(&self) -> &TensorTable {
        &self.table
    }

    /// Elements of the input map `[B, 1, h, w]`.
    pub fn input_len(&self) -> usize {
        self.shape.batch * self.shape.map.0 * self.shape.map.1
    }

    /// The up-sampled map `[B, 1, S, S]`, written by [`Self::forward`].
    pub fn output(&self) -> Tensor {
        self.output
    }

    /// The gradient with respect to [`Self::output`], written by the caller before
    /// [`Self::backward`].
    pub fn output_grad(&self) -> Tensor {
        self.d_output
    }

    fn check_params(&self, what: &str, t: Tensor) -> Result<()> {
        c2f_kernels::error::check_len(what, t.len, self.table.total())
    }

    fn param(&self, params: Tensor, index: usize) -> Tensor {
        let e = self.table.entry(index);
        params.slice(e.offset, e.len())
    }

    /// Up-samples `x [B, 1, h, w]` into [`Self::output`] with `params` laid out as
    /// [`Self::table`].
    pub fn forward<B: Backend>(&self, b: &mut B, params: Tensor, x: Tensor) -> Result<()> {
        self.check_params("up-sampler parameters", params)?;
        c2f_kernels::error::check_len("up-sampler input", x.len, self.input_len())?;
        let mut current = x;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let (weight, bias) = (
                self.param(params, layer.weight),
                self.param(params, layer.bias),
            );
            b.conv_transpose_forward(&layer.conv, current, weight, bias, self.pre[i])?;
            current = if i < last {
                b.relu_forward(self.pre[i], self.post[i])?;
                self.post[i]
            } else {
                self.pre[i]
            };
        }
        b.resize_bilinear_forward(&self.resize, current, self.output)
    }

    /// From [`Self::output_grad`] back to `dx [B, 1, h, w]` (assigned), after a
    /// [`Self::forward`] on the same `params` and `x`; the parameter gradients accumulate into
    /// `grads` (laid out as `params`).
    pub fn backward<B: Backend>(
        &self,
        b: &mut B,
        params: Tensor,
        grads: Tensor,
        x: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        self.check_params("up-sampler parameters", params)?;
        self.check_params("up-sampler gradients", grads)?;
        c2f_kernels::error::check_len("up-sampler input", x.len, self.input_len())?;
        c2f_kernels::error::check_len("up-sampler input gradient", dx.len, self.input_len())?;
        let Some(last) = self.layers.len().checked_sub(1) else {
            return b.resize_bilinear_backward(&self.resize, self.d_output, dx);
        };
        b.resize_bilinear_backward(&self.resize, self.d_output, self.grad[last])?;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let d_pre = if i < last {
                // Through this layer's ReLU: grad[i] holds the gradient w.r.t. its output, and
                // the pre-activation buffer is free once forward has read it.
                b.relu_backward(self.post[i], self.grad[i], self.pre[i])?;
                self.pre[i]
            } else {
                self.grad[i]
            };
            let (input, d_input) = if i == 0 {
                (x, dx)
            } else {
                (self.post[i - 1], self.grad[i - 1])
            };
            b.conv_transpose_backward(
                &layer.conv,
                input,
                self.param(params, layer.weight),
                d_pre,
                d_input,
                self.param(grads, layer.weight),
                self.param(grads, layer.bias),
            )?;
        }
        Ok(())
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn is_upsampler(name: &str) -> bool {
    name.starts_with("upsampler.")
}

/// Writes the `upsampler.*` entries of `table` from `params` (laid out as `table`) to a
/// safetensors file at `path`, atomically.
pub fn save(path: &Path, table: &TensorTable, params: &[f32]) -> Result<()> {
    check_len(path, table, params.len())?;
    let tensors: Vec<(&str, &[usize], &[f32])> = table
        .entries()
        .iter()
        .filter(|e| is_upsampler(&e.name))
        .map(|e| (e.name.as_str(), e.shape.as_slice(), &params[e.range()]))
        .collect();
    if tensors.is_empty() {
        return Err(file_error(path, "the up-sampler has no parameters to save"));
    }
    write_tensors(path, &tensors, None)
}

/// Fills the `upsampler.*` entries of `table` in `params` (laid out as `table`; the other
/// entries are left alone) from the safetensors file at `path`. Works with an [`Upsampler`]'s
/// own table and with Coarse2Fine's heads table alike. The file is refused, naming it and every
/// tensor at fault, when one is missing, mis-shaped, not F32 or not expected (another
/// up-sampler shape).
pub fn load_into(path: &Path, table: &TensorTable, params: &mut [f32]) -> Result<()> {
    check_len(path, table, params.len())?;
    let wanted: Vec<_> = table
        .entries()
        .iter()
        .filter(|e| is_upsampler(&e.name))
        .collect();
    if wanted.is_empty() {
        return Err(file_error(
            path,
            "this model's up-sampler has no parameters (fixed bilinear?): nothing to load",
        ));
    }
    let expected: Vec<(&str, &[usize])> = wanted
        .iter()
        .map(|e| (e.name.as_str(), e.shape.as_slice()))
        .collect();
    let file = read_checked(path, &expected, |_| false, "up-sampler weights")?;
    for (e, values) in wanted.iter().zip(file.values) {
        params[e.range()].copy_from_slice(&values);
    }
    Ok(())
}

fn check_len(path: &Path, table: &TensorTable, len: usize) -> Result<()> {
    if len == table.total() {
        Ok(())
    } else {
        Err(file_error(
            path,
            format!("{len} values for a table of {}", table.total()),
        ))
    }
}
