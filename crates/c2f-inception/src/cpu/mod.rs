//! The CPU backend: host buffers, the convolution and `fc` here, every other op from
//! `c2f-kernels`' CPU references (which are those ops' CPU implementations).

pub mod conv;

use c2f_kernels::augment::{self, AugmentShape};
use c2f_kernels::axpby::axpby_cpu;
use c2f_kernels::bap::{self, BapShape};
use c2f_kernels::batch_norm::{self, BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{self, CenterLossShape, CenterUpdate};
use c2f_kernels::concat::{self, ChannelSlice};
use c2f_kernels::conv_transpose::{self, ConvTransposeParams};
use c2f_kernels::dropout::{self, DropoutParams};
use c2f_kernels::error::check_len;
use c2f_kernels::map_select::{self, MapShape};
use c2f_kernels::mask::{self, MaskShape};
use c2f_kernels::pool::{self, Pool2dParams, PoolShape};
use c2f_kernels::relu;
use c2f_kernels::resize::{self, ResizeShape};
use c2f_kernels::sgd::{self, SgdParams};
use c2f_kernels::sigmoid_bce::{self, SigmoidBceShape};
use c2f_kernels::softmax_ce::{self, SoftmaxCeShape};
use c2f_kernels::{Real, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};

use crate::backend::{
    check_operands, AugmentOps, BnMode, BnParams, BnStats, Buffers, Coarse2FineOps, IndexTensor,
    LinearShape, NetworkOps, Tensor, TrainingOps,
};
use crate::precision::Precision;
use conv::Conv2dShape;

/// Host buffers of `R`: f32 for training, f64 for the golden test.
#[derive(Debug, Default)]
pub struct CpuBackend<R: Real = f32> {
    bufs: Vec<Vec<R>>,
    index_bufs: Vec<Vec<i32>>,
}

/// Checked access to several operands of one op at once: inputs shared, outputs exclusive.
/// [`CpuBackend::operands`] refuses outputs that overlap any other operand, which is what makes
/// handing out `&mut` slices of one backend's buffers together sound.
struct Operands<'a, R: Real> {
    bufs: Vec<(*mut R, usize)>,
    index_bufs: Vec<(*mut i32, usize)>,
    _backend: std::marker::PhantomData<&'a mut CpuBackend<R>>,
}

impl<'a, R: Real> Operands<'a, R> {
    fn slice(&self, t: Tensor) -> (*mut R, usize) {
        let (ptr, len) = self.bufs[t.buf];
        assert!(t.offset + t.len <= len, "checked by CpuBackend::operands");
        // SAFETY: in bounds, checked above.
        (unsafe { ptr.add(t.offset) }, t.len)
    }

    fn input(&self, t: Tensor) -> &'a [R] {
        let (ptr, len) = self.slice(t);
        // SAFETY: in bounds, and no output of this call overlaps it (checked in `operands`).
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    fn output(&self, t: Tensor) -> &'a mut [R] {
        let (ptr, len) = self.slice(t);
        // SAFETY: in bounds, and it overlaps no other operand of this call (checked in
        // `operands`), and each output is handed out once per call by the ops below.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    fn index(&self, t: IndexTensor) -> &'a mut [i32] {
        let (ptr, len) = self.index_bufs[t.buf];
        assert!(t.offset + t.len <= len, "checked by CpuBackend::operands");
        // SAFETY: in bounds; index tensors are single operands of their calls.
        unsafe { std::slice::from_raw_parts_mut(ptr.add(t.offset), t.len) }
    }
}

impl<R: Real> CpuBackend<R> {
    pub fn new() -> Self {
        CpuBackend {
            bufs: Vec::new(),
            index_bufs: Vec::new(),
        }
    }

    fn operands(
        &mut self,
        inputs: &[Tensor],
        outputs: &[Tensor],
        index: &[IndexTensor],
    ) -> Result<Operands<'_, R>> {
        check_operands(
            |b| self.bufs.get(b).map(Vec::len),
            |b| self.index_bufs.get(b).map(Vec::len),
            inputs,
            outputs,
            index,
        )?;
        Ok(Operands {
            bufs: self
                .bufs
                .iter_mut()
                .map(|b| (b.as_mut_ptr(), b.len()))
                .collect(),
            index_bufs: self
                .index_bufs
                .iter_mut()
                .map(|b| (b.as_mut_ptr(), b.len()))
                .collect(),
            _backend: std::marker::PhantomData,
        })
    }
}

