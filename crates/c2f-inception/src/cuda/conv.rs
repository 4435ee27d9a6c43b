//! Convolutions through cuDNN (cudarc's safe API): f32 with or without TF32, or bf16; NCHW, or
//! channels-last NHWC with KRSC filters.
//!
//! - **Plans**: the first call with a [`Conv2dShape`] builds its descriptors and picks its three
//!   algorithms (forward, backward-data, backward-filter) once; later calls reuse them. How they
//!   are picked is the [`AlgorithmChoice`]: cuDNN's heuristic by default
//!   (`cudnnGetConvolution*Algorithm_v7`, which ranks by expected speed without running
//!   anything), or by timing every candidate on the shape (PyTorch's `cudnn.benchmark`).
//! - **Determinism**: every cuDNN forward algorithm is deterministic. Backward-data `ALGO_0` and
//!   backward-filter `ALGO_0` and `ALGO_3` sum with atomics; when the heuristic ranks one of them
//!   first, `ALGO_1` (deterministic, supports every 2-D NCHW float case) is used instead, and
//!   timing never tries them. So every convolution gives the same bits on every call with the
//!   same plan; with the heuristic, also on every run on the same GPU and library.
//! - **Precision**: the math type is `CUDNN_FMA_MATH` by default, so no TF32 tensor-core kernel
//!   is chosen: f32 is f32. With TF32 on ([`ConvEngine::set_tf32`]) it is
//!   `CUDNN_DEFAULT_MATH`, which on sm_80 and later lets cuDNN pick TF32 tensor-core kernels for
//!   f32 data, as PyTorch does with `cudnn.allow_tf32` (its default); `NVIDIA_TF32_OVERRIDE=0`
//!   in the environment turns them off again.
//! - **Workspace**: one buffer for every plan, grown when a new plan needs more; a training step
//!   after the first allocates nothing. An algorithm asking for more than [`WORKSPACE_LIMIT`] is
//!   replaced by the implicit-GEMM forward or `ALGO_1` backward, which need little or none (the
//!   heuristic does not weigh workspace, and FFT algorithms can ask for gigabytes); timing passes
//!   over it.

use std::collections::HashMap;
use std::sync::Arc;

use c2f_kernels::cudnn_raw::{self, cudnn_error};
use c2f_kernels::device::{refuse_in_capture, ALLOCATES};
use c2f_kernels::error::check_len;
use c2f_kernels::layout::Layout;
use c2f_kernels::{Error, Result};
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as BwdDataAlgo, cudnnConvolutionBwdFilterAlgo_t as BwdFilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo, cudnnConvolutionMode_t, cudnnMathType_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    CudnnError, FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use crate::cpu::conv::Conv2dShape;
use crate::precision::Storage;

/// Most workspace bytes one algorithm may use; see the module documentation.
pub const WORKSPACE_LIMIT: usize = 1 << 30;

/// A [`Conv2dShape`] and the activations' layout as a hash key (the shape type itself is not
/// `Hash`).
type ConvKey = [usize; 12];

fn key(s: &Conv2dShape, layout: Layout) -> ConvKey {
    [
        layout as usize,
        s.batch,
        s.in_channels,
        s.height,
        s.width,
        s.out_channels,
        s.kernel.0,
        s.kernel.1,
        s.stride.0,
        s.stride.1,
        s.padding.0,
        s.padding.1,
    ]
}

/// How a plan picks its algorithms; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlgorithmChoice {
    /// cuDNN's heuristic ranking, without running anything: the same pick on every run, so the
    /// same bits.
    #[default]
    Heuristic,
    /// Every deterministic candidate timed once per shape and the fastest kept (PyTorch's
    /// `cudnn.benchmark`). Faster where the heuristic misjudges, at a few seconds of timing when
    /// a shape is first met; near-ties may go either way, so two runs may pick differently and
    /// differ in their last bits.
    Timed,
}

