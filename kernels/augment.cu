// WS-DAN's attention-guided augmentation, NCHW contiguous; augment.rs documents every formula.
// augment_normalise: a block per sample (min and max, then the normalised map); attention_box_*:
// blocks over bands of rows of the up-sampled map, then a thread per sample; crop_resize and
// drop_mask: a thread per output pixel over every channel; maps_by_mass: a block per sample.
// Products go through __fmul_rn (never fused into an FMA) and the sums are in the CPU
// reference's order, so every result is the CPU's f32 result bit for bit. No float atomics.
#include "common.cuh"

#define AUGMENT_THREADS 256
// One warp per sample: a thread per map (WS-DAN has 32).
#define MASS_THREADS 32
// Up-sampled rows per block of attention_box_partials.
#define BOX_ROWS 8
#define BOX_NONE 0x7fffffff
#define AUGMENT_NAN __int_as_float(0x7fc00000)

// Mirrors `AugmentGeom` in crates/c2f-kernels/src/augment.rs.
struct AugmentGeom {
    int batch, channels, height, width;  // images
    int map_height, map_width;           // maps
};

// One output row's (or column's) source for bilinear resizing with align_corners=True: position
// scale·o with scale = (n_in − 1)/(n_out − 1) (0 for one output), rows i0 and i1 with weights l0
// and l1 (torch's upsample_bilinear2d).
struct CornerSource {
    int i0, i1;
    float l0, l1;
    __device__ __forceinline__ CornerSource(int o, int n_in, int n_out) {
        const float scale = n_out > 1 ? (float)(n_in - 1) / (float)(n_out - 1) : 0.0f;
        const float src = __fmul_rn(scale, (float)o);
        i0 = min((int)src, n_in - 1);
        i1 = i0 < n_in - 1 ? i0 + 1 : i0;
        l1 = src - (float)i0;
        l0 = 1.0f - l1;
    }
};

// r.l0·(c.l0·v00 + c.l1·v01) + r.l1·(c.l0·v10 + c.l1·v11), unfused.
__device__ __forceinline__ float bilinear(float v00, float v01, float v10, float v11,
                                          const CornerSource& r, const CornerSource& c) {
    return __fmul_rn(r.l0, __fmul_rn(c.l0, v00) + __fmul_rn(c.l1, v01)) +
           __fmul_rn(r.l1, __fmul_rn(c.l0, v10) + __fmul_rn(c.l1, v11));
}

// The normalised map's up-sampled value at image pixel (i, j).
__device__ __forceinline__ float upsampled(const float* __restrict__ norm, int i, int j,
                                           const AugmentGeom& g) {
    const CornerSource r(i, g.map_height, g.height), c(j, g.map_width, g.width);
    const float* row0 = norm + r.i0 * g.map_width;
    const float* row1 = norm + r.i1 * g.map_width;
    return bilinear(row0[c.i0], row0[c.i1], row1[c.i0], row1[c.i1], r, c);
}

// grid (B), AUGMENT_THREADS threads: norm[b] = (map − min)/(max − min) and flat[b] = 1 where
// max − min is not positive (a constant, NaN or empty range: norm is then left unwritten).
// fminf/fmaxf skip NaN and are exact, so any reduction order gives the CPU's min and max.
template <typename T>
__device__ void augment_normalise_impl(const T* __restrict__ maps, float* __restrict__ norm,
                                       int* __restrict__ flat, AugmentGeom g) {
    __shared__ float scratch[2][32];
    const int b = blockIdx.x, hw = g.map_height * g.map_width;
    const T* m = maps + (long long)b * hw;
    float lo = AUGMENT_NAN, hi = AUGMENT_NAN;
    for (int p = threadIdx.x; p < hw; p += blockDim.x) {
        const float v = load_f32(m, p);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        scratch[0][warp] = lo;
        scratch[1][warp] = hi;
    }
    __syncthreads();
    lo = scratch[0][0];
    hi = scratch[1][0];
    for (int w = 1; w < warps; ++w) {
        lo = fminf(lo, scratch[0][w]);
        hi = fmaxf(hi, scratch[1][w]);
    }
    const float range = hi - lo;
    const bool is_flat = !(range > 0.0f);
    if (threadIdx.x == 0) flat[b] = is_flat ? 1 : 0;
    if (is_flat) return;
    for (int p = threadIdx.x; p < hw; p += blockDim.x)
        norm[(long long)b * hw + p] = (load_f32(m, p) - lo) / range;
}

// Minimum over the warp of each of the four values.
__device__ __forceinline__ void warp_min4(int* v) {
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = min(v[k], __shfl_xor_sync(0xffffffffu, v[k], o));
}

