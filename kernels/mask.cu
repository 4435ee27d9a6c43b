// The fine branch's per-sample max-normalised mask multiplied into the image, NCHW or
// channels-last NHWC (MaskGeom's strides; a pixel's channels are then contiguous, 3 values that a
// warp's neighbouring threads read in one run); mask.rs documents every formula. mask_stats / mask_backward_reduce: a fixed-order reduction per
// sample; mask_apply / mask_backward: one thread per pixel. No float atomics: every result is the
// same bits on every run.
#include "common.cuh"

#define MASK_THREADS 256

// Mask and apply. U [B, 1, hw], X and X_f [B, C, hw] (NCHW) or [B, hw, C] (NHWC).
//   u_max_b = max_p U[b, p] (first maximum; a NaN wins, the first one), j_b its index;
//   Mk[b, p] = u_max_b > 0 or NaN ? max(U[b, p], 0) / u_max_b : 1   (a NaN U stays NaN);
//   X_f[b, c, p] = Mk[b, p] X[b, c, p].

// Mirrors `MaskGeom` in crates/c2f-kernels/src/mask.rs.
struct MaskGeom {
    int batch, channels, hw;
    // Between a pixel's neighbours and between its channels in X: (1, hw) in NCHW, (C, 1) in NHWC.
    int pixel_stride, channel_stride;
};

// Offset of channel 0 of pixel p of sample b in X.
__device__ __forceinline__ long long image_offset(const MaskGeom& g, int b, int p) {
    return (long long)b * g.channels * g.hw + (long long)p * g.pixel_stride;
}

// The mask value of one pixel: the ones mask unless u_max > 0 (or NaN, which then spreads).
__device__ __forceinline__ float mask_value(float u, float u_max) {
    if (u_max <= 0.0f) return 1.0f;
    return (u < 0.0f ? 0.0f : u) / u_max;
}

// The per-sample reductions over HW (the maximum, and the backward's dot) run on a grid
// (chunks, B), each block reducing MASK_CHUNK pixels to a partial, then one thread per sample
// combines its partials in chunk order: one block per sample left most of an H200 idle (the
// mask ran at 10% of copy bandwidth).
#define MASK_CHUNK (MASK_THREADS * 4)

// grid (chunks, B), MASK_THREADS threads: each chunk's maximum and its first position.
template <typename T>
__device__ void mask_stats_impl(const T* __restrict__ u, float* __restrict__ part_max,
                                int* __restrict__ part_arg, int hw) {
    __shared__ float scratch_v[32];
    __shared__ int scratch_i[32];
    const int b = blockIdx.y, p0 = blockIdx.x * MASK_CHUNK, p_end = min(p0 + MASK_CHUNK, hw);
    const T* ub = u + (long long)b * hw;
    float best = ARGMAX_NEG_INF;
    int best_i = ARGMAX_NO_INDEX;
    for (int p = p0 + threadIdx.x; p < p_end; p += blockDim.x) {
        const float v = load_f32(ub, p);
        if (argmax_better(v, p, best, best_i)) {
            best = v;
            best_i = p;
        }
    }
    block_argmax(best, best_i, scratch_v, scratch_i);
    if (threadIdx.x == 0) {
        part_max[(long long)b * gridDim.x + blockIdx.x] = best;
        part_arg[(long long)b * gridDim.x + blockIdx.x] = best_i;
    }
}

// One thread per sample: u_max[b] and argmax[b] from the chunks' partials (argmax_better is a
// total order, so this is the first maximum of the whole sample).
__device__ void mask_stats_finish_impl(const float* __restrict__ part_max,
                                       const int* __restrict__ part_arg, int chunks, int batch,
                                       float* __restrict__ u_max, int* __restrict__ argmax) {
    const unsigned int b = thread_index();
    if (b >= (unsigned int)batch) return;
    float best = ARGMAX_NEG_INF;
    int best_i = ARGMAX_NO_INDEX;
    for (int c = 0; c < chunks; ++c) {
        const long long at = (long long)b * chunks + c;
        if (argmax_better(part_max[at], part_arg[at], best, best_i)) {
            best = part_max[at];
            best_i = part_arg[at];
        }
    }
    u_max[b] = best;
    argmax[b] = best_i;
}

// One thread per pixel: X_f[b, c, p] = Mk[b, p] X[b, c, p] for every channel.
template <typename T>
__device__ void mask_apply_impl(const T* __restrict__ u, const T* __restrict__ x,
                                const float* __restrict__ u_max, T* __restrict__ xf, MaskGeom g) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.hw)) return;
    const int p = (int)t % g.hw, b = (int)t / g.hw;
    const float mk = mask_value(load_f32(u, t), u_max[b]);
    const long long base = image_offset(g, b, p);
    for (int c = 0; c < g.channels; ++c) {
        const long long i = base + (long long)c * g.channel_stride;
        store_f32(xf, i, mk * load_f32(x, i));
    }
}

