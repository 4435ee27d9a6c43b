//! A batched 2-D transpose with a type conversion, for channels-last activations and weights:
//! for row-major matrices `x[batch][rows][cols]` it writes `y[batch][cols][rows]`,
//!
//! - assigned: `y = Out(x)`;
//! - accumulated: `y = Out(f32(y) + f32(x))`, one f32 addition rounded once.
//!
//! NCHW → NHWC is `rows = C, cols = H·W` ([`TransposeShape::to_channels_last`]), NHWC → NCHW
//! the other way round ([`TransposeShape::to_channels_first`]); a convolution's weights KCRS →
//! KRSC are `to_channels_last(K, C, R·S)`, and back `to_channels_first(K, C, R·S)`.
//!
//! The element types are f32 and bf16, in all four pairs, converted as [`crate::cast`] does: bf16
//! → f32 exact (a NaN's payload kept), f32 → bf16 rounded to nearest even (a NaN quieted); a
//! same-type copy keeps the bits. The GPU gives the CPU reference's bits (a NaN sum aside: the
//! hardware picks its payload). Kernel: `kernels/transpose.cu`.

use std::any::{Any, TypeId};

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;
use rayon::prelude::*;

use crate::cast::bf16_to_f32_exact;
use crate::device::{grid_with_shared, Gpu, Kernel};
use crate::element::Element;
use crate::error::{check_len, check_shape, Error, Result};
use crate::launch;

/// `batch` row-major matrices of `rows × cols`, transposed into `batch` of `cols × rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransposeShape {
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
}

impl TransposeShape {
    pub fn new(batch: usize, rows: usize, cols: usize) -> Self {
        TransposeShape { batch, rows, cols }
    }

    /// NCHW → NHWC of `batch` samples of `channels` planes of `hw` pixels (or KCRS → KRSC of
    /// `batch = K` filters of `channels` planes of `hw = R·S` taps).
    pub fn to_channels_last(batch: usize, channels: usize, hw: usize) -> Self {
        Self::new(batch, channels, hw)
    }

    /// NHWC → NCHW (or KRSC → KCRS): the inverse of [`Self::to_channels_last`].
    pub fn to_channels_first(batch: usize, channels: usize, hw: usize) -> Self {
        Self::new(batch, hw, channels)
    }

    /// The shape that undoes this one: rows and columns swapped.
    pub fn inverse(&self) -> Self {
        Self::new(self.batch, self.cols, self.rows)
    }

    /// Elements of `x`, and of `y`.
    pub fn len(&self) -> usize {
        self.batch * self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No zero dimension, every offset within a matrix, up to a tile past its edges, in the
    /// kernel's 32-bit indices, and the batch within grid y × z.
    fn check(&self) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let past = MAX_TILE_SIDE;
        check_shape(
            "transpose shape",
            self,
            &[self.batch, rows, cols],
            &[&[rows.saturating_add(past), cols.saturating_add(past)]],
        )?;
        if self.batch.checked_mul(rows * cols).is_none() || self.batch > MAX_GRID_YZ.pow(2) {
            return Err(Error::Shape(format!(
                "transpose shape has more matrices than the grid's 65,535² or elements than \
                 usize holds: {self:?}"
            )));
        }
        Ok(())
    }
}

/// `v` as f32, exactly: a bf16 NaN keeps its payload (`half`'s `to_f32` quiets it).
fn widen<T: Element>(v: T) -> f32 {
    match (&v as &dyn Any).downcast_ref::<bf16>() {
        Some(&b) => bf16_to_f32_exact(b),
        None => v.to_f32(),
    }
}

/// `v` converted to `O`: the same bits when it is one already.
fn convert<I: Element, O: Element>(v: I) -> O {
    match (&v as &dyn Any).downcast_ref::<O>() {
        Some(&o) => o,
        None => O::from_f32(widen(v)),
    }
}

