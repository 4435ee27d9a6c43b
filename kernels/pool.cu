// Pooling for the InceptionV3 runtime, NCHW contiguous, PyTorch semantics (ceil_mode=False,
// dilation 1).
//
// max_pool2d_forward / avg_pool2d_forward: plane-group kernels (common.cuh), a thread per output
// position. max_pool2d_backward / avg_pool2d_backward: a thread per input position, gathering
// from the outputs whose windows contain it in row-major order (as PyTorch's CUDA backward): no
// atomics. (A thread per element ran max pooling at 17% of copy bandwidth on an H200.)
// global_avg_pool_forward: one warp per plane; global_avg_pool_backward: one thread per element.
// Every result is the same bits on every run.
//
// Channels-last (NHWC, the *_nhwc_* entry points): x [N, H, W, C], y [N, OH, OW, C], max-pool
// indices [N, OH, OW, C] holding ih*W + iw as in NCHW. A thread owns VEC consecutive channels of
// one position (channels_last.cuh; the launcher picks VEC from C and the buffers' alignment), so
// a warp's loads at each window offset are contiguous 16-byte vectors. Windows, visiting order
// and arithmetic are NCHW's, so NHWC gives NCHW's bits; global_avg_pool_nhwc_forward sums with
// 32 row slots and a tree that adds in the NCHW warp butterfly's order for the same reason.
#include "common.cuh"
#include "channels_last.cuh"

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
    __device__ __forceinline__ Window() {}
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

// As PyTorch: a larger value or any NaN wins, so ties keep the first maximum and a NaN (the last
// one) propagates.
__device__ __forceinline__ void max_update(float v, int i, float& best, int& best_i) {
    if (v > best || v != v) {
        best = v;
        best_i = i;
    }
}

