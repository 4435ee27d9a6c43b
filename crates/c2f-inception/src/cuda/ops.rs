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
use c2f_kernels::map_select::{MapSelectGpu, MapShape};
use c2f_kernels::mask::{MaskGpu, MaskShape};
use c2f_kernels::pool::{AvgPool2dGpu, GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams, PoolShape};
use c2f_kernels::relu::ReluGpu;
use c2f_kernels::resize::{ResizeBilinearGpu, ResizeShape};
use c2f_kernels::sgd::{SgdGpu, SgdParams};
use c2f_kernels::sigmoid_bce::{SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::softmax_ce::{SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::{Error, Result};

use super::launch::BnKey;
use super::CudaBackend;
use crate::backend::{
    AugmentOps, BnMode, BnParams, BnStats, Coarse2FineOps, IndexTensor, LinearShape, NetworkOps,
    Tensor, TrainingOps,
};
use crate::cpu::conv::Conv2dShape;

impl NetworkOps for CudaBackend {
    fn conv2d_forward(&mut self, s: &Conv2dShape, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
        self.bind()?;
        self.mem.run([x, w], [y], [], |[x, w], [mut y], []| {
            self.conv.forward(s, &x, &w, &mut y)
        })
    }

    fn conv2d_backward_data(
        &mut self,
        s: &Conv2dShape,
        dy: Tensor,
        w: Tensor,
        dx: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        self.bind()?;
        self.mem.run([dy, w], [dx], [], |[dy, w], [mut dx], []| {
            self.conv.backward_data(s, &dy, &w, &mut dx, accumulate)
        })
    }

    fn conv2d_backward_filter(
        &mut self,
        s: &Conv2dShape,
        x: Tensor,
        dy: Tensor,
        dw: Tensor,
    ) -> Result<()> {
        self.bind()?;
        self.mem.run([x, dy], [dw], [], |[x, dy], [mut dw], []| {
            self.conv.backward_filter(s, &x, &dy, &mut dw)
        })
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
        let key = BnKey::new(s, p);
        match mode {
            BnMode::Train => self.launch(
                key,
                [x, bn.gamma, bn.beta],
                [bn.running_mean, bn.running_var, y, saved.mean, saved.invstd],
                [],
                |op: &mut BatchNormGpu<f32>,
                 [x, gamma, beta],
                 [mut running_mean, mut running_var, mut y, mut mean, mut invstd],
                 []| {
                    let running = [&mut running_mean, &mut running_var];
                    let saved = [&mut mean, &mut invstd];
                    op.forward_train(&x, [&gamma, &beta], running, &mut y, saved)
                },
            ),
            BnMode::Inference => self.launch(
                key,
                [x, bn.gamma, bn.beta, bn.running_mean, bn.running_var],
                [y],
                [],
                |op: &mut BatchNormGpu<f32>, [x, gamma, beta, mean, var], [mut y], []| {
                    op.forward_inference(&x, [&gamma, &beta], [&mean, &var], &mut y)
                },
            ),
        }
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
        self.launch(
            BnKey::new(s, p),
            [x, y, bn.gamma, mean, invstd, dy],
            [dx, dgamma, dbeta],
            [],
            |op: &mut BatchNormGpu<f32>,
             [x, y, gamma, mean, invstd, dy],
             [mut dx, mut dgamma, mut dbeta],
             []| {
                let (xs, stats, grads) =
                    ([&x, &y, &dy], [&mean, &invstd], [&mut dgamma, &mut dbeta]);
                match mode {
                    BnMode::Train => op.backward_train(xs, &gamma, stats, &mut dx, grads),
                    BnMode::Inference => op.backward_inference(xs, &gamma, stats, &mut dx, grads),
                }
            },
        )
    }

    fn max_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        self.launch(
            (*s, *p),
            [x],
            [y],
            [indices],
            |op: &mut MaxPool2dGpu<f32>, [x], [mut y], [mut indices]| {
                op.forward(&x, &mut y, &mut indices)
            },
        )
    }

    fn max_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        indices: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        self.launch(
            (*s, *p),
            [dy],
            [dx],
            [indices],
            |op: &mut MaxPool2dGpu<f32>, [dy], [mut dx], [indices]| {
                op.backward(&indices, &dy, &mut dx)
            },
        )
    }

    fn avg_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        self.launch_unary((*s, *p), x, y, |op: &mut AvgPool2dGpu<f32>, x, y| {
            op.forward(x, y)
        })
    }

    fn avg_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        self.launch_unary((*s, *p), dy, dx, |op: &mut AvgPool2dGpu<f32>, dy, dx| {
            op.backward(dy, dx)
        })
    }

    fn global_avg_pool_forward(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()> {
        self.launch_unary(*s, x, y, |op: &mut GlobalAvgPoolGpu<f32>, x, y| {
            op.forward(x, y)
        })
    }

    fn global_avg_pool_backward(&mut self, s: &PoolShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.launch_unary(*s, dy, dx, |op: &mut GlobalAvgPoolGpu<f32>, dy, dx| {
            op.backward(dy, dx)
        })
    }

    fn copy_channels(&mut self, s: &ChannelSlice, part: Tensor, whole: Tensor) -> Result<()> {
        self.launch_unary(
            (),
            part,
            whole,
            |op: &mut ChannelCopyGpu<f32>, part, whole| op.copy_channels(s, part, whole),
        )
    }

    fn slice_channels(&mut self, s: &ChannelSlice, whole: Tensor, part: Tensor) -> Result<()> {
        self.launch_unary(
            (),
            whole,
            part,
            |op: &mut ChannelCopyGpu<f32>, whole, part| op.slice_channels(s, whole, part),
        )
    }

    fn linear_forward(
        &mut self,
        s: &LinearShape,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        y: Tensor,
    ) -> Result<()> {
        s.check(x, w, b, y)?;
        check_linear_dims(s)?;
        self.bind()?;
        self.mem.run([x, w, b], [y], [], |[x, w, b], [mut y], []| {
            self.linear.forward(s, &x, &w, &b, &mut y)
        })
    }

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
        check_len("linear dx", dx.len, s.batch * s.inputs)?;
        check_len("linear dw", dw.len, s.outputs * s.inputs)?;
        check_linear_dims(s)?;
        self.bind()?;
        self.mem.run(
            [x, w, dy],
            [dx, dw, db],
            [],
            |[x, w, dy], [mut dx, mut dw, mut db], []| {
                self.linear
                    .backward(s, &x, &w, &dy, &mut dx, &mut dw, &mut db)
            },
        )
    }
}

