// The bilinear resize after the fine branch's up-sampler, NCHW contiguous; resize.rs documents the
// formulas. resize_bilinear_forward: one thread per output; resize_bilinear_backward: one thread per
// input pixel, gathering from the output rows and columns whose source index (PyTorch's
// align_corners=False rule) reaches it, in row-major order. No float atomics: every result is the
// same bits on every run.
#include "common.cuh"

#define RESIZE_THREADS 256

// Bilinear resize, PyTorch F.interpolate(mode="bilinear", align_corners=False) with a given size.

// Mirrors `ResizeGeom` in crates/c2f-kernels/src/resize.rs; scale_* = in / out, rounded to f32 on
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

#define RESIZE_ENTRY_POINTS(SUFFIX, T)                                                             \
    extern "C" __global__ void __launch_bounds__(RESIZE_THREADS)                                   \
        resize_bilinear_forward_##SUFFIX(const T* x, T* y, ResizeGeom g) {                         \
        resize_bilinear_forward_impl<T>(x, y, g);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(RESIZE_THREADS)                                   \
        resize_bilinear_backward_##SUFFIX(const T* dy, T* dx, ResizeGeom g) {                      \
        resize_bilinear_backward_impl<T>(dy, dx, g);                                               \
    }

RESIZE_ENTRY_POINTS(f32, float)
RESIZE_ENTRY_POINTS(bf16, bf16_bits)
