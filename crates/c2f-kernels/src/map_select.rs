//! The fine branch's attention-map choice, `A [B, M, h, w] → S [B, 1, h, w]`, NCHW contiguous:
//! training takes one map per sample, `S[b] = A[b, k_b]` with `k_b` in `[0, M)`, an `i32`; its
//! backward writes `dS` into map `k_b` of `dA`, either assigning (zeros in the other maps) or
//! accumulating (`dA[b, k_b] += dS[b]`, the other maps untouched) for a caller that already holds
//! a gradient of `A`. Inference takes the mean, `S[b] = (1/M) Σ_m A[b, m]` (summed in map order),
//! backward `dA[b, m] = dS[b]/M` (assigned).
//!
//! Every result is the same bits on every run (fixed-order sums, no float atomics). Kernels:
//! `kernels/map_select.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use rayon::prelude::*;

use crate::device::{elementwise, Gpu};
use crate::element::Element;
use crate::error::{check_dims, check_len, Error, Result};
use crate::launch;
use crate::Real;

/// Attention maps `A [B, M, h, w]`; the chosen (or mean) map is `S [B, 1, h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapShape {
    pub batch: usize,
    pub maps: usize,
    pub height: usize,
    pub width: usize,
}

impl MapShape {
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Elements of `A`, B·M·h·w.
    pub fn maps_len(&self) -> usize {
        self.batch * self.maps * self.hw()
    }
    /// Elements of `S`, B·h·w.
    pub fn map_len(&self) -> usize {
        self.batch * self.hw()
    }

    /// Refuses a zero dimension or an `A` beyond 32-bit indexing.
    pub fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.maps, self.height, self.width];
        check_dims("attention map", self, &dims)
    }

    fn device(&self) -> MapGeom {
        // Each fits an i32: `validate` bounds their product.
        MapGeom {
            batch: self.batch as i32,
            maps: self.maps as i32,
            hw: self.hw() as i32,
        }
    }
}

/// `MapGeom` in `kernels/map_select.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MapGeom {
    batch: i32,
    maps: i32,
    hw: i32,
}

// SAFETY: a `#[repr(C)]` struct of three `i32`, the layout of `MapGeom` in the kernel file.
unsafe impl DeviceRepr for MapGeom {}

/// Fails with an [`Error::Shape`] naming the first sample whose map index is outside `[0, maps)`.
/// The CPU functions call it; check the indices with it before uploading them for the GPU, whose
/// kernels only guard against them (see [`MapSelectGpu`]).
pub fn check_map_indices(indices: &[i32], maps: usize) -> Result<()> {
    match indices.iter().position(|&k| k < 0 || k as usize >= maps) {
        Some(b) => Err(Error::Shape(format!(
            "attention map index {} of sample {b} is outside [0, {maps})",
            indices[b]
        ))),
        None => Ok(()),
    }
}

fn check_select(s: &MapShape, indices: usize, maps: usize, map: usize) -> Result<()> {
    s.validate()?;
    check_len("map choice indices", indices, s.batch)?;
    check_len("map choice A", maps, s.maps_len())?;
    check_len("map choice S", map, s.map_len())
}

/// CPU map choice forward: `S[b] = A[b, k_b]`.
pub fn select_map_forward_cpu<R: Real>(
    shape: &MapShape,
    a: &[R],
    indices: &[i32],
    s: &mut [R],
) -> Result<()> {
    check_select(shape, indices.len(), a.len(), s.len())?;
    check_map_indices(indices, shape.maps)?;
    let hw = shape.hw();
    s.par_chunks_mut(hw)
        .zip(a.par_chunks(shape.maps * hw))
        .zip(indices.par_iter())
        .for_each(|((s, a), &k)| s.copy_from_slice(&a[k as usize * hw..][..hw]));
    Ok(())
}

/// CPU map choice backward: `dA[b, k_b] = dS[b]` and zeros elsewhere, or with `accumulate`
/// `dA[b, k_b] += dS[b]` and the other maps untouched.
pub fn select_map_backward_cpu<R: Real>(
    shape: &MapShape,
    indices: &[i32],
    ds: &[R],
    da: &mut [R],
    accumulate: bool,
) -> Result<()> {
    check_select(shape, indices.len(), da.len(), ds.len())?;
    check_map_indices(indices, shape.maps)?;
    let hw = shape.hw();
    da.par_chunks_mut(shape.maps * hw)
        .zip(ds.par_chunks(hw))
        .zip(indices.par_iter())
        .for_each(|((da, ds), &k)| {
            if !accumulate {
                da.fill(R::zero());
            }
            for (d, &g) in da[k as usize * hw..][..hw].iter_mut().zip(ds) {
                *d = if accumulate { *d + g } else { g };
            }
        });
    Ok(())
}

fn check_mean(s: &MapShape, maps: usize, map: usize) -> Result<()> {
    s.validate()?;
    check_len("map mean A", maps, s.maps_len())?;
    check_len("map mean S", map, s.map_len())
}