/// The algorithms chosen for one shape, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvAlgorithms {
    pub forward: FwdAlgo,
    pub backward_data: BwdDataAlgo,
    pub backward_filter: BwdFilterAlgo,
    /// Workspace bytes each needs.
    pub workspace: [usize; 3],
}

/// One shape's descriptors and algorithms, for data stored as `T` (computing in f32).
pub(crate) struct ConvPlan<T: ConvData> {
    shape: Conv2dShape,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    conv: ConvDescriptor<f32>,
    algos: ConvAlgorithms,
}

/// A storage type cuDNN convolves in, with f32 compute: f32, or bf16 on tensor cores.
pub(crate) trait ConvData:
    CudnnDataType<Scalar = f32> + DeviceRepr + ValidAsZeroBits + Copy + Sized
{
    const STORAGE: Storage;
    const ZERO: Self;
    const ONE: Self;
    fn plans(plans: &mut Plans) -> &mut HashMap<ConvKey, ConvPlan<Self>>;
    fn plans_of(plans: &Plans) -> &HashMap<ConvKey, ConvPlan<Self>>;
}

/// The plans made so far, per storage type.
#[derive(Default)]
pub(crate) struct Plans {
    f32: HashMap<ConvKey, ConvPlan<f32>>,
    bf16: HashMap<ConvKey, ConvPlan<bf16>>,
}

impl ConvData for f32 {
    const STORAGE: Storage = Storage::F32;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn plans(plans: &mut Plans) -> &mut HashMap<ConvKey, ConvPlan<f32>> {
        &mut plans.f32
    }
    fn plans_of(plans: &Plans) -> &HashMap<ConvKey, ConvPlan<f32>> {
        &plans.f32
    }
}

impl ConvData for bf16 {
    const STORAGE: Storage = Storage::Bf16;
    const ZERO: bf16 = bf16::ZERO;
    const ONE: bf16 = bf16::ONE;
    fn plans(plans: &mut Plans) -> &mut HashMap<ConvKey, ConvPlan<bf16>> {
        &mut plans.bf16
    }
    fn plans_of(plans: &Plans) -> &HashMap<ConvKey, ConvPlan<bf16>> {
        &plans.bf16
    }
}

fn c_int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("conv2d {what} {v} does not fit an i32")))
}

