// Shared device helpers for every kernel file. Included textually (build.rs inlines it for NVRTC),
// so it must compile without any CUDA header: bf16 is handled as raw bits.
#pragma once

typedef unsigned short bf16_bits;

__device__ __forceinline__ float load_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const bf16_bits* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}

// Round to nearest even, NaN kept quiet; the same rule as the `half` crate, so CPU and GPU
// agree bit for bit on the conversion.
__device__ __forceinline__ bf16_bits f32_to_bf16(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_bits)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_bits)(u >> 16);
}

__device__ __forceinline__ void store_f32(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(bf16_bits* p, long long i, float v) { p[i] = f32_to_bf16(v); }

// Sum over the block in a fixed order, so the result is the same bits on every run.
// Every thread must call it; `scratch` holds at least 32 floats. All threads get the total.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
