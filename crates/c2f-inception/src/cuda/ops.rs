//! The CUDA backend's ops, one impl per trait of [`crate::backend`]: convolutions through cuDNN
//! ([`super::conv`]), the `fc` through cuBLAS ([`super::linear`]), and every other op through its
//! kernel launcher ([`CudaBackend::launch`]).

use c2f_kernels::augment::{AugmentGpu, AugmentShape, MapsByMassGpu};
use c2f_kernels::axpby::AxpbyGpu;
use c2f_kernels::bap::{BapGpu, BapShape};
use c2f_kernels::batch_norm::{BatchNormGpu, BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{CenterLossGpu, CenterLossShape, CenterUpdate};
use c2f_kernels::concat::{ChannelCopyGpu, ChannelSlice};
use c2f_kernels::conv_transpose::{ConvTransposeGpu, ConvTransposeParams};
use c2f_kernels::dropout::{DropoutGpu, DropoutParams};
use c2f_kernels::error::check_len;
use c2f_kernels::layout::Layout;
use c2f_kernels::map_select::{MapSelectGpu, MapShape};
use c2f_kernels::mask::{MaskGpu, MaskShape};
use c2f_kernels::pool::{AvgPool2dGpu, GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams, PoolShape};
use c2f_kernels::relu::ReluGpu;
use c2f_kernels::resize::{ResizeBilinearGpu, ResizeShape};
use c2f_kernels::sgd::{SgdGpu, SgdParams};
use c2f_kernels::sigmoid_bce::{SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::softmax_ce::{SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::transpose::{TransposeGpu, TransposeShape};
use c2f_kernels::{Error, Result};

use super::convert::Scratch;
use super::launch::{per_storage, BnKey};
use super::memory::{DevRange, Operands};
use super::CudaBackend;
use crate::backend::{
    AugmentOps, BnMode, BnParams, BnStats, Coarse2FineOps, IndexTensor, LinearShape, NetworkOps,
    Tensor, TrainingOps,
};
use crate::cpu::conv::Conv2dShape;
use crate::precision::Storage;

impl NetworkOps for CudaBackend {
    /// On `w` as the data's storage and layout take it ([`CudaBackend::conv_weights`]).
    fn conv2d_forward(&mut self, s: &Conv2dShape, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
        self.bind()?;
        let layout = self.mem.common_layout("convolution", &[x, y])?;
        let storage = self.mem.storage(x)?;
        let w = self.conv_weights(s, w, storage, layout)?;
        per_storage!(storage, A => self.mem.run_as([x, w], [y], [], |[x, w], [mut y], []| {
            self.conv.forward::<A>(s, layout, &x, &w, &mut y)
        }))
    }

    /// On `w` as the data's storage and layout take it; `dx` accumulates in its own storage.
    fn conv2d_backward_data(
        &mut self,
        s: &Conv2dShape,
        dy: Tensor,
        w: Tensor,
        dx: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        self.bind()?;
        let layout = self
            .mem
            .common_layout("convolution backward-data", &[dy, dx])?;
        let storage = self.mem.storage(dy)?;
        let w = self.conv_weights(s, w, storage, layout)?;
        per_storage!(storage, A => self.mem.run_as([dy, w], [dx], [], |[dy, w], [mut dx], []| {
            self.conv.backward_data::<A>(s, layout, &dy, &w, &mut dx, accumulate)
        }))
    }

    /// Into `dw` directly in f32 NCHW; otherwise cuDNN writes the gradient in the data's storage
    /// and filter layout into scratch, which is added into the f32 KCRS `dw` after.
    fn conv2d_backward_filter(
        &mut self,
        s: &Conv2dShape,
        x: Tensor,
        dy: Tensor,
        dw: Tensor,
    ) -> Result<()> {
        self.bind()?;
        let layout = self
            .mem
            .common_layout("convolution backward-filter", &[x, dy])?;
        let storage = self.mem.storage(x)?;
        if (storage, layout) == (Storage::F32, Layout::Nchw) {
            return self.mem.run([x, dy], [dw], [], |[x, dy], [mut dw], []| {
                self.conv.backward_filter(s, layout, &x, &dy, &mut dw, true)
            });
        }
        let dw_scratch = self.scratch(Scratch::weights(storage), dw.len)?;
        per_storage!(storage, A => self.mem.run_as(
            [x, dy],
            [dw_scratch],
            [],
            |[x, dy], [mut dw], []| self.conv.backward_filter::<A>(s, layout, &x, &dy, &mut dw, false),
        ))?;
        match layout {
            Layout::Nchw => self.accumulate_bf16(dw_scratch, dw),
            Layout::Nhwc => self.transpose(&filter_to_krsc(s).inverse(), dw_scratch, dw, true),
        }
    }

    fn batch_norm_forward(
        &mut self,
        s: &BatchNormShape,
        p: &BatchNormParams,
        mode: BnMode,
        bn: &BnParams,
        x: Tensor,
        y: Tensor,
        saved: &BnStats,
    ) -> Result<()> {
        let layout = self.mem.common_layout("batch norm", &[x, y])?;
        let key = BnKey::new(s, p, layout);
        let affine = [bn.gamma, bn.beta];
        per_storage!(self.mem.storage(x)?, A => match mode {
            BnMode::Train => self.launch_with(
                key,
                &[x, bn.gamma, bn.beta],
                &[bn.running_mean, bn.running_var, y, saved.mean, saved.invstd],
                &[],
                |op: &mut BatchNormGpu<A>, ops| {
                    let [gamma, beta] = f32s(ops, affine)?;
                    let [mut running_mean, mut running_var, mut mean, mut invstd] =
                        f32s(ops, [bn.running_mean, bn.running_var, saved.mean, saved.invstd])?;
                    let running = [&mut running_mean, &mut running_var];
                    let saved = [&mut mean, &mut invstd];
                    let (x, mut y) = (ops.values::<A>(x)?, ops.values::<A>(y)?);
                    op.forward_train(&x, [&gamma, &beta], running, &mut y, saved)
                },
            ),
            BnMode::Inference => self.launch_with(
                key,
                &[x, bn.gamma, bn.beta, bn.running_mean, bn.running_var],
                &[y],
                &[],
                |op: &mut BatchNormGpu<A>, ops| {
                    let [gamma, beta, mean, var] =
                        f32s(ops, [bn.gamma, bn.beta, bn.running_mean, bn.running_var])?;
                    let (x, mut y) = (ops.values::<A>(x)?, ops.values::<A>(y)?);
                    op.forward_inference(&x, [&gamma, &beta], [&mean, &var], &mut y)
                },
            ),
        })
    }

    fn batch_norm_backward(
        &mut self,
        s: &BatchNormShape,
        p: &BatchNormParams,
        mode: BnMode,
        bn: &BnParams,
        saved: &BnStats,
        x: Tensor,
        y: Tensor,
        dy: Tensor,
        dx: Tensor,
        dgamma: Tensor,
        dbeta: Tensor,
    ) -> Result<()> {
        let (mean, invstd) = match mode {
            BnMode::Train => (saved.mean, saved.invstd),
            BnMode::Inference => (bn.running_mean, bn.running_var),
        };
        let layout = self
            .mem
            .common_layout("batch norm backward", &[x, y, dy, dx])?;
        per_storage!(self.mem.storage(x)?, A => self.launch_with(
            BnKey::new(s, p, layout),
            &[x, y, bn.gamma, mean, invstd, dy],
            &[dx, dgamma, dbeta],
            &[],
            |op: &mut BatchNormGpu<A>, ops| {
                let [x, y, dy] = ops.all_values::<A, 3>([x, y, dy])?;
                let mut dx = ops.values::<A>(dx)?;
                let [gamma, mean, invstd] = f32s(ops, [bn.gamma, mean, invstd])?;
                let [mut dgamma, mut dbeta] = f32s(ops, [dgamma, dbeta])?;
                let (xs, stats, grads) =
                    ([&x, &y, &dy], [&mean, &invstd], [&mut dgamma, &mut dbeta]);
                match mode {
                    BnMode::Train => op.backward_train(xs, &gamma, stats, &mut dx, grads),
                    BnMode::Inference => op.backward_inference(xs, &gamma, stats, &mut dx, grads),
                }
            },
        ))
    }

    fn max_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        let layout = self.mem.common_layout("max pooling", &[x, y])?;
        per_storage!(self.mem.storage(x)?, A => self.launch_as(
            (*s, *p, layout),
            [x],
            [y],
            [indices],
            |op: &mut MaxPool2dGpu<A>, [x], [mut y], [mut indices]| {
                op.forward(&x, &mut y, &mut indices)
            },
        ))
    }

    fn max_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        indices: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        let layout = self.mem.common_layout("max pooling backward", &[dy, dx])?;
        per_storage!(self.mem.storage(dy)?, A => self.launch_as(
            (*s, *p, layout),
            [dy],
            [dx],
            [indices],
            |op: &mut MaxPool2dGpu<A>, [dy], [mut dx], [indices]| {
                op.backward(&indices, &dy, &mut dx)
            },
        ))
    }

    fn avg_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        let layout = self.mem.common_layout("average pooling", &[x, y])?;
        per_storage!(self.mem.storage(x)?, A => {
            let key = (*s, *p, layout);
            self.launch_unary(key, x, y, |op: &mut AvgPool2dGpu<A>, x, y| op.forward(x, y))
        })
    }

    fn avg_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        let layout = self
            .mem
            .common_layout("average pooling backward", &[dy, dx])?;
        per_storage!(self.mem.storage(dy)?, A => {
            self.launch_unary((*s, *p, layout), dy, dx, |op: &mut AvgPool2dGpu<A>, dy, dx| {
                op.backward(dy, dx)
            })
        })
    }

    /// The layout is `x`'s: `y`, `[N, C]`, is the same in both.
    fn global_avg_pool_forward(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()> {
        let key = (*s, self.mem.layout(x)?);
        per_storage!(self.mem.storage(x)?, A => {
            self.launch_unary(key, x, y, |op: &mut GlobalAvgPoolGpu<A>, x, y| op.forward(x, y))
        })
    }

    fn global_avg_pool_backward(&mut self, s: &PoolShape, dy: Tensor, dx: Tensor) -> Result<()> {
        let key = (*s, self.mem.layout(dx)?);
        per_storage!(self.mem.storage(dy)?, A => {
            self.launch_unary(key, dy, dx, |op: &mut GlobalAvgPoolGpu<A>, dy, dx| {
                op.backward(dy, dx)
            })
        })
    }

    fn copy_channels(&mut self, s: &ChannelSlice, part: Tensor, whole: Tensor) -> Result<()> {
        let s = &self.channel_slice("copying channels", s, part, whole)?;
        per_storage!(self.mem.storage(part)?, A => self.launch_unary(
            (),
            part,
            whole,
            |op: &mut ChannelCopyGpu<A>, part, whole| op.copy_channels(s, part, whole),
        ))
    }

    fn slice_channels(&mut self, s: &ChannelSlice, whole: Tensor, part: Tensor) -> Result<()> {
        let s = &self.channel_slice("slicing channels", s, part, whole)?;
        per_storage!(self.mem.storage(whole)?, A => self.launch_unary(
            (),
            whole,
            part,
            |op: &mut ChannelCopyGpu<A>, whole, part| op.slice_channels(s, whole, part),
        ))
    }

    fn convert_layout(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()> {
        check_len("layout conversion x", x.len, s.numel())?;
        check_len("layout conversion y", y.len, s.numel())?;
        let (batch, c, hw) = (s.batch, s.channels, s.hw());
        let shape = match (self.mem.layout(x)?, self.mem.layout(y)?) {
            (Layout::Nchw, Layout::Nhwc) => TransposeShape::to_channels_last(batch, c, hw),
            (Layout::Nhwc, Layout::Nchw) => TransposeShape::to_channels_first(batch, c, hw),
            (same, _) => {
                return Err(Error::Shape(format!(
                    "converting the {x} into the {y}: both are {same:?}"
                )))
            }
        };
        self.transpose(&shape, x, y, false)
    }

    /// A bf16 `x` is converted to f32 first: the `fc` computes in f32 (its cost is small).
    fn linear_forward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        y: Tensor,
    ) -> Result<()> {
        s.check(x, w, b, y)?;
        self.mem.refuse_channels_last("linear", &[x, y])?;
        check_linear_dims(s)?;
        self.bind()?;
        let x = self.in_f32(x, Scratch::FcInput)?;
        self.mem.run([x, w, b], [y], [], |[x, w, b], [mut y], []| {
            self.linear.forward(s, &x, &w, &b, &mut y)
        })
    }

    /// With a bf16 `x`, in f32 on converted copies, `dx` converted back.
    fn linear_backward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Tensor,
        dw: Tensor,
        db: Tensor,
    ) -> Result<()> {
        s.check(x, w, db, dy)?;
        self.mem
            .refuse_channels_last("linear backward", &[x, dy, dx])?;
        check_len("linear dx", dx.len, s.batch * s.inputs)?;
        check_len("linear dw", dw.len, s.outputs * s.inputs)?;
        check_linear_dims(s)?;
        self.bind()?;
        let x32 = self.in_f32(x, Scratch::FcInput)?;
        let dx32 = match self.mem.storage(dx)? {
            Storage::F32 => dx,
            Storage::Bf16 => self.scratch(Scratch::FcInputGrad, dx.len)?,
        };
        self.mem.run(
            [x32, w, dy],
            [dx32, dw, db],
            [],
            |[x, w, dy], [mut dx, mut dw, mut db], []| {
                self.linear
                    .backward(s, &x, &w, &dy, &mut dx, &mut dw, &mut db)
            },
        )?;
        if dx32 != dx {
            self.convert(dx32, dx)?;
        }
        Ok(())
    }
}

