// The Coarse2Fine fine branch: ReLU after the attention conv, the choice of one attention map per
// sample (or their mean), the bilinear resize after the up-sampler, and the per-sample max
// normalised mask multiplied into the image. NCHW contiguous; mask.rs documents every formula.
//
// relu_*: one thread per element.
// select_map_* / mean_maps_*: one thread per output element (forward) or per dA element
// (backward, a gather: no atomics).
// resize_bilinear_forward: one thread per output; resize_bilinear_backward: one thread per input
// pixel, gathering from the output rows and columns whose source index (PyTorch's
// align_corners=False rule) reaches it, in row-major order.
// mask_stats / mask_backward_reduce: one block per sample, a fixed-order reduction; mask_apply /
// mask_backward: one thread per pixel.
// No float atomics: every result is the same bits on every run.
#include "common.cuh"

#define MASK_THREADS 256


// ---------------------------------------------------------------------------------------------
// ReLU. Forward y = x < 0 ? 0 : x (NaN passes, as torch.relu); backward dx = y <= 0 ? 0 : dy
// (a select, as PyTorch's threshold_backward: a NaN y passes dy, a NaN dy under y <= 0 is 0).

template <typename T>
__device__ void relu_forward_impl(const T* __restrict__ x, T* __restrict__ y, int n) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)n) return;
    const float v = load_f32(x, t);
    store_f32(y, t, v < 0.0f ? 0.0f : v);
}

template <typename T>
__device__ void relu_backward_impl(const T* __restrict__ y, const T* __restrict__ dy,
                                   T* __restrict__ dx, int n) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)n) return;
    store_f32(dx, t, load_f32(y, t) <= 0.0f ? 0.0f : load_f32(dy, t));
}

// ---------------------------------------------------------------------------------------------
// Attention-map selection and mean. A [B, M, hw], S [B, hw].

// Mirrors `MapGeom` in crates/c2f-kernels/src/mask.rs.
struct MapGeom {
    int batch, maps, hw;
};

#define MASK_NAN __int_as_float(0x7fc00000)

// S[b, p] = A[b, k_b, p]; a k_b outside [0, M) gives NaN (never read out of bounds).
template <typename T>
__device__ void select_map_forward_impl(const T* __restrict__ a, const int* __restrict__ index,
                                        T* __restrict__ s, MapGeom g) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.hw)) return;
    const int p = (int)t % g.hw, b = (int)t / g.hw;
    const int k = index[b];
    const bool valid = k >= 0 && k < g.maps;
    store_f32(s, t, valid ? load_f32(a, ((long long)b * g.maps + k) * g.hw + p) : MASK_NAN);
}

// One thread per dA element. Assigning: dA = [m == k_b] dS (NaN over the sample for a bad k_b).
// Accumulating: dA[b, k_b] += dS, the other maps (and a bad k_b's sample) untouched.
template <typename T>
__device__ void select_map_backward_impl(const int* __restrict__ index, const T* __restrict__ ds,
                                         T* __restrict__ da, MapGeom g, int accumulate) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.maps * g.hw)) return;
    const int p = (int)t % g.hw, m = ((int)t / g.hw) % g.maps, b = (int)t / (g.hw * g.maps);
    const int k = index[b];
    const bool valid = k >= 0 && k < g.maps;
    if (accumulate) {
        if (m == k) store_f32(da, t, load_f32(da, t) + load_f32(ds, b * g.hw + p));
        return;
    }
    const float v = m == k ? load_f32(ds, b * g.hw + p) : 0.0f;
    store_f32(da, t, valid ? v : MASK_NAN);
}

// S[b, p] = (sum over m in order of A[b, m, p]) / M.
template <typename T>
__device__ void mean_maps_forward_impl(const T* __restrict__ a, T* __restrict__ s, MapGeom g) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.hw)) return;
    const int p = (int)t % g.hw, b = (int)t / g.hw;
    const T* ab = a + (long long)b * g.maps * g.hw + p;
    float sum = 0.0f;
    for (int m = 0; m < g.maps; ++m) sum += load_f32(ab, (long long)m * g.hw);
    store_f32(s, t, sum / (float)g.maps);
}

// dA[b, m, p] = dS[b, p] / M (assigned).
template <typename T>
__device__ void mean_maps_backward_impl(const T* __restrict__ ds, T* __restrict__ da, MapGeom g) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.maps * g.hw)) return;
    const int p = (int)t % g.hw, b = (int)t / (g.hw * g.maps);
    store_f32(da, t, load_f32(ds, b * g.hw + p) / (float)g.maps);
}

// ---------------------------------------------------------------------------------------------
// Bilinear resize, PyTorch F.interpolate(mode="bilinear", align_corners=False) with a given size.