// Every lane's running maximum at -inf on the window's first element `first`.
template <int LANES>
__device__ __forceinline__ void max_start(float (&best)[LANES], int (&best_i)[LANES], int first) {
#pragma unroll
    for (int j = 0; j < LANES; ++j) {
        best[j] = -__int_as_float(0x7f800000);
        best_i[j] = first;
    }
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
        // Start at -inf on the window's first element (max_update's rule).
        float best[PLANES_PER_THREAD];
        int best_i[PLANES_PER_THREAD];
        max_start(best, best_i, wh.lo * g.W + ww.lo);
        for (int ih = wh.lo; ih < wh.hi; ++ih) {
            for (int iw = ww.lo; iw < ww.hi; ++iw) {
                const int i = ih * g.W + iw;
#pragma unroll
                for (int j = 0; j < PLANES_PER_THREAD; ++j)
                    max_update(load_f32(x, in0 + min(j, count - 1) * in_len + i), i, best[j],
                               best_i[j]);
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

// ---- NHWC ----

// Position q and first channel c0 of this thread, t = q * (C / VEC) + c0 / VEC; false past the
// last of `positions`.
__device__ __forceinline__ bool nhwc_position(long long positions, int C, int vec, long long& q,
                                              int& c0) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int vectors = C / vec;
    if (t >= positions * vectors) return false;
    q = t / vectors;
    c0 = (int)(t - q * vectors) * vec;
    return true;
}

// The output position of this thread (offset q, sample b), its first channel c0 and its
// window's rows and columns; false past the last output.
__device__ __forceinline__ bool nhwc_output_window(const PoolGeom& g, int C, int vec,
                                                   long long& q, int& c0, int& b, Window& wh,
                                                   Window& ww) {
    if (!nhwc_position((long long)(g.planes / C) * g.OH * g.OW, C, vec, q, c0)) return false;
    const int ow = (int)(q % g.OW), oh = (int)(q / g.OW % g.OH);
    b = (int)(q / g.OW / g.OH);
    wh = Window(oh, g.kh, g.sh, g.ph, g.H);
    ww = Window(ow, g.kw, g.sw, g.pw, g.W);
    return true;
}

template <typename T, int VEC>
__device__ void max_pool2d_nhwc_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                             int* __restrict__ indices, PoolGeom g, int C) {
    long long q;
    int c0, b;
    Window wh, ww;
    if (!nhwc_output_window(g, C, VEC, q, c0, b, wh, ww)) return;
    float best[VEC];
    int best_i[VEC];
    max_start(best, best_i, wh.lo * g.W + ww.lo);
    for (int ih = wh.lo; ih < wh.hi; ++ih) {
        for (int iw = ww.lo; iw < ww.hi; ++iw) {
            float v[VEC];
            load_vec<T, VEC>(x, (((long long)b * g.H + ih) * g.W + iw) * C + c0, v);
#pragma unroll
            for (int u = 0; u < VEC; ++u) max_update(v[u], ih * g.W + iw, best[u], best_i[u]);
        }
    }
    store_vec<T, VEC>(y, q * C + c0, best);
#pragma unroll
    for (int u = 0; u < VEC; ++u) indices[q * C + c0 + u] = best_i[u];
}

// The backward walk both NHWC pools share, as pool_backward_walk: for input position (b, ih,
// iw) and channels c0..c0+VEC, acc gathers add(acc, at, i) over the outputs whose window contains
// it in row-major order (at: that output's offset of c0; i = ih*W + iw), and dx = acc.
template <typename T, int VEC, typename Add>
__device__ void pool_nhwc_backward_walk(T* __restrict__ dx, PoolGeom g, int C, Add add) {
    const int N = g.planes / C;
    long long q;
    int c0;
    if (!nhwc_position((long long)N * g.H * g.W, C, VEC, q, c0)) return;
    const int iw = (int)(q % g.W), ih = (int)(q / g.W % g.H), b = (int)(q / g.W / g.H);
    const int oh0 = first_output(ih, g.kh, g.sh, g.ph), oh1 = end_output(ih, g.sh, g.ph, g.OH);
    const int ow0 = first_output(iw, g.kw, g.sw, g.pw), ow1 = end_output(iw, g.sw, g.pw, g.OW);
    float acc[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) acc[u] = 0.0f;
    for (int oh = oh0; oh < oh1; ++oh)
        for (int ow = ow0; ow < ow1; ++ow)
            add(acc, (((long long)b * g.OH + oh) * g.OW + ow) * C + c0, oh, ow, ih * g.W + iw);
    store_vec<T, VEC>(dx, q * C + c0, acc);
}

template <typename T, int VEC>
__device__ void max_pool2d_nhwc_backward_impl(const int* __restrict__ indices,
                                              const T* __restrict__ dy, T* __restrict__ dx,
                                              PoolGeom g, int C) {
    pool_nhwc_backward_walk<T, VEC>(dx, g, C, [=](float (&acc)[VEC], long long at, int, int,
                                                  int i) {
        float d[VEC];
        load_vec<T, VEC>(dy, at, d);
#pragma unroll
        for (int u = 0; u < VEC; ++u)
            if (indices[at + u] == i) acc[u] += d[u];
    });
}

template <typename T, int VEC>
__device__ void avg_pool2d_nhwc_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                             PoolGeom g, int C) {
    long long q;
    int c0, b;
    Window wh, ww;
    if (!nhwc_output_window(g, C, VEC, q, c0, b, wh, ww)) return;
    const float div = (float)avg_divisor(wh, ww, g.count_include_pad);
    float sum[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) sum[u] = 0.0f;
    for (int ih = wh.lo; ih < wh.hi; ++ih) {
        for (int iw = ww.lo; iw < ww.hi; ++iw) {
            float v[VEC];
            load_vec<T, VEC>(x, (((long long)b * g.H + ih) * g.W + iw) * C + c0, v);
#pragma unroll
            for (int u = 0; u < VEC; ++u) sum[u] += v[u];
        }
    }
#pragma unroll
    for (int u = 0; u < VEC; ++u) sum[u] = sum[u] / div;
    store_vec<T, VEC>(y, q * C + c0, sum);
}

template <typename T, int VEC>
__device__ void avg_pool2d_nhwc_backward_impl(const T* __restrict__ dy, T* __restrict__ dx,
                                              PoolGeom g, int C) {
    pool_nhwc_backward_walk<T, VEC>(dx, g, C, [=](float (&acc)[VEC], long long at, int oh, int ow,
                                                  int) {
        const Window wh(oh, g.kh, g.sh, g.ph, g.H), ww(ow, g.kw, g.sw, g.pw, g.W);
        // As avg_pool2d_backward_impl: the fast reciprocal.
        const float inv = __fdividef(1.0f, (float)avg_divisor(wh, ww, g.count_include_pad));
        float d[VEC];
        load_vec<T, VEC>(dy, at, d);
#pragma unroll
        for (int u = 0; u < VEC; ++u) acc[u] = fmaf(d[u], inv, acc[u]);
    });
}

// Row slots of the global pool: 32, as the NCHW warp's lanes.
#define GLOBAL_NHWC_SLOTS 32

struct SumMerge1 {
    __device__ __forceinline__ void operator()(float (&a)[1], const float (&b)[1]) const {
        a[0] += b[0];
    }
};