impl CudaBackend {
    /// `s` for the kernel, which indexes NCHW: channels-last `[N, H, W, C]` is `[N·H·W, C, 1, 1]`
    /// in NCHW, so the same slice of channels.
    fn channel_slice(
        &self,
        op: &str,
        s: &ChannelSlice,
        part: Tensor,
        whole: Tensor,
    ) -> Result<ChannelSlice> {
        Ok(match self.mem.common_layout(op, &[part, whole])? {
            Layout::Nchw => *s,
            Layout::Nhwc => ChannelSlice {
                batch: s.batch * s.hw(),
                height: 1,
                width: 1,
                ..*s
            },
        })
    }

    /// The f32 KCRS weights `w` as cuDNN takes them for data stored as `storage` and laid out
    /// `layout`: `w` itself for f32 NCHW, else a copy in scratch, converted to bf16 and, for
    /// channels-last data, transposed to KRSC.
    fn conv_weights(
        &mut self,
        s: &Conv2dShape,
        w: Tensor,
        storage: Storage,
        layout: Layout,
    ) -> Result<Tensor> {
        if (storage, layout) == (Storage::F32, Layout::Nchw) {
            return Ok(w);
        }
        let copy = self.scratch(Scratch::weights(storage), w.len)?;
        match layout {
            Layout::Nchw => self.convert(w, copy)?,
            Layout::Nhwc => self.transpose(&filter_to_krsc(s), w, copy, false)?,
        }
        Ok(copy)
    }

