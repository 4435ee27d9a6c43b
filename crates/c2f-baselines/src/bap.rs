//! The benchmark baseline: cuBLAS strided-batched GEMMs for the pooling and for both input
//! gradients, with the signed square root, the normalisation and the pooled gradient as separate
//! kernels. It computes what [`BapGpu`] computes, so a test holds the two to the same answer.
//!
//! [`BapGpu`]: c2f_kernels::bap::BapGpu

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use c2f_kernels::bap::{
    launch_grad_dot, launch_normalize, per_part_chunks, per_part_grid, BapShape,
};
use c2f_kernels::cublas_raw::{self, blas_error};
use c2f_kernels::device::{grid, Gpu};
use c2f_kernels::element::Element;
use c2f_kernels::error::Result;
use c2f_kernels::launch;

pub struct BapCublas<T: Element> {
    shape: BapShape,
    k: BapBaselineKernels<T>,
    blas: CudaBlas,
    pooled: CudaSlice<T>,
    sumsq: CudaSlice<f32>,
    dot_partials: CudaSlice<f32>,
    pooled_grad: CudaSlice<T>,
}

c2f_kernels::kernel_set! {
    /// The baseline's own kernels and the fused forward's normalisation and dot product.
    struct BapBaselineKernels: c2f_kernels::sources::BAP;
    typed: bap_baseline_signed_sqrt, bap_normalize, bap_grad_dot, bap_baseline_grad_pooled;
}

impl<T: Element> BapCublas<T>
where
    CudaBlas: Gemm<T>,
{
    pub fn new(gpu: &Gpu, shape: BapShape) -> Result<Self> {
        shape.validate()?;
        Ok(BapCublas {
            shape,
            k: BapBaselineKernels::new(gpu)?,
            blas: cublas_raw::open(gpu.stream())?,
            pooled: gpu.alloc_zeros(shape.parts_len())?,
            sumsq: gpu.alloc_zeros(shape.batch)?,
            dot_partials: gpu.alloc_zeros(shape.batch * per_part_chunks(&shape))?,
            pooled_grad: gpu.alloc_zeros(shape.parts_len())?,
        })
    }

    fn batched(
        &self,
        gemm: GemmConfig<T>,
        stride_a: usize,
        stride_b: usize,
        stride_c: usize,
    ) -> StridedBatchedConfig<T> {
        StridedBatchedConfig {
            gemm,
            batch_size: self.shape.batch as i32,
            stride_a: stride_a as i64,
            stride_b: stride_b as i64,
            stride_c: stride_c as i64,
        }
    }

    /// Same contract as [`c2f_kernels::bap::BapGpu::forward`].
    pub fn forward(
        &mut self,
        [attention, features]: [&impl DevicePtr<T>; 2],
        parts: &mut impl DevicePtrMut<T>,
        norms: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let s = self.shape;
        s.check_forward(attention.len(), features.len(), parts.len(), norms.len())?;
        let (m, n, hw) = (s.maps, s.channels, s.hw());
        // Row-major P_b [M,N] = A_b F_bᵀ is column-major Pᵀ [N,M] = F_bᵀᵀ A_bᵀ.
        let gemm = GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: hw as i32,
            alpha: T::from_f32(1.0 / hw as f32),
            lda: hw as i32,
            ldb: hw as i32,
            beta: T::from_f32(0.0),
            ldc: n as i32,
        };
        let cfg = self.batched(gemm, n * hw, m * hw, m * n);
        let per_sample = grid((s.batch as u32, 1, 1), c2f_kernels::bap::THREADS);
        let mn = s.part_len() as i32;
        // SAFETY: the GEMM shapes and strides cover exactly the buffers of `shape`.
        unsafe {
            self.blas
                .gemm_strided_batched(cfg, features, attention, &mut self.pooled)
                .map_err(blas_error)?;
            launch!(self.k.bap_baseline_signed_sqrt, per_sample, [
                &self.pooled, out parts, &mut self.sumsq, &mn
            ])?;
        }
        launch_normalize(&self.k.bap_normalize, &s, parts, &self.sumsq, 1, norms)
    }

    /// Same contract as [`c2f_kernels::bap::BapGpu::backward`].
    pub fn backward(
        &mut self,
        [attention, features]: [&impl DevicePtr<T>; 2],
        (parts, norms): (&impl DevicePtr<T>, &impl DevicePtr<f32>),
        d_parts: &impl DevicePtr<T>,
        [d_attention, d_features]: [&mut impl DevicePtrMut<T>; 2],
    ) -> Result<()> {
        let s = self.shape;
        s.check_backward(
            [attention.len(), features.len(), parts.len(), norms.len()],
            [d_parts.len(), d_attention.len(), d_features.len()],
        )?;
        let (m, n, hw) = (s.maps, s.channels, s.hw());
        let (one, zero) = (T::from_f32(1.0), T::from_f32(0.0));
        // Column-major: dAᵀ [HW,M] = Fᵀ [HW,N] · Gᵀ [N,M].
        let da = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: hw as i32,
            n: m as i32,
            k: n as i32,
            alpha: one,
            lda: hw as i32,
            ldb: n as i32,
            beta: zero,
            ldc: hw as i32,
        };
        // Column-major: dFᵀ [HW,N] = Aᵀ [HW,M] · G [M,N].
        let df = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_T,
            m: hw as i32,
            n: n as i32,
            k: m as i32,
            alpha: one,
            lda: hw as i32,
            ldb: n as i32,
            beta: zero,
            ldc: hw as i32,
        };
        let da_cfg = self.batched(da, n * hw, m * n, m * hw);
        let df_cfg = self.batched(df, m * hw, m * n, n * hw);
        let (mn, hw_i) = (s.part_len() as i32, hw as i32);
        let chunks = per_part_chunks(&s) as i32;
        launch_grad_dot(
            &self.k.bap_grad_dot,
            &s,
            parts,
            d_parts,
            &mut self.dot_partials,
        )?;
        // SAFETY: the GEMM shapes and strides cover exactly the buffers of `shape`.
        unsafe {
            launch!(self.k.bap_baseline_grad_pooled, per_part_grid(&s), [
                in parts, in norms, &self.dot_partials, &chunks, in d_parts, &mut self.pooled_grad,
                &mn, &hw_i
            ])?;
            self.blas
                .gemm_strided_batched(da_cfg, features, &self.pooled_grad, d_attention)
                .map_err(blas_error)?;
            self.blas
                .gemm_strided_batched(df_cfg, attention, &self.pooled_grad, d_features)
                .map_err(blas_error)?;
        }
        Ok(())
    }
}