/// CPU reference of [`TransposeGpu::run`]: `y[b][c][r] = O(x[b][r][c])`, or `y[b][c][r] =
/// O(f32(y[b][c][r]) + f32(x[b][r][c]))` when `accumulate`.
pub fn transpose_cpu<I: Element, O: Element>(
    s: &TransposeShape,
    x: &[I],
    y: &mut [O],
    accumulate: bool,
) -> Result<()> {
    s.check()?;
    check_len("transpose input", x.len(), s.len())?;
    check_len("transpose output", y.len(), s.len())?;
    let (rows, cols) = (s.rows, s.cols);
    y.par_chunks_mut(rows).enumerate().for_each(|(row, y_row)| {
        // Output row `row` is column `c` of matrix `b`.
        let (b, c) = (row / cols, row % cols);
        let column = x[b * rows * cols + c..].iter().step_by(cols);
        for (y, &x) in y_row.iter_mut().zip(column) {
            *y = if accumulate {
                O::from_f32(widen(*y) + widen(x))
            } else {
                convert(x)
            };
        }
    });
    Ok(())
}

const THREADS: u32 = 256;
/// The longest side of a tile: the kernel's thread mapping needs `THREADS` to be a multiple of
/// both sides.
const MAX_TILE_SIDE: usize = THREADS as usize;
/// Elements of the largest tile (`TRANSPOSE_PER_THREAD` × `THREADS` in the kernel).
const LOG_TILE: u32 = 12;
/// Below this many 64×64 tiles the grid takes 32×32 ones, four times as many blocks, so that a
/// small tensor (a convolution's weights) still spreads over the SMs.
const SMALL_GRID: usize = 1024;
/// The limit of grid y and z.
const MAX_GRID_YZ: usize = 65_535;

/// The tile of a launch as `(log2 rows, log2 columns)`, powers of two with `THREADS` ≤ rows ×
/// columns ≤ 2^`LOG_TILE`, each side at most `MAX_TILE_SIDE`: square where both sides are long,
/// else as narrow as the short side and as long as the tile allows the other way (NHWC with
/// C = 3, weights with R·S = 1), so that few threads idle.
fn tile(s: &TransposeShape) -> (u32, u32) {
    let log2 = |n: usize| {
        n.next_power_of_two()
            .trailing_zeros()
            .min(MAX_TILE_SIDE.ilog2())
    };
    let (lr, lc) = (log2(s.rows), log2(s.cols));
    let big_tiles = s.batch * s.rows.div_ceil(64) * s.cols.div_ceil(64);
    let square = if big_tiles < SMALL_GRID { 5 } else { 6 };
    let long = |short: u32| (LOG_TILE - short).min(MAX_TILE_SIDE.ilog2());
    if lr >= square && lc >= square {
        (square, square)
    } else if lr <= lc {
        (lr, long(lr))
    } else {
        (long(lc), lc)
    }
}

/// Index of `(I, O)` among the kernels, or `None` for a pair without one.
fn pair<I: Element, O: Element>() -> Option<usize> {
    let index = |t: TypeId| {
        if t == TypeId::of::<f32>() {
            Some(0)
        } else if t == TypeId::of::<bf16>() {
            Some(1)
        } else {
            None
        }
    };
    Some(index(TypeId::of::<I>())? * 2 + index(TypeId::of::<O>())?)
}

/// The transpose kernels: assigned and accumulated, for each of the four type pairs.
pub struct TransposeGpu {
    /// `[pair][accumulate]`, the pair as [`pair`] numbers it.
    kernels: Vec<[Kernel; 2]>,
}