    /// `y = xᵀ` per matrix of `s` (`+=` when `accumulate`), converting between the two
    /// buffers' storage types.
    fn transpose(
        &mut self,
        s: &TransposeShape,
        x: Tensor,
        y: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let (from, to) = (self.mem.storage(x)?, self.mem.storage(y)?);
        per_storage!(from, I => per_storage!(to, O => self.launch_with(
            (),
            &[x],
            &[y],
            &[],
            |op: &mut TransposeGpu, ops| {
                op.run::<I, O>(s, &ops.values::<I>(x)?, &mut ops.values::<O>(y)?, accumulate)
            },
        )))
    }

    /// `t` itself when f32, else an f32 copy of it in scratch `which`.
    fn in_f32(&mut self, t: Tensor, which: Scratch) -> Result<Tensor> {
        match self.mem.storage(t)? {
            Storage::F32 => Ok(t),
            Storage::Bf16 => {
                let copy = self.scratch(which, t.len)?;
                self.convert(t, copy)?;
                Ok(copy)
            }
        }
    }
}

/// A filter `[K, C, R, S]` as `K` matrices `C × RS`, transposed into KRSC.
fn filter_to_krsc(s: &Conv2dShape) -> TransposeShape {
    TransposeShape::to_channels_last(s.out_channels, s.in_channels, s.kernel.0 * s.kernel.1)
}

