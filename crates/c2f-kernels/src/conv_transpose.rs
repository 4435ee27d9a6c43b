//! Transposed 2-D convolution, PyTorch's `ConvTranspose2d` with `groups = 1`, `dilation = 1`:
//!
//! - `x [B, Cin, H, W]`, `weight [Cin, Cout, k, k]`, `bias [Cout]`, `y [B, Cout, Hout, Wout]`
//! - `Hout = (H − 1)·stride − 2·padding + k + output_padding` (the same for `Wout`)
//! - `y[b,co,oy,ox] = bias[co] + Σ x[b,ci,iy,ix]·weight[ci,co,ky,kx]` over the taps with
//!   `oy = iy·stride − padding + ky` and `ox = ix·stride − padding + kx`.
//!
//! Gradient rule, as everywhere in the runtime: **activation gradients are assigned** (`dx` is
//! overwritten) and **parameter gradients accumulate** (`d_weight += …`, `d_bias += …`), so
//! zero them once per step.
//!
//! On the GPU the activations (`x`, `y`, `dy`, `dx`) are stored in `T` (f32 or bf16) and every sum
//! runs in f32; the parameters and their gradients are **f32 whatever `T` is** (master weights,
//! no bf16 rounding of gradient sums). All kernels are deterministic: `d_weight` and `d_bias` are
//! reduced through per-chunk partials summed in a fixed order, with no float atomics.
//! Kernels: `kernels/conv_transpose.cu`. The CPU reference is also the CPU backend's op.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use ndarray::{s, ArrayView4, ArrayViewMut2};
use rayon::prelude::*;

use crate::device::{blocks_for, grid, grid_with_shared, Gpu, Kernel};
use crate::element::Element;
use crate::error::{check_len, Error, Result};
use crate::launch;
use crate::Real;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvTransposeParams {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Input height H.
    pub height: usize,
    /// Input width W.
    pub width: usize,
    /// Square kernel side k.
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
}

impl ConvTransposeParams {
    /// `(H − 1)·stride − 2·padding + k + output_padding`, which [`Self::validate`] requires to be
    /// positive.
    pub fn out_height(&self) -> usize {
        self.out_extent(self.height).max(0) as usize
    }
    pub fn out_width(&self) -> usize {
        self.out_extent(self.width).max(0) as usize
    }
    fn out_extent(&self, input: usize) -> i64 {
        (input as i64 - 1) * self.stride as i64 - 2 * self.padding as i64
            + self.kernel_size as i64
            + self.output_padding as i64
    }
    /// Elements of `x` (and `dx`): `B·Cin·H·W`.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }
    /// Elements of `y` (and `dy`): `B·Cout·Hout·Wout`.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }
    /// Elements of `weight` (and `d_weight`): `Cin·Cout·k·k`.
    pub fn weight_len(&self) -> usize {
        self.in_channels * self.out_channels * self.kernel_size * self.kernel_size
    }

    /// Checks the parameters as PyTorch does, with a message naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let named = [
            ("batch", self.batch),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("height", self.height),
            ("width", self.width),
            ("kernel_size", self.kernel_size),
            ("stride", self.stride),
        ];
        for (name, value) in named {
            if value == 0 {
                return Err(Error::Shape(format!(
                    "ConvTranspose2d {name} must be positive, got 0: {self:?}"
                )));
            }
        }
        if self.output_padding >= self.stride {
            return Err(Error::Shape(format!(
                "ConvTranspose2d output_padding {} must be smaller than stride {} (dilation is 1)",
                self.output_padding, self.stride
            )));
        }
        for (name, input) in [("height", self.height), ("width", self.width)] {
            let out = self.out_extent(input);
            if out <= 0 {
                return Err(Error::Shape(format!(
                    "ConvTranspose2d output {name} ({input} - 1)*{} - 2*{} + {} + {} = {out} is not \
                     positive (input {name} {input}, stride {}, padding {}, kernel_size {}, \
                     output_padding {})",
                    self.stride,
                    self.padding,
                    self.kernel_size,
                    self.output_padding,
                    self.stride,
                    self.padding,
                    self.kernel_size,
                    self.output_padding
                )));
            }
        }
        let limit = i32::MAX as usize;
        if self.input_len() > limit || self.output_len() > limit || self.weight_len() > limit {
            return Err(Error::Shape(format!(
                "ConvTranspose2d shape too large for 32-bit indexing: {self:?}"
            )));
        }
        Ok(())
    }

    #[doc(hidden)] // for c2f-baselines
    pub fn check_buffers(&self, what: &[(&str, usize, usize)]) -> Result<()> {
        what.iter()
            .try_for_each(|&(name, len, expected)| check_len(name, len, expected))
    }
}

