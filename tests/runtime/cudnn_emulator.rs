//! The CUDA emulator's cuDNN convolution stand-ins (`tools/cuda-emu/libraries.cpp`) in what the
//! bf16 channels-last step asks of cuDNN: bf16 data with f32 compute, NHWC tensors and filters,
//! and an NHWC output (or output gradient) that is a channel slice of a wider tensor, through
//! cudarc's safe cuDNN API. Each pass is held to a direct f64 convolution computed here, exact up
//! to the one rounding to the output's type; and what cuDNN refuses is refused. Skipped on
//! anything but the emulator: a real cuDNN sums in its own order, which the backend's tests bound.
//!
//! Inputs are multiples of 1/16 below 8 in magnitude, so bf16 holds them, every product and sum
//! is exact in f64, and each result (with alpha 1.5 and a bf16 old value) has at most 24
//! significant bits: exact in f32, then rounded once to bf16 here as the stand-in must round it.

use crate::common::skip::or_return;
use c2f_kernels::cudnn_raw::{available, cudnn_error};
use c2f_kernels::testing::{gpu_or_skip, library_or_skip, SplitMix64};
use c2f_kernels::{Element, Gpu, Layout};
use cudarc::cudnn::result::CudnnError;
use cudarc::cudnn::sys::{
    cudnnConvolutionFwdAlgo_t, cudnnConvolutionMode_t, cudnnMathType_t, cudnnStatus_t,
    cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::CudaSlice;
use half::bf16;
use std::sync::Arc;

/// Batch, input channels, input rows and columns, output channels, kernel rows and columns:
/// all different, so that a swapped index reads another element.
const N: usize = 2;
const C: usize = 5;
const H: usize = 7;
const W: usize = 6;
const K: usize = 4;
const R: usize = 3;
const S: usize = 2;
/// Padding and stride (rows, columns), unequal for the same reason.
const PAD: [usize; 2] = [1, 0];
const STRIDE: [usize; 2] = [2, 1];
const OH: usize = (H + 2 * PAD[0] - R) / STRIDE[0] + 1;
const OW: usize = (W + 2 * PAD[1] - S) / STRIDE[1] + 1;
/// The output slice's place in its wider NHWC tensor: channels `SLICE_FIRST..SLICE_FIRST + K` of
/// `SLICE_TOTAL`, as one Inception branch's in its block's output.
const SLICE_FIRST: usize = 3;
const SLICE_TOTAL: usize = K + 6;

/// The emulator and a cuDNN handle on its stream, or `None` after saying why the test is skipped.
fn emulator_cudnn_or_skip(test: &str) -> Option<(Gpu, Arc<Cudnn>)> {
    let gpu = gpu_or_skip(test)?;
    if !gpu.is_emulator() {
        println!("{test}: skipped: not the CPU emulator");
        return None;
    }
    let made = if available() {
        Cudnn::new(gpu.stream().clone()).map_err(cudnn_error)
    } else {
        Err(cudnn_error("libcudnn could not be loaded"))
    };
    let handle = library_or_skip(test, made)?;
    Some((gpu, handle))
}

/// One operand of a convolution: its `[n, c, h, w]` dimensions (a filter's are `[K, C, R, S]`),
/// in `layout`, as channels `first..first + c` of a tensor of `total` channels.
#[derive(Clone, Copy)]
struct Operand {
    dims: [usize; 4],
    layout: Layout,
    first: usize,
    total: usize,
}

impl Operand {
    fn packed(dims: [usize; 4], layout: Layout) -> Operand {
        Operand {
            dims,
            layout,
            first: 0,
            total: dims[1],
        }
    }

    /// Elements of the whole (wider) tensor.
    fn len(&self) -> usize {
        self.dims[0] * self.total * self.dims[2] * self.dims[3]
    }

    /// Where element `(n, c, h, w)` lives in the whole tensor.
    fn index(&self, [n, c, h, w]: [usize; 4]) -> usize {
        let hw = self.dims[2] * self.dims[3];
        self.layout
            .offset(self.total, hw, n, self.first + c, h * self.dims[3] + w)
    }

    /// Every element's `(n, c, h, w)`.
    fn elements(&self) -> impl Iterator<Item = [usize; 4]> {
        let [dn, dc, dh, dw] = self.dims;
        (0..dn).flat_map(move |n| {
            (0..dc).flat_map(move |c| (0..dh).flat_map(move |h| (0..dw).map(move |w| [n, c, h, w])))
        })
    }

    fn strided(&self) -> bool {
        self.total != self.dims[1]
    }

    /// The strides of `n, c, h, w` from the operand's first element, as cuDNN takes them.
    fn strides(&self) -> [i32; 4] {
        let [n, c, h, w] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
            .map(|unit| (self.index(unit) - self.index([0; 4])) as i32);
        [n, c, h, w]
    }

    fn format(&self) -> cudnnTensorFormat_t {
        match self.layout {
            Layout::Nchw => cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            Layout::Nhwc => cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        }
    }
}

fn dims_i32(dims: [usize; 4]) -> [i32; 4] {
    dims.map(|d| d as i32)
}

/// The tensor descriptor of `op`: by format when packed; a slice by its strides, through
/// `cudnnSetTensor4dDescriptorEx` or, with `nd`, `cudnnSetTensorNdDescriptor`.
fn tensor<T: CudnnDataType>(
    handle: &Arc<Cudnn>,
    op: &Operand,
    nd: bool,
) -> Result<TensorDescriptor<T>, CudnnError> {
    let dims = dims_i32(op.dims);
    if !op.strided() {
        handle.create_4d_tensor::<T>(op.format(), dims)
    } else if nd {
        handle.create_nd_tensor::<T>(&dims, &op.strides())
    } else {
        handle.create_4d_tensor_ex::<T>(dims, op.strides())
    }
}

fn filter<T: CudnnDataType>(
    handle: &Arc<Cudnn>,
    op: &Operand,
) -> Result<FilterDescriptor<T>, CudnnError> {
    handle.create_4d_filter::<T>(op.format(), dims_i32(op.dims))
}

fn convolution(handle: &Arc<Cudnn>) -> Result<ConvDescriptor<f32>, CudnnError> {
    let mut conv = handle.create_conv2d::<f32>(
        [PAD[0] as i32, PAD[1] as i32],
        [STRIDE[0] as i32, STRIDE[1] as i32],
        [1, 1],
        cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_math_type(cudnnMathType_t::CUDNN_TENSOR_OP_MATH)?;
    Ok(conv)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// The convolution's three operands: input x, filter w, output y (or dx, dw, dy).
struct Operands {
    x: Operand,
    w: Operand,
    y: Operand,
}

impl Operands {
    /// Activations in `layout`, the filter in `filter_layout`, and y a channel slice if `slice`.
    fn new(layout: Layout, filter_layout: Layout, slice: bool) -> Operands {
        let mut y = Operand::packed([N, K, OH, OW], layout);
        if slice {
            (y.first, y.total) = (SLICE_FIRST, SLICE_TOTAL);
        }
        Operands {
            x: Operand::packed([N, C, H, W], layout),
            w: Operand::packed([K, C, R, S], filter_layout),
            y,
        }
    }

    /// The operand `pass` writes.
    fn out(&self, pass: Pass) -> &Operand {
        match pass {
            Pass::Forward => &self.y,
            Pass::BackwardData => &self.x,
            Pass::BackwardFilter => &self.w,
        }
    }
}

/// The pass computed directly in f64 from the whole tensors `xs`, `ws`, `ys` as `ops` lays
/// them out: the sum for each element of the written operand, at its index in that tensor.
fn reference(pass: Pass, ops: &Operands, xs: &[f64], ws: &[f64], ys: &[f64]) -> Vec<f64> {
    let mut acc = vec![0.0; ops.out(pass).len()];
    for n in 0..N {
        for k in 0..K {
            for oy in 0..OH {
                for ox in 0..OW {
                    for c in 0..C {
                        for r in 0..R {
                            for s in 0..S {
                                let iy = (oy * STRIDE[0] + r).checked_sub(PAD[0]);
                                let ix = (ox * STRIDE[1] + s).checked_sub(PAD[1]);
                                let (Some(iy), Some(ix)) = (iy, ix) else {
                                    continue;
                                };
                                if iy >= H || ix >= W {
                                    continue;
                                }
                                let xi = ops.x.index([n, c, iy, ix]);
                                let wi = ops.w.index([k, c, r, s]);
                                let yi = ops.y.index([n, k, oy, ox]);
                                match pass {
                                    Pass::Forward => acc[yi] += xs[xi] * ws[wi],
                                    Pass::BackwardData => acc[xi] += ys[yi] * ws[wi],
                                    Pass::BackwardFilter => acc[wi] += ys[yi] * xs[xi],
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    acc
}

/// A whole tensor for `op`: poison (NaN) everywhere, and where `values` is given, random
/// multiples of 1/16 in (-8, 8) at the operand's elements.
fn filled<T: Element>(op: &Operand, rng: &mut SplitMix64, values: bool) -> Vec<T> {
    let mut data = vec![T::from_f32(f32::NAN); op.len()];
    if values {
        for e in op.elements() {
            data[op.index(e)] = T::from_f64((rng.uniform(-127.0, 127.0)).round() / 16.0);
        }
    }
    data
}

fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&e| e.to_f64()).collect()
}

/// Runs `pass` with `(alpha, beta)` on the emulator and checks every element of the written
/// tensor: the operand's elements against `alpha·reference + beta·old` rounded once to `T`, the
/// rest still the poison they started as.
#[allow(clippy::too_many_arguments)]
fn check_pass<T: Element + CudnnDataType<Scalar = f32>>(
    test: &str,
    gpu: &Gpu,
    handle: &Arc<Cudnn>,
    pass: Pass,
    ops: &Operands,
    (alpha, beta): (f32, f32),
    seed: u64,
) {
    let mut rng = SplitMix64(seed);
    let out = *ops.out(pass);
    // The operands read hold values; the one written holds poison, or old values to add to.
    let old = beta != 0.0;
    let (x_values, w_values, y_values) = match pass {
        Pass::Forward => (true, true, old),
        Pass::BackwardData => (old, true, true),
        Pass::BackwardFilter => (true, old, true),
    };
    let xh = filled::<T>(&ops.x, &mut rng, x_values);
    let wh = filled::<T>(&ops.w, &mut rng, w_values);
    let yh = filled::<T>(&ops.y, &mut rng, y_values);
    let before = match pass {
        Pass::Forward => yh.clone(),
        Pass::BackwardData => xh.clone(),
        Pass::BackwardFilter => wh.clone(),
    };
    let acc = reference(pass, ops, &to_f64(&xh), &to_f64(&wh), &to_f64(&yh));
    let upload = |v: &[T]| -> CudaSlice<T> { gpu.upload(v).unwrap() };
    let (mut xd, mut wd, mut yd) = (upload(&xh), upload(&wh), upload(&yh));
    let conv = convolution(handle).unwrap();
    // The strided dy of a backward pass goes through cudnnSetTensorNdDescriptor, the forward
    // pass's strided y through cudnnSetTensor4dDescriptorEx.
    let x_desc = tensor::<T>(handle, &ops.x, false).unwrap();
    let w_desc = filter::<T>(handle, &ops.w).unwrap();
    let y_desc = tensor::<T>(handle, &ops.y, pass != Pass::Forward).unwrap();
    let (y_first, y_len) = (ops.y.first, ops.y.len());
    let scale = (T::from_f32(alpha), T::from_f32(beta));
    // The heuristic's first algorithm for a pass, and a workspace of the size it asks for.
    macro_rules! algorithm_and_workspace {
        ($op:expr) => {{
            let algo = $op.pick_algorithm().unwrap();
            let bytes = $op.get_workspace_size(algo).unwrap();
            (algo, gpu.alloc_zeros::<u8>(bytes.max(1)).unwrap())
        }};
    }
    let done = match pass {
        Pass::Forward => {
            let op = ConvForward {
                conv: &conv,
                x: &x_desc,
                w: &w_desc,
                y: &y_desc,
            };
            let (algo, mut ws) = algorithm_and_workspace!(op);
            let mut y_view = yd.slice_mut(y_first..y_len);
            // SAFETY: the descriptors describe these buffers (the view starts at y's first element).
            unsafe { op.launch(algo, Some(&mut ws), scale, &xd, &wd, &mut y_view) }
        }
        Pass::BackwardData => {
            let op = ConvBackwardData {
                conv: &conv,
                dx: &x_desc,
                w: &w_desc,
                dy: &y_desc,
            };
            let (algo, mut ws) = algorithm_and_workspace!(op);
            let y_view = yd.slice(y_first..y_len);
            // SAFETY: as above.
            unsafe { op.launch(algo, Some(&mut ws), scale, &mut xd, &wd, &y_view) }
        }
        Pass::BackwardFilter => {
            let op = ConvBackwardFilter {
                conv: &conv,
                x: &x_desc,
                dw: &w_desc,
                dy: &y_desc,
            };
            let (algo, mut ws) = algorithm_and_workspace!(op);
            let y_view = yd.slice(y_first..y_len);
            // SAFETY: as above.
            unsafe { op.launch(algo, Some(&mut ws), scale, &xd, &mut wd, &y_view) }
        }
    };
    done.unwrap_or_else(|e| panic!("{test}: {pass:?}: {e:?}"));
    let got = gpu
        .download(match pass {
            Pass::Forward => &yd,
            Pass::BackwardData => &xd,
            Pass::BackwardFilter => &wd,
        })
        .unwrap();
    let mut written = vec![false; out.len()];
    for e in out.elements() {
        let i = out.index(e);
        written[i] = true;
        let old = if beta == 0.0 {
            0.0
        } else {
            beta as f64 * before[i].to_f64()
        };
        let exact = alpha as f64 * acc[i] + old;
        assert_eq!(
            exact as f32 as f64, exact,
            "{test}: the exact result {exact} is not an f32, against this test's premise"
        );
        let want = T::from_f32(exact as f32);
        assert!(
            bytemuck::bytes_of(&got[i]) == bytemuck::bytes_of(&want),
            "{test}: {pass:?} (alpha {alpha}, beta {beta}) at {e:?}: {:?}, expected {:?} \
             (exact {exact})",
            got[i],
            want
        );
    }
    for (i, _) in written.iter().enumerate().filter(|(_, &w)| !w) {
        assert!(
            bytemuck::bytes_of(&got[i]) == bytemuck::bytes_of(&before[i]),
            "{test}: {pass:?} wrote element {i} of the wider tensor, outside its slice"
        );
    }
}

/// Every pass, overwriting poison (alpha 1, beta 0) and accumulating (alpha 1.5, beta 1).
fn check_passes<T: Element + CudnnDataType<Scalar = f32>>(test: &str, ops: Operands) {
    let (gpu, handle) = or_return!(emulator_cudnn_or_skip(test));
    let mut seed = 1;
    for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
        for scale in [(1.0, 0.0), (1.5, 1.0)] {
            check_pass::<T>(test, &gpu, &handle, pass, &ops, scale, seed);
            seed += 1;
        }
    }
}

#[test]
fn emulator_cudnn_convolutions_in_bf16_nchw() {
    check_passes::<bf16>(
        "cudnn_emulator emulator_cudnn_convolutions_in_bf16_nchw",
        Operands::new(Layout::Nchw, Layout::Nchw, false),
    );
}

#[test]
fn emulator_cudnn_convolutions_in_f32_nhwc() {
    check_passes::<f32>(
        "cudnn_emulator emulator_cudnn_convolutions_in_f32_nhwc",
        Operands::new(Layout::Nhwc, Layout::Nhwc, false),
    );
}

#[test]
fn emulator_cudnn_convolutions_in_bf16_nhwc() {
    check_passes::<bf16>(
        "cudnn_emulator emulator_cudnn_convolutions_in_bf16_nhwc",
        Operands::new(Layout::Nhwc, Layout::Nhwc, false),
    );
}

#[test]
fn emulator_cudnn_convolutions_in_bf16_nhwc_with_y_a_channel_slice() {
    check_passes::<bf16>(
        "cudnn_emulator emulator_cudnn_convolutions_in_bf16_nhwc_with_y_a_channel_slice",
        Operands::new(Layout::Nhwc, Layout::Nhwc, true),
    );
}

fn status(result: Result<impl std::fmt::Debug, CudnnError>) -> cudnnStatus_t {
    match result {
        Ok(v) => panic!("refused by cuDNN, yet the emulator answered {v:?}"),
        Err(e) => e.0,
    }
}

#[test]
fn emulator_cudnn_refuses_mixed_types_bf16_compute_and_unsupported_algorithms() {
    let test =
        "cudnn_emulator emulator_cudnn_refuses_mixed_types_bf16_compute_and_unsupported_algorithms";
    let (gpu, handle) = or_return!(emulator_cudnn_or_skip(test));
    let ops = Operands::new(Layout::Nhwc, Layout::Nhwc, false);
    let conv = convolution(&handle).unwrap();
    let x_desc = tensor::<bf16>(&handle, &ops.x, false).unwrap();
    let w_desc = filter::<bf16>(&handle, &ops.w).unwrap();
    let mut rng = SplitMix64(7);
    let x = gpu.upload(&filled::<bf16>(&ops.x, &mut rng, true)).unwrap();
    let w = gpu.upload(&filled::<bf16>(&ops.w, &mut rng, true)).unwrap();
    let mut ws = gpu.alloc_zeros::<u8>(1 << 16).unwrap();
    let precomp = cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;

    // bf16 x and w with an f32 y: no cuDNN configuration mixes them; nothing is written.
    let y32_desc = tensor::<f32>(&handle, &ops.y, false).unwrap();
    let mut y32 = gpu.alloc_poisoned::<f32>(ops.y.len()).unwrap();
    let mixed = ConvForward {
        conv: &conv,
        x: &x_desc,
        w: &w_desc,
        y: &y32_desc,
    };
    assert_eq!(
        status(mixed.pick_algorithm()),
        cudnnStatus_t::CUDNN_STATUS_BAD_PARAM
    );
    // SAFETY: the buffers match their descriptors; the call must be refused.
    let launched = unsafe { mixed.launch(precomp, Some(&mut ws), (1.0, 0.0), &x, &w, &mut y32) };
    assert_eq!(status(launched), cudnnStatus_t::CUDNN_STATUS_BAD_PARAM);
    let y_after = gpu.download(&y32).unwrap();
    assert!(
        y_after.iter().all(|v| v.is_nan()),
        "{test}: a refused convolution wrote its output"
    );

    // bf16 data with a bf16 compute type: cuDNN has PSEUDO_BFLOAT16_CONFIG only.
    let conv16 = handle
        .create_conv2d::<bf16>(
            [PAD[0] as i32, PAD[1] as i32],
            [STRIDE[0] as i32, STRIDE[1] as i32],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .unwrap();
    let y_desc = tensor::<bf16>(&handle, &ops.y, false).unwrap();
    let bf16_compute = ConvForward {
        conv: &conv16,
        x: &x_desc,
        w: &w_desc,
        y: &y_desc,
    };
    assert_eq!(
        status(bf16_compute.get_workspace_size(precomp)),
        cudnnStatus_t::CUDNN_STATUS_NOT_SUPPORTED
    );

    // bf16 NHWC: the heuristic offers an implicit GEMM; FFT, Winograd and the explicit GEMM
    // are refused.
    let bf16_nhwc = ConvForward {
        conv: &conv,
        x: &x_desc,
        w: &w_desc,
        y: &y_desc,
    };
    let picked = bf16_nhwc.pick_algorithm().unwrap();
    assert!(
        matches!(
            picked,
            cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM
                | cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
        ),
        "{test}: picked {picked:?}"
    );
    for algo in [
        cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    ] {
        assert_eq!(
            status(bf16_nhwc.get_workspace_size(algo)),
            cudnnStatus_t::CUDNN_STATUS_NOT_SUPPORTED,
            "{test}: {algo:?}"
        );
    }

    // An NHWC filter with NCHW activations.
    let x_nchw =
        tensor::<bf16>(&handle, &Operand::packed(ops.x.dims, Layout::Nchw), false).unwrap();
    let y_nchw =
        tensor::<bf16>(&handle, &Operand::packed(ops.y.dims, Layout::Nchw), false).unwrap();
    let mixed_layouts = ConvForward {
        conv: &conv,
        x: &x_nchw,
        w: &w_desc,
        y: &y_nchw,
    };
    assert_eq!(
        status(mixed_layouts.pick_algorithm()),
        cudnnStatus_t::CUDNN_STATUS_NOT_SUPPORTED
    );
}
