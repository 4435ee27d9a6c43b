// The fine branch's choice of one attention map per sample (or their mean), NCHW contiguous;
// map_select.rs documents the formulas. select_map_* / mean_maps_*: one thread per output element
// (forward) or per dA element (backward, a gather: no atomics). Every result is the same bits on
// every run.
#include "common.cuh"

#define MAP_THREADS 256

// Attention-map selection and mean. A [B, M, hw], S [B, hw].

// Mirrors `MapGeom` in crates/c2f-kernels/src/map_select.rs.
struct MapGeom {
    int batch, maps, hw;
};

#define MAP_NAN __int_as_float(0x7fc00000)

// S[b, p] = A[b, k_b, p]; a k_b outside [0, M) gives NaN (never read out of bounds).
template <typename T>
__device__ void select_map_forward_impl(const T* __restrict__ a, const int* __restrict__ index,
                                        T* __restrict__ s, MapGeom g) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)(g.batch * g.hw)) return;
    const int p = (int)t % g.hw, b = (int)t / g.hw;
    const int k = index[b];
    const bool valid = k >= 0 && k < g.maps;
    store_f32(s, t, valid ? load_f32(a, ((long long)b * g.maps + k) * g.hw + p) : MAP_NAN);
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
    store_f32(da, t, valid ? v : MAP_NAN);
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

#define MAP_ENTRY_POINTS(SUFFIX, T)                                                                \
    extern "C" __global__ void __launch_bounds__(MAP_THREADS)                                      \
        select_map_forward_##SUFFIX(const T* a, const int* index, T* s, MapGeom g) {               \
        select_map_forward_impl<T>(a, index, s, g);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MAP_THREADS) select_map_backward_##SUFFIX(        \
        const int* index, const T* ds, T* da, MapGeom g, int accumulate) {                         \
        select_map_backward_impl<T>(index, ds, da, g, accumulate);                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MAP_THREADS)                                      \
        mean_maps_forward_##SUFFIX(const T* a, T* s, MapGeom g) {                                  \
        mean_maps_forward_impl<T>(a, s, g);                                                        \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MAP_THREADS)                                      \
        mean_maps_backward_##SUFFIX(const T* ds, T* da, MapGeom g) {                               \
        mean_maps_backward_impl<T>(ds, da, g);                                                     \
    }

MAP_ENTRY_POINTS(f32, float)
MAP_ENTRY_POINTS(bf16, bf16_bits)