/// The input indices `lo..hi` whose tap `k` lands inside an output of length `out`
/// (`0 ≤ i·stride + k − padding < out`), and the output index of `lo`; `None` when there are none.
/// Consecutive inputs land `stride` apart.
fn tap_span(
    input: usize,
    k: usize,
    stride: usize,
    padding: usize,
    out: usize,
) -> Option<(usize, usize, usize)> {
    let lo = padding.saturating_sub(k).div_ceil(stride);
    let hi = if out + padding > k {
        ((out + padding - k - 1) / stride + 1).min(input)
    } else {
        0
    };
    (lo < hi).then(|| (lo, hi, lo * stride + k - padding))
}

/// `(lo, hi, o0)` from [`tap_span`] for every tap `0..k` that reaches the output.
fn tap_spans(
    p: &ConvTransposeParams,
    input: usize,
    out: usize,
) -> Vec<(usize, usize, usize, usize)> {
    (0..p.kernel_size)
        .filter_map(|k| {
            tap_span(input, k, p.stride, p.padding, out).map(|(lo, hi, o0)| (k, lo, hi, o0))
        })
        .collect()
}

/// CPU reference forward: writes `y [B, Cout, Hout, Wout]` from `x` and the layer's
/// `[weight, bias]`.
pub fn forward_cpu<R: Real>(
    p: &ConvTransposeParams,
    x: &[R],
    [weight, bias]: [&[R]; 2],
    y: &mut [R],
) -> Result<()> {
    p.validate()?;
    p.check_buffers(&[
        ("ConvTranspose2d x", x.len(), p.input_len()),
        ("ConvTranspose2d weight", weight.len(), p.weight_len()),
        ("ConvTranspose2d bias", bias.len(), p.out_channels),
        ("ConvTranspose2d y", y.len(), p.output_len()),
    ])?;
    let (ci_n, co_n, k, st) = (p.in_channels, p.out_channels, p.kernel_size, p.stride);
    let (ho, wo) = (p.out_height(), p.out_width());
    let xv = ArrayView4::from_shape((p.batch, ci_n, p.height, p.width), x).unwrap();
    let wv = ArrayView4::from_shape((ci_n, co_n, k, k), weight).unwrap();
    let (rows, cols) = (tap_spans(p, p.height, ho), tap_spans(p, p.width, wo));
    // One (sample, output channel) plane per task: every input row, scaled by one tap, is added
    // to every stride-th element of its output row.
    y.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(plane, out)| {
            let (b, co) = (plane / co_n, plane % co_n);
            let mut out = ArrayViewMut2::from_shape((ho, wo), out).unwrap();
            out.fill(bias[co]);
            for ci in 0..ci_n {
                for &(ky, y0, y1, oy0) in &rows {
                    for &(kx, x0, x1, ox0) in &cols {
                        let tap = wv[[ci, co, ky, kx]];
                        let ox1 = ox0 + (x1 - x0 - 1) * st + 1;
                        for (j, iy) in (y0..y1).enumerate() {
                            out.slice_mut(s![oy0 + j * st, ox0..ox1;st])
                                .scaled_add(tap, &xv.slice(s![b, ci, iy, x0..x1]));
                        }
                    }
                }
            }
        });
    Ok(())
}