impl TransposeGpu {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let source = &crate::sources::TRANSPOSE;
        let mut kernels = Vec::new();
        for x in ["f32", "bf16"] {
            for y in ["f32", "bf16"] {
                kernels.push([
                    Kernel::new(gpu, source, &format!("transpose_{x}_{y}"))?,
                    Kernel::new(gpu, source, &format!("transpose_accumulate_{x}_{y}"))?,
                ]);
            }
        }
        Ok(TransposeGpu { kernels })
    }

    /// `y[b][c][r] = O(x[b][r][c])`, or `O(f32(y[b][c][r]) + f32(x[b][r][c]))` when
    /// `accumulate`; an [`Error::ElementTypes`] for a type pair other than f32 and bf16's four.
    pub fn run<I: Element, O: Element>(
        &self,
        s: &TransposeShape,
        x: &impl DevicePtr<I>,
        y: &mut impl DevicePtrMut<O>,
        accumulate: bool,
    ) -> Result<()> {
        let Some(pair) = pair::<I, O>() else {
            return Err(Error::ElementTypes {
                op: "transpose",
                types: format!(
                    "{} to {}",
                    std::any::type_name::<I>(),
                    std::any::type_name::<O>()
                ),
            });
        };
        s.check()?;
        check_len("transpose input", x.len(), s.len())?;
        check_len("transpose output", y.len(), s.len())?;
        let (log_tr, log_tc) = tile(s);
        let (tr, tc) = (1usize << log_tr, 1usize << log_tc);
        // Padding that keeps a warp's column of a tile off repeated banks: an odd pitch where the
        // warp reads 32 rows of one column, 32/TR columns' worth where it reads all TR rows.
        let pitch = if tr < 32 { tc + 32 / tr } else { tc | 1 };
        let col_tiles = s.cols.div_ceil(tc);
        let tiles = s.rows.div_ceil(tr) * col_tiles;
        let groups = s.batch.div_ceil(MAX_GRID_YZ);
        let per_group = s.batch.div_ceil(groups);
        let cfg = grid_with_shared(
            (tiles as u32, per_group as u32, groups as u32),
            THREADS,
            (tr * pitch * std::mem::size_of::<f32>()) as u32,
        );
        let batch = s.batch as i64;
        let (rows, cols, col_tiles) = (s.rows as i32, s.cols as i32, col_tiles as i32);
        let (log_tr, log_tc, pitch) = (log_tr as i32, log_tc as i32, pitch as i32);
        // SAFETY: `x` and `y` hold `batch·rows·cols` elements of the kernel's types (the pair
        // picked it, the lengths are checked above); `check` keeps every offset within a matrix
        // in 32 bits and the tiles within grid x; the grid's y·z blocks cover the batch, the
        // kernel returning past its end; the shared memory holds TR rows of `pitch` floats.
        unsafe {
            launch!(self.kernels[pair][accumulate as usize], cfg, [
                in x, out y, &batch, &rows, &cols, &col_tiles, &log_tr, &log_tc, &pitch
            ])?
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_kernel_and_follow_the_short_side() {
        let shapes = [
            (64, 768, 289),
            (64, 289, 768),
            (64, 3, 89_401),
            (64, 89_401, 3),
        ]
        .into_iter()
        .chain([
            (192, 768, 1),
            (320, 192, 9),
            (1, 1, 1),
            (70_000, 3, 5),
            (2, 33, 65),
        ]);
        for (batch, rows, cols) in shapes {
            let s = TransposeShape::new(batch, rows, cols);
            let (lr, lc) = tile(&s);
            let size = 1usize << (lr + lc);
            assert!(
                (THREADS as usize..=1 << LOG_TILE).contains(&size),
                "{s:?}: {lr} {lc}"
            );
            assert!(
                1 << lr <= MAX_TILE_SIDE && 1 << lc <= MAX_TILE_SIDE,
                "{s:?}"
            );
            if rows < 32 {
                assert_eq!(1 << lr, rows.next_power_of_two(), "{s:?}");
            }
            if cols < 32 && cols < rows {
                assert_eq!(1 << lc, cols.next_power_of_two(), "{s:?}");
            }
        }
        assert_eq!(tile(&TransposeShape::new(64, 768, 289)), (6, 6));
        assert_eq!(tile(&TransposeShape::new(1, 768, 289)), (5, 5));
        assert_eq!(tile(&TransposeShape::new(64, 3, 89_401)), (2, 8));
    }
}
