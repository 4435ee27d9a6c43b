//! The CUDA backend's [`Coarse2FineOps`], each through its kernel launcher.

use c2f_kernels::bap::{BapGpu, BapShape};
use c2f_kernels::center_loss::{CenterLossGpu, CenterLossParams, CenterLossShape};
use c2f_kernels::conv_transpose::{ConvTransposeGpu, ConvTransposeParams};
use c2f_kernels::mask::{
    MapSelectGpu, MapShape, MaskGpu, MaskShape, ReluGpu, ResizeBilinearGpu, ResizeShape,
};
use c2f_kernels::Result;

use super::CudaBackend;
use crate::backend::{Coarse2FineOps, IndexTensor, Tensor};

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
                op.forward(&attention, &features, &mut parts, &mut norms)
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
                op.backward(
                    &attention,
                    &features,
                    &parts,
                    &norms,
                    &d_parts,
                    &mut d_attention,
                    &mut d_features,
                )
            },
        )
    }

    fn center_loss(
        &mut self,
        s: &CenterLossShape,
        p: &CenterLossParams,
        features: Tensor,
        labels: IndexTensor,
        centers: Tensor,
        d_features: Tensor,
    ) -> Result<f64> {
        let loss = self.launch(
            *s,
            [features],
            [centers, d_features],
            [labels],
            |op: &mut CenterLossGpu<f32>, [features], [mut centers, mut d_features], [labels]| {
                op.forward_update(p, &features, &labels, &mut centers, &mut d_features)
            },
        )?;
        Ok(loss as f64)
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
                op.forward(&x, &weight, &bias, &mut y)
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
             []| { op.backward(&x, &weight, &dy, &mut dx, &mut d_weight, &mut d_bias) },
        )
    }

    fn relu_forward(&mut self, x: Tensor, y: Tensor) -> Result<()> {
        self.launch(
            (),
            [x],
            [y],
            [],
            |op: &mut ReluGpu<f32>, [x], [mut y], []| op.forward(&x, &mut y),
        )
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
        self.launch(
            *s,
            [a],
            [out],
            [],
            |op: &mut MapSelectGpu<f32>, [a], [mut out], []| op.mean_forward(&a, &mut out),
        )
    }

    fn resize_bilinear_forward(&mut self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        self.launch(
            *s,
            [x],
            [y],
            [],
            |op: &mut ResizeBilinearGpu<f32>, [x], [mut y], []| op.forward(&x, &mut y),
        )
    }

    fn resize_bilinear_backward(&mut self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        self.launch(
            *s,
            [dy],
            [dx],
            [],
            |op: &mut ResizeBilinearGpu<f32>, [dy], [mut dx], []| op.backward(&dy, &mut dx),
        )
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