// grid (B·bands), AUGMENT_THREADS threads, a band of BOX_ROWS up-sampled rows per block: the
// band's first and last row and column at or above the threshold, kept as four minima
// (row, −row, column, −column; BOX_NONE where none) in partials[b, band, 4]. Integer minima:
// any order gives the same result.
template <typename T>
__device__ void attention_box_partials_impl(const float* __restrict__ norm,
                                            const int* __restrict__ flat,
                                            const T* __restrict__ thresholds,
                                            int* __restrict__ partials, AugmentGeom g, int bands) {
    __shared__ int scratch[4][32];
    const int b = blockIdx.x / bands, band = blockIdx.x - b * bands;
    if (flat[b]) return;  // the same for the whole block: attention_box_finish reads no partial
    const float theta = load_f32(thresholds, b);
    const float* nb = norm + (long long)b * g.map_height * g.map_width;
    const int row0 = band * BOX_ROWS, rows = min(BOX_ROWS, g.height - row0);
    int v[4] = {BOX_NONE, BOX_NONE, BOX_NONE, BOX_NONE};
    for (int p = threadIdx.x; p < rows * g.width; p += blockDim.x) {
        const int i = row0 + p / g.width, j = p % g.width;
        if (upsampled(nb, i, j, g) >= theta) {
            v[0] = min(v[0], i);
            v[1] = min(v[1], -i);
            v[2] = min(v[2], j);
            v[3] = min(v[3], -j);
        }
    }
    warp_min4(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0)
        for (int k = 0; k < 4; ++k) scratch[k][warp] = v[k];
    __syncthreads();
    if (threadIdx.x != 0) return;
    int* out = partials + ((long long)b * bands + band) * 4;
    for (int k = 0; k < 4; ++k) {
        int best = scratch[k][0];
        for (int w = 1; w < warps; ++w) best = min(best, scratch[k][w]);
        out[k] = best;
    }
}

// One thread per sample: boxes[b] = [y0, x0, y1, x1] from the bands' partials, padded by
// pad_h rows and pad_w columns and clamped to the image; the whole image when the map is flat
// or no pixel reaches the threshold.
__device__ void attention_box_finish_impl(const int* __restrict__ partials,
                                          const int* __restrict__ flat, int* __restrict__ boxes,
                                          AugmentGeom g, int bands, int pad_h, int pad_w) {
    const unsigned int b = thread_index();
    if (b >= (unsigned int)g.batch) return;
    int v[4] = {BOX_NONE, BOX_NONE, BOX_NONE, BOX_NONE};
    if (!flat[b])
        for (int band = 0; band < bands; ++band)
            for (int k = 0; k < 4; ++k)
                v[k] = min(v[k], partials[((long long)b * bands + band) * 4 + k]);
    int* box = boxes + 4 * (long long)b;
    if (v[0] == BOX_NONE) {
        box[0] = 0;
        box[1] = 0;
        box[2] = g.height;
        box[3] = g.width;
        return;
    }
    // In 64 bits: the last row + 1 + pad_h can pass INT_MAX before the clamp.
    const long long y0 = (long long)v[0] - pad_h, x0 = (long long)v[2] - pad_w;
    const long long y1 = 1LL - v[1] + pad_h, x1 = 1LL - v[3] + pad_w;
    box[0] = y0 > 0 ? (int)y0 : 0;
    box[1] = x0 > 0 ? (int)x0 : 0;
    box[2] = y1 < g.height ? (int)y1 : g.height;
    box[3] = x1 < g.width ? (int)x1 : g.width;
}

// One thread per output pixel: y[b, :, i, j] = x[b, :, i, j] where the up-sampled normalised map
// is below the threshold (or the map is flat), else 0.
template <typename T>
__device__ void drop_mask_impl(const float* __restrict__ norm, const int* __restrict__ flat,
                               const T* __restrict__ thresholds, const T* __restrict__ x,
                               T* __restrict__ y, AugmentGeom g) {
    const unsigned int t = thread_index();
    const int hw = g.height * g.width;
    if (t >= (unsigned int)(g.batch * hw)) return;
    const int b = (int)t / hw, p = (int)t - b * hw, i = p / g.width, j = p - i * g.width;
    const float* nb = norm + (long long)b * g.map_height * g.map_width;
    const bool keep = flat[b] || upsampled(nb, i, j, g) < load_f32(thresholds, b);
    const long long base = (long long)b * g.channels * hw + p;
    for (int c = 0; c < g.channels; ++c) {
        const long long at = base + (long long)c * hw;
        store_f32(y, at, keep ? load_f32(x, at) : 0.0f);
    }
}

