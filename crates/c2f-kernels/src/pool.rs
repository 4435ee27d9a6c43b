//! Pooling for the InceptionV3 runtime, NCHW or channels-last NHWC ([`Layout`]) contiguous,
//! with PyTorch's semantics (`ceil_mode=False`, dilation 1):
//!
//! - max pool 2d: implicit −∞ padding; the forward also writes the argmax of each output as an
//!   `i32` index within its input plane (`return_indices=True`). Ties keep the first maximum in
//!   row-major window order and a NaN propagates (`val > max || isnan(val)`, so the last NaN's
//!   index). Backward: `dx[i] = Σ dy[o]` over the outputs `o` whose index is `i`.
//! - avg pool 2d: the divisor is `kh·kw` with `count_include_pad` (PyTorch's default), else the
//!   number of non-padding elements of the window.
//! - global average pool (`AdaptiveAvgPool2d(1)`): `[N, C, H, W] → [N, C]`, backward `dy/(H·W)`.
//!
//! There are no parameters; every gradient here is an activation gradient and is assigned.
//! The CPU functions are the CPU backend's ops (rayon over the N·C planes). The backwards run in
//! the same order on the CPU (a scatter, outputs in row-major order) and the GPU (a gather of the
//! outputs in row-major order, without atomics), so every result is the same bits on every run.
//! Kernels: `kernels/pool.cu`.
//!
//! In NHWC (the GPU launchers' `with_layout`), `x [N, H, W, C]`, `y [N, OH, OW, C]`, the max-pool
//! indices `[N, OH, OW, C]` (still `ih·W + iw`) and the global pool's `y [N, C]`: the same windows,
//! order and arithmetic, so the same bits as NCHW on the same values. Its CPU reference is the
//! NCHW one on the data converted with [`Layout::convert`]. In bf16 the inputs are bf16, every
//! sum is f32 and each output is rounded to bf16 once, when stored.

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use rayon::prelude::*;

use crate::device::{
    device_addr, device_addr_mut, elementwise, grid, plane_groups, Gpu, KernelPair, LaunchConfig,
};
use crate::element::Element;
use crate::error::{check_len, check_shape, Error, Result};
use crate::launch;
use crate::layout::{nhwc_vector, Layout};
use crate::Real;

/// The shape of an NCHW activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl PoolShape {
    /// N·C, the number of planes.
    pub fn planes(&self) -> usize {
        self.batch * self.channels
    }
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Number of elements, N·C·H·W.
    pub fn numel(&self) -> usize {
        self.planes() * self.hw()
    }

    fn validate(&self, op: &str) -> Result<()> {
        let dims = [self.batch, self.channels, self.height, self.width];
        check_shape(&format!("{op} input shape"), self, &dims, &[&dims])
    }
}

/// Kernel, stride and padding as `(height, width)`, as `nn.MaxPool2d` / `nn.AvgPool2d` with
/// `ceil_mode=False` and dilation 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    /// Average pool only (max pool ignores it): divide by `kh·kw` even where the window covers
    /// padding (PyTorch's default, `true`), else by the number of input elements it covers.
    pub count_include_pad: bool,
}

impl Pool2dParams {
    /// Square kernel, stride and padding, `count_include_pad = true`.
    pub fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        Pool2dParams {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
            count_include_pad: true,
        }
    }

    /// The output shape for `input`, or the reason these parameters do not fit it (PyTorch's
    /// checks: kernel and stride > 0, padding ≤ kernel/2, output size ≥ 1).
    pub fn output_shape(&self, input: &PoolShape) -> Result<PoolShape> {
        Geom::new("pool2d", input, self).map(|g| g.output_shape(input))
    }
}

/// The validated geometry of one pooling op, in the layout `kernels/pool.cu` takes by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolGeom {
    planes: i32,
    height: i32,
    width: i32,
    out_height: i32,
    out_width: i32,
    kernel_h: i32,
    kernel_w: i32,
    stride_h: i32,
    stride_w: i32,
    pad_h: i32,
    pad_w: i32,
    count_include_pad: i32,
}

// SAFETY: a `#[repr(C)]` struct of twelve `i32`, the same layout as `PoolGeom` in the kernel file.
unsafe impl DeviceRepr for PoolGeom {}

/// The same geometry in `usize`, for the CPU.
#[derive(Debug, Clone, Copy)]
struct Geom {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    count_include_pad: bool,
}

