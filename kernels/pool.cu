// Pooling for the InceptionV3 runtime, NCHW contiguous, PyTorch semantics (ceil_mode=False,
// dilation 1).
//
// max_pool2d_forward / avg_pool2d_forward: plane-group kernels (common.cuh), a thread per output
// position. max_pool2d_backward / avg_pool2d_backward: a thread per input position, gathering
// from the outputs whose windows contain it in row-major order (as PyTorch's CUDA backward): no
// atomics. (A thread per element ran max pooling at 17% of copy bandwidth on an H200.)
// global_avg_pool_forward: one warp per plane; global_avg_pool_backward: one thread per element.
// Every result is the same bits on every run.
#include "common.cuh"

// Mirrors `PoolGeom` in crates/c2f-kernels/src/pool.rs (twelve ints, passed by value).
struct PoolGeom {
    int planes;  // N * C
    int H, W;    // input
    int OH, OW;  // output
    int kh, kw, sh, sw, ph, pw;
    int count_include_pad;  // average pool only
};

// Input rows [lo, hi) under output row `o`, and the window's extent counting padding (PyTorch's
// `pool_size` factor), for one dimension.
struct Window {
    int lo, hi, padded;
    __device__ __forceinline__ Window(int o, int k, int s, int p, int n) {
        const int start = o * s - p;
        const int end = min(start + k, n + p);
        padded = end - start;
        lo = max(start, 0);
        hi = min(end, n);
    }
};

// First output row whose window contains input row `i`, and one past the last.
__device__ __forceinline__ int first_output(int i, int k, int s, int p) {
    return i + p < k ? 0 : (i + p - k) / s + 1;
}
__device__ __forceinline__ int end_output(int i, int s, int p, int n_out) {
    return min((i + p) / s + 1, n_out);
}

template <typename T>
__device__ void max_pool2d_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                        int* __restrict__ indices, PoolGeom g) {
    const int out_len = g.OH * g.OW, in_len = g.H * g.W;
    const int o = plane_position(out_len);
    if (o < 0) return;
    const int oh = o / g.OW, ow = o - oh * g.OW;
    const Window wh(oh, g.kh, g.sh, g.ph, g.H), ww(ow, g.kw, g.sw, g.pw, g.W);
    for (int p0 = blockIdx.z * PLANES_PER_THREAD; p0 < g.planes; p0 += gridDim.z * PLANES_PER_THREAD) {
        const int count = min(PLANES_PER_THREAD, g.planes - p0);
        const long long in0 = (long long)p0 * in_len, out0 = (long long)p0 * out_len;
        // As PyTorch: start at -inf on the window's first element; a larger value or any NaN
        // wins, so ties keep the first maximum and a NaN (the last one) propagates.
        float best[PLANES_PER_THREAD];
        int best_i[PLANES_PER_THREAD];
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) {
            best[j] = -__int_as_float(0x7f800000);
            best_i[j] = wh.lo * g.W + ww.lo;
        }
        for (int ih = wh.lo; ih < wh.hi; ++ih) {
            for (int iw = ww.lo; iw < ww.hi; ++iw) {
                const int i = ih * g.W + iw;
#pragma unroll
                for (int j = 0; j < PLANES_PER_THREAD; ++j) {
                    const float v = load_f32(x, in0 + min(j, count - 1) * in_len + i);
                    if (v > best[j] || v != v) {
                        best[j] = v;
                        best_i[j] = i;
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) {
            if (j >= count) continue;
            store_f32(y, out0 + j * out_len + o, best[j]);
            indices[out0 + j * out_len + o] = best_i[j];
        }
    }
}

// The backward walk both pools share: for input position i, PLANES_PER_THREAD planes at a time,
// acc[j] gathers add(acc, out0, count, oh, ow, i) over the outputs (oh, ow) whose window
// contains i, in row-major order (out0: the group's first plane's output offset; count: planes
// in the group), and dx[i] = acc (assigned).
template <typename T, typename Add>
__device__ void pool_backward_walk(T* __restrict__ dx, PoolGeom g, Add add) {
    const int out_len = g.OH * g.OW, in_len = g.H * g.W;
    const int i = plane_position(in_len);
    if (i < 0) return;
    const int ih = i / g.W, iw = i - ih * g.W;
    const int oh0 = first_output(ih, g.kh, g.sh, g.ph), oh1 = end_output(ih, g.sh, g.ph, g.OH);
    const int ow0 = first_output(iw, g.kw, g.sw, g.pw), ow1 = end_output(iw, g.sw, g.pw, g.OW);
    for (int p0 = blockIdx.z * PLANES_PER_THREAD; p0 < g.planes; p0 += gridDim.z * PLANES_PER_THREAD) {
        const int count = min(PLANES_PER_THREAD, g.planes - p0);
        float acc[PLANES_PER_THREAD];
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) acc[j] = 0.0f;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow) add(acc, (long long)p0 * out_len, count, oh, ow, i);
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j)
            if (j < count) store_f32(dx, (long long)(p0 + j) * in_len + i, acc[j]);
    }
}