/// CPU reference backward. From `dy` writes `dx` (assigned) and adds into `[d_weight, d_bias]`
/// (accumulated: `+=`).
pub fn backward_cpu<R: Real>(
    p: &ConvTransposeParams,
    [x, dy]: [&[R]; 2],
    weight: &[R],
    dx: &mut [R],
    [d_weight, d_bias]: [&mut [R]; 2],
) -> Result<()> {
    p.validate()?;
    p.check_buffers(&[
        ("ConvTranspose2d x", x.len(), p.input_len()),
        ("ConvTranspose2d weight", weight.len(), p.weight_len()),
        ("ConvTranspose2d dy", dy.len(), p.output_len()),
        ("ConvTranspose2d dx", dx.len(), p.input_len()),
        ("ConvTranspose2d d_weight", d_weight.len(), p.weight_len()),
        ("ConvTranspose2d d_bias", d_bias.len(), p.out_channels),
    ])?;
    let (batch, ci_n, co_n, k, st) = (
        p.batch,
        p.in_channels,
        p.out_channels,
        p.kernel_size,
        p.stride,
    );
    let (h, w, ho, wo) = (p.height, p.width, p.out_height(), p.out_width());
    let xv = ArrayView4::from_shape((batch, ci_n, h, w), x).unwrap();
    let wv = ArrayView4::from_shape((ci_n, co_n, k, k), weight).unwrap();
    let dyv = ArrayView4::from_shape((batch, co_n, ho, wo), dy).unwrap();
    let (rows, cols) = (tap_spans(p, h, ho), tap_spans(p, w, wo));

    // dx[b,ci,iy,ix] = Σ dy[b,co,oy,ox]·w[ci,co,ky,kx] over the same taps, one plane per task.
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, out)| {
            let (b, ci) = (plane / ci_n, plane % ci_n);
            let mut out = ArrayViewMut2::from_shape((h, w), out).unwrap();
            out.fill(R::zero());
            for co in 0..co_n {
                for &(ky, y0, y1, oy0) in &rows {
                    for &(kx, x0, x1, ox0) in &cols {
                        let tap = wv[[ci, co, ky, kx]];
                        let ox1 = ox0 + (x1 - x0 - 1) * st + 1;
                        for (j, iy) in (y0..y1).enumerate() {
                            out.slice_mut(s![iy, x0..x1])
                                .scaled_add(tap, &dyv.slice(s![b, co, oy0 + j * st, ox0..ox1;st]));
                        }
                    }
                }
            }
        });

    // d_weight[ci,co,ky,kx] += Σ_{b,iy,ix} x[b,ci,iy,ix]·dy[b,co,oy,ox], one (ci, co) per task.
    d_weight
        .par_chunks_mut(k * k)
        .enumerate()
        .for_each(|(pair, out)| {
            let (ci, co) = (pair / co_n, pair % co_n);
            for &(ky, y0, y1, oy0) in &rows {
                for &(kx, x0, x1, ox0) in &cols {
                    let ox1 = ox0 + (x1 - x0 - 1) * st + 1;
                    let mut sum = R::zero();
                    for b in 0..batch {
                        for (j, iy) in (y0..y1).enumerate() {
                            sum = sum
                                + xv.slice(s![b, ci, iy, x0..x1])
                                    .dot(&dyv.slice(s![b, co, oy0 + j * st, ox0..ox1;st]));
                        }
                    }
                    out[ky * k + kx] = out[ky * k + kx] + sum;
                }
            }
        });

    // d_bias[co] += Σ_{b,oy,ox} dy[b,co,oy,ox].
    d_bias.par_iter_mut().enumerate().for_each(|(co, db)| {
        let sum = (0..batch)
            .map(|b| dyv.slice(s![b, co, .., ..]).sum())
            .fold(R::zero(), |a, v| a + v);
        *db = *db + sum;
    });
    Ok(())
}

const THREADS: u32 = 256;
/// Floats of shared memory a block may use without opting in (48 KiB).
const SMEM_FLOATS: usize = 12 * 1024;
/// Must match `CT_TAP_PAD` in the kernel.
const TAP_PAD: usize = 4;
/// Entries per block of the finalize step: one per lane, `CT_PHASES` warps each (kernel).
const FINALIZE_ENTRIES: usize = 32;
/// The channel counts one thread carries (template widths of the kernels).
const WIDTHS: [usize; 4] = [1, 4, 8, 16];
/// Most chunks the weight gradient is split into; bounds the partials and the finalize's loop.
const MAX_CHUNKS: usize = 512;
/// Pixel tiles the weight gradient aims at: enough blocks to fill a large card several times,
/// since at the up-sampler's shapes waiting on memory, not arithmetic, bounds it (on an H200 a
/// tile of up to 256 pixels per block, 128 blocks at B = 64 and 17x17, was 0.31x cuDNN).
const DW_TARGET_TILES: usize = 2048;
/// Most floats of weight-gradient partials.
const PARTIAL_BUDGET: usize = 1 << 22;
/// The bias gradient sums each (sample, channel) plane in pieces of at least this many elements,
/// and at most `MAX_BIAS_PIECES` pieces, so that large planes still fill the card.
const BIAS_PIECE: usize = 4096;
const MAX_BIAS_PIECES: usize = 64;

/// The smallest kernel width that holds `channels`, or the widest.
fn width_for(channels: usize) -> usize {
    WIDTHS
        .iter()
        .copied()
        .find(|&w| w >= channels)
        .unwrap_or(WIDTHS[WIDTHS.len() - 1])
}