// Mirrors `ResizeGeom` in crates/c2f-kernels/src/mask.rs; scale_* = in / out, rounded to f32 on
// the host (PyTorch's area_pixel_compute_scale).
struct ResizeGeom {
    int planes;
    int ih, iw;  // input
    int oh, ow;  // output
    float scale_h, scale_w;
};

// Output row `o`'s source: rows i0 and i0 + step with weights 1 - l1 and l1. The product and the
// difference are rounded separately (no FMA), so the CPU's f32 path computes the same bits.
struct Source {
    int i0, step;
    float l1;
    __device__ __forceinline__ Source(int o, float scale, int n_in) {
        float src = __fsub_rn(__fmul_rn(scale, (float)o + 0.5f), 0.5f);
        src = src < 0.0f ? 0.0f : src;
        i0 = (int)src;
        step = i0 < n_in - 1 ? 1 : 0;
        l1 = src - (float)i0;
    }
    // The weight of input row `i` in output row `o`: both terms when i0 == i0 + step (last row).
    __device__ __forceinline__ float weight(int i) const {
        return (i0 == i ? 1.0f - l1 : 0.0f) + (i0 + step == i ? l1 : 0.0f);
    }
};

// An output row at or before the first whose source row i0 is `i` - 1 or later: the estimate
// of where src = i - 1, less two rows of margin for its rounding. Rows 0 and 1 start at 0, as
// the rows whose src was clamped to 0 have i0 = 0 (with weight 0 on row 1, still added as the
// CPU does). Checked against the exact first row for every size pair up to 130 and many larger.
__device__ __forceinline__ int first_reaching(int i, float scale) {
    const float o = ((float)i - 0.5f) / scale - 0.5f;
    return (i <= 1 || o < 2.0f) ? 0 : (int)o - 2;
}

// Plane-group kernels (common.cuh): a thread per output position (forward) or input position
// (backward) finds its sources once for PLANES_PER_THREAD planes.
template <typename T>
__device__ void resize_bilinear_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                             ResizeGeom g) {
    const int out_len = g.oh * g.ow, in_len = g.ih * g.iw;
    const int o = plane_position(out_len);
    if (o < 0) return;
    const int oh = o / g.ow, ow = o - oh * g.ow;
    const Source r(oh, g.scale_h, g.ih), c(ow, g.scale_w, g.iw);
    const int at0 = r.i0 * g.iw + c.i0, at1 = at0 + r.step * g.iw;
    const float c0 = 1.0f - c.l1, r0 = 1.0f - r.l1;
    for (int p0 = blockIdx.z * PLANES_PER_THREAD; p0 < g.planes;
         p0 += gridDim.z * PLANES_PER_THREAD) {
        const int count = min(PLANES_PER_THREAD, g.planes - p0);
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) {
            const T* xp = x + (long long)(p0 + min(j, count - 1)) * in_len;
            const float v = r0 * (c0 * load_f32(xp, at0) + c.l1 * load_f32(xp, at0 + c.step)) +
                            r.l1 * (c0 * load_f32(xp, at1) + c.l1 * load_f32(xp, at1 + c.step));
            if (j < count) store_f32(y, (long long)(p0 + j) * out_len + o, v);
        }
    }
}

// dx[i, j] = sum over output rows oh reaching i (row-major) of w_h(oh, i) *
//            (sum over output columns ow reaching j of w_w(ow, j) dy[oh, ow])   (assigned).
// Rows reaching i are those whose i0 is i - 1 or i, a contiguous run since i0 grows with oh.
template <typename T>
__device__ void resize_bilinear_backward_impl(const T* __restrict__ dy, T* __restrict__ dx,
                                              ResizeGeom g) {
    const int out_len = g.oh * g.ow, in_len = g.ih * g.iw;
    const int i = plane_position(in_len);
    if (i < 0) return;
    const int ih = i / g.iw, iw = i - ih * g.iw;
    const int ow_lo = first_reaching(iw, g.scale_w), oh_lo = first_reaching(ih, g.scale_h);
    for (int p0 = blockIdx.z * PLANES_PER_THREAD; p0 < g.planes;
         p0 += gridDim.z * PLANES_PER_THREAD) {
        const int count = min(PLANES_PER_THREAD, g.planes - p0);
        const T* dyp[PLANES_PER_THREAD];
        float acc[PLANES_PER_THREAD];
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j) {
            dyp[j] = dy + (long long)(p0 + min(j, count - 1)) * out_len;
            acc[j] = 0.0f;
        }
        for (int oh = oh_lo; oh < g.oh; ++oh) {
            const Source r(oh, g.scale_h, g.ih);
            if (r.i0 > ih) break;
            if (r.i0 + 1 < ih) continue;
            float row[PLANES_PER_THREAD];
#pragma unroll
            for (int j = 0; j < PLANES_PER_THREAD; ++j) row[j] = 0.0f;
            for (int ow = ow_lo; ow < g.ow; ++ow) {
                const Source c(ow, g.scale_w, g.iw);
                if (c.i0 > iw) break;
                if (c.i0 + 1 < iw) continue;
                const float w = c.weight(iw);
#pragma unroll
                for (int j = 0; j < PLANES_PER_THREAD; ++j)
                    row[j] += w * load_f32(dyp[j], oh * g.ow + ow);
            }
            const float w = r.weight(ih);
#pragma unroll
            for (int j = 0; j < PLANES_PER_THREAD; ++j) acc[j] += w * row[j];
        }
#pragma unroll
        for (int j = 0; j < PLANES_PER_THREAD; ++j)
            if (j < count) store_f32(dx, (long long)(p0 + j) * in_len + i, acc[j]);
    }
}