impl<T: ConvData> ConvPlan<T> {
    fn new(
        handle: &Arc<Cudnn>,
        stream: &Arc<CudaStream>,
        s: &Conv2dShape,
        layout: Layout,
        choice: AlgorithmChoice,
        math: cudnnMathType_t,
    ) -> Result<ConvPlan<T>> {
        // Channels-last activations take a KRSC filter, as cuDNN's NHWC kernels read it.
        let format = match layout {
            Layout::Nchw => cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            Layout::Nhwc => cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        };
        let [n, c, h, w, k] = [
            ("batch", s.batch),
            ("in_channels", s.in_channels),
            ("height", s.height),
            ("width", s.width),
            ("out_channels", s.out_channels),
        ]
        .map(|(what, v)| c_int(what, v));
        let (n, c, h, w, k) = (n?, c?, h?, w?, k?);
        let (oh, ow) = (
            c_int("out height", s.out_height())?,
            c_int("out width", s.out_width())?,
        );
        let kernel = [c_int("kernel", s.kernel.0)?, c_int("kernel", s.kernel.1)?];
        let stride = [c_int("stride", s.stride.0)?, c_int("stride", s.stride.1)?];
        let pad = [
            c_int("padding", s.padding.0)?,
            c_int("padding", s.padding.1)?,
        ];
        // cuDNN indexes tensors with 32-bit integers.
        for (what, len) in [
            ("input", s.input_len()),
            ("output", s.output_len()),
            ("weight", s.weight_len()),
        ] {
            c_int(what, len)?;
        }
        let x = handle
            .create_4d_tensor::<T>(format, [n, c, h, w])
            .map_err(cudnn_error)?;
        let y = handle
            .create_4d_tensor::<T>(format, [n, k, oh, ow])
            .map_err(cudnn_error)?;
        let filter = handle
            .create_4d_filter::<T>(format, [k, c, kernel[0], kernel[1]])
            .map_err(cudnn_error)?;
        let mut conv = handle
            .create_conv2d::<f32>(
                pad,
                stride,
                [1, 1],
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(cudnn_error)?;
        conv.set_math_type(math).map_err(cudnn_error)?;

        let fwd = ConvForward {
            conv: &conv,
            x: &x,
            w: &filter,
            y: &y,
        };
        let bwd_data = ConvBackwardData {
            conv: &conv,
            dx: &x,
            w: &filter,
            dy: &y,
        };
        let bwd_filter = ConvBackwardFilter {
            conv: &conv,
            x: &x,
            dw: &filter,
            dy: &y,
        };
        let algos = match choice {
            AlgorithmChoice::Heuristic => heuristic_algorithms(&fwd, &bwd_data, &bwd_filter),
            AlgorithmChoice::Timed => timed_algorithms(stream, s, &fwd, &bwd_data, &bwd_filter),
        }?;
        Ok(ConvPlan {
            shape: *s,
            x,
            w: filter,
            y,
            conv,
            algos,
        })
    }
}

/// cuDNN's heuristic pick in each direction, made deterministic and held to
/// [`WORKSPACE_LIMIT`].
fn heuristic_algorithms<T: ConvData>(
    fwd: &ConvForward<T, f32, T>,
    bwd_data: &ConvBackwardData<T, f32, T>,
    bwd_filter: &ConvBackwardFilter<T, f32, T>,
) -> Result<ConvAlgorithms> {
    let (forward, forward_ws) = within_limit(
        fwd.pick_algorithm(),
        FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        |a| fwd.get_workspace_size(a),
    )?;
    let (backward_data, backward_data_ws) = within_limit(
        bwd_data.pick_algorithm().map(deterministic_data),
        BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        |a| bwd_data.get_workspace_size(a),
    )?;
    let (backward_filter, backward_filter_ws) = within_limit(
        bwd_filter.pick_algorithm().map(deterministic_filter),
        BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        |a| bwd_filter.get_workspace_size(a),
    )?;
    Ok(ConvAlgorithms {
        forward,
        backward_data,
        backward_filter,
        workspace: [forward_ws, backward_data_ws, backward_filter_ws],
    })
}

/// The heuristic's `pick` and its workspace bytes, or `fallback`'s when the pick asks for more
/// than [`WORKSPACE_LIMIT`].
fn within_limit<A: Copy>(
    pick: std::result::Result<A, CudnnError>,
    fallback: A,
    workspace_size: impl Fn(A) -> std::result::Result<usize, CudnnError>,
) -> Result<(A, usize)> {
    let algo = pick.map_err(cudnn_error)?;
    let bytes = workspace_size(algo).map_err(cudnn_error)?;
    if bytes <= WORKSPACE_LIMIT {
        return Ok((algo, bytes));
    }
    Ok((fallback, workspace_size(fallback).map_err(cudnn_error)?))
}

/// Every forward algorithm.
const FORWARD_CANDIDATES: [FwdAlgo; 8] = [
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
];

/// The deterministic backward-data algorithms (all but `ALGO_0`).
const BACKWARD_DATA_CANDIDATES: [BwdDataAlgo; 5] = [
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
    BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
];

/// The deterministic backward-filter algorithms cuDNN implements (not `ALGO_0`, `ALGO_3`, or
/// `WINOGRAD`, which cuDNN lists but does not implement).
const BACKWARD_FILTER_CANDIDATES: [BwdFilterAlgo; 4] = [
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
    BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
];

/// Timed runs of each candidate, after one warm-up run.
const TIMED_RUNS: usize = 3;

/// The fastest candidate in each direction, timed on scratch tensors of the shape (as
/// `cudnnFindConvolution*Algorithm` does: the values do not change the work). Their memory is
/// freed once the plan is made.
fn timed_algorithms<T: ConvData>(
    stream: &Arc<CudaStream>,
    s: &Conv2dShape,
    fwd: &ConvForward<T, f32, T>,
    bwd_data: &ConvBackwardData<T, f32, T>,
    bwd_filter: &ConvBackwardFilter<T, f32, T>,
) -> Result<ConvAlgorithms> {
    let mut x = stream.alloc_zeros::<T>(s.input_len())?;
    let mut w = stream.alloc_zeros::<T>(s.weight_len())?;
    let mut y = stream.alloc_zeros::<T>(s.output_len())?;
    let (one, zero) = (T::ONE, T::ZERO);
    // SAFETY (the three launches): x, w and y have the lengths the descriptors give (the
    // shape's), and the workspace holds what the algorithm asked for.
    let (forward, forward_ws) = fastest(
        stream,
        s,
        &FORWARD_CANDIDATES,
        |a| fwd.get_workspace_size(a),
        |a, ws| unsafe { fwd.launch(a, ws, (one, zero), &x, &w, &mut y) },
    )?;
    let (backward_data, backward_data_ws) = fastest(
        stream,
        s,
        &BACKWARD_DATA_CANDIDATES,
        |a| bwd_data.get_workspace_size(a),
        |a, ws| unsafe { bwd_data.launch(a, ws, (one, zero), &mut x, &w, &y) },
    )?;
    let (backward_filter, backward_filter_ws) = fastest(
        stream,
        s,
        &BACKWARD_FILTER_CANDIDATES,
        |a| bwd_filter.get_workspace_size(a),
        |a, ws| unsafe { bwd_filter.launch(a, ws, (one, zero), &x, &mut w, &y) },
    )?;
    Ok(ConvAlgorithms {
        forward,
        backward_data,
        backward_filter,
        workspace: [forward_ws, backward_data_ws, backward_filter_ws],
    })
}

/// The candidate with the least CUDA-event time over [`TIMED_RUNS`] runs, and its workspace
/// bytes. A candidate that cuDNN does not support for this shape (its workspace query or its
/// warm-up run fails) or that asks for more than [`WORKSPACE_LIMIT`] is passed over.
fn fastest<A: Copy + std::fmt::Debug>(
    stream: &Arc<CudaStream>,
    s: &Conv2dShape,
    candidates: &[A],
    workspace_size: impl Fn(A) -> std::result::Result<usize, CudnnError>,
    mut run: impl FnMut(A, Option<&mut CudaSlice<u8>>) -> std::result::Result<(), CudnnError>,
) -> Result<(A, usize)> {
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut best: Option<(A, usize, f32)> = None;
    let mut refusals = Vec::new();
    for &algo in candidates {
        let bytes = match workspace_size(algo) {
            Ok(bytes) if bytes <= WORKSPACE_LIMIT => bytes,
            Ok(bytes) => {
                refusals.push(format!("{algo:?}: {bytes} workspace bytes"));
                continue;
            }
            Err(e) => {
                refusals.push(format!("{algo:?}: {e:?}"));
                continue;
            }
        };
        let mut workspace = match bytes {
            0 => None,
            _ => Some(stream.alloc_zeros::<u8>(bytes)?),
        };
        if let Err(e) = run(algo, workspace.as_mut()) {
            refusals.push(format!("{algo:?}: {e:?}"));
            continue;
        }
        let start = stream.record_event(timing)?;
        for _ in 0..TIMED_RUNS {
            run(algo, workspace.as_mut()).map_err(cudnn_error)?;
        }
        let end = stream.record_event(timing)?;
        let ms = start.elapsed_ms(&end)?;
        if best.is_none_or(|(_, _, best_ms)| ms < best_ms) {
            best = Some((algo, bytes, ms));
        }
    }
    best.map(|(algo, bytes, _)| (algo, bytes))
        .ok_or_else(|| Error::Library {
            library: "cuDNN",
            message: format!("no algorithm runs the {s}: {}", refusals.join("; ")),
        })
}

/// Backward-data `ALGO_0` is the one non-deterministic algorithm; `ALGO_1` replaces it.
fn deterministic_data(algo: BwdDataAlgo) -> BwdDataAlgo {
    match algo {
        BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 => {
            BwdDataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1
        }
        other => other,
    }
}

/// Backward-filter `ALGO_0` and `ALGO_3` are non-deterministic; `ALGO_1` replaces them.
fn deterministic_filter(algo: BwdFilterAlgo) -> BwdFilterAlgo {
    match algo {
        BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
        | BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 => {
            BwdFilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1
        }
        other => other,
    }
}

/// The cuDNN handle, the plans made so far and the shared workspace.
pub(crate) struct ConvEngine {
    handle: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    plans: Plans,
    workspace: Option<CudaSlice<u8>>,
    /// How many workspaces have been allocated: a graph captured before the last holds the
    /// address of a freed one.
    workspaces_made: usize,
    choice: AlgorithmChoice,
    /// Whether TF32 tensor-core kernels may run (`CUDNN_DEFAULT_MATH`, else `CUDNN_FMA_MATH`).
    tf32: bool,
}

impl ConvEngine {
    /// A cuDNN handle on `stream`, or [`Error::Library`] when libcudnn cannot be loaded (cudarc
    /// would panic on the first call instead).
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<ConvEngine> {
        if !cudnn_raw::available() {
            return Err(Error::Library {
                library: "cuDNN",
                message: "libcudnn could not be loaded; install cuDNN 9 or put it on \
                          LD_LIBRARY_PATH (tools/cuda-libs.sh)"
                    .into(),
            });
        }
        Ok(ConvEngine {
            handle: Cudnn::new(stream.clone()).map_err(cudnn_error)?,
            stream: stream.clone(),
            plans: Plans::default(),
            workspace: None,
            workspaces_made: 0,
            choice: AlgorithmChoice::default(),
            tf32: false,
        })
    }

