//! The CUDA backend's [`NetworkOps`]: convolutions through cuDNN ([`super::conv`]), the `fc`
//! through cuBLAS ([`super::linear`]), batch norm, pooling and concat/split through the
//! kernels' launchers.

use c2f_kernels::batch_norm::{BatchNormGpu, BatchNormParams, BatchNormShape};
use c2f_kernels::error::check_len;
use c2f_kernels::pool::{
    AvgPool2dGpu, ChannelCopyGpu, ChannelSlice, GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams,
    PoolShape,
};
use c2f_kernels::{Error, Result};

use super::launch::BnKey;
use super::CudaBackend;
use crate::backend::{BnMode, BnParams, BnStats, IndexTensor, LinearShape, NetworkOps, Tensor};
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
                    op.forward_train(
                        &x,
                        &gamma,
                        &beta,
                        &mut running_mean,
                        &mut running_var,
                        &mut y,
                        &mut mean,
                        &mut invstd,
                    )
                },
            ),
            BnMode::Inference => self.launch(
                key,
                [x, bn.gamma, bn.beta, bn.running_mean, bn.running_var],
                [y],
                [],
                |op: &mut BatchNormGpu<f32>, [x, gamma, beta, mean, var], [mut y], []| {
                    op.forward_inference(&x, &gamma, &beta, &mean, &var, &mut y)
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
                let (x, y, gamma, mean, invstd, dy) = (&x, &y, &gamma, &mean, &invstd, &dy);
                let (dx, dgamma, dbeta) = (&mut dx, &mut dgamma, &mut dbeta);
                match mode {
                    BnMode::Train => {
                        op.backward_train(x, y, gamma, mean, invstd, dy, dx, dgamma, dbeta)
                    }
                    BnMode::Inference => {
                        op.backward_inference(x, y, gamma, mean, invstd, dy, dx, dgamma, dbeta)
                    }
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
        self.launch(
            (*s, *p),
            [x],
            [y],
            [],
            |op: &mut AvgPool2dGpu<f32>, [x], [mut y], []| op.forward(&x, &mut y),
        )
    }

    fn avg_pool_backward(
        &mut self,
        s: &PoolShape,
        p: &Pool2dParams,
        dy: Tensor,
        dx: Tensor,
    ) -> Result<()> {
        self.launch(
            (*s, *p),
            [dy],
            [dx],
            [],
            |op: &mut AvgPool2dGpu<f32>, [dy], [mut dx], []| op.backward(&dy, &mut dx),
        )
    }

    fn global_avg_pool_forward(&mut self, s: &PoolShape, x: Tensor, y: Tensor) -> Result<()> {
        self.launch(
            *s,
            [x],
            [y],
            [],
            |op: &mut GlobalAvgPoolGpu<f32>, [x], [mut y], []| op.forward(&x, &mut y),
        )
    }

    fn global_avg_pool_backward(&mut self, s: &PoolShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.launch(
            *s,
            [dy],
            [dx],
            [],
            |op: &mut GlobalAvgPoolGpu<f32>, [dy], [mut dx], []| op.backward(&dy, &mut dx),
        )
    }

    fn copy_channels(&mut self, s: &ChannelSlice, part: Tensor, whole: Tensor) -> Result<()> {
        self.launch(
            (),
            [part],
            [whole],
            [],
            |op: &mut ChannelCopyGpu<f32>, [part], [mut whole], []| {
                op.copy_channels(s, &part, &mut whole)
            },
        )
    }

    fn slice_channels(&mut self, s: &ChannelSlice, whole: Tensor, part: Tensor) -> Result<()> {
        self.launch(
            (),
            [whole],
            [part],
            [],
            |op: &mut ChannelCopyGpu<f32>, [whole], [mut part], []| {
                op.slice_channels(s, &whole, &mut part)
            },
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