// dL/dMk at one pixel: sum over channels of dX_f X.
template <typename T>
__device__ __forceinline__ float mask_grad(const T* __restrict__ x, const T* __restrict__ dxf,
                                           long long base, const MaskGeom& g) {
    float gsum = 0.0f;
    for (int c = 0; c < g.channels; ++c) {
        const long long i = base + (long long)c * g.channel_stride;
        gsum += load_f32(dxf, i) * load_f32(x, i);
    }
    return gsum;
}

// grid (chunks, B), MASK_THREADS threads: each chunk's part of dot[b] = sum_p g[b, p] Mk[b, p],
// the term of dU at the argmax.
template <typename T>
__device__ void mask_backward_reduce_impl(const T* __restrict__ u, const T* __restrict__ x,
                                          const T* __restrict__ dxf,
                                          const float* __restrict__ u_max,
                                          float* __restrict__ dot_partials, MaskGeom g) {
    __shared__ float scratch[32];
    const int b = blockIdx.y, p0 = blockIdx.x * MASK_CHUNK, p_end = min(p0 + MASK_CHUNK, g.hw);
    const float um = u_max[b];
    float sum = 0.0f;
    if (um > 0.0f || um != um) {
        const T* ub = u + (long long)b * g.hw;
        for (int p = p0 + threadIdx.x; p < p_end; p += blockDim.x)
            sum += mask_grad(x, dxf, image_offset(g, b, p), g) * mask_value(load_f32(ub, p), um);
    }
    sum = block_sum(sum, scratch);  // `um` is per block, so every thread gets here
    if (threadIdx.x == 0) dot_partials[(long long)b * gridDim.x + blockIdx.x] = sum;
}

// One thread per sample: dot[b] as the chunks' partials summed in order.
__device__ void mask_dot_finish_impl(const float* __restrict__ dot_partials, int chunks, int batch,
                                     float* __restrict__ dot) {
    const unsigned int b = thread_index();
    if (b >= (unsigned int)batch) return;
    float sum = 0.0f;
    for (int c = 0; c < chunks; ++c) sum += dot_partials[(long long)b * chunks + c];
    dot[b] = sum;
}

// One thread per pixel. With u_max > 0 (assigned):
//   dU[b, p] = g[b, p] [U > 0] / u_max             for p != j_b,
//   dU[b, j] = (g[b, j] - dot[b]) / u_max          at the argmax (Mk there is 1 whatever U is);
// with the ones mask dU = 0. dX[b, c, p] = dX_f Mk when dx is not null.
template <typename T>
__device__ void mask_backward_impl(const T* __restrict__ u, const T* __restrict__ x,
                                   const T* __restrict__ dxf, const float* __restrict__ u_max,
                                   const int* __restrict__ argmax, const float* __restrict__ dot,
                                   T* __restrict__ du, T* __restrict__ dx, MaskGeom g) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.hw)) return;
    const int p = (int)t % g.hw, b = (int)t / g.hw;
    const float um = u_max[b], uv = load_f32(u, t);
    const long long base = image_offset(g, b, p);
    float d = 0.0f;
    if (um > 0.0f || um != um) {
        const float gp = mask_grad(x, dxf, base, g);
        d = p == argmax[b] ? (gp - dot[b]) / um : (uv > 0.0f ? gp / um : 0.0f);
    }
    store_f32(du, t, d);
    if (dx != nullptr) {
        const float mk = mask_value(uv, um);
        for (int c = 0; c < g.channels; ++c) {
            const long long i = base + (long long)c * g.channel_stride;
            store_f32(dx, i, load_f32(dxf, i) * mk);
        }
    }
}

#define MASK_ENTRY_POINTS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        mask_stats_##SUFFIX(const T* u, float* part_max, int* part_arg, int hw) {                  \
        mask_stats_impl<T>(u, part_max, part_arg, hw);                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        mask_apply_##SUFFIX(const T* u, const T* x, const float* u_max, T* xf, MaskGeom g) {       \
        mask_apply_impl<T>(u, x, u_max, xf, g);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS) mask_backward_reduce_##SUFFIX(      \
        const T* u, const T* x, const T* dxf, const float* u_max, float* dot_partials,             \
        MaskGeom g) {                                                                              \
        mask_backward_reduce_impl<T>(u, x, dxf, u_max, dot_partials, g);                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS) mask_backward_##SUFFIX(             \
        const T* u, const T* x, const T* dxf, const float* u_max, const int* argmax,               \
        const float* dot, T* du, T* dx, MaskGeom g) {                                              \
        mask_backward_impl<T>(u, x, dxf, u_max, argmax, dot, du, dx, g);                           \
    }

MASK_ENTRY_POINTS(f32, float)
MASK_ENTRY_POINTS(bf16, bf16_bits)

// The finishing passes read f32 partials whatever the storage type.
extern "C" __global__ void __launch_bounds__(MASK_THREADS)
    mask_stats_finish(const float* part_max, const int* part_arg, int chunks, int batch,
                      float* u_max, int* argmax) {
    mask_stats_finish_impl(part_max, part_arg, chunks, batch, u_max, argmax);
}
extern "C" __global__ void __launch_bounds__(MASK_THREADS)
    mask_dot_finish(const float* dot_partials, int chunks, int batch, float* dot) {
    mask_dot_finish_impl(dot_partials, chunks, batch, dot);
}
