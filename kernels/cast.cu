// Casts between the f32 master copies and the bf16 working copies of the bf16 training step:
//   cast_f32_to_bf16:          y = bf16(x), round to nearest even; NaN stays NaN (quieted, as
//                              the `half` crate does), ±inf stays ±inf, subnormals round too
//   cast_bf16_to_f32:          y = f32(x), exact: the 16 bits shifted up, a NaN's payload kept
//   accumulate_bf16_into_f32:  y += f32(x), a bf16 weight gradient (what cuDNN writes for bf16
//                              weights) added into the f32 gradient, one f32 addition
// One grid-stride kernel each: 16-byte loads and stores (one vector of 8 bf16, two of 4 f32) when
// both buffers are 16-byte aligned, then the scalar tail; scalar throughout otherwise. The
// conversions are bit manipulations and the addition is IEEE, so the results are the same bits
// as the CPU reference's (a NaN sum aside, whose payload the hardware chooses) on every run.
#include "common.cuh"
#include "channels_last.cuh"

#define CAST_THREADS 256
// Elements per thread and step of the vector path: one 16-byte vector of bf16.
#define CAST_VEC 8

// v = p[i..i+8) as f32.
__device__ __forceinline__ void load8(const float* __restrict__ p, long long i,
                                      float (&v)[CAST_VEC]) {
    float lo[4], hi[4];
    load_vec<float, 4>(p, i, lo);
    load_vec<float, 4>(p, i + 4, hi);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        v[u] = lo[u];
        v[u + 4] = hi[u];
    }
}

__device__ __forceinline__ void load8(const bf16_bits* __restrict__ p, long long i,
                                      float (&v)[CAST_VEC]) {
    load_vec<bf16_bits, CAST_VEC>(p, i, v);
}

// p[i..i+8) = v, each value rounded to the storage type once.
__device__ __forceinline__ void store8(float* __restrict__ p, long long i,
                                       const float (&v)[CAST_VEC]) {
    float lo[4], hi[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        lo[u] = v[u];
        hi[u] = v[u + 4];
    }
    store_vec<float, 4>(p, i, lo);
    store_vec<float, 4>(p, i + 4, hi);
}

__device__ __forceinline__ void store8(bf16_bits* __restrict__ p, long long i,
                                       const float (&v)[CAST_VEC]) {
    store_vec<bf16_bits, CAST_VEC>(p, i, v);
}

// y = x converted (ACCUMULATE false) or y += x (true), over n elements.
template <bool ACCUMULATE, typename In, typename Out>
__device__ __forceinline__ void cast_run(const In* __restrict__ x, Out* __restrict__ y,
                                         long long n) {
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long tail = 0;
    if (((((unsigned long long)x) | ((unsigned long long)y)) & 15ull) == 0) {
        const long long vectors = n / CAST_VEC;
        for (long long v = start; v < vectors; v += stride) {
            float value[CAST_VEC];
            load8(x, v * CAST_VEC, value);
            if constexpr (ACCUMULATE) {
                float old[CAST_VEC];
                load8(y, v * CAST_VEC, old);
#pragma unroll
                for (int u = 0; u < CAST_VEC; ++u) value[u] = old[u] + value[u];
            }
            store8(y, v * CAST_VEC, value);
        }
        tail = vectors * CAST_VEC;
    }
    for (long long i = tail + start; i < n; i += stride) {
        float value = load_f32(x, i);
        if constexpr (ACCUMULATE) value = load_f32(y, i) + value;
        store_f32(y, i, value);
    }
}

extern "C" __global__ void __launch_bounds__(CAST_THREADS)
    cast_f32_to_bf16(const float* x, bf16_bits* y, long long n) {
    cast_run<false>(x, y, n);
}

extern "C" __global__ void __launch_bounds__(CAST_THREADS)
    cast_bf16_to_f32(const bf16_bits* x, float* y, long long n) {
    cast_run<false>(x, y, n);
}

extern "C" __global__ void __launch_bounds__(CAST_THREADS)
    accumulate_bf16_into_f32(const bf16_bits* x, float* y, long long n) {
    cast_run<true>(x, y, n);
}