impl Geom {
    fn new(op: &str, input: &PoolShape, p: &Pool2dParams) -> Result<Geom> {
        let ((kh, kw), (sh, sw), (ph, pw)) = (p.kernel, p.stride, p.padding);
        if kh == 0 || kw == 0 {
            return Err(Error::Shape(format!(
                "{op} kernel size should be greater than zero, got {:?}",
                p.kernel
            )));
        }
        if sh == 0 || sw == 0 {
            return Err(Error::Shape(format!(
                "{op} stride should be greater than zero, got {:?}",
                p.stride
            )));
        }
        if ph > kh / 2 || pw > kw / 2 {
            return Err(Error::Shape(format!(
                "{op} padding should be at most half of the kernel size, got padding {:?} for \
                 kernel {:?}",
                p.padding, p.kernel
            )));
        }
        input.validate(op)?;
        let (h, w) = (input.height, input.width);
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(Error::Shape(format!(
                "{op} output size is too small: input {h}x{w} with padding {:?} is smaller than \
                 kernel {:?}",
                p.padding, p.kernel
            )));
        }
        Ok(Geom {
            planes: input.planes(),
            h,
            w,
            oh: (h + 2 * ph - kh) / sh + 1,
            ow: (w + 2 * pw - kw) / sw + 1,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            count_include_pad: p.count_include_pad,
        })
    }

    fn output_shape(&self, input: &PoolShape) -> PoolShape {
        PoolShape {
            height: self.oh,
            width: self.ow,
            ..*input
        }
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    fn in_len(&self) -> usize {
        self.planes * self.in_plane()
    }
    fn out_len(&self) -> usize {
        self.planes * self.out_plane()
    }

    /// The windows of every output row and column.
    fn windows(&self) -> (Vec<Window>, Vec<Window>) {
        (
            (0..self.oh)
                .map(|o| Window::new(o, self.kh, self.sh, self.ph, self.h))
                .collect(),
            (0..self.ow)
                .map(|o| Window::new(o, self.kw, self.sw, self.pw, self.w))
                .collect(),
        )
    }

    fn divisor(&self, rows: &Window, cols: &Window) -> usize {
        if self.count_include_pad {
            rows.padded * cols.padded
        } else {
            (rows.hi - rows.lo) * (cols.hi - cols.lo)
        }
    }

    fn device(&self) -> PoolGeom {
        // Every value is at most the input's element count, checked to fit an i32.
        let i = |v: usize| v as i32;
        PoolGeom {
            planes: i(self.planes),
            height: i(self.h),
            width: i(self.w),
            out_height: i(self.oh),
            out_width: i(self.ow),
            kernel_h: i(self.kh),
            kernel_w: i(self.kw),
            stride_h: i(self.sh),
            stride_w: i(self.sw),
            pad_h: i(self.ph),
            pad_w: i(self.pw),
            count_include_pad: i32::from(self.count_include_pad),
        }
    }
}

/// Input rows `[lo, hi)` under one output row, and the window's extent counting padding
/// (PyTorch's `pool_size` factor).
#[derive(Debug, Clone, Copy)]
struct Window {
    lo: usize,
    hi: usize,
    padded: usize,
}

impl Window {
    fn new(o: usize, k: usize, s: usize, p: usize, n: usize) -> Window {
        // Shifted by +p so that nothing is negative: input row r is r + p here.
        let start = o * s;
        let end = (start + k).min(n + 2 * p);
        Window {
            lo: start.saturating_sub(p),
            hi: (end - p).min(n),
            padded: end - start,
        }
    }
}

/// CPU max pool forward (and the CPU backend's op): writes `y` and `indices`, both
/// `[N, C, OH, OW]`; an index is `ih·W + iw` within the input plane.
pub fn max_pool2d_forward_cpu<R: Real>(
    shape: &PoolShape,
    params: &Pool2dParams,
    x: &[R],
    y: &mut [R],
    indices: &mut [i32],
) -> Result<()> {
    let g = Geom::new("max pool", shape, params)?;
    check_len("max pool x", x.len(), g.in_len())?;
    check_len("max pool y", y.len(), g.out_len())?;
    check_len("max pool indices", indices.len(), g.out_len())?;
    let (rows, cols) = g.windows();
    y.par_chunks_mut(g.out_plane())
        .zip(indices.par_chunks_mut(g.out_plane()))
        .zip(x.par_chunks(g.in_plane()))
        .for_each(|((yp, ip), xp)| {
            let outputs = yp.iter_mut().zip(ip.iter_mut());
            for ((yo, io), (r, c)) in outputs.zip(each_window(&rows, &cols)) {
                let mut best = R::neg_infinity();
                let mut best_i = r.lo * g.w + c.lo;
                for ih in r.lo..r.hi {
                    for (iw, &v) in xp[ih * g.w..][c.lo..c.hi].iter().enumerate() {
                        if v > best || v.is_nan() {
                            best = v;
                            best_i = ih * g.w + c.lo + iw;
                        }
                    }
                }
                *yo = best;
                *io = best_i as i32;
            }
        });
    Ok(())
}