impl<R: Real> Buffers for CpuBackend<R> {
    type Scalar = R;

    fn describe(&self) -> String {
        format!(
            "cpu {} ({} threads)",
            self.precision(),
            rayon::current_num_threads()
        )
    }

    fn precision(&self) -> Precision {
        // `Real` is f32 or f64.
        match std::mem::size_of::<R>() {
            4 => Precision::F32,
            _ => Precision::F64,
        }
    }

    fn alloc(&mut self, len: usize) -> Result<Tensor> {
        self.bufs.push(vec![R::zero(); len]);
        Ok(Tensor {
            buf: self.bufs.len() - 1,
            offset: 0,
            len,
        })
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexTensor> {
        self.index_bufs.push(vec![0; len]);
        Ok(IndexTensor {
            buf: self.index_bufs.len() - 1,
            offset: 0,
            len,
        })
    }

    fn allocated_bytes(&self) -> usize {
        std::mem::size_of::<R>() * self.bufs.iter().map(Vec::len).sum::<usize>()
            + 4 * self.index_bufs.iter().map(Vec::len).sum::<usize>()
    }

    fn write(&mut self, dst: Tensor, src: &[R]) -> Result<()> {
        c2f_kernels::error::check_len("write source", src.len(), dst.len)?;
        self.operands(&[], &[dst], &[])?
            .output(dst)
            .copy_from_slice(src);
        Ok(())
    }

    fn read(&mut self, src: Tensor) -> Result<Vec<R>> {
        Ok(self.operands(&[src], &[], &[])?.input(src).to_vec())
    }

    fn read_index(&mut self, src: IndexTensor) -> Result<Vec<i32>> {
        Ok(self.operands(&[], &[], &[src])?.index(src).to_vec())
    }

    fn write_index(&mut self, dst: IndexTensor, src: &[i32]) -> Result<()> {
        c2f_kernels::error::check_len("index write source", src.len(), dst.len)?;
        self.operands(&[], &[], &[dst])?
            .index(dst)
            .copy_from_slice(src);
        Ok(())
    }

    fn fill(&mut self, dst: Tensor, value: R) -> Result<()> {
        self.operands(&[], &[dst], &[])?.output(dst).fill(value);
        Ok(())
    }
}

impl<R: Real> NetworkOps for CpuBackend<R> {
    fn conv2d_forward(&mut self, s: &Conv2dShape, x: Tensor, w: Tensor, y: Tensor) -> Result<()> {
        let m = self.operands(&[x, w], &[y], &[])?;
        conv::forward(s, m.input(x), m.input(w), m.output(y))
    }

    fn conv2d_backward_data(
        &mut self,
        s: &Conv2dShape,
        dy: Tensor,
        w: Tensor,
        dx: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let m = self.operands(&[dy, w], &[dx], &[])?;
        conv::backward_data(s, m.input(dy), m.input(w), m.output(dx), accumulate)
    }

    fn conv2d_backward_filter(
        &mut self,
        s: &Conv2dShape,
        x: Tensor,
        dy: Tensor,
        dw: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[x, dy], &[dw], &[])?;
        conv::backward_filter(s, m.input(x), m.input(dy), m.output(dw))
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
        match mode {
            BnMode::Train => {
                let m = self.operands(
                    &[x, bn.gamma, bn.beta],
                    &[bn.running_mean, bn.running_var, y, saved.mean, saved.invstd],
                    &[],
                )?;
                let affine = [m.input(bn.gamma), m.input(bn.beta)];
                let running = [m.output(bn.running_mean), m.output(bn.running_var)];
                let saved = [m.output(saved.mean), m.output(saved.invstd)];
                batch_norm::forward_train_cpu(s, p, m.input(x), affine, running, m.output(y), saved)
            }
            BnMode::Inference => {
                let m = self.operands(
                    &[x, bn.gamma, bn.beta, bn.running_mean, bn.running_var],
                    &[y],
                    &[],
                )?;
                let affine = [m.input(bn.gamma), m.input(bn.beta)];
                let running = [m.input(bn.running_mean), m.input(bn.running_var)];
                batch_norm::forward_inference_cpu(s, p, m.input(x), affine, running, m.output(y))
            }
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
        let m = self.operands(
            &[x, y, bn.gamma, mean, invstd, dy],
            &[dx, dgamma, dbeta],
            &[],
        )?;
        let backward = match mode {
            BnMode::Train => batch_norm::backward_train_cpu::<R>,
            BnMode::Inference => batch_norm::backward_inference_cpu::<R>,
        };
        let xs = [m.input(x), m.input(y), m.input(dy)];
        let (stats, grads) = (
            [m.input(mean), m.input(invstd)],
            [m.output(dgamma), m.output(dbeta)],
        );
        backward(s, p, xs, m.input(bn.gamma), stats, m.output(dx), grads)
    }