// Block (b, tile): 8 lanes of VEC channels by 32 row slots; slot s sums positions s, s + 32, ...
// (an NCHW lane's partial), then tile_reduce adds slot s + half into s, half = 16, 8, ..., 1:
// lane 0's sums in the NCHW butterfly.
template <typename T, int VEC>
__device__ void global_avg_pool_nhwc_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                  int C, int HW, float* scratch) {
    const RowTile t((256 / GLOBAL_NHWC_SLOTS) * VEC, VEC, C);
    const long long b = blockIdx.x;
    float acc[VEC][1];
#pragma unroll
    for (int u = 0; u < VEC; ++u) acc[u][0] = 0.0f;
    if (t.active) {
        for (int p = t.slot; p < HW; p += t.slots) {
            float v[VEC];
            load_vec<T, VEC>(x, (b * HW + p) * C + t.c0, v);
#pragma unroll
            for (int u = 0; u < VEC; ++u) acc[u][0] += v[u];
        }
    }
    tile_reduce(acc, scratch, t, SumMerge1());
    if (t.slot != 0 || !t.active) return;
    float out[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) out[u] = acc[u][0] / (float)HW;
    store_vec<T, VEC>(y, b * C + t.c0, out);
}

template <typename T, int VEC>
__device__ void global_avg_pool_nhwc_backward_impl(const T* __restrict__ dy, T* __restrict__ dx,
                                                   int N, int C, int HW) {
    long long q;
    int c0;
    if (!nhwc_position((long long)N * HW, C, VEC, q, c0)) return;
    float d[VEC];
    load_vec<T, VEC>(dy, q / HW * C + c0, d);
#pragma unroll
    for (int u = 0; u < VEC; ++u) d[u] = d[u] / (float)HW;
    store_vec<T, VEC>(dx, q * C + c0, d);
}

// `vec`: the launcher's choice, 1 or NHWC_VEC(T).
#define POOL_NHWC_CALL(T, IMPL, ...)                                                               \
    if (vec > 1) {                                                                                 \
        IMPL<T, NHWC_VEC(T)>(__VA_ARGS__);                                                         \
    } else {                                                                                       \
        IMPL<T, 1>(__VA_ARGS__);                                                                   \
    }

#define POOL_NHWC_ENTRY_POINTS(SUFFIX, T)                                                          \
    extern "C" __global__ void __launch_bounds__(256) max_pool2d_nhwc_forward_##SUFFIX(           \
        const T* x, T* y, int* indices, PoolGeom g, int C, int vec) {                             \
        POOL_NHWC_CALL(T, max_pool2d_nhwc_forward_impl, x, y, indices, g, C)                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) max_pool2d_nhwc_backward_##SUFFIX(          \
        const int* indices, const T* dy, T* dx, PoolGeom g, int C, int vec) {                     \
        POOL_NHWC_CALL(T, max_pool2d_nhwc_backward_impl, indices, dy, dx, g, C)                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) avg_pool2d_nhwc_forward_##SUFFIX(           \
        const T* x, T* y, PoolGeom g, int C, int vec) {                                           \
        POOL_NHWC_CALL(T, avg_pool2d_nhwc_forward_impl, x, y, g, C)                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) avg_pool2d_nhwc_backward_##SUFFIX(          \
        const T* dy, T* dx, PoolGeom g, int C, int vec) {                                         \
        POOL_NHWC_CALL(T, avg_pool2d_nhwc_backward_impl, dy, dx, g, C)                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) global_avg_pool_nhwc_forward_##SUFFIX(      \
        const T* x, T* y, int N, int C, int HW, int vec) {                                        \
        __shared__ float scratch[256 * NHWC_VEC(T)];                                               \
        POOL_NHWC_CALL(T, global_avg_pool_nhwc_forward_impl, x, y, C, HW, scratch)                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) global_avg_pool_nhwc_backward_##SUFFIX(     \
        const T* dy, T* dx, int N, int C, int HW, int vec) {                                      \
        POOL_NHWC_CALL(T, global_avg_pool_nhwc_backward_impl, dy, dx, N, C, HW)                    \
    }

// The windowed pools' NCHW entry points take the NHWC ones' trailing (C, vec) and ignore them, so
// the launcher passes one argument list to either.
#define POOL_ENTRY_POINTS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(256) max_pool2d_forward_##SUFFIX(                \
        const T* x, T* y, int* indices, PoolGeom g, int, int) {                                   \
        max_pool2d_forward_impl<T>(x, y, indices, g);                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) max_pool2d_backward_##SUFFIX(               \
        const int* indices, const T* dy, T* dx, PoolGeom g, int, int) {                           \
        max_pool2d_backward_impl<T>(indices, dy, dx, g);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        avg_pool2d_forward_##SUFFIX(const T* x, T* y, PoolGeom g, int, int) {                      \
        avg_pool2d_forward_impl<T>(x, y, g);                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        avg_pool2d_backward_##SUFFIX(const T* dy, T* dx, PoolGeom g, int, int) {                   \
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
POOL_NHWC_ENTRY_POINTS(f32, float)
POOL_NHWC_ENTRY_POINTS(bf16, bf16_bits)