/// How the kernels tile one shape. Chosen once from the shape alone, so the reduction order, and
/// hence every bit of the result, depends on nothing else.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Output channels per forward thread.
    fwd_width: usize,
    /// Input channels whose weights sit in shared memory at once in the forward.
    fwd_ci_tile: usize,
    /// Input channels per dx thread.
    dx_width: usize,
    /// Output channels whose weights sit in shared memory at once in dx.
    dx_co_tile: usize,
    /// Input channels per weight-gradient thread.
    dw_width: usize,
    /// Output channels per weight-gradient block.
    dw_co_tile: usize,
    /// Pixel tile of the weight gradient: rows × columns ≤ 256.
    dw_tile_rows: usize,
    dw_tile_cols: usize,
    /// Blocks (and partial sums) the weight gradient's pixels are split into.
    dw_chunks: usize,
    /// Pieces each (sample, channel) plane of `dy` is split into for the bias gradient.
    db_pieces: usize,
}

impl Plan {
    fn new(p: &ConvTransposeParams) -> Result<Plan> {
        let kk = p.kernel_size * p.kernel_size;
        let too_big = || {
            Error::Shape(format!(
                "ConvTranspose2d kernel_size {} is too large for the GPU kernels, whose \
                 shared-memory weight tile holds at most 49x49 taps",
                p.kernel_size
            ))
        };
        // Narrower widths are the fallback for very large kernels.
        let (fwd_width, fwd_ci_tile) = WIDTHS
            .iter()
            .rev()
            .filter(|&&w| w <= width_for(p.out_channels))
            .map(|&w| (w, (SMEM_FLOATS / kk).saturating_sub(TAP_PAD) / w))
            .find(|&(_, tile)| tile >= 1)
            .ok_or_else(too_big)?;
        let (dx_width, dx_co_tile) = WIDTHS
            .iter()
            .rev()
            .filter(|&&w| w <= width_for(p.in_channels))
            .map(|&w| (w, SMEM_FLOATS / (kk * w)))
            .find(|&(_, tile)| tile >= 1)
            .ok_or_else(too_big)?;
        // Tiles of whole rows, as many bands of equal height as take the tile count to
        // DW_TARGET_TILES (or one row each), and chunks that each take the same number of tiles.
        let dw_tile_cols = p.width.min(THREADS as usize);
        let tiles_x = p.width.div_ceil(dw_tile_cols);
        let max_rows = THREADS as usize / dw_tile_cols;
        let bands = DW_TARGET_TILES
            .div_ceil(p.batch * tiles_x)
            .clamp(p.height.div_ceil(max_rows), p.height);
        let dw_tile_rows = p.height.div_ceil(bands);
        let tiles = p.batch * p.height.div_ceil(dw_tile_rows) * tiles_x;
        let max_chunks = MAX_CHUNKS.min((PARTIAL_BUDGET / p.weight_len()).max(1));
        let dw_chunks = tiles.div_ceil(tiles.div_ceil(max_chunks));
        Ok(Plan {
            fwd_width,
            fwd_ci_tile: fwd_ci_tile.min(p.in_channels),
            dx_width,
            dx_co_tile: dx_co_tile.min(p.out_channels),
            dw_width: width_for(p.in_channels),
            dw_co_tile: (THREADS as usize / kk).clamp(1, p.out_channels),
            dw_tile_rows,
            dw_tile_cols,
            dw_chunks,
            db_pieces: (p.out_height() * p.out_width() / BIAS_PIECE).clamp(1, MAX_BIAS_PIECES),
        })
    }

    fn fwd_smem_bytes(&self, kk: usize) -> u32 {
        (kk * (self.fwd_ci_tile * self.fwd_width + TAP_PAD) * 4) as u32
    }
    fn dx_smem_bytes(&self, kk: usize) -> u32 {
        (kk * self.dx_co_tile * self.dx_width * 4) as u32
    }
    fn dw_smem_bytes(&self) -> u32 {
        THREADS * self.dw_width as u32 * 4
    }
}

/// The transposed-convolution kernels for one shape, with the gradient partials allocated once.
pub struct ConvTransposeGpu<T: Element> {
    params: ConvTransposeParams,
    plan: Plan,
    k: ConvTransposeKernels<T>,
    /// `ct_forward_cW`, `ct_grad_input_cW` and `ct_grad_weight_cW` at the plan's widths W.
    forward_fn: Kernel,
    grad_input_fn: Kernel,
    grad_weight_fn: Kernel,
    /// `[chunks, Cin·Cout·k·k]` per-chunk sums of the weight gradient.
    weight_partials: CudaSlice<f32>,
    /// `[B, pieces, Cout]` per-piece sums of the bias gradient.
    bias_partials: CudaSlice<f32>,
}