/// CPU max pool backward: `dx [N, C, H, W]` (assigned) from `dy` and the forward's `indices`.
/// An index outside its output's window is an error (`dx` is then unspecified).
pub fn max_pool2d_backward_cpu<R: Real>(
    shape: &PoolShape,
    params: &Pool2dParams,
    indices: &[i32],
    dy: &[R],
    dx: &mut [R],
) -> Result<()> {
    let g = Geom::new("max pool", shape, params)?;
    check_len("max pool indices", indices.len(), g.out_len())?;
    check_len("max pool dy", dy.len(), g.out_len())?;
    check_len("max pool dx", dx.len(), g.in_len())?;
    let (rows, cols) = g.windows();
    dx.par_chunks_mut(g.in_plane())
        .zip(dy.par_chunks(g.out_plane()))
        .zip(indices.par_chunks(g.out_plane()))
        .enumerate()
        .try_for_each(|(plane, ((dxp, dyp), ip))| {
            dxp.fill(R::zero());
            for (o, (r, c)) in each_window(&rows, &cols).enumerate() {
                let index = ip[o];
                let (ih, iw) = (index as usize / g.w, index as usize % g.w);
                let inside = index >= 0 && (r.lo..r.hi).contains(&ih) && (c.lo..c.hi).contains(&iw);
                if !inside {
                    return Err(Error::Shape(format!(
                        "max pool index {index} of output ({}, {}) in plane {plane} is outside \
                         that output's window",
                        o / g.ow,
                        o % g.ow
                    )));
                }
                let i = index as usize;
                dxp[i] = dxp[i] + dyp[o];
            }
            Ok(())
        })
}

/// CPU average pool forward: writes `y [N, C, OH, OW]`.
pub fn avg_pool2d_forward_cpu<R: Real>(
    shape: &PoolShape,
    params: &Pool2dParams,
    x: &[R],
    y: &mut [R],
) -> Result<()> {
    let g = Geom::new("avg pool", shape, params)?;
    check_len("avg pool x", x.len(), g.in_len())?;
    check_len("avg pool y", y.len(), g.out_len())?;
    let (rows, cols) = g.windows();
    y.par_chunks_mut(g.out_plane())
        .zip(x.par_chunks(g.in_plane()))
        .for_each(|(yp, xp)| {
            for (yo, (r, c)) in yp.iter_mut().zip(each_window(&rows, &cols)) {
                let mut sum = R::zero();
                for ih in r.lo..r.hi {
                    for &v in &xp[ih * g.w..][c.lo..c.hi] {
                        sum = sum + v;
                    }
                }
                *yo = sum / R::from_f64(g.divisor(r, c) as f64);
            }
        });
    Ok(())
}

/// CPU average pool backward: `dx [N, C, H, W]` (assigned) from `dy [N, C, OH, OW]`.
pub fn avg_pool2d_backward_cpu<R: Real>(
    shape: &PoolShape,
    params: &Pool2dParams,
    dy: &[R],
    dx: &mut [R],
) -> Result<()> {
    let g = Geom::new("avg pool", shape, params)?;
    check_len("avg pool dy", dy.len(), g.out_len())?;
    check_len("avg pool dx", dx.len(), g.in_len())?;
    let (rows, cols) = g.windows();
    dx.par_chunks_mut(g.in_plane())
        .zip(dy.par_chunks(g.out_plane()))
        .for_each(|(dxp, dyp)| {
            dxp.fill(R::zero());
            for (&d, (r, c)) in dyp.iter().zip(each_window(&rows, &cols)) {
                let share = d / R::from_f64(g.divisor(r, c) as f64);
                for ih in r.lo..r.hi {
                    for v in &mut dxp[ih * g.w..][c.lo..c.hi] {
                        *v = *v + share;
                    }
                }
            }
        });
    Ok(())
}

/// Output windows in row-major order.
fn each_window<'a>(
    rows: &'a [Window],
    cols: &'a [Window],
) -> impl Iterator<Item = (&'a Window, &'a Window)> {
    rows.iter()
        .flat_map(move |r| cols.iter().map(move |c| (r, c)))
}