impl TrainingOps for CudaBackend {
    fn dropout_forward(
        &mut self,
        p: &DropoutParams,
        step: IndexTensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_as(
            (),
            [x],
            [y],
            [step],
            |op: &mut DropoutGpu<A>, [x], [mut y], [step]| op.apply(p, &step, &x, &mut y),
        ))
    }

    /// The forward's kernel on `dy`: the same mask, the same scale.
    fn dropout_backward(
        &mut self,
        p: &DropoutParams,
        step: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        self.dropout_forward(p, step, dy, dx)
    }

    fn softmax_cross_entropy(
        &mut self,
        s: &SoftmaxCeShape,
        logits: Tensor,
        labels: IndexTensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
        stats: Tensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [logits],
            [dlogits, stats],
            [labels, predictions],
            |op: &mut SoftmaxCeGpu<f32>,
             [logits],
             [mut dlogits, mut stats],
             [labels, mut predictions]| {
                let (preds, dx) = (&mut predictions, &mut dlogits);
                let stats = Some(&mut stats);
                op.enqueue_forward_backward(&logits, &labels, loss_scale, preds, dx, stats)
            },
        )
    }

    fn sigmoid_binary_cross_entropy(
        &mut self,
        s: &SigmoidBceShape,
        logits: Tensor,
        targets: Tensor,
        loss_scale: f64,
        predictions: IndexTensor,
        dlogits: Tensor,
        stats: Tensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [logits, targets],
            [dlogits, stats],
            [predictions],
            |op: &mut SigmoidBceGpu<f32>,
             [logits, targets],
             [mut dlogits, mut stats],
             [mut predictions]| {
                let (preds, dx) = (&mut predictions, &mut dlogits);
                let stats = Some(&mut stats);
                op.enqueue_forward_backward(&logits, &targets, loss_scale, preds, dx, stats)
            },
        )
    }

    fn sgd_step(
        &mut self,
        p: &SgdParams,
        lr: Tensor,
        weights: Tensor,
        grads: Tensor,
        momentum: Tensor,
    ) -> Result<()> {
        self.launch(
            (),
            [grads, lr],
            [weights, momentum],
            [],
            |op: &mut SgdGpu, [grads, lr], [mut weights, mut momentum], []| {
                op.step(p, &lr, &mut weights, &grads, &mut momentum)
            },
        )
    }

    fn axpby(&mut self, alpha: f64, x: Tensor, beta: f64, y: Tensor) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => {
            self.launch_unary((), x, y, |op: &mut AxpbyGpu<A>, x, y| op.run(alpha, x, beta, y))
        })
    }
}