crate::kernel_set! {
    struct ConvTransposeKernels: crate::sources::CONV_TRANSPOSE;
    typed: ct_grad_bias;
    plain: ct_finalize_params;
}

impl<T: Element> ConvTransposeGpu<T> {
    /// Validates the shape, picks the tiling and loads the kernels. Fails with
    /// [`Error::Shape`] beyond the GPU limits: kernel_size ≤ 49, batch ≤ 65535 (and channel
    /// counts up to about a million).
    pub fn new(gpu: &Gpu, params: ConvTransposeParams) -> Result<Self> {
        params.validate()?;
        let plan = Plan::new(&params)?;
        // Grid y and z dimensions are limited to 65535 blocks.
        let (ci, co) = (params.in_channels, params.out_channels);
        let tall = [
            ("batch", params.batch),
            ("output-channel", co.div_ceil(plan.fwd_width)),
            ("input-channel", ci.div_ceil(plan.dx_width)),
            ("input-channel", ci.div_ceil(plan.dw_width)),
            ("output-channel", co.div_ceil(plan.dw_co_tile)),
        ];
        if let Some((what, n)) = tall.into_iter().find(|&(_, n)| n > u16::MAX as usize) {
            return Err(Error::Shape(format!(
                "ConvTranspose2d needs {n} blocks along a {what} grid dimension, above the GPU \
                 limit 65535: {params:?}"
            )));
        }
        let at_width = |name: &str, width: usize| {
            Kernel::typed::<T>(
                gpu,
                &crate::sources::CONV_TRANSPOSE,
                &format!("{name}_c{width}"),
            )
        };
        Ok(ConvTransposeGpu {
            params,
            plan,
            k: ConvTransposeKernels::new(gpu)?,
            forward_fn: at_width("ct_forward", plan.fwd_width)?,
            grad_input_fn: at_width("ct_grad_input", plan.dx_width)?,
            grad_weight_fn: at_width("ct_grad_weight", plan.dw_width)?,
            weight_partials: gpu.alloc_zeros(plan.dw_chunks * params.weight_len())?,
            bias_partials: gpu.alloc_zeros(params.batch * plan.db_pieces * params.out_channels)?,
        })
    }

    pub fn params(&self) -> &ConvTransposeParams {
        &self.params
    }

    /// The shape as the kernels' `int` arguments:
    /// `[Cin, Cout, H, W, Hout, Wout, k, stride, padding]`.
    fn dims(&self) -> [i32; 9] {
        let p = &self.params;
        [
            p.in_channels,
            p.out_channels,
            p.height,
            p.width,
            p.out_height(),
            p.out_width(),
            p.kernel_size,
            p.stride,
            p.padding,
        ]
        .map(|v| v as i32)
    }