fn check_global(shape: &PoolShape, input: usize, output: usize, what: [&str; 2]) -> Result<()> {
    shape.validate("global avg pool")?;
    check_len(what[0], input, shape.numel())?;
    check_len(what[1], output, shape.planes())
}

/// CPU global average pool forward: `y [N, C] = mean over H·W of x [N, C, H, W]`.
pub fn global_avg_pool_forward_cpu<R: Real>(shape: &PoolShape, x: &[R], y: &mut [R]) -> Result<()> {
    check_global(
        shape,
        x.len(),
        y.len(),
        ["global avg pool x", "global avg pool y"],
    )?;
    let hw = shape.hw();
    let n = R::from_f64(hw as f64);
    y.par_iter_mut()
        .zip(x.par_chunks(hw))
        .for_each(|(yo, xp)| *yo = xp.iter().copied().sum::<R>() / n);
    Ok(())
}

/// CPU global average pool backward: `dx [N, C, H, W] = dy [N, C] / (H·W)` (assigned).
pub fn global_avg_pool_backward_cpu<R: Real>(
    shape: &PoolShape,
    dy: &[R],
    dx: &mut [R],
) -> Result<()> {
    check_global(
        shape,
        dx.len(),
        dy.len(),
        ["global avg pool dx", "global avg pool dy"],
    )?;
    let hw = shape.hw();
    let n = R::from_f64(hw as f64);
    dx.par_chunks_mut(hw)
        .zip(dy.par_iter())
        .for_each(|(dxp, &d)| dxp.fill(d / n));
    Ok(())
}

const THREADS: u32 = 256;
/// Planes per block of the global pool forward, one warp each.
const GLOBAL_PLANES_PER_BLOCK: usize = THREADS as usize / 32;
/// Threads across the channels of the NHWC global pool forward (by 32 row slots).
const GLOBAL_NHWC_LANES: usize = 8;

/// An NHWC kernel's grid, one thread per `items / vec` (a position's VEC channels), and its
/// `vec` ([`nhwc_vector`] of the buffers at `addresses`).
fn nhwc_elementwise<T: Element>(
    channels: usize,
    items: usize,
    addresses: &[u64],
) -> (LaunchConfig, i32) {
    let vec = nhwc_vector::<T>(channels, addresses);
    (elementwise(items / vec), vec as i32)
}

/// What the max and average pools share: the geometry, the output shape, the layout and the
/// entry points.
struct Windowed<T: Element> {
    geom: Geom,
    output: PoolShape,
    layout: Layout,
    kernels: KernelPair<T>,
}

impl<T: Element> Windowed<T> {
    /// `op` names it in errors ("max pool"), `entry` its kernels ("max_pool2d").
    fn new(
        gpu: &Gpu,
        (op, entry): (&str, &str),
        shape: PoolShape,
        params: Pool2dParams,
        layout: Layout,
    ) -> Result<Self> {
        let geom = Geom::new(op, &shape, &params)?;
        let infix = match layout {
            Layout::Nchw => "",
            Layout::Nhwc => "_nhwc",
        };
        Ok(Windowed {
            geom,
            output: geom.output_shape(&shape),
            layout,
            kernels: KernelPair::new(
                gpu,
                &crate::sources::POOL,
                &format!("{entry}{infix}_forward"),
                &format!("{entry}{infix}_backward"),
            )?,
        })
    }

    /// The forward's (a thread per output position) or backward's (per input position) grid and
    /// trailing `[C, vec]` arguments: in NCHW plane groups (the kernels ignore C and vec), in
    /// NHWC a thread per `vec` channels, `vec` from the buffers at `addresses`.
    fn launch_config(&self, forward: bool, addresses: [u64; 2]) -> (LaunchConfig, [i32; 2]) {
        let (g, channels) = (&self.geom, self.output.channels);
        let (plane_len, len) = if forward {
            (g.oh * g.ow, g.out_len())
        } else {
            (g.h * g.w, g.in_len())
        };
        match self.layout {
            Layout::Nchw => (plane_groups(plane_len, g.planes), [channels as i32, 1]),
            Layout::Nhwc => {
                let (cfg, vec) = nhwc_elementwise::<T>(channels, len, &addresses);
                (cfg, [channels as i32, vec])
            }
        }
    }
}