    fn max_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        let m = self.operands(&[x], &[y], &[indices])?;
        pool::max_pool2d_forward_cpu(s, p, m.input(x), m.output(y), m.index(indices))
    }

    fn max_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        indices: IndexTensor,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[dy], &[dx], &[indices])?;
        pool::max_pool2d_backward_cpu(s, p, m.index(indices), m.input(dy), m.output(dx))
    }

    fn avg_pool_forward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[x], &[y], &[])?;
        pool::avg_pool2d_forward_cpu(s, p, m.input(x), m.output(y))
    }

    fn avg_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[dy], &[dx], &[])?;
        pool::avg_pool2d_backward_cpu(s, p, m.input(dy), m.output(dx))
    }

    fn global_avg_pool_forward(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()> {
        let m = self.operands(&[x], &[y], &[])?;
        pool::global_avg_pool_forward_cpu(s, m.input(x), m.output(y))
    }

    fn global_avg_pool_backward(&mut self, s: &PoolShape, dy: Tensor, dx: Tensor) -> Result<()> {
        let m = self.operands(&[dy], &[dx], &[])?;
        pool::global_avg_pool_backward_cpu(s, m.input(dy), m.output(dx))
    }

    fn copy_channels(&mut self, s: &ChannelSlice, part: Tensor, whole: Tensor) -> Result<()> {
        let m = self.operands(&[part], &[whole], &[])?;
        concat::copy_channels_cpu(s, m.input(part), m.output(whole))
    }

    fn slice_channels(&mut self, s: &ChannelSlice, whole: Tensor, part: Tensor) -> Result<()> {
        let m = self.operands(&[whole], &[part], &[])?;
        concat::slice_channels_cpu(s, m.input(whole), m.output(part))
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
        let m = self.operands(&[x, w, b], &[y], &[])?;
        let xv = ArrayView2::from_shape((s.batch, s.inputs), m.input(x)).unwrap();
        let wv = ArrayView2::from_shape((s.outputs, s.inputs), m.input(w)).unwrap();
        let mut yv = ArrayViewMut2::from_shape((s.batch, s.outputs), m.output(y)).unwrap();
        let bias = ndarray::ArrayView1::from(m.input(b));
        yv.axis_iter_mut(Axis(0))
            .for_each(|mut row| row.assign(&bias));
        general_mat_mul(R::one(), &xv, &wv.t(), R::one(), &mut yv);
        Ok(())
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
        c2f_kernels::error::check_len("linear dx", dx.len, s.batch * s.inputs)?;
        c2f_kernels::error::check_len("linear dw", dw.len, s.outputs * s.inputs)?;
        let m = self.operands(&[x, w, dy], &[dx, dw, db], &[])?;
        let xv = ArrayView2::from_shape((s.batch, s.inputs), m.input(x)).unwrap();
        let wv = ArrayView2::from_shape((s.outputs, s.inputs), m.input(w)).unwrap();
        let dyv = ArrayView2::from_shape((s.batch, s.outputs), m.input(dy)).unwrap();
        let mut dxv = ArrayViewMut2::from_shape((s.batch, s.inputs), m.output(dx)).unwrap();
        general_mat_mul(R::one(), &dyv, &wv, R::zero(), &mut dxv);
        let mut dwv = ArrayViewMut2::from_shape((s.outputs, s.inputs), m.output(dw)).unwrap();
        general_mat_mul(R::one(), &dyv.t(), &xv, R::one(), &mut dwv);
        let db = m.output(db);
        for row in dyv.axis_iter(Axis(0)) {
            for (d, &g) in db.iter_mut().zip(row.iter()) {
                *d = *d + g;
            }
        }
        Ok(())
    }
}