/// Each op runs its kernel's entry points for the storage of its activations (f32 or bf16);
/// norms, statistics, centers, parameters and their gradients are f32 either way.
impl Coarse2FineOps for CudaBackend {
    fn bap_forward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(features)?, A => self.launch_with(
            *s,
            &[attention, features],
            &[parts, norms],
            &[],
            |op: &mut BapGpu<A>, ops| {
                let [attention, features] = ops.all_values::<A, 2>([attention, features])?;
                let (mut parts, mut norms) = (ops.values::<A>(parts)?, ops.values::<f32>(norms)?);
                op.forward([&attention, &features], &mut parts, &mut norms)
            },
        ))
    }

    fn bap_backward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
        d_parts: Tensor,
        d_attention: Tensor,
        d_features: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(features)?, A => self.launch_with(
            *s,
            &[attention, features, parts, norms, d_parts],
            &[d_attention, d_features],
            &[],
            |op: &mut BapGpu<A>, ops| {
                let [attention, features, parts, d_parts] =
                    ops.all_values::<A, 4>([attention, features, parts, d_parts])?;
                let norms = ops.values::<f32>(norms)?;
                let [mut d_attention, mut d_features] =
                    ops.all_values::<A, 2>([d_attention, d_features])?;
                let grads = [&mut d_attention, &mut d_features];
                op.backward([&attention, &features], (&parts, &norms), &d_parts, grads)
            },
        ))
    }

    fn center_loss(
        &mut self,
        s: &CenterLossShape,
        update: &CenterUpdate,
        scales: Tensor,
        features: Tensor,
        labels: IndexTensor,
        centers: Tensor,
        d_features: Tensor,
        loss: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(features)?, A => self.launch_with(
            *s,
            &[features, scales],
            &[centers, d_features, loss],
            &[labels],
            |op: &mut CenterLossGpu<A>, ops| {
                let (features, mut d_features) =
                    (ops.values::<A>(features)?, ops.values::<A>(d_features)?);
                let [scales, mut centers, mut loss] = f32s(ops, [scales, centers, loss])?;
                let (c, df, labels) = (&mut centers, &mut d_features, ops.indices(labels));
                op.enqueue(update, &scales, &features, &labels, c, df, Some(&mut loss))
            },
        ))
    }

    fn conv_transpose_forward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        y: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_with(
            *p,
            &[x, weight, bias],
            &[y],
            &[],
            |op: &mut ConvTransposeGpu<A>, ops| {
                let [weight, bias] = f32s(ops, [weight, bias])?;
                let (x, mut y) = (ops.values::<A>(x)?, ops.values::<A>(y)?);
                op.forward(&x, [&weight, &bias], &mut y)
            },
        ))
    }

    fn conv_transpose_backward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        dy: Tensor,
        dx: Tensor,
        d_weight: Tensor,
        d_bias: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_with(
            *p,
            &[x, weight, dy],
            &[dx, d_weight, d_bias],
            &[],
            |op: &mut ConvTransposeGpu<A>, ops| {
                let [x, dy] = ops.all_values::<A, 2>([x, dy])?;
                let mut dx = ops.values::<A>(dx)?;
                let [weight, mut d_weight, mut d_bias] = f32s(ops, [weight, d_weight, d_bias])?;
                op.backward([&x, &dy], &weight, &mut dx, [&mut d_weight, &mut d_bias])
            },
        ))
    }

    fn relu_forward(&mut self, x: Tensor, y: Tensor) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => {
            self.launch_unary((), x, y, |op: &mut ReluGpu<A>, x, y| op.forward(x, y))
        })
    }

    fn relu_backward(&mut self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        per_storage!(self.mem.storage(y)?, A => self.launch_as(
            (),
            [y, dy],
            [dx],
            [],
            |op: &mut ReluGpu<A>, [y, dy], [mut dx], []| op.backward(&y, &dy, &mut dx),
        ))
    }

    fn select_map_forward(
        &mut self,
        s: &MapShape,
        a: Tensor,
        indices: IndexTensor,
        out: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(a)?, A => self.launch_as(
            *s,
            [a],
            [out],
            [indices],
            |op: &mut MapSelectGpu<A>, [a], [mut out], [indices]| {
                op.select_forward(&a, &indices, &mut out)
            },
        ))
    }

    fn select_map_backward(
        &mut self,
        s: &MapShape,
        indices: IndexTensor,
        d_out: Tensor,
        da: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        per_storage!(self.mem.storage(d_out)?, A => self.launch_as(
            *s,
            [d_out],
            [da],
            [indices],
            |op: &mut MapSelectGpu<A>, [d_out], [mut da], [indices]| {
                op.select_backward(&indices, &d_out, &mut da, accumulate)
            },
        ))
    }

    fn mean_maps_forward(&mut self, s: &MapShape, a: Tensor, out: Tensor) -> Result<()> {
        per_storage!(self.mem.storage(a)?, A => {
            self.launch_unary(*s, a, out, |op: &mut MapSelectGpu<A>, a, out| {
                op.mean_forward(a, out)
            })
        })
    }

    fn resize_bilinear_forward(&mut self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => {
            self.launch_unary(*s, x, y, |op: &mut ResizeBilinearGpu<A>, x, y| op.forward(x, y))
        })
    }

    fn resize_bilinear_backward(&mut self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        per_storage!(self.mem.storage(dy)?, A => {
            self.launch_unary(*s, dy, dx, |op: &mut ResizeBilinearGpu<A>, dy, dx| {
                op.backward(dy, dx)
            })
        })
    }

    fn mask_forward(
        &mut self,
        s: &MaskShape,
        u: Tensor,
        x: Tensor,
        xf: Tensor,
        u_max: Tensor,
        argmax: IndexTensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_with(
            *s,
            &[u, x],
            &[xf, u_max],
            &[argmax],
            |op: &mut MaskGpu<A>, ops| {
                let [u, x] = ops.all_values::<A, 2>([u, x])?;
                let (mut xf, mut u_max) = (ops.values::<A>(xf)?, ops.values::<f32>(u_max)?);
                op.forward(&u, &x, &mut xf, &mut u_max, &mut ops.indices(argmax))
            },
        ))
    }

    fn mask_backward(
        &mut self,
        s: &MaskShape,
        u: Tensor,
        x: Tensor,
        dxf: Tensor,
        u_max: Tensor,
        argmax: IndexTensor,
        du: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_with(
            *s,
            &[u, x, dxf, u_max],
            &[du],
            &[argmax],
            |op: &mut MaskGpu<A>, ops| {
                let [u, x, dxf] = ops.all_values::<A, 3>([u, x, dxf])?;
                let (u_max, mut du) = (ops.values::<f32>(u_max)?, ops.values::<A>(du)?);
                op.backward(&u, &x, &dxf, &u_max, &ops.indices(argmax), &mut du)
            },
        ))
    }
}