    pub(crate) fn choice(&self) -> AlgorithmChoice {
        self.choice
    }

    /// Picks later plans' algorithms by `choice`; the plans made so far are dropped when it
    /// changes, so every shape is planned the new way on its next call.
    pub(crate) fn set_choice(&mut self, choice: AlgorithmChoice) {
        if choice != self.choice {
            self.plans = Plans::default();
            self.choice = choice;
        }
    }

    /// Lets later plans use TF32 tensor-core kernels, or keeps them to FMA ones; the plans made
    /// so far are dropped when it changes (their algorithms were picked for the other math).
    pub(crate) fn set_tf32(&mut self, tf32: bool) {
        if tf32 != self.tf32 {
            self.plans.f32.clear();
            self.tf32 = tf32;
        }
    }

    /// The algorithms chosen so far, one entry per shape and storage.
    pub(crate) fn algorithms(&self) -> Vec<(Conv2dShape, ConvAlgorithms)> {
        let f32s = self.plans.f32.values().map(|p| (p.shape, p.algos));
        f32s.chain(self.plans.bf16.values().map(|p| (p.shape, p.algos)))
            .collect()
    }

    pub(crate) fn workspaces_made(&self) -> usize {
        self.workspaces_made
    }

    /// Validates `s` and the lengths, and makes its plan for data stored as `T` on first use
    /// (growing the workspace).
    fn prepare<T: ConvData>(
        &mut self,
        s: &Conv2dShape,
        layout: Layout,
        lens: [(&str, usize, usize); 3],
    ) -> Result<ConvKey> {
        s.validate()?;
        for (what, len, expected) in lens {
            check_len(what, len, expected)?;
        }
        let k = key(s, layout);
        if !T::plans(&mut self.plans).contains_key(&k) {
            let laid_out = match layout {
                Layout::Nchw => "",
                Layout::Nhwc => " channels-last",
            };
            let planning = format!("planning the {s} in {}{laid_out}", T::STORAGE);
            refuse_in_capture(&self.stream, &planning, ALLOCATES)?;
            // bf16 data has no FMA-only kernels to keep to: tensor cores, f32 accumulation.
            let math = match (T::STORAGE, self.tf32) {
                (Storage::Bf16, _) => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                (Storage::F32, true) => cudnnMathType_t::CUDNN_DEFAULT_MATH,
                (Storage::F32, false) => cudnnMathType_t::CUDNN_FMA_MATH,
            };
            let plan =
                ConvPlan::<T>::new(&self.handle, &self.stream, s, layout, self.choice, math)?;
            let need = plan.algos.workspace.into_iter().max().unwrap_or(0);
            let have = self.workspace.as_ref().map_or(0, |w| w.len());
            if need > have {
                // Free the old one first; its last use is ordered before the free on the stream.
                self.workspace = None;
                self.workspace = Some(self.stream.alloc_zeros::<u8>(need)?);
                self.workspaces_made += 1;
            }
            T::plans(&mut self.plans).insert(k, plan);
        }
        Ok(k)
    }