/// `[loss, correct answers]` into a loss op's 2-value stats slot.
fn write_stats<R: Real>(stats: &mut [R], loss: R, correct: usize) {
    stats[0] = loss;
    stats[1] = R::from_f64(correct as f64);
}

impl<R: Real> TrainingOps for CpuBackend<R> {
    fn dropout_forward(
        &mut self,
        p: &DropoutParams,
        step: IndexTensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        check_len("dropout step slot", step.len, 2)?;
        let m = self.operands(&[x], &[y], &[step])?;
        let step = dropout::step_from_words([m.index(step)[0], m.index(step)[1]]);
        dropout::dropout_forward_cpu(p, step, m.input(x), m.output(y))
    }

    /// The forward's op on `dy`: the same mask, the same scale.
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
        check_len("softmax CE stats", stats.len, 2)?;
        let m = self.operands(&[logits], &[dlogits, stats], &[labels, predictions])?;
        let loss = softmax_ce::forward_backward_cpu(
            s,
            m.input(logits),
            m.index(labels),
            loss_scale,
            m.index(predictions),
            m.output(dlogits),
        )?;
        let (predicted, labels) = (m.index(predictions), m.index(labels));
        let correct = predicted
            .iter()
            .zip(&*labels)
            .filter(|(p, l)| p == l)
            .count();
        write_stats(m.output(stats), loss, correct);
        Ok(())
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
        check_len("sigmoid BCE stats", stats.len, 2)?;
        let m = self.operands(&[logits, targets], &[dlogits, stats], &[predictions])?;
        let loss = sigmoid_bce::forward_backward_cpu(
            s,
            m.input(logits),
            m.input(targets),
            loss_scale,
            m.index(predictions),
            m.output(dlogits),
        )?;
        let (predicted, targets) = (m.index(predictions), m.input(targets));
        let correct = predicted
            .iter()
            .zip(targets)
            .filter(|(&p, &t)| R::from_f64(p as f64) == t)
            .count();
        write_stats(m.output(stats), loss, correct);
        Ok(())
    }

    fn sgd_step(
        &mut self,
        p: &SgdParams,
        lr: Tensor,
        weights: Tensor,
        grads: Tensor,
        momentum: Tensor,
    ) -> Result<()> {
        check_len("SGD learning rate slot", lr.len, 1)?;
        let m = self.operands(&[grads, lr], &[weights, momentum], &[])?;
        let lr = m.input(lr)[0];
        sgd::step_cpu(p, lr, m.output(weights), m.input(grads), m.output(momentum))
    }

    fn axpby(&mut self, alpha: f64, x: Tensor, beta: f64, y: Tensor) -> Result<()> {
        let m = self.operands(&[x], &[y], &[])?;
        axpby_cpu(alpha, m.input(x), beta, m.output(y))
    }
}

