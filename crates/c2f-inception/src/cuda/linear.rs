//! The `fc` layer through cuBLAS SGEMM: in true f32 (`CUBLAS_DEFAULT_MATH`), or on TF32 tensor
//! cores after [`LinearEngine::set_tf32`].
//!
//! Row-major `[rows, cols]` buffers are column-major `[cols, rows]` matrices to cuBLAS, so each
//! product below is written transposed. The bias is a GEMM too, against a vector of ones: the
//! forward broadcasts it (`Y = b·1ᵀ`, then `Y += W·X` with beta 1), the backward sums `dy` over
//! the batch (`db += dY·1`). cuBLAS GEMMs on one stream give the same bits on every run.

use std::sync::Arc;

use c2f_kernels::cublas_raw::{self, blas_error};
use c2f_kernels::device::{refuse_in_capture, ALLOCATES};
use c2f_kernels::{Error, Result};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use crate::backend::LinearShape;

fn c_int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("linear {what} {v} does not fit an i32")))
}

/// `(batch, inputs, outputs)` as cuBLAS takes them.
fn dims(s: &LinearShape) -> Result<(i32, i32, i32)> {
    Ok((
        c_int("batch", s.batch)?,
        c_int("inputs", s.inputs)?,
        c_int("outputs", s.outputs)?,
    ))
}

fn gemm(
    transa: bool,
    transb: bool,
    (m, n, k): (i32, i32, i32),
    (lda, ldb, ldc): (i32, i32, i32),
    beta: f32,
) -> GemmConfig<f32> {
    let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
    GemmConfig {
        transa: op(transa),
        transb: op(transb),
        m,
        n,
        k,
        alpha: 1.0,
        lda,
        ldb,
        beta,
        ldc,
    }
}

pub(crate) struct LinearEngine {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    /// At least `batch` ones, grown on first use of a larger batch.
    ones: Option<CudaSlice<f32>>,
    /// How many vectors of ones have been made: a graph captured before the last holds the
    /// address of a freed one.
    ones_made: usize,
}

impl LinearEngine {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<LinearEngine> {
        // `open` keeps the f32 GEMMs in f32 (no TF32).
        let blas = cublas_raw::open(stream)?;
        Ok(LinearEngine {
            blas,
            stream: stream.clone(),
            ones: None,
            ones_made: 0,
        })
    }

    pub(crate) fn ones_made(&self) -> usize {
        self.ones_made
    }

    /// Lets the GEMMs use TF32 tensor cores, or keeps them in f32.
    pub(crate) fn set_tf32(&mut self, tf32: bool) -> Result<()> {
        cublas_raw::set_tf32(&self.blas, tf32)
    }

    /// A vector of at least `n` ones.
    fn ones(&mut self, n: usize) -> Result<()> {
        if self.ones.as_ref().is_none_or(|o| o.len() < n) {
            refuse_in_capture(&self.stream, "making the fc's vector of ones", ALLOCATES)?;
            self.ones = Some(self.stream.clone_htod(&vec![1.0f32; n])?);
            self.ones_made += 1;
        }
        Ok(())
    }

    /// `y = x·Wᵀ + b`. The caller checked the lengths against `s`.
    pub(crate) fn forward(
        &mut self,
        s: &LinearShape,
        x: &impl DevicePtr<f32>,
        w: &impl DevicePtr<f32>,
        b: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let (batch, inputs, outputs) = dims(s)?;
        self.ones(s.batch)?;
        let ones = self.ones.as_ref().expect("made above");
        // SAFETY: every operand holds what its matrix shape and leading dimension address
        // (lengths checked by the caller against `s`; `ones` holds at least `batch`).
        unsafe {
            // Yᶜ [outputs, batch] = b [outputs, 1] · 1ᵀ [1, batch].
            let bias = gemm(
                false,
                false,
                (outputs, batch, 1),
                (outputs, 1, outputs),
                0.0,
            );
            self.blas.gemm(bias, b, ones, y).map_err(blas_error)?;
            // Yᶜ += Wᶜᵀ · Xᶜ, with Wᶜ [inputs, outputs] and Xᶜ [inputs, batch].
            let product = gemm(
                true,
                false,
                (outputs, batch, inputs),
                (inputs, inputs, outputs),
                1.0,
            );
            self.blas.gemm(product, w, x, y).map_err(blas_error)?;
        }
        Ok(())
    }

    /// `dx = dy·W` (assigned), `dw += dyᵀ·x`, `db += Σ dy`. The caller checked the lengths.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &mut self,
        s: &LinearShape,
        x: &impl DevicePtr<f32>,
        w: &impl DevicePtr<f32>,
        dy: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
        dw: &mut impl DevicePtrMut<f32>,
        db: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let (batch, inputs, outputs) = dims(s)?;
        self.ones(s.batch)?;
        let ones = self.ones.as_ref().expect("made above");
        // SAFETY: as in `forward`.
        unsafe {
            // dXᶜ [inputs, batch] = Wᶜ [inputs, outputs] · dYᶜ [outputs, batch].
            let data = gemm(
                false,
                false,
                (inputs, batch, outputs),
                (inputs, outputs, inputs),
                0.0,
            );
            self.blas.gemm(data, w, dy, dx).map_err(blas_error)?;
            // dWᶜ [inputs, outputs] += Xᶜ [inputs, batch] · dYᶜᵀ [batch, outputs].
            let weight = gemm(
                false,
                true,
                (inputs, outputs, batch),
                (inputs, outputs, inputs),
                1.0,
            );
            self.blas.gemm(weight, x, dy, dw).map_err(blas_error)?;
            // db [outputs, 1] += dYᶜ [outputs, batch] · 1 [batch, 1].
            let bias = gemm(
                false,
                false,
                (outputs, 1, batch),
                (outputs, batch, outputs),
                1.0,
            );
            self.blas.gemm(bias, dy, ones, db).map_err(blas_error)?;
        }
        Ok(())
    }
}
