// Stand-ins for the parts of cuDNN (convolutions; batch norm, activations, pooling, softmax and
// tensor addition for bench baselines), cuBLAS (GEMM, axpy, scal) and NCCL (a world of one) that
// our CUDA backend, collective and benchmarks' baselines call, in the emulator's shared object;
// build.py links libcudnn.so, libcublas.so and libnccl.so to it. Plain loops in a fixed order, accumulating in f64: the real libraries sum
// in tiles, far closer to exact than one long f32 sum, and the stand-ins are not what is under
// test, so they err on the exact side. Like the real libraries they check descriptors and
// leading dimensions, and the emulator also checks that every operand (the whole extent its
// strides span) lies inside one device allocation, naming the call. Each call that works on a
// stream goes through emu::enqueue, so that a captured stream records it into the CUDA graph: holding
// its descriptors and host scalars by value, as the real libraries read them when called. Where
// the math type or mode lets the real library use TF32 tensor cores on the emulated H100, the
// convolutions and GEMMs round their f32 inputs to TF32 first, as those do; products and sums
// stay exact.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.cuh"
#include "memory.h"

namespace {

// ----- cuDNN 9 -----

typedef int cudnnStatus_t;
enum : cudnnStatus_t {
    CUDNN_STATUS_SUCCESS = 0,
    CUDNN_STATUS_BAD_PARAM = 2000,
    CUDNN_STATUS_NOT_SUPPORTED = 3000,
    CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER = 5001,
};
constexpr int CUDNN_DATA_FLOAT = 0, CUDNN_DATA_BFLOAT16 = 9;
constexpr int CUDNN_TENSOR_NCHW = 0, CUDNN_TENSOR_NHWC = 1;
constexpr int CUDNN_CROSS_CORRELATION = 1;
constexpr int CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1;

struct Handle {
    void* stream = nullptr;
};
// A 4-d tensor or filter descriptor: its dimensions and each one's stride in elements. A filter
// in the NHWC format is stored K,R,S,C (output channel, kernel row, kernel column, input
// channel); a tensor given by strides alone has no format (-1).
struct Tensor4d {
    int dtype = -1, format = -1, n = 0, c = 0, h = 0, w = 0;
    long long stride[4] = {0, 0, 0, 0};  // of n, c, h, w

    // Only f32 and bf16 are computed; other types are refused before their size matters.
    size_t element_bytes() const { return dtype == CUDNN_DATA_BFLOAT16 ? 2 : 4; }
    // From the first element to past the last: what the operand's buffer must hold.
    size_t bytes() const {
        return (at(n - 1, c - 1, h - 1, w - 1) + 1) * element_bytes();
    }
    size_t at(int in, int ic, int ih, int iw) const {
        return (size_t)(in * stride[0] + ic * stride[1] + ih * stride[2] + iw * stride[3]);
    }
    // The strides of a packed tensor in `layout` (NCHW or NHWC).
    void pack(int layout) {
        const long long packed[2][4] = {{(long long)c * h * w, (long long)h * w, w, 1},
                                        {(long long)h * w * c, 1, (long long)w * c, c}};
        std::memcpy(stride, packed[layout == CUDNN_TENSOR_NHWC], sizeof stride);
    }
    // Whether the strides are those of a packed tensor in `layout`, but for dimensions of one,
    // whose stride never counts.
    bool packed(int layout) const {
        Tensor4d p = *this;
        p.pack(layout);
        const int dims[4] = {n, c, h, w};
        for (int i = 0; i < 4; ++i)
            if (dims[i] > 1 && stride[i] != p.stride[i]) return false;
        return true;
    }
    // Channels innermost, as cuDNN's NHWC kernels read them: NHWC, or a channel slice of it.
    bool channels_last() const { return c == 1 || (stride[1] == 1 && stride[3] >= c); }
};
constexpr int CUDNN_DEFAULT_MATH = 0, CUDNN_FMA_MATH = 3;
struct Convolution {
    int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
    int mode = -1, dtype = -1, groups = 1, math = CUDNN_DEFAULT_MATH;
};

// The math type of the last convolution and the math mode of the last GEMM the thread ran (-1:
// none yet), for tests that a precision setting reaches the library calls.
thread_local int t_last_convolution_math = -1, t_last_gemm_math = -1;

// `v` rounded to TF32 (10 mantissa bits), to nearest with ties away from zero as the GPU's
// cvt.rna.tf32.f32 does; infinities and NaN pass.
float to_tf32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) == 0x7f800000u) return v;
    bits = (bits + 0x1000u) & ~0x1fffu;
    std::memcpy(&v, &bits, 4);
    return v;
}

// A convolution's input as the library's kernels see it: TF32 unless the math type is FMA only
// (cuDNN's default and tensor-op math types allow TF32 for f32 data on sm_80 and later).
float conv_input(const Convolution* cv, float v) { return cv->math == CUDNN_FMA_MATH ? v : to_tf32(v); }
// cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t share this layout.
struct AlgoPerf {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    int determinism;
    int math_type;
    int reserved[3];
};

enum class Op { Forward, BackwardData, BackwardFilter };

// The algorithms each query ranks first and second: for the backward passes a non-deterministic
// one first, as cuDNN's heuristic often does, so the backend's substitution is exercised.
struct Ranked {
    int algo;
    int determinism;
};
const Ranked kForward[] = {{1, CUDNN_DETERMINISTIC}, {0, CUDNN_DETERMINISTIC}};
const Ranked kBackward[] = {{0, CUDNN_NON_DETERMINISTIC}, {1, CUDNN_DETERMINISTIC}};

// Workspace bytes an algorithm asks for: some for every algorithm but the implicit-GEMM forward,
// so the backend's workspace reaches the calls.
size_t workspace_bytes(Op op, int algo) {
    if (op == Op::Forward && algo == 0) return 0;
    return 4096 * (size_t)(algo + 1);
}

// Whether cuDNN runs `algo` for this convolution, by the rules of its algorithm tables that our
// calls meet, so that a caller trying every algorithm meets refusals: the FFT algorithms need
// unit strides and packed NCHW x and y; bf16 data (PSEUDO_BFLOAT16_CONFIG) and NHWC filters run
// only on the implicit GEMMs (forward IMPLICIT_GEMM and IMPLICIT_PRECOMP_GEMM, backward ALGO_0
// and ALGO_1), not on FFT, Winograd or the explicit GEMM; backward-filter WINOGRAD (4) is listed
// but not implemented.
bool supported(Op op, int algo, const Convolution* cv, const Tensor4d* x, const Tensor4d* w,
               const Tensor4d* y) {
    const int count = op == Op::Forward ? 8 : op == Op::BackwardData ? 6 : 7;
    if (algo < 0 || algo >= count) return false;
    if (op == Op::BackwardFilter && algo == 4) return false;
    if (x->dtype == CUDNN_DATA_BFLOAT16 || w->format == CUDNN_TENSOR_NHWC) return algo <= 1;
    const bool fft = op == Op::Forward        ? algo == 4 || algo == 5
                     : op == Op::BackwardData ? algo == 2 || algo == 3
                                              : algo == 2 || algo == 6;
    return !(fft && (cv->stride_h != 1 || cv->stride_w != 1 || !x->packed(CUDNN_TENSOR_NCHW) ||
                     !y->packed(CUDNN_TENSOR_NCHW)));
}

cudnnStatus_t bad(const std::string& call, const std::string& why) {
    emu::report(call + ": " + why);
    return CUDNN_STATUS_BAD_PARAM;
}

// A descriptor's value when a call is issued, which a captured call holds (null for null).
template <typename T>
std::shared_ptr<const T> kept(const T* descriptor) {
    return descriptor ? std::make_shared<const T>(*descriptor) : nullptr;
}

// A cuDNN call on its handle's stream (emu::enqueue).
cudnnStatus_t on_stream(const Handle* h, const std::string& call, std::function<int()> work) {
    if (!h) return bad(call, "a null handle");
    return emu::enqueue(h->stream, call, std::move(work), CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER);
}