    /// `y = conv(x, w)`.
    pub(crate) fn forward<T: ConvData>(
        &mut self,
        s: &Conv2dShape,
        layout: Layout,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let k = self.prepare::<T>(
            s,
            layout,
            [
                ("conv2d x", x.len(), s.input_len()),
                ("conv2d weight", w.len(), s.weight_len()),
                ("conv2d y", y.len(), s.output_len()),
            ],
        )?;
        let plan = &T::plans_of(&self.plans)[&k];
        let op = ConvForward {
            conv: &plan.conv,
            x: &plan.x,
            w: &plan.w,
            y: &plan.y,
        };
        // SAFETY: the lengths match the descriptors (checked in `prepare`); the workspace holds
        // at least what the algorithm asked for.
        unsafe {
            op.launch(
                plan.algos.forward,
                self.workspace.as_mut(),
                (T::ONE, T::ZERO),
                x,
                w,
                y,
            )
        }
        .map_err(cudnn_error)
    }

    /// `dx = ∂/∂x` from `dy`, assigned (cuDNN beta 0) or added (beta 1) when `accumulate`.
    pub(crate) fn backward_data<T: ConvData>(
        &mut self,
        s: &Conv2dShape,
        layout: Layout,
        dy: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let k = self.prepare::<T>(
            s,
            layout,
            [
                ("conv2d dy", dy.len(), s.output_len()),
                ("conv2d weight", w.len(), s.weight_len()),
                ("conv2d dx", dx.len(), s.input_len()),
            ],
        )?;
        let plan = &T::plans_of(&self.plans)[&k];
        let op = ConvBackwardData {
            conv: &plan.conv,
            dx: &plan.x,
            w: &plan.w,
            dy: &plan.y,
        };
        let beta = if accumulate { T::ONE } else { T::ZERO };
        // SAFETY: as in `forward`.
        unsafe {
            op.launch(
                plan.algos.backward_data,
                self.workspace.as_mut(),
                (T::ONE, beta),
                dx,
                w,
                dy,
            )
        }
        .map_err(cudnn_error)
    }

    /// `dw = ∂/∂w`, assigned (cuDNN beta 0) or added (beta 1) when `accumulate`.
    pub(crate) fn backward_filter<T: ConvData>(
        &mut self,
        s: &Conv2dShape,
        layout: Layout,
        x: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dw: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let k = self.prepare::<T>(
            s,
            layout,
            [
                ("conv2d x", x.len(), s.input_len()),
                ("conv2d dy", dy.len(), s.output_len()),
                ("conv2d dw", dw.len(), s.weight_len()),
            ],
        )?;
        let plan = &T::plans_of(&self.plans)[&k];
        let beta = if accumulate { T::ONE } else { T::ZERO };
        let op = ConvBackwardFilter {
            conv: &plan.conv,
            x: &plan.x,
            dw: &plan.w,
            dy: &plan.y,
        };
        // SAFETY: as in `forward`.
        unsafe {
            op.launch(
                plan.algos.backward_filter,
                self.workspace.as_mut(),
                (T::ONE, beta),
                x,
                dw,
                dy,
            )
        }
        .map_err(cudnn_error)
    }
}