/// CPU map mean forward (inference): `S[b] = (Σ_m A[b, m])/M`, summed in map order.
pub fn mean_maps_forward_cpu<R: Real>(shape: &MapShape, a: &[R], s: &mut [R]) -> Result<()> {
    check_mean(shape, a.len(), s.len())?;
    let (hw, m) = (shape.hw(), R::from_f64(shape.maps as f64));
    s.par_chunks_mut(hw)
        .zip(a.par_chunks(shape.maps * hw))
        .for_each(|(s, a)| {
            s.fill(R::zero());
            for map in a.chunks(hw) {
                for (s, &v) in s.iter_mut().zip(map) {
                    *s = *s + v;
                }
            }
            s.iter_mut().for_each(|s| *s = *s / m);
        });
    Ok(())
}

/// CPU map mean backward: `dA[b, m] = dS[b]/M` (assigned).
pub fn mean_maps_backward_cpu<R: Real>(shape: &MapShape, ds: &[R], da: &mut [R]) -> Result<()> {
    check_mean(shape, da.len(), ds.len())?;
    let (hw, m) = (shape.hw(), R::from_f64(shape.maps as f64));
    da.par_chunks_mut(shape.maps * hw)
        .zip(ds.par_chunks(hw))
        .for_each(|(da, ds)| {
            for map in da.chunks_mut(hw) {
                for (d, &g) in map.iter_mut().zip(ds) {
                    *d = g / m;
                }
            }
        });
    Ok(())
}

/// The attention-map choice (training) and mean (inference) for one shape.
///
/// The indices live on the device and are not checked there: check them on the host with
/// [`check_map_indices`] before uploading. A bad index never reads or writes out of bounds: it
/// gives NaN in its sample's `S`, NaN over its sample's `dA` when assigning, and no change when
/// accumulating.
pub struct MapSelectGpu<T: Element> {
    shape: MapShape,
    k: MapSelectKernels<T>,
}

crate::kernel_set! {
    struct MapSelectKernels: crate::sources::MAP_SELECT;
    typed: select_map_forward, select_map_backward, mean_maps_forward, mean_maps_backward;
}

impl<T: Element> MapSelectGpu<T> {
    pub fn new(gpu: &Gpu, shape: MapShape) -> Result<Self> {
        shape.validate()?;
        let k = MapSelectKernels::new(gpu)?;
        Ok(MapSelectGpu { shape, k })
    }

    pub fn shape(&self) -> &MapShape {
        &self.shape
    }

    /// `S[b] = A[b, k_b]`, as [`select_map_forward_cpu`].
    pub fn select_forward(
        &self,
        a: &impl DevicePtr<T>,
        indices: &impl DevicePtr<i32>,
        s: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let sh = &self.shape;
        check_select(sh, indices.len(), a.len(), s.len())?;
        let (cfg, g) = (elementwise(sh.map_len()), sh.device());
        // SAFETY: buffer lengths checked above; an index is checked on the device before use.
        unsafe { launch!(self.k.select_map_forward, cfg, [in a, in indices, out s, &g])? };
        Ok(())
    }

    /// `dA[b, k_b] = dS[b]` with zeros elsewhere, or with `accumulate` `dA[b, k_b] += dS[b]`
    /// with the other maps untouched, as [`select_map_backward_cpu`].
    pub fn select_backward(
        &self,
        indices: &impl DevicePtr<i32>,
        ds: &impl DevicePtr<T>,
        da: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let sh = &self.shape;
        check_select(sh, indices.len(), da.len(), ds.len())?;
        let (cfg, g, acc) = (
            elementwise(sh.maps_len()),
            sh.device(),
            i32::from(accumulate),
        );
        // SAFETY: buffer lengths checked above; an index is checked on the device before use.
        unsafe { launch!(self.k.select_map_backward, cfg, [in indices, in ds, out da, &g, &acc])? };
        Ok(())
    }

    /// `S[b] = (Σ_m A[b, m])/M`, as [`mean_maps_forward_cpu`].
    pub fn mean_forward(&self, a: &impl DevicePtr<T>, s: &mut impl DevicePtrMut<T>) -> Result<()> {
        let sh = &self.shape;
        check_mean(sh, a.len(), s.len())?;
        let (cfg, g) = (elementwise(sh.map_len()), sh.device());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(self.k.mean_maps_forward, cfg, [in a, out s, &g])? };
        Ok(())
    }

    /// `dA[b, m] = dS[b]/M` (assigned), as [`mean_maps_backward_cpu`].
    pub fn mean_backward(
        &self,
        ds: &impl DevicePtr<T>,
        da: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let sh = &self.shape;
        check_mean(sh, da.len(), ds.len())?;
        let (cfg, g) = (elementwise(sh.maps_len()), sh.device());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(self.k.mean_maps_backward, cfg, [in ds, out da, &g])? };
        Ok(())
    }
}