int out_extent(int in, int pad, int dil, int k, int stride) {
    return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// Checks that x, w, y and the convolution fit together, as cuDNN does: one data type for the
// three (else BAD_PARAM), f32 (FLOAT_CONFIG) or bf16 (PSEUDO_BFLOAT16_CONFIG) with an f32
// compute type, as cuDNN has no bf16 compute type for convolutions (else NOT_SUPPORTED).
cudnnStatus_t check_shapes(const std::string& call, const Tensor4d* x, const Tensor4d* w,
                           const Convolution* conv, const Tensor4d* y) {
    if (!x || !w || !conv || !y) return bad(call, "a null descriptor");
    if (x->dtype != w->dtype || x->dtype != y->dtype)
        return bad(call, "x, w and y have the data types " + std::to_string(x->dtype) + ", " +
                             std::to_string(w->dtype) + " and " + std::to_string(y->dtype));
    if ((x->dtype != CUDNN_DATA_FLOAT && x->dtype != CUDNN_DATA_BFLOAT16) ||
        conv->dtype != CUDNN_DATA_FLOAT) {
        emu::report(call + ": data type " + std::to_string(x->dtype) + " with compute type " +
                    std::to_string(conv->dtype) +
                    ": only f32 and bf16 data with f32 compute are emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (conv->mode != CUDNN_CROSS_CORRELATION || conv->groups != 1) {
        emu::report(call + ": only ungrouped cross-correlation is emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (w->format == CUDNN_TENSOR_NHWC && (!x->channels_last() || !y->channels_last())) {
        emu::report(call + ": an NHWC filter needs channels-last x and y");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (x->c != w->c) return bad(call, "input channels " + std::to_string(x->c) +
                                           " but the filter has " + std::to_string(w->c));
    const int oh = out_extent(x->h, conv->pad_h, conv->dil_h, w->h, conv->stride_h);
    const int ow = out_extent(x->w, conv->pad_w, conv->dil_w, w->w, conv->stride_w);
    if (y->n != x->n || y->c != w->n || y->h != oh || y->w != ow)
        return bad(call, "output descriptor " + std::to_string(y->n) + "x" + std::to_string(y->c) +
                             "x" + std::to_string(y->h) + "x" + std::to_string(y->w) +
                             ", the convolution gives " + std::to_string(x->n) + "x" +
                             std::to_string(w->n) + "x" + std::to_string(oh) + "x" +
                             std::to_string(ow));
    return CUDNN_STATUS_SUCCESS;
}

// The convolution's input x, filter w and output y, whichever of them a pass writes.
struct Operands {
    const Tensor4d* x;
    const void* xp;
    const Tensor4d* w;
    const void* wp;
    const Tensor4d* y;
    const void* yp;
};

// Element `i` of an input as the library's kernels see it: bf16 exactly, f32 as `conv_input`.
double conv_element(const Tensor4d& d, const void* p, size_t i, const Convolution* cv) {
    if (d.dtype == CUDNN_DATA_BFLOAT16) return load_f32(static_cast<const bf16_bits*>(p), (long long)i);
    return conv_input(cv, static_cast<const float*>(p)[i]);
}

// `v` rounded once to bf16, to nearest even: bf16 keeps f32's exponent range and 8 significant
// bits, its subnormals 2^-133 apart. Scaling by powers of two is exact and nearbyint rounds
// ties to even in the default rounding mode.
bf16_bits bf16_nearest(double v) {
    if (v == 0.0 || !std::isfinite(v)) return f32_to_bf16((float)v);
    int e;
    std::frexp(v, &e);  // |v| in [2^(e-1), 2^e)
    const int quantum = std::max(e - 8, -133);
    const double r = std::ldexp(std::nearbyint(std::ldexp(v, -quantum)), quantum);
    if (std::fabs(r) >= 0x1p128) return r < 0 ? 0xff80 : 0x7f80;
    return f32_to_bf16((float)r);  // exact: r is a bf16 value
}

// One of the three convolutions, after cuDNN's checks: each tap's product of the two operands
// `op` reads goes into the f64 sum of the element of `out` (x, w or y, by `op`) it belongs to,
// then out = alpha acc + beta out, without reading out when beta is 0, rounded once to out's
// type. For bf16 that is the tensor-core epilogue's one rounding of the f32 accumulator; the
// real library differs from this exact sum by its f32 summation order, within f32 accumulation
// error, which the callers' tests bound.
cudnnStatus_t convolve(const std::string& call, Op op, const Operands& o, const Convolution* cv,
                       int algo, const void* workspace, size_t workspace_size, float alpha,
                       float beta, void* out) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    if (cudnnStatus_t s = check_shapes(call, o.x, o.w, cv, o.y)) return s;
    if (!supported(op, algo, cv, o.x, o.w, o.y)) return CUDNN_STATUS_NOT_SUPPORTED;
    const struct {
        const char* name;
        const void* ptr;
        size_t bytes;
    } operands[] = {{"x", o.xp, o.x->bytes()}, {"w", o.wp, o.w->bytes()}, {"y", o.yp, o.y->bytes()}};
    for (const auto& operand : operands)
        if (!emu::is_device_range(operand.ptr, operand.bytes))
            return bad(call, std::string(operand.name) + " (" + std::to_string(operand.bytes) +
                                 " bytes by its descriptor) is not inside one device allocation");
    const size_t need = workspace_bytes(op, algo);
    if (workspace_size < need)
        return bad(call, "algorithm " + std::to_string(algo) + " needs " + std::to_string(need) +
                             " workspace bytes, given " + std::to_string(workspace_size));
    if (need > 0 && !emu::is_device_range(workspace, need))
        return bad(call, "the workspace is not inside one device allocation");
    t_last_convolution_math = cv->math;
    const Tensor4d &x = *o.x, &w = *o.w, &y = *o.y;
    const Tensor4d& od = op == Op::Forward ? y : op == Op::BackwardData ? x : w;
    // The sums in od's logical NCHW order, which `logical` gives from its n, c, h, w.
    std::vector<double> acc((size_t)od.n * od.c * od.h * od.w, 0.0);
    const auto logical = [&od](int n, int c, int h, int w) {
        return (((size_t)n * od.c + c) * od.h + h) * od.w + w;
    };
    for (int n = 0; n < y.n; ++n)
        for (int k = 0; k < y.c; ++k)
            for (int oy = 0; oy < y.h; ++oy)
                for (int ox = 0; ox < y.w; ++ox)
                    for (int c = 0; c < x.c; ++c)
                        for (int ky = 0; ky < w.h; ++ky) {
                            const int iy = oy * cv->stride_h - cv->pad_h + ky * cv->dil_h;
                            if (iy < 0 || iy >= x.h) continue;
                            for (int kx = 0; kx < w.w; ++kx) {
                                const int ix = ox * cv->stride_w - cv->pad_w + kx * cv->dil_w;
                                if (ix < 0 || ix >= x.w) continue;
                                const auto xv = [&] { return conv_element(x, o.xp, x.at(n, c, iy, ix), cv); };
                                const auto wv = [&] { return conv_element(w, o.wp, w.at(k, c, ky, kx), cv); };
                                const auto yv = [&] { return conv_element(y, o.yp, y.at(n, k, oy, ox), cv); };
                                if (op == Op::Forward)
                                    acc[logical(n, k, oy, ox)] += xv() * wv();
                                else if (op == Op::BackwardData)
                                    acc[logical(n, c, iy, ix)] += yv() * wv();
                                else
                                    acc[logical(k, c, ky, kx)] += yv() * xv();
                            }
                        }
    for (int n = 0; n < od.n; ++n)
        for (int c = 0; c < od.c; ++c)
            for (int h = 0; h < od.h; ++h)
                for (int w = 0; w < od.w; ++w) {
                    const double a = alpha * acc[logical(n, c, h, w)];
                    const size_t i = od.at(n, c, h, w);
                    if (od.dtype == CUDNN_DATA_BFLOAT16) {
                        bf16_bits* p = static_cast<bf16_bits*>(out);
                        p[i] = bf16_nearest(beta == 0.0f ? a : a + beta * (double)load_f32(p, (long long)i));
                    } else {
                        float* p = static_cast<float*>(out);
                        p[i] = (float)(beta == 0.0f ? a : a + beta * (double)p[i]);
                    }
                }
    return CUDNN_STATUS_SUCCESS;
}

// The two ranked algorithms (kForward, kBackward) that cuDNN runs for this convolution.
cudnnStatus_t find(Op op, const Tensor4d* x, const Tensor4d* w, const Convolution* cv,
                   const Tensor4d* y, int requested, int* returned, AlgoPerf* results) {
    const Ranked* ranked = op == Op::Forward ? kForward : kBackward;
    int count = 0;
    for (int i = 0; i < 2 && count < requested; ++i) {
        if (!supported(op, ranked[i].algo, cv, x, w, y)) continue;
        results[count] = AlgoPerf{};
        results[count].algo = ranked[i].algo;
        results[count].status = CUDNN_STATUS_SUCCESS;
        results[count].memory = workspace_bytes(op, ranked[i].algo);
        results[count].determinism = ranked[i].determinism;
        ++count;
    }
    *returned = count;
    return CUDNN_STATUS_SUCCESS;
}

// Batch norm (spatial mode) and ReLU, for the batch-norm bench's cuDNN baseline: the same
// formulas as PyTorch's BatchNorm2d (biased variance to normalise, unbiased into the running one).
constexpr int CUDNN_BATCHNORM_SPATIAL = 1;
constexpr int CUDNN_ACTIVATION_SIGMOID = 0, CUDNN_ACTIVATION_RELU = 1;
struct Activation {
    int mode = -1;
};

// Whether every operand lies inside one device allocation, reporting the first that does not.
bool in_device(const std::string& call,
               std::initializer_list<std::pair<const char*, std::pair<const void*, size_t>>> operands) {
    for (const auto& [name, range] : operands)
        if (!emu::is_device_range(range.first, range.second)) {
            bad(call, std::string(name) + " (" + std::to_string(range.second) +
                          " bytes by its descriptor) is not inside one device allocation");
            return false;
        }
    return true;
}

// Whether every descriptor given is a packed NCHW f32 tensor, the one kind the stand-ins other
// than the convolutions compute; reports the call and the first that is not.
bool plain(const std::string& call, std::initializer_list<const Tensor4d*> descriptors) {
    for (const Tensor4d* d : descriptors)
        if (d && (d->dtype != CUDNN_DATA_FLOAT || !d->packed(CUDNN_TENSOR_NCHW))) {
            emu::report(call + ": only packed NCHW f32 tensors are emulated");
            return false;
        }
    return true;
}

// Checks a batch-norm call's descriptors: spatial mode, f32 activations and a 1xCx1x1 f32
// per-channel descriptor.
cudnnStatus_t check_batch_norm(const std::string& call, int mode, const Tensor4d* x,
                               const Tensor4d* y, const Tensor4d* stats) {
    if (mode != CUDNN_BATCHNORM_SPATIAL) {
        emu::report(call + ": only spatial batch norm is emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (!x || !y || !stats) return bad(call, "a null descriptor");
    if (!plain(call, {x, y, stats})) return CUDNN_STATUS_BAD_PARAM;
    if (y->n != x->n || y->c != x->c || y->h != x->h || y->w != x->w)
        return bad(call, "x and y descriptors differ");
    if (stats->n != 1 || stats->c != x->c || stats->h != 1 || stats->w != 1)
        return bad(call, "the per-channel descriptor is not 1x" + std::to_string(x->c) + "x1x1");
    return CUDNN_STATUS_SUCCESS;
}

// Pooling for the pooling benches' cuDNN baseline: max (modes 0 and 3; the first maximum of a
// window in row-major order takes the gradient) and average (1 counts the padding, 2 does not).
struct Pooling {
    int mode = -1, window[2] = {0, 0}, pad[2] = {0, 0}, stride[2] = {1, 1};
};

// Calls `each(n*c plane, output index within plane, window's input indices within plane)` for
// every output, the window clipped to the input.
template <typename Each>
void for_each_window(const Pooling& p, const Tensor4d& x, const Tensor4d& y, Each each) {
    std::vector<size_t> window;
    for (int plane = 0; plane < x.n * x.c; ++plane)
        for (int oy = 0; oy < y.h; ++oy)
            for (int ox = 0; ox < y.w; ++ox) {
                window.clear();
                for (int ky = 0; ky < p.window[0]; ++ky)
                    for (int kx = 0; kx < p.window[1]; ++kx) {
                        const int iy = oy * p.stride[0] - p.pad[0] + ky;
                        const int ix = ox * p.stride[1] - p.pad[1] + kx;
                        if (iy >= 0 && iy < x.h && ix >= 0 && ix < x.w) window.push_back((size_t)iy * x.w + ix);
                    }
                each((size_t)plane, (size_t)oy * y.w + ox, window);
            }
}

// Checks a pooling call's descriptors: f32, and y the shape the pooling gives x.
cudnnStatus_t check_pooling(const std::string& call, const Pooling* p, const Tensor4d* x, const Tensor4d* y) {
    if (!p || !x || !y) return bad(call, "a null descriptor");
    if (!plain(call, {x, y})) return CUDNN_STATUS_BAD_PARAM;
    const int oh = out_extent(x->h, p->pad[0], 1, p->window[0], p->stride[0]);
    const int ow = out_extent(x->w, p->pad[1], 1, p->window[1], p->stride[1]);
    if (y->n != x->n || y->c != x->c || y->h != oh || y->w != ow)
        return bad(call, "y descriptor " + std::to_string(y->h) + "x" + std::to_string(y->w) +
                             ", the pooling gives " + std::to_string(oh) + "x" + std::to_string(ow));
    return CUDNN_STATUS_SUCCESS;
}

// ----- cuBLAS -----

typedef int cublasStatus_t;
enum : cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};

struct BlasHandle {
    void* stream = nullptr;
    int math = 0;  // CUBLAS_DEFAULT_MATH
};

// A cuBLAS call on its handle's stream (emu::enqueue).
cublasStatus_t on_stream(const BlasHandle* h, const std::string& call, std::function<int()> work) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    return emu::enqueue(h->stream, call, std::move(work), CUBLAS_STATUS_EXECUTION_FAILED);
}
constexpr int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;
constexpr int CUDA_R_32F = 0, CUDA_R_16BF = 14;
// The math modes `cublasSetMathMode` takes (a handle holds its mode), less the flag bits above 15.
constexpr int CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3, CUBLAS_MATH_MODES = 0xf;
int math_mode(const BlasHandle* h) { return h ? h->math : CUBLAS_DEFAULT_MATH; }

// The kernels' own conversions (common.cuh): bf16 rounds to nearest even, as on the GPU side.
float load(const void* p, int type, size_t i) {
    return type == CUDA_R_32F ? load_f32(static_cast<const float*>(p), (long long)i)
                              : load_f32(static_cast<const bf16_bits*>(p), (long long)i);
}

void store(void* p, int type, size_t i, float v) {
    if (type == CUDA_R_32F)
        store_f32(static_cast<float*>(p), (long long)i, v);
    else
        store_f32(static_cast<bf16_bits*>(p), (long long)i, v);
}

struct Matrix {
    const char* name;
    const void* ptr;
    int type;
    bool transposed;
    int rows, cols;  // of op(M)
    long long ld, stride;
    // Stored column-major as (rows x cols), or (cols x rows) when transposed.
    size_t index(int i, int j) const {
        return transposed ? (size_t)j + (size_t)i * ld : (size_t)i + (size_t)j * ld;
    }
    int stored_rows() const { return transposed ? cols : rows; }
    int stored_cols() const { return transposed ? rows : cols; }
};

cublasStatus_t gemm(const char* call, int ta, int tb, int m, int n, int k, float alpha,
                    const void* a, int a_type, int lda, long long stride_a, const void* b,
                    int b_type, int ldb, long long stride_b, float beta, void* c, int c_type,
                    int ldc, long long stride_c, int batch, int math) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    t_last_gemm_math = math;
    // Only the TF32 mode lets f32 GEMMs round their inputs (bf16 ones are TF32 already).
    const bool tf32 = (math & CUBLAS_MATH_MODES) == CUBLAS_TF32_TENSOR_OP_MATH;
    const auto input = [tf32](float v) { return tf32 ? to_tf32(v) : v; };
    const auto invalid = [&](const std::string& why) {
        emu::report(std::string(call) + ": " + why);
        return CUBLAS_STATUS_INVALID_VALUE;
    };
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return invalid("only N and T operations are emulated");
    if (m < 0 || n < 0 || k < 0 || batch < 0) return invalid("a negative dimension");
    const Matrix A{"A", a, a_type, ta == CUBLAS_OP_T, m, k, lda, stride_a};
    const Matrix B{"B", b, b_type, tb == CUBLAS_OP_T, k, n, ldb, stride_b};
    const Matrix C{"C", c, c_type, false, m, n, ldc, stride_c};
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    for (const Matrix* x : {&A, &B, &C}) {
        if (x->ld < (x->stored_rows() > 1 ? x->stored_rows() : 1))
            return invalid(std::string("ld") + x->name + " " + std::to_string(x->ld) +
                           " is below the rows " + std::to_string(x->stored_rows()));
        if (x->stored_cols() == 0) continue;
        const size_t elem = x->type == CUDA_R_32F ? 4 : 2;
        const size_t last = (size_t)(batch - 1) * x->stride +
                            (size_t)(x->stored_cols() - 1) * x->ld + x->stored_rows();
        if (!emu::is_device_range(x->ptr, last * elem))
            return invalid(std::string(x->name) + " (" + std::to_string(last * elem) +
                           " bytes by its dimensions) is not inside one device allocation");
    }
    for (int p = 0; p < batch; ++p) {
        const char* ap = static_cast<const char*>(a) + (size_t)p * stride_a * (a_type == CUDA_R_32F ? 4 : 2);
        const char* bp = static_cast<const char*>(b) + (size_t)p * stride_b * (b_type == CUDA_R_32F ? 4 : 2);
        char* cp = static_cast<char*>(c) + (size_t)p * stride_c * (c_type == CUDA_R_32F ? 4 : 2);
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                double acc = 0.0;
                for (int l = 0; l < k; ++l)
                    acc += (double)input(load(ap, a_type, A.index(i, l))) *
                           input(load(bp, b_type, B.index(l, j)));
                const size_t ci = C.index(i, j);
                const double old = beta == 0.0f ? 0.0 : (double)beta * load(cp, c_type, ci);
                store(cp, c_type, ci, (float)(alpha * acc + old));
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}

// ----- NCCL, a world of one: the emulator has one device -----

typedef int ncclResult_t;
enum : ncclResult_t {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
};
constexpr int ncclSum = 0, ncclAvg = 4;

struct ncclUniqueId {
    char internal[128];
};
struct Communicator {
    int rank;
};

// Bytes per element of ncclDataType_t 0..11 (int8 ... fp8 e5m2).
int nccl_type_bytes(int type) {
    static const int bytes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1};
    return type >= 0 && type < 12 ? bytes[type] : 0;
}

// A collective over one rank leaves the values as they are: copies send to recv when they differ.
ncclResult_t copy_through(const char* call, const void* send, void* recv, size_t count, int type) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const size_t bytes = count * (size_t)nccl_type_bytes(type);
    if (nccl_type_bytes(type) == 0) {
        emu::report(std::string(call) + ": unknown data type " + std::to_string(type));
        return ncclInvalidArgument;
    }
    if (!emu::is_device_range(send, bytes) || !emu::is_device_range(recv, bytes)) {
        emu::report(std::string(call) + ": " + std::to_string(bytes) +
                    " bytes are not inside one device allocation");
        return ncclInvalidArgument;
    }
    if (send != recv) std::memmove(recv, send, bytes);
    return ncclSuccess;
}

}  // namespace