impl TrainingOps for CudaBackend {
    fn dropout_forward(
        &mut self,
        p: &DropoutParams,
        step: IndexTensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        self.launch(
            (),
            [x],
            [y],
            [step],
            |op: &mut DropoutGpu<f32>, [x], [mut y], [step]| op.apply(p, &step, &x, &mut y),
        )
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
        self.launch_unary((), x, y, |op: &mut AxpbyGpu<f32>, x, y| {
            op.run(alpha, x, beta, y)
        })
    }
}

impl Coarse2FineOps for CudaBackend {
    fn bap_forward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [attention, features],
            [parts, norms],
            [],
            |op: &mut BapGpu<f32>, [attention, features], [mut parts, mut norms], []| {
                op.forward([&attention, &features], &mut parts, &mut norms)
            },
        )
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
        self.launch(
            *s,
            [attention, features, parts, norms, d_parts],
            [d_attention, d_features],
            [],
            |op: &mut BapGpu<f32>,
             [attention, features, parts, norms, d_parts],
             [mut d_attention, mut d_features],
             []| {
                let grads = [&mut d_attention, &mut d_features];
                op.backward([&attention, &features], (&parts, &norms), &d_parts, grads)
            },
        )
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
        self.launch(
            *s,
            [features, scales],
            [centers, d_features, loss],
            [labels],
            |op: &mut CenterLossGpu<f32>,
             [features, scales],
             [mut centers, mut d_features, mut loss],
             [labels]| {
                let (c, df) = (&mut centers, &mut d_features);
                op.enqueue(update, &scales, &features, &labels, c, df, Some(&mut loss))
            },
        )
    }

    fn conv_transpose_forward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        y: Tensor,
    ) -> Result<()> {
        self.launch(
            *p,
            [x, weight, bias],
            [y],
            [],
            |op: &mut ConvTransposeGpu<f32>, [x, weight, bias], [mut y], []| {
                op.forward(&x, [&weight, &bias], &mut y)
            },
        )
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
        self.launch(
            *p,
            [x, weight, dy],
            [dx, d_weight, d_bias],
            [],
            |op: &mut ConvTransposeGpu<f32>,
             [x, weight, dy],
             [mut dx, mut d_weight, mut d_bias],
             []| {
                op.backward([&x, &dy], &weight, &mut dx, [&mut d_weight, &mut d_bias])
            },
        )
    }

    fn relu_forward(&mut self, x: Tensor, y: Tensor) -> Result<()> {
        self.launch_unary((), x, y, |op: &mut ReluGpu<f32>, x, y| op.forward(x, y))
    }

    fn relu_backward(&mut self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        self.launch(
            (),
            [y, dy],
            [dx],
            [],
            |op: &mut ReluGpu<f32>, [y, dy], [mut dx], []| op.backward(&y, &dy, &mut dx),
        )
    }

    fn select_map_forward(
        &mut self,
        s: &MapShape,
        a: Tensor,
        indices: IndexTensor,
        out: Tensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [a],
            [out],
            [indices],
            |op: &mut MapSelectGpu<f32>, [a], [mut out], [indices]| {
                op.select_forward(&a, &indices, &mut out)
            },
        )
    }

    fn select_map_backward(
        &mut self,
        s: &MapShape,
        indices: IndexTensor,
        d_out: Tensor,
        da: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        self.launch(
            *s,
            [d_out],
            [da],
            [indices],
            |op: &mut MapSelectGpu<f32>, [d_out], [mut da], [indices]| {
                op.select_backward(&indices, &d_out, &mut da, accumulate)
            },
        )
    }

    fn mean_maps_forward(&mut self, s: &MapShape, a: Tensor, out: Tensor) -> Result<()> {
        self.launch_unary(*s, a, out, |op: &mut MapSelectGpu<f32>, a, out| {
            op.mean_forward(a, out)
        })
    }

    fn resize_bilinear_forward(&mut self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        self.launch_unary(*s, x, y, |op: &mut ResizeBilinearGpu<f32>, x, y| {
            op.forward(x, y)
        })
    }

    fn resize_bilinear_backward(&mut self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.launch_unary(*s, dy, dx, |op: &mut ResizeBilinearGpu<f32>, dy, dx| {
            op.backward(dy, dx)
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
        self.launch(
            *s,
            [u, x],
            [xf, u_max],
            [argmax],
            |op: &mut MaskGpu<f32>, [u, x], [mut xf, mut u_max], [mut argmax]| {
                op.forward(&u, &x, &mut xf, &mut u_max, &mut argmax)
            },
        )
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
        self.launch(
            *s,
            [u, x, dxf, u_max],
            [du],
            [argmax],
            |op: &mut MaskGpu<f32>, [u, x, dxf, u_max], [mut du], [argmax]| {
                op.backward(&u, &x, &dxf, &u_max, &argmax, &mut du)
            },
        )
    }
}

impl AugmentOps for CudaBackend {
    fn maps_by_mass(
        &mut self,
        s: &MapShape,
        a: Tensor,
        draws: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [a, draws],
            [],
            [indices],
            |op: &mut MapsByMassGpu<f32>, [a, draws], [], [mut indices]| {
                op.pick(&a, &draws, &mut indices)
            },
        )
    }

    fn attention_boxes(
        &mut self,
        s: &AugmentShape,
        padding: f64,
        maps: Tensor,
        thresholds: Tensor,
        boxes: IndexTensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [maps, thresholds],
            [],
            [boxes],
            |op: &mut AugmentGpu<f32>, [maps, thresholds], [], [mut boxes]| {
                op.attention_boxes(padding, &maps, &thresholds, &mut boxes)
            },
        )
    }

    fn crop_resize(
        &mut self,
        s: &AugmentShape,
        x: Tensor,
        boxes: IndexTensor,
        y: Tensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [x],
            [y],
            [boxes],
            |op: &mut AugmentGpu<f32>, [x], [mut y], [boxes]| op.crop_resize(&x, &boxes, &mut y),
        )
    }

    fn drop_mask(
        &mut self,
        s: &AugmentShape,
        maps: Tensor,
        thresholds: Tensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        self.launch(
            *s,
            [maps, thresholds, x],
            [y],
            [],
            |op: &mut AugmentGpu<f32>, [maps, thresholds, x], [mut y], []| {
                op.drop_mask(&maps, &thresholds, &x, &mut y)
            },
        )
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