/// Each op runs its kernel's entry points for the storage of its maps and images (f32 or bf16);
/// the kernels read the thresholds and draws in that storage too, so they are stored alike.
impl AugmentOps for CudaBackend {
    fn maps_by_mass(
        &mut self,
        s: &MapShape,
        a: Tensor,
        draws: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(a)?, A => self.launch_as(
            *s,
            [a, draws],
            [],
            [indices],
            |op: &mut MapsByMassGpu<A>, [a, draws], [], [mut indices]| {
                op.pick(&a, &draws, &mut indices)
            },
        ))
    }

    fn attention_boxes(
        &mut self,
        s: &AugmentShape,
        padding: f64,
        maps: Tensor,
        thresholds: Tensor,
        boxes: IndexTensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(maps)?, A => self.launch_as(
            *s,
            [maps, thresholds],
            [],
            [boxes],
            |op: &mut AugmentGpu<A>, [maps, thresholds], [], [mut boxes]| {
                op.attention_boxes(padding, &maps, &thresholds, &mut boxes)
            },
        ))
    }

    fn crop_resize(
        &mut self,
        s: &AugmentShape,
        x: Tensor,
        boxes: IndexTensor,
        y: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_as(
            *s,
            [x],
            [y],
            [boxes],
            |op: &mut AugmentGpu<A>, [x], [mut y], [boxes]| op.crop_resize(&x, &boxes, &mut y),
        ))
    }

    fn drop_mask(
        &mut self,
        s: &AugmentShape,
        maps: Tensor,
        thresholds: Tensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        per_storage!(self.mem.storage(x)?, A => self.launch_as(
            *s,
            [maps, thresholds, x],
            [y],
            [],
            |op: &mut AugmentGpu<A>, [maps, thresholds, x], [mut y], []| {
                op.drop_mask(&maps, &thresholds, &x, &mut y)
            },
        ))
    }
}

/// cuBLAS takes no empty matrices (leading dimensions must be at least 1).
fn check_linear_dims(s: &LinearShape) -> Result<()> {
    if s.batch == 0 || s.inputs == 0 || s.outputs == 0 {
        return Err(Error::Shape(format!(
            "linear layer of batch {}, {} inputs and {} outputs has a zero dimension",
            s.batch, s.inputs, s.outputs
        )));
    }
    Ok(())
}

/// The ranges of f32 operands `ts`: parameters, statistics and their gradients.
fn f32s<'a, const N: usize>(ops: &Operands<'a>, ts: [Tensor; N]) -> Result<[DevRange<'a, f32>; N]> {
    ops.all_values::<f32, N>(ts)
}