impl<R: Real> Coarse2FineOps for CpuBackend<R> {
    fn bap_forward(
        &mut self,
        s: &BapShape,
        attention: Tensor,
        features: Tensor,
        parts: Tensor,
        norms: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[attention, features], &[parts, norms], &[])?;
        let inputs = [m.input(attention), m.input(features)];
        bap::forward_cpu(s, inputs, m.output(parts), m.output(norms))
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
        let m = self.operands(
            &[attention, features, parts, norms, d_parts],
            &[d_attention, d_features],
            &[],
        )?;
        let inputs = [m.input(attention), m.input(features)];
        let forward = (m.input(parts), m.input(norms));
        let grads = [m.output(d_attention), m.output(d_features)];
        bap::backward_cpu(s, inputs, forward, m.input(d_parts), grads)
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
        check_len("center loss stats", loss.len, 1)?;
        check_len("center loss scales slot", scales.len, 2)?;
        let m = self.operands(&[features, scales], &[centers, d_features, loss], &[labels])?;
        let scales = [m.input(scales)[0], m.input(scales)[1]];
        m.output(loss)[0] = center_loss::forward_update_scaled_cpu(
            s,
            update,
            scales,
            m.input(features),
            m.index(labels),
            (m.output(centers), m.output(d_features)),
        )?;
        Ok(())
    }

    fn conv_transpose_forward(
        &mut self,
        p: &ConvTransposeParams,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        y: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[x, weight, bias], &[y], &[])?;
        let params = [m.input(weight), m.input(bias)];
        conv_transpose::forward_cpu(p, m.input(x), params, m.output(y))
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
        let m = self.operands(&[x, weight, dy], &[dx, d_weight, d_bias], &[])?;
        let (xs, grads) = (
            [m.input(x), m.input(dy)],
            [m.output(d_weight), m.output(d_bias)],
        );
        conv_transpose::backward_cpu(p, xs, m.input(weight), m.output(dx), grads)
    }

    fn relu_forward(&mut self, x: Tensor, y: Tensor) -> Result<()> {
        let m = self.operands(&[x], &[y], &[])?;
        relu::relu_forward_cpu(m.input(x), m.output(y))
    }

    fn relu_backward(&mut self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        let m = self.operands(&[y, dy], &[dx], &[])?;
        relu::relu_backward_cpu(m.input(y), m.input(dy), m.output(dx))
    }

    fn select_map_forward(
        &mut self,
        s: &MapShape,
        a: Tensor,
        indices: IndexTensor,
        out: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[a], &[out], &[indices])?;
        map_select::select_map_forward_cpu(s, m.input(a), m.index(indices), m.output(out))
    }

    fn select_map_backward(
        &mut self,
        s: &MapShape,
        indices: IndexTensor,
        d_out: Tensor,
        da: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let m = self.operands(&[d_out], &[da], &[indices])?;
        map_select::select_map_backward_cpu(
            s,
            m.index(indices),
            m.input(d_out),
            m.output(da),
            accumulate,
        )
    }

    fn mean_maps_forward(&mut self, s: &MapShape, a: Tensor, out: Tensor) -> Result<()> {
        let m = self.operands(&[a], &[out], &[])?;
        map_select::mean_maps_forward_cpu(s, m.input(a), m.output(out))
    }

    fn resize_bilinear_forward(&mut self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        let m = self.operands(&[x], &[y], &[])?;
        resize::resize_bilinear_forward_cpu(s, m.input(x), m.output(y))
    }

    fn resize_bilinear_backward(&mut self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        let m = self.operands(&[dy], &[dx], &[])?;
        resize::resize_bilinear_backward_cpu(s, m.input(dy), m.output(dx))
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
        let m = self.operands(&[u, x], &[xf, u_max], &[argmax])?;
        mask::mask_forward_cpu(
            s,
            m.input(u),
            m.input(x),
            m.output(xf),
            m.output(u_max),
            m.index(argmax),
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
        let m = self.operands(&[u, x, dxf, u_max], &[du], &[argmax])?;
        mask::mask_backward_cpu(
            s,
            m.input(u),
            m.input(x),
            m.input(dxf),
            m.input(u_max),
            m.index(argmax),
            m.output(du),
            None,
        )
    }
}

impl<R: Real> AugmentOps for CpuBackend<R> {
    fn maps_by_mass(
        &mut self,
        s: &MapShape,
        a: Tensor,
        draws: Tensor,
        indices: IndexTensor,
    ) -> Result<()> {
        let m = self.operands(&[a, draws], &[], &[indices])?;
        augment::maps_by_mass_cpu(s, m.input(a), m.input(draws), m.index(indices))
    }

    fn attention_boxes(
        &mut self,
        s: &AugmentShape,
        padding: f64,
        maps: Tensor,
        thresholds: Tensor,
        boxes: IndexTensor,
    ) -> Result<()> {
        let m = self.operands(&[maps, thresholds], &[], &[boxes])?;
        let (maps, thresholds) = (m.input(maps), m.input(thresholds));
        augment::attention_boxes_cpu(s, padding, maps, thresholds, m.index(boxes))
    }

    fn crop_resize(
        &mut self,
        s: &AugmentShape,
        x: Tensor,
        boxes: IndexTensor,
        y: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[x], &[y], &[boxes])?;
        augment::crop_resize_cpu(s, m.input(x), m.index(boxes), m.output(y))
    }

    fn drop_mask(
        &mut self,
        s: &AugmentShape,
        maps: Tensor,
        thresholds: Tensor,
        x: Tensor,
        y: Tensor,
    ) -> Result<()> {
        let m = self.operands(&[maps, thresholds, x], &[y], &[])?;
        let (maps, thresholds) = (m.input(maps), m.input(thresholds));
        augment::drop_mask_cpu(s, maps, thresholds, m.input(x), m.output(y))
    }
}