// ---------------------------------------------------------------------------------------------
// Mask and apply. U [B, 1, hw], X and X_f [B, C, hw].
//   u_max_b = max_p U[b, p] (first maximum; a NaN wins, the first one), j_b its index;
//   Mk[b, p] = u_max_b > 0 or NaN ? max(U[b, p], 0) / u_max_b : 1   (a NaN U stays NaN);
//   X_f[b, c, p] = Mk[b, p] X[b, c, p].

// Mirrors `MaskGeom` in crates/c2f-kernels/src/mask.rs.
struct MaskGeom {
    int batch, channels, hw;
};

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
    const long long base = (long long)b * g.channels * g.hw + p;
    for (int c = 0; c < g.channels; ++c) {
        const long long i = base + (long long)c * g.hw;
        store_f32(xf, i, mk * load_f32(x, i));
    }
}

// dL/dMk at one pixel: sum over channels of dX_f X.
template <typename T>
__device__ __forceinline__ float mask_grad(const T* __restrict__ x, const T* __restrict__ dxf,
                                           long long base, int channels, int hw) {
    float gsum = 0.0f;
    for (int c = 0; c < channels; ++c) {
        const long long i = base + (long long)c * hw;
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
        const long long base = (long long)b * g.channels * g.hw;
        for (int p = p0 + threadIdx.x; p < p_end; p += blockDim.x)
            sum += mask_grad(x, dxf, base + p, g.channels, g.hw) * mask_value(load_f32(ub, p), um);
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
    const long long base = (long long)b * g.channels * g.hw + p;
    float d = 0.0f;
    if (um > 0.0f || um != um) {
        const float gp = mask_grad(x, dxf, base, g.channels, g.hw);
        d = p == argmax[b] ? (gp - dot[b]) / um : (uv > 0.0f ? gp / um : 0.0f);
    }
    store_f32(du, t, d);
    if (dx != nullptr) {
        const float mk = mask_value(uv, um);
        for (int c = 0; c < g.channels; ++c) {
            const long long i = base + (long long)c * g.hw;
            store_f32(dx, i, load_f32(dxf, i) * mk);
        }
    }
}

#define MASK_ENTRY_POINTS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        relu_forward_##SUFFIX(const T* x, T* y, int n) {                                           \
        relu_forward_impl<T>(x, y, n);                                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        relu_backward_##SUFFIX(const T* y, const T* dy, T* dx, int n) {                            \
        relu_backward_impl<T>(y, dy, dx, n);                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        select_map_forward_##SUFFIX(const T* a, const int* index, T* s, MapGeom g) {               \
        select_map_forward_impl<T>(a, index, s, g);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS) select_map_backward_##SUFFIX(       \
        const int* index, const T* ds, T* da, MapGeom g, int accumulate) {                         \
        select_map_backward_impl<T>(index, ds, da, g, accumulate);                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        mean_maps_forward_##SUFFIX(const T* a, T* s, MapGeom g) {                                  \
        mean_maps_forward_impl<T>(a, s, g);                                                        \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        mean_maps_backward_##SUFFIX(const T* ds, T* da, MapGeom g) {                               \
        mean_maps_backward_impl<T>(ds, da, g);                                                     \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        resize_bilinear_forward_##SUFFIX(const T* x, T* y, ResizeGeom g) {                         \
        resize_bilinear_forward_impl<T>(x, y, g);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASK_THREADS)                                     \
        resize_bilinear_backward_##SUFFIX(const T* dy, T* dx, ResizeGeom g) {                      \
        resize_bilinear_backward_impl<T>(dy, dx, g);                                               \
    }                                                                                              \
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