// dx[i] = sum of dy over the outputs whose argmax is i (assigned). Only outputs whose window
// contains i are read, so an index that is not in its own window routes nowhere.
template <typename T>
__device__ void max_pool2d_backward_impl(const int* __restrict__ indices, const T* __restrict__ dy,
                                         T* __restrict__ dx, PoolGeom g) {
    const int out_len = g.OH * g.OW;
    pool_backward_walk(dx, g, [=](float (&acc)[PLANES_PER_THREAD], long long out0, int count,
                                  int oh, int ow, int i) {
        const int o = oh * g.OW + ow;
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) {
            const long long at = out0 + min(j, count - 1) * out_len + o;
            if (indices[at] == i) acc[j] += load_f32(dy, at);
        }
    });
}

__device__ __forceinline__ int avg_divisor(const Window& wh, const Window& ww, int count_include_pad) {
    return count_include_pad ? wh.padded * ww.padded : (wh.hi - wh.lo) * (ww.hi - ww.lo);
}

template <typename T>
__device__ void avg_pool2d_forward_impl(const T* __restrict__ x, T* __restrict__ y, PoolGeom g) {
    const int out_len = g.OH * g.OW, in_len = g.H * g.W;
    const int o = plane_position(out_len);
    if (o < 0) return;
    const int oh = o / g.OW, ow = o - oh * g.OW;
    const Window wh(oh, g.kh, g.sh, g.ph, g.H), ww(ow, g.kw, g.sw, g.pw, g.W);
    const float div = (float)avg_divisor(wh, ww, g.count_include_pad);
    for (int p0 = blockIdx.z * PLANES_PER_THREAD; p0 < g.planes; p0 += gridDim.z * PLANES_PER_THREAD) {
        const int count = min(PLANES_PER_THREAD, g.planes - p0);
        const long long in0 = (long long)p0 * in_len, out0 = (long long)p0 * out_len;
        float sum[PLANES_PER_THREAD];
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) sum[j] = 0.0f;
        for (int ih = wh.lo; ih < wh.hi; ++ih) {
            for (int iw = ww.lo; iw < ww.hi; ++iw) {
#pragma unroll
                for (int j = 0; j < PLANES_PER_THREAD; ++j)
                    sum[j] += load_f32(x, in0 + min(j, count - 1) * in_len + ih * g.W + iw);
            }
        }
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) {
            if (j >= count) continue;
            store_f32(y, out0 + j * out_len + o, sum[j] / div);
        }
    }
}

// dx[i] = sum over the outputs whose window contains i of dy / divisor (assigned).
template <typename T>
__device__ void avg_pool2d_backward_impl(const T* __restrict__ dy, T* __restrict__ dx, PoolGeom g) {
    const int out_len = g.OH * g.OW;
    pool_backward_walk(dx, g, [=](float (&acc)[PLANES_PER_THREAD], long long out0, int count,
                                  int oh, int ow, int) {
        const Window wh(oh, g.kh, g.sh, g.ph, g.H), ww(ow, g.kw, g.sw, g.pw, g.W);
        // The fast reciprocal (within 2 ulp), not IEEE division per plane: that division, and the
        // correctly rounded reciprocal, are calls whose saved registers spill to local memory.
        const float inv = __fdividef(1.0f, (float)avg_divisor(wh, ww, g.count_include_pad));
        const int o = oh * g.OW + ow;
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j)
            acc[j] = fmaf(load_f32(dy, out0 + min(j, count - 1) * out_len + o), inv, acc[j]);
    });
}

// One warp per plane: lane-strided partial sums, then a butterfly in a fixed order.
template <typename T>
__device__ void global_avg_pool_forward_impl(const T* __restrict__ x, T* __restrict__ y, int planes,
                                             int HW) {
    const long long plane = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (plane >= planes) return;  // the whole warp leaves together
    const T* xp = x + plane * HW;
    float sum = 0.0f;
    for (int i = lane; i < HW; i += 32) sum += load_f32(xp, i);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) store_f32(y, plane, sum / (float)HW);
}

template <typename T>
__device__ void global_avg_pool_backward_impl(const T* __restrict__ dy, T* __restrict__ dx,
                                              int planes, int HW) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(planes * HW)) return;
    const int i = (int)t;
    store_f32(dx, i, load_f32(dy, i / HW) / (float)HW);
}

#define POOL_ENTRY_POINTS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        max_pool2d_forward_##SUFFIX(const T* x, T* y, int* indices, PoolGeom g) {                  \
        max_pool2d_forward_impl<T>(x, y, indices, g);                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        max_pool2d_backward_##SUFFIX(const int* indices, const T* dy, T* dx, PoolGeom g) {         \
        max_pool2d_backward_impl<T>(indices, dy, dx, g);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        avg_pool2d_forward_##SUFFIX(const T* x, T* y, PoolGeom g) {                                \
        avg_pool2d_forward_impl<T>(x, y, g);                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        avg_pool2d_backward_##SUFFIX(const T* dy, T* dx, PoolGeom g) {                             \
        avg_pool2d_backward_impl<T>(dy, dx, g);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        global_avg_pool_forward_##SUFFIX(const T* x, T* y, int planes, int HW) {                   \
        global_avg_pool_forward_impl<T>(x, y, planes, HW);                                         \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        global_avg_pool_backward_##SUFFIX(const T* dy, T* dx, int planes, int HW) {                \
        global_avg_pool_backward_impl<T>(dy, dx, planes, HW);                                      \
    }

POOL_ENTRY_POINTS(f32, float)
POOL_ENTRY_POINTS(bf16, bf16_bits)