// One thread per output pixel: y[b, :, i, j] from the clamped box of x[b] resized to H×W.
template <typename T>
__device__ void crop_resize_impl(const T* __restrict__ x, const int* __restrict__ boxes,
                                 T* __restrict__ y, AugmentGeom g) {
    const unsigned int t = thread_index();
    const int hw = g.height * g.width;
    if (t >= (unsigned int)(g.batch * hw)) return;
    const int b = (int)t / hw, p = (int)t - b * hw, i = p / g.width, j = p - i * g.width;
    const int* box = boxes + 4 * (long long)b;
    const int y0 = min(max(box[0], 0), g.height - 1), x0 = min(max(box[1], 0), g.width - 1);
    const int y1 = min(max(box[2], y0 + 1), g.height), x1 = min(max(box[3], x0 + 1), g.width);
    const CornerSource r(i, y1 - y0, g.height), c(j, x1 - x0, g.width);
    const int at00 = (y0 + r.i0) * g.width + x0 + c.i0, at01 = at00 + (c.i1 - c.i0);
    const int at10 = at00 + (r.i1 - r.i0) * g.width, at11 = at10 + (c.i1 - c.i0);
    const long long base = (long long)b * g.channels * hw;
    const T* xp = x + base;
    T* yp = y + base + p;
    for (int ch = 0; ch < g.channels; ++ch, xp += hw, yp += hw) {
        const float v = bilinear(load_f32(xp, at00), load_f32(xp, at01), load_f32(xp, at10),
                                 load_f32(xp, at11), r, c);
        store_f32(yp, 0, v);
    }
}

// grid (B), MASS_THREADS threads: each map's weight sqrt(max(Σ_hw a, 0) + 1e-12), summed in
// pixel order by one thread (a NaN sum counts as 0), into weights[b, m]; then one thread draws
// the first map whose cumulative weight exceeds draws[b]·total (the last map if none does).
template <typename T>
__device__ void maps_by_mass_impl(const T* __restrict__ a, const T* __restrict__ draws,
                                  float* __restrict__ weights, int* __restrict__ indices,
                                  int maps, int hw) {
    const int b = blockIdx.x;
    float* wb = weights + (long long)b * maps;
    for (int m = threadIdx.x; m < maps; m += blockDim.x) {
        const T* am = a + ((long long)b * maps + m) * hw;
        float sum = 0.0f;
        for (int p = 0; p < hw; ++p) sum += load_f32(am, p);
        wb[m] = sqrtf((sum > 0.0f ? sum : 0.0f) + 1e-12f);
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    float total = 0.0f;
    for (int m = 0; m < maps; ++m) total += wb[m];
    const float target = __fmul_rn(load_f32(draws, b), total);
    float cumulative = 0.0f;
    int pick = maps - 1;
    for (int m = 0; m < maps; ++m) {
        cumulative += wb[m];
        if (cumulative > target) {
            pick = m;
            break;
        }
    }
    indices[b] = pick;
}

#define AUGMENT_ENTRY_POINTS(SUFFIX, T)                                                            \
    extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)                                  \
        augment_normalise_##SUFFIX(const T* maps, float* norm, int* flat, AugmentGeom g) {        \
        augment_normalise_impl<T>(maps, norm, flat, g);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS) attention_box_partials_##SUFFIX( \
        const float* norm, const int* flat, const T* thresholds, int* partials, AugmentGeom g,    \
        int bands) {                                                                               \
        attention_box_partials_impl<T>(norm, flat, thresholds, partials, g, bands);               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)                                  \
        drop_mask_##SUFFIX(const float* norm, const int* flat, const T* thresholds, const T* x,   \
                           T* y, AugmentGeom g) {                                                  \
        drop_mask_impl<T>(norm, flat, thresholds, x, y, g);                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)                                  \
        crop_resize_##SUFFIX(const T* x, const int* boxes, T* y, AugmentGeom g) {                  \
        crop_resize_impl<T>(x, boxes, y, g);                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MASS_THREADS) maps_by_mass_##SUFFIX(              \
        const T* a, const T* draws, float* weights, int* indices, int maps, int hw) {              \
        maps_by_mass_impl<T>(a, draws, weights, indices, maps, hw);                                \
    }

AUGMENT_ENTRY_POINTS(f32, float)
AUGMENT_ENTRY_POINTS(bf16, bf16_bits)

// The boxes' finishing pass reads integer partials whatever the storage type.
extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
    attention_box_finish(const int* partials, const int* flat, int* boxes, AugmentGeom g,
                         int bands, int pad_h, int pad_w) {
    attention_box_finish_impl(partials, flat, boxes, g, bands, pad_h, pad_w);
}