    /// Writes `y [B, Cout, Hout, Wout]` from `x` and `[weight [Cin, Cout, k, k], bias [Cout]]`.
    pub fn forward(
        &mut self,
        x: &impl DevicePtr<T>,
        [weight, bias]: [&impl DevicePtr<f32>; 2],
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let p = self.params;
        p.check_buffers(&[
            ("ConvTranspose2d x", x.len(), p.input_len()),
            ("ConvTranspose2d weight", weight.len(), p.weight_len()),
            ("ConvTranspose2d bias", bias.len(), p.out_channels),
            ("ConvTranspose2d y", y.len(), p.output_len()),
        ])?;
        let [ci, co, h, w, ho, wo, k, s, pad] = self.dims();
        let ci_tile = self.plan.fwd_ci_tile as i32;
        let cfg = grid_with_shared(
            (
                blocks_for(p.out_height() * p.out_width(), THREADS),
                p.out_channels.div_ceil(self.plan.fwd_width) as u32,
                p.batch as u32,
            ),
            THREADS,
            self.plan.fwd_smem_bytes(p.kernel_size * p.kernel_size),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing; the shared memory
        // holds the plan's weight tile.
        unsafe {
            launch!(self.forward_fn, cfg, [
                in x, in weight, in bias, out y, &ci, &co, &h, &w, &ho, &wo, &k, &s, &pad, &ci_tile
            ])?;
        }
        Ok(())
    }

    /// Full backward: [`Self::backward_input`] then [`Self::backward_params`]. `dx` is assigned;
    /// `[d_weight, d_bias]` are accumulated (`+=`).
    pub fn backward(
        &mut self,
        [x, dy]: [&impl DevicePtr<T>; 2],
        weight: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<T>,
        grads: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        self.backward_input(weight, dy, dx)?;
        self.backward_params([x, dy], grads)
    }

    /// Writes `dx [B, Cin, H, W]` (assigned, not accumulated) from `dy` and `weight`.
    pub fn backward_input(
        &mut self,
        weight: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let p = self.params;
        p.check_buffers(&[
            ("ConvTranspose2d weight", weight.len(), p.weight_len()),
            ("ConvTranspose2d dy", dy.len(), p.output_len()),
            ("ConvTranspose2d dx", dx.len(), p.input_len()),
        ])?;
        let [ci, co, h, w, ho, wo, k, s, pad] = self.dims();
        let co_tile = self.plan.dx_co_tile as i32;
        let cfg = grid_with_shared(
            (
                blocks_for(p.height * p.width, THREADS),
                p.in_channels.div_ceil(self.plan.dx_width) as u32,
                p.batch as u32,
            ),
            THREADS,
            self.plan.dx_smem_bytes(p.kernel_size * p.kernel_size),
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing; the shared memory
        // holds the plan's weight tile.
        unsafe {
            launch!(self.grad_input_fn, cfg, [
                in dy, in weight, out dx, &ci, &co, &h, &w, &ho, &wo, &k, &s, &pad, &co_tile
            ])?;
        }
        Ok(())
    }

    /// Adds the parameter gradients from `[x, dy]` into `[d_weight [Cin, Cout, k, k], d_bias
    /// [Cout]]` (accumulated: `+=`, in f32).
    pub fn backward_params(
        &mut self,
        [x, dy]: [&impl DevicePtr<T>; 2],
        [d_weight, d_bias]: [&mut impl DevicePtrMut<f32>; 2],
    ) -> Result<()> {
        let p = self.params;
        p.check_buffers(&[
            ("ConvTranspose2d x", x.len(), p.input_len()),
            ("ConvTranspose2d dy", dy.len(), p.output_len()),
            ("ConvTranspose2d d_weight", d_weight.len(), p.weight_len()),
            ("ConvTranspose2d d_bias", d_bias.len(), p.out_channels),
        ])?;
        let plan = self.plan;
        let [ci, co, h, w, ho, wo, k, s, pad] = self.dims();
        let batch = p.batch as i32;
        let (co_tile, tile_rows, tile_cols, chunks) = (
            plan.dw_co_tile as i32,
            plan.dw_tile_rows as i32,
            plan.dw_tile_cols as i32,
            plan.dw_chunks as i32,
        );
        let hwo = (p.out_height() * p.out_width()) as i32;
        let n_w = p.weight_len() as i32;
        let bias_parts = (p.batch * plan.db_pieces) as i32;
        let weight_cfg = grid_with_shared(
            (
                plan.dw_chunks as u32,
                p.in_channels.div_ceil(plan.dw_width) as u32,
                p.out_channels.div_ceil(plan.dw_co_tile) as u32,
            ),
            THREADS,
            plan.dw_smem_bytes(),
        );
        let bias_cfg = grid(
            (p.out_channels as u32, plan.db_pieces as u32, p.batch as u32),
            THREADS,
        );
        let finalize_blocks = (p.weight_len() + p.out_channels).div_ceil(FINALIZE_ENTRIES);
        let finalize_cfg = grid((finalize_blocks as u32, 1, 1), THREADS);
        // SAFETY: buffer lengths checked above match the kernels' indexing; the partials were
        // allocated for this plan, and every partial the finalize step reads is written first.
        unsafe {
            launch!(self.grad_weight_fn, weight_cfg, [
                in x, in dy, &mut self.weight_partials, &batch, &ci, &co, &h, &w, &ho, &wo, &k, &s,
                &pad, &co_tile, &tile_rows, &tile_cols, &chunks
            ])?;
            launch!(self.k.ct_grad_bias, bias_cfg, [in dy, &mut self.bias_partials, &co, &hwo])?;
            launch!(self.k.ct_finalize_params, finalize_cfg, [
                &self.weight_partials, &self.bias_partials, out d_weight, out d_bias, &n_w,
                &chunks, &co, &bias_parts
            ])?;
        }
        Ok(())
    }
}