#define CUDNN extern "C" __attribute__((visibility("default"))) cudnnStatus_t
#define CUBLAS extern "C" __attribute__((visibility("default"))) cublasStatus_t

extern "C" __attribute__((visibility("default"))) size_t cudnnGetVersion() { return 92100; }
extern "C" __attribute__((visibility("default"))) const char* cudnnGetErrorString(cudnnStatus_t s) {
    switch (s) {
        case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
        case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
        case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
        case CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER: return "CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER";
        default: return "CUDNN_STATUS_UNKNOWN";
    }
}
CUDNN cudnnCreate(Handle** h) { *h = new Handle{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroy(Handle* h) { delete h; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnSetStream(Handle* h, void* stream) { h->stream = stream; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnCreateTensorDescriptor(Tensor4d** d) { *d = new Tensor4d{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroyTensorDescriptor(Tensor4d* d) { delete d; return CUDNN_STATUS_SUCCESS; }
// A descriptor of `dims` (n, c, h, w) and `strides`, or packed in `format` when strides is null.
static cudnnStatus_t set_4d(const char* call, Tensor4d* d, int format, int dtype, const int* dims,
                            const int* strides) {
    if (!strides && format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC) {
        emu::report(std::string(call) + ": only the NCHW and NHWC formats are emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    for (int i = 0; i < 4; ++i) {
        if (dims[i] <= 0) return bad(call, "a dimension <= 0");
        if (strides && strides[i] <= 0) return bad(call, "a stride <= 0");
    }
    Tensor4d t;
    t.dtype = dtype, t.format = strides ? -1 : format;
    t.n = dims[0], t.c = dims[1], t.h = dims[2], t.w = dims[3];
    if (strides)
        std::copy(strides, strides + 4, t.stride);
    else
        t.pack(format);
    *d = t;
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnSetTensor4dDescriptor(Tensor4d* d, int format, int dtype, int n, int c, int h, int w) {
    const int dims[4] = {n, c, h, w};
    return set_4d("cudnnSetTensor4dDescriptor", d, format, dtype, dims, nullptr);
}
CUDNN cudnnSetTensor4dDescriptorEx(Tensor4d* d, int dtype, int n, int c, int h, int w, int n_stride,
                                   int c_stride, int h_stride, int w_stride) {
    const int dims[4] = {n, c, h, w}, strides[4] = {n_stride, c_stride, h_stride, w_stride};
    return set_4d("cudnnSetTensor4dDescriptorEx", d, -1, dtype, dims, strides);
}
CUDNN cudnnSetTensorNdDescriptor(Tensor4d* d, int dtype, int rank, const int* dims, const int* strides) {
    if (rank != 4) {
        emu::report("cudnnSetTensorNdDescriptor: only 4-d tensors are emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    return set_4d("cudnnSetTensorNdDescriptor", d, -1, dtype, dims, strides);
}
CUDNN cudnnCreateFilterDescriptor(Tensor4d** d) { *d = new Tensor4d{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroyFilterDescriptor(Tensor4d* d) { delete d; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnSetFilter4dDescriptor(Tensor4d* d, int dtype, int format, int k, int c, int h, int w) {
    const int dims[4] = {k, c, h, w};
    return set_4d("cudnnSetFilter4dDescriptor", d, format, dtype, dims, nullptr);
}
CUDNN cudnnSetFilterNdDescriptor(Tensor4d* d, int dtype, int format, int rank, const int* dims) {
    if (rank != 4) {
        emu::report("cudnnSetFilterNdDescriptor: only 4-d filters are emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    return set_4d("cudnnSetFilterNdDescriptor", d, format, dtype, dims, nullptr);
}
CUDNN cudnnCreateConvolutionDescriptor(Convolution** d) { *d = new Convolution{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroyConvolutionDescriptor(Convolution* d) { delete d; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnSetConvolution2dDescriptor(Convolution* d, int pad_h, int pad_w, int u, int v, int dil_h,
                                      int dil_w, int mode, int dtype) {
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0)
        return bad("cudnnSetConvolution2dDescriptor", "a negative padding or a stride or dilation <= 0");
    *d = Convolution{pad_h, pad_w, u, v, dil_h, dil_w, mode, dtype, d->groups, d->math};
    return CUDNN_STATUS_SUCCESS;
}
// DEFAULT, TENSOR_OP, TENSOR_OP_ALLOW_CONVERSION or FMA: see `conv_input`.
CUDNN cudnnSetConvolutionMathType(Convolution* d, int math) {
    if (math < CUDNN_DEFAULT_MATH || math > CUDNN_FMA_MATH)
        return bad("cudnnSetConvolutionMathType", "unknown math type " + std::to_string(math));
    d->math = math;
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnSetConvolutionGroupCount(Convolution* d, int groups) { d->groups = groups; return CUDNN_STATUS_SUCCESS; }

CUDNN cudnnGetConvolutionForwardAlgorithm_v7(Handle*, Tensor4d* x, Tensor4d* w, Convolution* cv,
                                             Tensor4d* y, int requested, int* returned, AlgoPerf* r) {
    if (cudnnStatus_t s = check_shapes("cudnnGetConvolutionForwardAlgorithm_v7", x, w, cv, y)) return s;
    return find(Op::Forward, x, w, cv, y, requested, returned, r);
}
CUDNN cudnnGetConvolutionBackwardDataAlgorithm_v7(Handle*, Tensor4d* w, Tensor4d* dy, Convolution* cv,
                                                  Tensor4d* dx, int requested, int* returned, AlgoPerf* r) {
    if (cudnnStatus_t s = check_shapes("cudnnGetConvolutionBackwardDataAlgorithm_v7", dx, w, cv, dy)) return s;
    return find(Op::BackwardData, dx, w, cv, dy, requested, returned, r);
}
CUDNN cudnnGetConvolutionBackwardFilterAlgorithm_v7(Handle*, Tensor4d* x, Tensor4d* dy, Convolution* cv,
                                                    Tensor4d* dw, int requested, int* returned, AlgoPerf* r) {
    if (cudnnStatus_t s = check_shapes("cudnnGetConvolutionBackwardFilterAlgorithm_v7", x, dw, cv, dy)) return s;
    return find(Op::BackwardFilter, x, dw, cv, dy, requested, returned, r);
}
// The three workspace queries: cuDNN's checks, then the emulated algorithm's bytes.
cudnnStatus_t workspace_query(const std::string& call, Op op, const Tensor4d* x, const Tensor4d* w,
                              const Convolution* cv, const Tensor4d* y, int algo, size_t* bytes) {
    if (cudnnStatus_t s = check_shapes(call, x, w, cv, y)) return s;
    if (!supported(op, algo, cv, x, w, y)) return CUDNN_STATUS_NOT_SUPPORTED;
    *bytes = workspace_bytes(op, algo);
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnGetConvolutionForwardWorkspaceSize(Handle*, Tensor4d* x, Tensor4d* w, Convolution* cv,
                                              Tensor4d* y, int algo, size_t* bytes) {
    return workspace_query("cudnnGetConvolutionForwardWorkspaceSize", Op::Forward, x, w, cv, y, algo,
                           bytes);
}
CUDNN cudnnGetConvolutionBackwardDataWorkspaceSize(Handle*, Tensor4d* w, Tensor4d* dy, Convolution* cv,
                                                   Tensor4d* dx, int algo, size_t* bytes) {
    return workspace_query("cudnnGetConvolutionBackwardDataWorkspaceSize", Op::BackwardData, dx, w,
                           cv, dy, algo, bytes);
}
CUDNN cudnnGetConvolutionBackwardFilterWorkspaceSize(Handle*, Tensor4d* x, Tensor4d* dy, Convolution* cv,
                                                     Tensor4d* dw, int algo, size_t* bytes) {
    return workspace_query("cudnnGetConvolutionBackwardFilterWorkspaceSize", Op::BackwardFilter, x,
                           dw, cv, dy, algo, bytes);
}

// One of the three convolutions on the handle's stream: x, w and y with their descriptors, the
// one written being `out`; alpha and beta are floats for f32 and bf16 data alike.
static cudnnStatus_t convolution(const Handle* h, const char* call, Op op, const float* alpha,
                                 const float* beta, const Tensor4d* xd, const void* x,
                                 const Tensor4d* wd, const void* w, const Convolution* cv,
                                 const Tensor4d* yd, const void* y, int algo, void* ws,
                                 size_t ws_size, void* out) {
    return on_stream(h, call, [=, xd = kept(xd), wd = kept(wd), cv = kept(cv), yd = kept(yd),
                               alpha = *alpha, beta = *beta] {
        const Operands o{xd.get(), x, wd.get(), w, yd.get(), y};
        return convolve(call, op, o, cv.get(), algo, ws, ws_size, alpha, beta, out);
    });
}

CUDNN cudnnConvolutionForward(Handle* h, const float* alpha, Tensor4d* xd, const void* x, Tensor4d* wd,
                              const void* w, Convolution* cv, int algo, void* ws, size_t ws_size,
                              const float* beta, Tensor4d* yd, void* y) {
    return convolution(h, "cudnnConvolutionForward", Op::Forward, alpha, beta, xd, x, wd, w, cv, yd,
                       y, algo, ws, ws_size, y);
}
CUDNN cudnnConvolutionBackwardData(Handle* h, const float* alpha, Tensor4d* wd, const void* w, Tensor4d* dyd,
                                   const void* dy, Convolution* cv, int algo, void* ws, size_t ws_size,
                                   const float* beta, Tensor4d* dxd, void* dx) {
    return convolution(h, "cudnnConvolutionBackwardData", Op::BackwardData, alpha, beta, dxd, dx, wd,
                       w, cv, dyd, dy, algo, ws, ws_size, dx);
}
CUDNN cudnnConvolutionBackwardFilter(Handle* h, const float* alpha, Tensor4d* xd, const void* x, Tensor4d* dyd,
                                     const void* dy, Convolution* cv, int algo, void* ws, size_t ws_size,
                                     const float* beta, Tensor4d* dwd, void* dw) {
    return convolution(h, "cudnnConvolutionBackwardFilter", Op::BackwardFilter, alpha, beta, xd, x,
                       dwd, dw, cv, dyd, dy, algo, ws, ws_size, dw);
}

// The activation and pooling calls, forward `body(d, alpha, xd, x, beta, yd, y)` and backward
// `body(d, alpha, yd, y, dyd, dy, xd, x, beta, dxd, dx)`, on the handle's stream with their
// descriptor `d`, tensor descriptors and scalars kept.
template <typename D>
static cudnnStatus_t forward_on_stream(
    const Handle* h, const char* call,
    cudnnStatus_t (*body)(const D*, const float*, const Tensor4d*, const float*, const float*,
                          const Tensor4d*, float*),
    const D* d, const float* alpha, const Tensor4d* xd, const float* x, const float* beta,
    const Tensor4d* yd, float* y) {
    return on_stream(h, call, [=, d = kept(d), xd = kept(xd), yd = kept(yd), alpha = *alpha,
                               beta = *beta] {
        return body(d.get(), &alpha, xd.get(), x, &beta, yd.get(), y);
    });
}
template <typename D>
static cudnnStatus_t backward_on_stream(
    const Handle* h, const char* call,
    cudnnStatus_t (*body)(const D*, const float*, const Tensor4d*, const float*, const Tensor4d*,
                          const float*, const Tensor4d*, const float*, const float*,
                          const Tensor4d*, float*),
    const D* d, const float* alpha, const Tensor4d* yd, const float* y, const Tensor4d* dyd,
    const float* dy, const Tensor4d* xd, const float* x, const float* beta, const Tensor4d* dxd,
    float* dx) {
    return on_stream(h, call, [=, d = kept(d), yd = kept(yd), dyd = kept(dyd), xd = kept(xd),
                               dxd = kept(dxd), alpha = *alpha, beta = *beta] {
        return body(d.get(), &alpha, yd.get(), y, dyd.get(), dy, xd.get(), x, &beta, dxd.get(), dx);
    });
}

CUDNN cudnnCreateActivationDescriptor(Activation** d) { *d = new Activation{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroyActivationDescriptor(Activation* d) { delete d; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnSetActivationDescriptor(Activation* d, int mode, int, double) {
    if (mode != CUDNN_ACTIVATION_RELU && mode != CUDNN_ACTIVATION_SIGMOID) {
        emu::report("cudnnSetActivationDescriptor: only ReLU and sigmoid are emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    d->mode = mode;
    return CUDNN_STATUS_SUCCESS;
}
static cudnnStatus_t activation_forward(const Activation* act, const float* alpha, const Tensor4d* xd, const float* x,
                                        const float* beta, const Tensor4d* yd, float* y) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnActivationForward";
    if (!act || act->mode < 0) return bad(call, "not an activation descriptor");
    if (!xd || !yd || xd->bytes() != yd->bytes()) return bad(call, "x and y descriptors differ");
    if (!plain(call, {xd, yd})) return CUDNN_STATUS_NOT_SUPPORTED;
    if (!in_device(call, {{"x", {x, xd->bytes()}}, {"y", {y, yd->bytes()}}})) return CUDNN_STATUS_BAD_PARAM;
    for (size_t i = 0; i < xd->bytes() / 4; ++i) {
        const double r = act->mode == CUDNN_ACTIVATION_SIGMOID ? 1.0 / (1.0 + std::exp(-(double)x[i]))
                         : x[i] > 0.0f                          ? x[i]
                                                                : 0.0;
        y[i] = (float)(*beta == 0.0f ? *alpha * r : *alpha * r + (double)*beta * y[i]);
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnActivationForward(Handle* h, Activation* act, const float* alpha, Tensor4d* xd, const float* x,
                             const float* beta, Tensor4d* yd, float* y) {
    return forward_on_stream(h, "cudnnActivationForward", activation_forward, act, alpha, xd, x,
                             beta, yd, y);
}
static cudnnStatus_t activation_backward(const Activation* act, const float* alpha, const Tensor4d* yd, const float* y,
                                         const Tensor4d* dyd, const float* dy, const Tensor4d* xd, const float* x,
                                         const float* beta, const Tensor4d* dxd, float* dx) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnActivationBackward";
    if (!act || act->mode != CUDNN_ACTIVATION_RELU) return bad(call, "only ReLU's backward is emulated");
    if (!xd || !yd || !dyd || !dxd) return bad(call, "a null descriptor");
    if (!plain(call, {xd, yd, dyd, dxd})) return CUDNN_STATUS_NOT_SUPPORTED;
    const size_t bytes = xd->bytes();
    if (yd->bytes() != bytes || dyd->bytes() != bytes || dxd->bytes() != bytes)
        return bad(call, "the four descriptors differ");
    if (!in_device(call, {{"y", {y, bytes}}, {"dy", {dy, bytes}}, {"x", {x, bytes}}, {"dx", {dx, bytes}}}))
        return CUDNN_STATUS_BAD_PARAM;
    for (size_t i = 0; i < bytes / 4; ++i) {
        const double g = x[i] > 0.0f ? dy[i] : 0.0;
        dx[i] = (float)(*beta == 0.0f ? *alpha * g : *alpha * g + (double)*beta * dx[i]);
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnActivationBackward(Handle* h, Activation* act, const float* alpha, Tensor4d* yd, const float* y,
                              Tensor4d* dyd, const float* dy, Tensor4d* xd, const float* x,
                              const float* beta, Tensor4d* dxd, float* dx) {
    return backward_on_stream(h, "cudnnActivationBackward", activation_backward, act, alpha, yd, y,
                              dyd, dy, xd, x, beta, dxd, dx);
}
// Log-softmax and softmax (algorithms LOG and FAST/ACCURATE) per sample over C·H·W (instance
// mode), the softmax cross-entropy's baseline; backward as cuDNN defines it from y and dy.
constexpr int CUDNN_SOFTMAX_LOG = 2, CUDNN_SOFTMAX_MODE_INSTANCE = 0;
cudnnStatus_t check_softmax(const std::string& call, int mode,
                            std::initializer_list<std::pair<const char*, std::pair<const Tensor4d*, const void*>>> operands) {
    if (mode != CUDNN_SOFTMAX_MODE_INSTANCE) {
        emu::report(call + ": only instance mode is emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    const Tensor4d* first = operands.begin()->second.first;
    for (const auto& [name, operand] : operands) {
        const auto [desc, ptr] = operand;
        if (!desc || !plain(call, {desc})) return bad(call, std::string(name) + ": not a packed NCHW f32 descriptor");
        if (desc->n != first->n || desc->bytes() != first->bytes()) return bad(call, "the descriptors differ");
        if (!in_device(call, {{name, {ptr, desc->bytes()}}})) return CUDNN_STATUS_BAD_PARAM;
    }
    return CUDNN_STATUS_SUCCESS;
}
static cudnnStatus_t softmax_forward(int algo, int mode, const float* alpha, const Tensor4d* xd, const float* x,
                                     const float* beta, const Tensor4d* yd, float* y) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    if (cudnnStatus_t r = check_softmax("cudnnSoftmaxForward", mode, {{"x", {xd, x}}, {"y", {yd, y}}})) return r;
    const size_t row = xd->bytes() / 4 / xd->n;
    for (int n = 0; n < xd->n; ++n) {
        const float* xr = x + n * row;
        double m = -INFINITY, sum = 0.0;
        for (size_t i = 0; i < row; ++i) m = std::max(m, (double)xr[i]);
        for (size_t i = 0; i < row; ++i) sum += std::exp(xr[i] - m);
        for (size_t i = 0; i < row; ++i) {
            const double v = algo == CUDNN_SOFTMAX_LOG ? xr[i] - m - std::log(sum) : std::exp(xr[i] - m) / sum;
            float& out = y[n * row + i];
            out = (float)(*beta == 0.0f ? *alpha * v : *alpha * v + (double)*beta * out);
        }
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnSoftmaxForward(Handle* h, int algo, int mode, const float* alpha, Tensor4d* xd, const float* x,
                          const float* beta, Tensor4d* yd, float* y) {
    return on_stream(h, "cudnnSoftmaxForward",
                     [=, xd = kept(xd), yd = kept(yd), alpha = *alpha, beta = *beta] {
                         return softmax_forward(algo, mode, &alpha, xd.get(), x, &beta, yd.get(), y);
                     });
}
static cudnnStatus_t softmax_backward(int algo, int mode, const float* alpha, const Tensor4d* yd, const float* y,
                                      const Tensor4d* dyd, const float* dy, const float* beta, const Tensor4d* dxd, float* dx) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    if (cudnnStatus_t r = check_softmax("cudnnSoftmaxBackward", mode, {{"y", {yd, y}}, {"dy", {dyd, dy}}, {"dx", {dxd, dx}}}))
        return r;
    const size_t row = yd->bytes() / 4 / yd->n;
    for (int n = 0; n < yd->n; ++n) {
        const float *yr = y + n * row, *dyr = dy + n * row;
        double dot = 0.0;  // LOG: sum dy; otherwise sum dy*y
        for (size_t i = 0; i < row; ++i) dot += algo == CUDNN_SOFTMAX_LOG ? dyr[i] : (double)dyr[i] * yr[i];
        for (size_t i = 0; i < row; ++i) {
            const double v = algo == CUDNN_SOFTMAX_LOG ? dyr[i] - std::exp((double)yr[i]) * dot : yr[i] * (dyr[i] - dot);
            float& out = dx[n * row + i];
            out = (float)(*beta == 0.0f ? *alpha * v : *alpha * v + (double)*beta * out);
        }
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnSoftmaxBackward(Handle* h, int algo, int mode, const float* alpha, Tensor4d* yd, const float* y,
                           Tensor4d* dyd, const float* dy, const float* beta, Tensor4d* dxd, float* dx) {
    return on_stream(h, "cudnnSoftmaxBackward",
                     [=, yd = kept(yd), dyd = kept(dyd), dxd = kept(dxd), alpha = *alpha, beta = *beta] {
                         return softmax_backward(algo, mode, &alpha, yd.get(), y, dyd.get(), dy, &beta,
                                                 dxd.get(), dx);
                     });
}

// Element-wise addition of same-shape f32 tensors, the sigmoid BCE baseline's one OpTensor use.
struct OpTensorDesc {
    int op = -1;
};
constexpr int CUDNN_OP_TENSOR_ADD = 0;
CUDNN cudnnCreateOpTensorDescriptor(OpTensorDesc** d) { *d = new OpTensorDesc{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroyOpTensorDescriptor(OpTensorDesc* d) { delete d; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnSetOpTensorDescriptor(OpTensorDesc* d, int op, int dtype, int) {
    if (op != CUDNN_OP_TENSOR_ADD || dtype != CUDNN_DATA_FLOAT) {
        emu::report("cudnnSetOpTensorDescriptor: only f32 addition is emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    d->op = op;
    return CUDNN_STATUS_SUCCESS;
}
static cudnnStatus_t op_tensor(const OpTensorDesc* op, const float* alpha1, const Tensor4d* ad, const float* a,
                               const float* alpha2, const Tensor4d* bd, const float* b, const float* beta, const Tensor4d* cd, float* c) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnOpTensor";
    if (!op || op->op != CUDNN_OP_TENSOR_ADD) return bad(call, "not an addition descriptor");
    if (!ad || !bd || !cd) return bad(call, "a null descriptor");
    if (!plain(call, {ad, bd, cd})) return CUDNN_STATUS_NOT_SUPPORTED;
    const size_t bytes = cd->bytes();
    if (ad->bytes() != bytes || bd->bytes() != bytes) return bad(call, "only same-shape operands are emulated");
    if (!in_device(call, {{"A", {a, bytes}}, {"B", {b, bytes}}, {"C", {c, bytes}}})) return CUDNN_STATUS_BAD_PARAM;
    for (size_t i = 0; i < bytes / 4; ++i) {
        const double v = (double)*alpha1 * a[i] + (double)*alpha2 * b[i];
        c[i] = (float)(*beta == 0.0f ? v : v + (double)*beta * c[i]);
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnOpTensor(Handle* h, OpTensorDesc* op, const float* alpha1, Tensor4d* ad, const float* a,
                    const float* alpha2, Tensor4d* bd, const float* b, const float* beta, Tensor4d* cd, float* c) {
    return on_stream(h, "cudnnOpTensor",
                     [=, op = kept(op), ad = kept(ad), bd = kept(bd), cd = kept(cd), alpha1 = *alpha1,
                      alpha2 = *alpha2, beta = *beta] {
                         return op_tensor(op.get(), &alpha1, ad.get(), a, &alpha2, bd.get(), b, &beta,
                                          cd.get(), c);
                     });
}

static cudnnStatus_t batch_norm_forward_training(int mode, const float* alpha, const float* beta,
                                                 const Tensor4d* xd, const float* x, const Tensor4d* yd, float* y,
                                                 const Tensor4d* sd, const float* scale, const float* bias,
                                                 double factor, float* running_mean, float* running_var,
                                                 double eps, float* save_mean, float* save_invstd) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnBatchNormalizationForwardTraining";
    if (cudnnStatus_t s = check_batch_norm(call, mode, xd, yd, sd)) return s;
    const size_t per = sd->bytes();
    if (!in_device(call, {{"x", {x, xd->bytes()}}, {"y", {y, yd->bytes()}}, {"scale", {scale, per}},
                          {"bias", {bias, per}}, {"running mean", {running_mean, per}},
                          {"running variance", {running_var, per}}, {"saved mean", {save_mean, per}},
                          {"saved inverse std", {save_invstd, per}}}))
        return CUDNN_STATUS_BAD_PARAM;
    const int hw = xd->h * xd->w;
    const double n = (double)xd->n * hw;
    for (int c = 0; c < xd->c; ++c) {
        double sum = 0.0, sq = 0.0;
        for (int b = 0; b < xd->n; ++b)
            for (int i = 0; i < hw; ++i) sum += x[((size_t)b * xd->c + c) * hw + i];
        const double mean = sum / n;
        for (int b = 0; b < xd->n; ++b)
            for (int i = 0; i < hw; ++i) {
                const double d = x[((size_t)b * xd->c + c) * hw + i] - mean;
                sq += d * d;
            }
        const double var = sq / n, invstd = 1.0 / std::sqrt(var + eps);
        for (int b = 0; b < xd->n; ++b)
            for (int i = 0; i < hw; ++i) {
                const size_t at = ((size_t)b * xd->c + c) * hw + i;
                const double r = (x[at] - mean) * invstd * scale[c] + bias[c];
                y[at] = (float)(*beta == 0.0f ? *alpha * r : *alpha * r + (double)*beta * y[at]);
            }
        running_mean[c] = (float)((1.0 - factor) * running_mean[c] + factor * mean);
        running_var[c] = (float)((1.0 - factor) * running_var[c] + factor * var * n / (n - 1.0));
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnBatchNormalizationForwardTraining(Handle* h, int mode, const float* alpha, const float* beta,
                                             Tensor4d* xd, const float* x, Tensor4d* yd, float* y,
                                             Tensor4d* sd, const float* scale, const float* bias,
                                             double factor, float* running_mean, float* running_var,
                                             double eps, float* save_mean, float* save_invstd) {
    return on_stream(h, "cudnnBatchNormalizationForwardTraining",
                     [=, xd = kept(xd), yd = kept(yd), sd = kept(sd), alpha = *alpha, beta = *beta] {
                         return batch_norm_forward_training(mode, &alpha, &beta, xd.get(), x, yd.get(), y,
                                                            sd.get(), scale, bias, factor, running_mean,
                                                            running_var, eps, save_mean, save_invstd);
                     });
}
static cudnnStatus_t batch_norm_backward(int mode, const float* alpha_data, const float* beta_data,
                                         const float* alpha_param, const float* beta_param, const Tensor4d* xd,
                                         const float* x, const Tensor4d* dyd, const float* dy, const Tensor4d* dxd,
                                         float* dx, const Tensor4d* sd, const float* scale, float* dscale,
                                         float* dbias, double, const float* save_mean,
                                         const float* save_invstd) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnBatchNormalizationBackward";
    if (cudnnStatus_t s = check_batch_norm(call, mode, xd, dyd, sd)) return s;
    if (cudnnStatus_t s = check_batch_norm(call, mode, xd, dxd, sd)) return s;
    const size_t per = sd->bytes(), bytes = xd->bytes();
    if (!in_device(call, {{"x", {x, bytes}}, {"dy", {dy, bytes}}, {"dx", {dx, bytes}},
                          {"scale", {scale, per}}, {"scale gradient", {dscale, per}},
                          {"bias gradient", {dbias, per}}, {"saved mean", {save_mean, per}},
                          {"saved inverse std", {save_invstd, per}}}))
        return CUDNN_STATUS_BAD_PARAM;
    const int hw = xd->h * xd->w;
    const double n = (double)xd->n * hw;
    for (int c = 0; c < xd->c; ++c) {
        const double mean = save_mean[c], invstd = save_invstd[c];
        double sum_g = 0.0, sum_gx = 0.0;
        for (int b = 0; b < xd->n; ++b)
            for (int i = 0; i < hw; ++i) {
                const size_t at = ((size_t)b * xd->c + c) * hw + i;
                sum_g += dy[at];
                sum_gx += dy[at] * (x[at] - mean) * invstd;
            }
        for (int b = 0; b < xd->n; ++b)
            for (int i = 0; i < hw; ++i) {
                const size_t at = ((size_t)b * xd->c + c) * hw + i;
                const double xhat = (x[at] - mean) * invstd;
                const double r = scale[c] * invstd / n * (n * dy[at] - sum_g - xhat * sum_gx);
                dx[at] = (float)(*beta_data == 0.0f ? *alpha_data * r
                                                    : *alpha_data * r + (double)*beta_data * dx[at]);
            }
        const auto blend = [&](double r, float old) {
            return (float)(*beta_param == 0.0f ? *alpha_param * r
                                               : *alpha_param * r + (double)*beta_param * old);
        };
        dscale[c] = blend(sum_gx, dscale[c]);
        dbias[c] = blend(sum_g, dbias[c]);
    }
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnBatchNormalizationBackward(Handle* h, int mode, const float* alpha_data, const float* beta_data,
                                      const float* alpha_param, const float* beta_param, Tensor4d* xd,
                                      const float* x, Tensor4d* dyd, const float* dy, Tensor4d* dxd,
                                      float* dx, Tensor4d* sd, const float* scale, float* dscale,
                                      float* dbias, double eps, const float* save_mean,
                                      const float* save_invstd) {
    return on_stream(h, "cudnnBatchNormalizationBackward",
                     [=, xd = kept(xd), dyd = kept(dyd), dxd = kept(dxd), sd = kept(sd),
                      alpha_data = *alpha_data, beta_data = *beta_data, alpha_param = *alpha_param,
                      beta_param = *beta_param] {
                         return batch_norm_backward(mode, &alpha_data, &beta_data, &alpha_param,
                                                    &beta_param, xd.get(), x, dyd.get(), dy, dxd.get(),
                                                    dx, sd.get(), scale, dscale, dbias, eps, save_mean,
                                                    save_invstd);
                     });
}

CUDNN cudnnCreatePoolingDescriptor(Pooling** d) { *d = new Pooling{}; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnDestroyPoolingDescriptor(Pooling* d) { delete d; return CUDNN_STATUS_SUCCESS; }
CUDNN cudnnSetPoolingNdDescriptor(Pooling* d, int mode, int, int dims, const int* window, const int* pad,
                                  const int* stride) {
    if (dims != 2 || mode < 0 || mode > 3) {
        emu::report("cudnnSetPoolingNdDescriptor: only 2-D max and average pooling are emulated");
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    d->mode = mode;
    for (int i = 0; i < 2; ++i) {
        if (window[i] <= 0 || stride[i] <= 0 || pad[i] < 0)
            return bad("cudnnSetPoolingNdDescriptor", "a window or stride <= 0, or a padding < 0");
        d->window[i] = window[i], d->pad[i] = pad[i], d->stride[i] = stride[i];
    }
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t pooling_forward(const Pooling* p, const float* alpha, const Tensor4d* xd, const float* x,
                                     const float* beta, const Tensor4d* yd, float* y) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnPoolingForward";
    if (cudnnStatus_t s = check_pooling(call, p, xd, yd)) return s;
    if (!in_device(call, {{"x", {x, xd->bytes()}}, {"y", {y, yd->bytes()}}})) return CUDNN_STATUS_BAD_PARAM;
    const size_t in_plane = (size_t)xd->h * xd->w, out_plane = (size_t)yd->h * yd->w;
    for_each_window(*p, *xd, *yd, [&](size_t plane, size_t o, const std::vector<size_t>& window) {
        const float* xp = x + plane * in_plane;
        double r;
        if (p->mode == 0 || p->mode == 3) {
            r = -INFINITY;
            for (size_t i : window) r = xp[i] > r ? xp[i] : r;
        } else {
            r = 0.0;
            for (size_t i : window) r += xp[i];
            r /= p->mode == 1 ? p->window[0] * p->window[1] : (double)window.size();
        }
        float& out = y[plane * out_plane + o];
        out = (float)(*beta == 0.0f ? *alpha * r : *alpha * r + (double)*beta * out);
    });
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnPoolingForward(Handle* h, Pooling* p, const float* alpha, Tensor4d* xd, const float* x,
                          const float* beta, Tensor4d* yd, float* y) {
    return forward_on_stream(h, "cudnnPoolingForward", pooling_forward, p, alpha, xd, x, beta, yd, y);
}
static cudnnStatus_t pooling_backward(const Pooling* p, const float* alpha, const Tensor4d* yd, const float* y,
                                      const Tensor4d* dyd, const float* dy, const Tensor4d* xd, const float* x,
                                      const float* beta, const Tensor4d* dxd, float* dx) {
    std::lock_guard<std::mutex> lock(emu::api_mutex());
    const std::string call = "cudnnPoolingBackward";
    if (cudnnStatus_t s = check_pooling(call, p, xd, yd)) return s;
    if (!dyd || !dxd || dyd->bytes() != yd->bytes() || dxd->bytes() != xd->bytes())
        return bad(call, "dy or dx descriptor differs from y or x");
    if (!plain(call, {dyd, dxd})) return CUDNN_STATUS_BAD_PARAM;
    if (!in_device(call, {{"y", {y, yd->bytes()}}, {"dy", {dy, yd->bytes()}}, {"x", {x, xd->bytes()}},
                          {"dx", {dx, xd->bytes()}}}))
        return CUDNN_STATUS_BAD_PARAM;
    const size_t in_plane = (size_t)xd->h * xd->w, out_plane = (size_t)yd->h * yd->w;
    std::vector<double> acc(xd->bytes() / 4, 0.0);
    for_each_window(*p, *xd, *yd, [&](size_t plane, size_t o, const std::vector<size_t>& window) {
        const float* xp = x + plane * in_plane;
        double* ap = acc.data() + plane * in_plane;
        const double g = dy[plane * out_plane + o];
        if (p->mode == 0 || p->mode == 3) {
            const float top = y[plane * out_plane + o];
            for (size_t i : window)
                if (xp[i] == top) {
                    ap[i] += g;
                    break;
                }
        } else {
            const double divisor = p->mode == 1 ? p->window[0] * p->window[1] : (double)window.size();
            for (size_t i : window) ap[i] += g / divisor;
        }
    });
    for (size_t i = 0; i < acc.size(); ++i)
        dx[i] = (float)(*beta == 0.0f ? *alpha * acc[i] : *alpha * acc[i] + (double)*beta * dx[i]);
    return CUDNN_STATUS_SUCCESS;
}
CUDNN cudnnPoolingBackward(Handle* h, Pooling* p, const float* alpha, Tensor4d* yd, const float* y,
                           Tensor4d* dyd, const float* dy, Tensor4d* xd, const float* x,
                           const float* beta, Tensor4d* dxd, float* dx) {
    return backward_on_stream(h, "cudnnPoolingBackward", pooling_backward, p, alpha, yd, y, dyd, dy,
                              xd, x, beta, dxd, dx);
}

CUBLAS cublasCreate_v2(BlasHandle** h) { *h = new BlasHandle{}; return CUBLAS_STATUS_SUCCESS; }
CUBLAS cublasDestroy_v2(BlasHandle* h) { delete h; return CUBLAS_STATUS_SUCCESS; }
CUBLAS cublasSetStream_v2(BlasHandle* h, void* stream) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}
CUBLAS cublasSetMathMode(BlasHandle* h, int mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}
// Not library calls: what `t_last_convolution_math` and `t_last_gemm_math` hold, which only the
// emulator records (c2f_kernels::testing::emulator_math_modes reads them).
extern "C" __attribute__((visibility("default"))) int c2fEmuLastConvolutionMath() {
    return t_last_convolution_math;
}
extern "C" __attribute__((visibility("default"))) int c2fEmuLastGemmMath() { return t_last_gemm_math; }
extern "C" __attribute__((visibility("default"))) const char* cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}
CUBLAS cublasSgemm_v2(BlasHandle* h, int ta, int tb, int m, int n, int k, const float* alpha,
                      const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                      int ldc) {
    return on_stream(h, "cublasSgemm", [=, alpha = *alpha, beta = *beta, math = math_mode(h)] {
        return gemm("cublasSgemm", ta, tb, m, n, k, alpha, a, CUDA_R_32F, lda, 0, b, CUDA_R_32F, ldb,
                    0, beta, c, CUDA_R_32F, ldc, 0, 1, math);
    });
}
CUBLAS cublasSgemmStridedBatched(BlasHandle* h, int ta, int tb, int m, int n, int k, const float* alpha,
                                 const float* a, int lda, long long sa, const float* b, int ldb,
                                 long long sb, const float* beta, float* c, int ldc, long long sc,
                                 int batch) {
    return on_stream(h, "cublasSgemmStridedBatched",
                     [=, alpha = *alpha, beta = *beta, math = math_mode(h)] {
        return gemm("cublasSgemmStridedBatched", ta, tb, m, n, k, alpha, a, CUDA_R_32F, lda, sa, b,
                    CUDA_R_32F, ldb, sb, beta, c, CUDA_R_32F, ldc, sc, batch, math);
    });
}
// Level-1 calls of the element-wise baselines: unit strides only, as ours use.
CUBLAS cublasSaxpy_v2(BlasHandle* h, int n, const float* alpha, const float* x, int incx, float* y,
                      int incy) {
    if (n < 0 || incx != 1 || incy != 1) return CUBLAS_STATUS_INVALID_VALUE;
    return on_stream(h, "cublasSaxpy", [=, alpha = *alpha] {
        std::lock_guard<std::mutex> lock(emu::api_mutex());
        if (!emu::is_device_range(x, (size_t)n * 4) || !emu::is_device_range(y, (size_t)n * 4)) {
            emu::report("cublasSaxpy: x or y is not inside one device allocation");
            return CUBLAS_STATUS_INVALID_VALUE;
        }
        for (int i = 0; i < n; ++i) y[i] = std::fmaf(alpha, x[i], y[i]);
        return CUBLAS_STATUS_SUCCESS;
    });
}
CUBLAS cublasSscal_v2(BlasHandle* h, int n, const float* alpha, float* x, int incx) {
    if (n < 0 || incx != 1) return CUBLAS_STATUS_INVALID_VALUE;
    return on_stream(h, "cublasSscal", [=, alpha = *alpha] {
        std::lock_guard<std::mutex> lock(emu::api_mutex());
        if (!emu::is_device_range(x, (size_t)n * 4)) {
            emu::report("cublasSscal: x is not inside one device allocation");
            return CUBLAS_STATUS_INVALID_VALUE;
        }
        for (int i = 0; i < n; ++i) x[i] *= alpha;
        return CUBLAS_STATUS_SUCCESS;
    });
}
// f32 or bf16 operands with f32 compute (CUBLAS_COMPUTE_32F = 68), the cases our baselines use.
CUBLAS cublasGemmStridedBatchedEx(BlasHandle* h, int ta, int tb, int m, int n, int k, const void* alpha,
                                  const void* a, int a_type, int lda, long long sa, const void* b,
                                  int b_type, int ldb, long long sb, const void* beta, void* c,
                                  int c_type, int ldc, long long sc, int batch, int compute, int) {
    for (int t : {a_type, b_type, c_type})
        if (t != CUDA_R_32F && t != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (compute != 68) return CUBLAS_STATUS_NOT_SUPPORTED;
    const float alpha_value = *static_cast<const float*>(alpha);
    const float beta_value = *static_cast<const float*>(beta);
    return on_stream(h, "cublasGemmStridedBatchedEx", [=, math = math_mode(h)] {
        return gemm("cublasGemmStridedBatchedEx", ta, tb, m, n, k, alpha_value, a, a_type, lda, sa,
                    b, b_type, ldb, sb, beta_value, c, c_type, ldc, sc, batch, math);
    });
}

#define NCCL extern "C" __attribute__((visibility("default"))) ncclResult_t

NCCL ncclGetVersion(int* version) { *version = 22800; return ncclSuccess; }
extern "C" __attribute__((visibility("default"))) const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
        case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
        case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
        default: return "unknown result code";
    }
}
NCCL ncclGetUniqueId(ncclUniqueId* id) {
    for (int i = 0; i < 128; ++i) id->internal[i] = (char)(i * 37 + 11);
    return ncclSuccess;
}
NCCL ncclCommInitRank(Communicator** comm, int nranks, ncclUniqueId, int rank) {
    if (nranks != 1 || rank != 0) {
        emu::report("ncclCommInitRank: the emulator has one device, so only a world of one (rank " +
                    std::to_string(rank) + " of " + std::to_string(nranks) + " asked)");
        return ncclInvalidUsage;
    }
    *comm = new Communicator{rank};
    return ncclSuccess;
}
NCCL ncclCommAbort(Communicator* comm) { delete comm; return ncclSuccess; }
NCCL ncclCommDestroy(Communicator* comm) { delete comm; return ncclSuccess; }
NCCL ncclCommCount(const Communicator*, int* count) { *count = 1; return ncclSuccess; }
NCCL ncclCommUserRank(const Communicator* comm, int* rank) { *rank = comm->rank; return ncclSuccess; }
NCCL ncclGroupStart() { return ncclSuccess; }
NCCL ncclGroupEnd() { return ncclSuccess; }
NCCL ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Communicator*,
                   void* stream) {
    if (op != ncclSum && op != ncclAvg) return ncclInvalidArgument;
    return emu::enqueue(stream, "ncclAllReduce",
                        [=] { return copy_through("ncclAllReduce", send, recv, count, type); },
                        ncclUnhandledCudaError);
}
NCCL ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Communicator*,
                   void* stream) {
    if (root != 0) return ncclInvalidArgument;
    return emu::enqueue(stream, "ncclBroadcast",
                        [=] { return copy_through("ncclBroadcast", send, recv, count, type); },
                        ncclUnhandledCudaError);
}