/// Declares a windowed pool's launcher over [`Windowed`]: the type, `new` (NCHW), `with_layout`
/// and `output_shape`; `op` names it in errors, `entry` its kernels.
macro_rules! windowed_pool {
    ($(#[$meta:meta])* $name:ident, $op:literal, $entry:literal) => {
        $(#[$meta])*
        pub struct $name<T: Element>(Windowed<T>);

        impl<T: Element> $name<T> {
            /// NCHW activations.
            pub fn new(gpu: &Gpu, shape: PoolShape, params: Pool2dParams) -> Result<Self> {
                Self::with_layout(gpu, shape, params, Layout::Nchw)
            }

            pub fn with_layout(
                gpu: &Gpu,
                shape: PoolShape,
                params: Pool2dParams,
                layout: Layout,
            ) -> Result<Self> {
                Windowed::new(gpu, ($op, $entry), shape, params, layout).map($name)
            }

            pub fn output_shape(&self) -> &PoolShape {
                &self.0.output
            }
        }
    };
}

windowed_pool!(
    /// Max pool 2d for one input shape, parameter set and layout.
    MaxPool2dGpu,
    "max pool",
    "max_pool2d"
);
windowed_pool!(
    /// Average pool 2d for one input shape, parameter set and layout.
    AvgPool2dGpu,
    "avg pool",
    "avg_pool2d"
);

impl<T: Element> MaxPool2dGpu<T> {
    /// Writes `y` and `indices` (`[N, C, OH, OW]`), as [`max_pool2d_forward_cpu`].
    pub fn forward(
        &self,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        indices: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        let g = &self.0.geom;
        check_len("max pool x", x.len(), g.in_len())?;
        check_len("max pool y", y.len(), g.out_len())?;
        check_len("max pool indices", indices.len(), g.out_len())?;
        let kernel = &self.0.kernels.forward;
        let st = kernel.stream.as_ref();
        let (cfg, [c, vec]) = self
            .0
            .launch_config(true, [device_addr(x, st), device_addr_mut(y, st)]);
        // SAFETY: buffer lengths checked above match the kernel's indexing; vec divides C.
        unsafe { launch!(kernel, cfg, [in x, out y, out indices, &g.device(), &c, &vec])? };
        Ok(())
    }

    /// Writes `dx` (assigned): each input element gathers `dy` from the outputs whose window
    /// contains it and whose index names it. Indices are not checked on the device: one outside
    /// its output's window routes nowhere (the CPU function returns an error for it).
    pub fn backward(
        &self,
        indices: &impl DevicePtr<i32>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let g = &self.0.geom;
        check_len("max pool indices", indices.len(), g.out_len())?;
        check_len("max pool dy", dy.len(), g.out_len())?;
        check_len("max pool dx", dx.len(), g.in_len())?;
        let kernel = &self.0.kernels.backward;
        let st = kernel.stream.as_ref();
        let (cfg, [c, vec]) = self
            .0
            .launch_config(false, [device_addr(dy, st), device_addr_mut(dx, st)]);
        // SAFETY: buffer lengths checked above match the kernel's indexing; vec divides C.
        unsafe { launch!(kernel, cfg, [in indices, in dy, out dx, &g.device(), &c, &vec])? };
        Ok(())
    }
}

impl<T: Element> AvgPool2dGpu<T> {
    /// Writes `y [N, C, OH, OW]`, as [`avg_pool2d_forward_cpu`].
    pub fn forward(&self, x: &impl DevicePtr<T>, y: &mut impl DevicePtrMut<T>) -> Result<()> {
        let g = &self.0.geom;
        check_len("avg pool x", x.len(), g.in_len())?;
        check_len("avg pool y", y.len(), g.out_len())?;
        let kernel = &self.0.kernels.forward;
        let st = kernel.stream.as_ref();
        let (cfg, [c, vec]) = self
            .0
            .launch_config(true, [device_addr(x, st), device_addr_mut(y, st)]);
        // SAFETY: buffer lengths checked above match the kernel's indexing; vec divides C.
        unsafe { launch!(kernel, cfg, [in x, out y, &g.device(), &c, &vec])? };
        Ok(())
    }

    /// Writes `dx [N, C, H, W]` (assigned), each element gathering from the outputs over it.
    pub fn backward(&self, dy: &impl DevicePtr<T>, dx: &mut impl DevicePtrMut<T>) -> Result<()> {
        let g = &self.0.geom;
        check_len("avg pool dy", dy.len(), g.out_len())?;
        check_len("avg pool dx", dx.len(), g.in_len())?;
        let kernel = &self.0.kernels.backward;
        let st = kernel.stream.as_ref();
        let (cfg, [c, vec]) = self
            .0
            .launch_config(false, [device_addr(dy, st), device_addr_mut(dx, st)]);
        // SAFETY: buffer lengths checked above match the kernel's indexing; vec divides C.
        unsafe { launch!(kernel, cfg, [in dy, out dx, &g.device(), &c, &vec])? };
        Ok(())
    }
}

/// Global average pool for one input shape and layout: `[N, C, H, W] → [N, C]`.
pub struct GlobalAvgPoolGpu<T: Element> {
    shape: PoolShape,
    layout: Layout,
    kernels: KernelPair<T>,
}

impl<T: Element> GlobalAvgPoolGpu<T> {
    /// NCHW activations.
    pub fn new(gpu: &Gpu, shape: PoolShape) -> Result<Self> {
        Self::with_layout(gpu, shape, Layout::Nchw)
    }

    pub fn with_layout(gpu: &Gpu, shape: PoolShape, layout: Layout) -> Result<Self> {
        shape.validate("global avg pool")?;
        Ok(GlobalAvgPoolGpu {
            shape,
            layout,
            kernels: KernelPair::new(
                gpu,
                &crate::sources::POOL,
                match layout {
                    Layout::Nchw => "global_avg_pool_forward",
                    Layout::Nhwc => "global_avg_pool_nhwc_forward",
                },
                match layout {
                    Layout::Nchw => "global_avg_pool_backward",
                    Layout::Nhwc => "global_avg_pool_nhwc_backward",
                },
            )?,
        })
    }

    pub fn shape(&self) -> &PoolShape {
        &self.shape
    }

    /// Writes `y [N, C]`, one warp per plane.
    pub fn forward(&self, x: &impl DevicePtr<T>, y: &mut impl DevicePtrMut<T>) -> Result<()> {
        let s = &self.shape;
        check_global(
            s,
            x.len(),
            y.len(),
            ["global avg pool x", "global avg pool y"],
        )?;
        let kernel = &self.kernels.forward;
        if self.layout == Layout::Nhwc {
            let st = kernel.stream.as_ref();
            let addresses = [device_addr(x, st), device_addr_mut(y, st)];
            let vec = nhwc_vector::<T>(s.channels, &addresses);
            // Blocks of 8 lanes of vec channels by 32 rows (kernels/pool.cu).
            let tiles = s.channels.div_ceil(GLOBAL_NHWC_LANES * vec);
            let cfg = grid((s.batch as u32, tiles as u32, 1), THREADS);
            let [n, c, hw, vec] = [s.batch, s.channels, s.hw(), vec].map(|v| v as i32);
            // SAFETY: buffer lengths checked above match the kernel's indexing; vec divides C.
            unsafe { launch!(kernel, cfg, [in x, out y, &n, &c, &hw, &vec])? };
            return Ok(());
        }
        let (planes, hw) = (s.planes() as i32, s.hw() as i32);
        let cfg = grid(
            (s.planes().div_ceil(GLOBAL_PLANES_PER_BLOCK) as u32, 1, 1),
            THREADS,
        );
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(kernel, cfg, [in x, out y, &planes, &hw])? };
        Ok(())
    }

    /// Writes `dx [N, C, H, W] = dy / (H·W)` (assigned).
    pub fn backward(&self, dy: &impl DevicePtr<T>, dx: &mut impl DevicePtrMut<T>) -> Result<()> {
        let s = &self.shape;
        check_global(
            s,
            dx.len(),
            dy.len(),
            ["global avg pool dx", "global avg pool dy"],
        )?;
        let kernel = &self.kernels.backward;
        if self.layout == Layout::Nhwc {
            let st = kernel.stream.as_ref();
            let addresses = [device_addr(dy, st), device_addr_mut(dx, st)];
            let (cfg, vec) = nhwc_elementwise::<T>(s.channels, s.numel(), &addresses);
            let [n, c, hw] = [s.batch, s.channels, s.hw()].map(|v| v as i32);
            // SAFETY: buffer lengths checked above match the kernel's indexing; vec divides C.
            unsafe { launch!(kernel, cfg, [in dy, out dx, &n, &c, &hw, &vec])? };
            return Ok(());
        }
        let (planes, hw) = (s.planes() as i32, s.hw() as i32);
        let cfg = elementwise(s.numel());
        // SAFETY: buffer lengths checked above match the kernel's indexing.
        unsafe { launch!(kernel, cfg, [in dy, out dx, &planes, &hw])? };
        Ok(())
    }
}
