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

// Two values rounded to bf16 in one 32-bit word, the first at the lower address (the low half):
// how the vector paths store bf16 pairs.
__device__ __forceinline__ unsigned int bf16x2_bits(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
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

// Global thread index as an unsigned, so the last block of a large grid cannot overflow an int.
__device__ __forceinline__ unsigned int thread_index() { return blockIdx.x * blockDim.x + threadIdx.x; }

// Plane-group kernels (pooling, resize) run on a grid (ceil(positions / blockDim), 1, groups):
// a thread works out its position's window or sources once (the integer and float divisions)
// and applies them to PLANES_PER_THREAD planes, whose loads are then in flight together, striding
// over groups of planes by gridDim.z (`plane_groups` in crates/c2f-kernels/src/device.rs). Past
// the last plane a thread re-reads the last one (in bounds, never stored), so the unrolled loops
// have no branch. One thread per element spent most of its time on index arithmetic.
#define PLANES_PER_THREAD 4

// Position within a plane of this thread, or -1 past the plane's end.
__device__ __forceinline__ int plane_position(int plane_len) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    return p < plane_len ? p : -1;
}

#define ARGMAX_NEG_INF __int_as_float(0xff800000)
#define ARGMAX_NO_INDEX 0x7fffffff

// True when (a, ia) comes before (b, ib) in torch.argmax order: NaN first, then the larger
// value, ties to the lower index. Indices are distinct, so this is a total order and any
// reduction tree picks the same winner.
__device__ __forceinline__ bool argmax_better(float a, int ia, float b, int ib) {
    const bool a_nan = a != a, b_nan = b != b;
    if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
    return a > b || (a == b && ia < ib);
}

__device__ __forceinline__ void warp_argmax(float& v, int& idx) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (argmax_better(ov, oi, v, idx)) {
            v = ov;
            idx = oi;
        }
    }
}

// Argmax over the block; every thread must call it and every thread gets the winner.
// `scratch_v` and `scratch_i` hold at least 32 entries.
__device__ __forceinline__ void block_argmax(float& v, int& idx, float* scratch_v, int* scratch_i) {
    warp_argmax(v, idx);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) {
        scratch_v[warp] = v;
        scratch_i[warp] = idx;
    }
    __syncthreads();
    v = lane < warps ? scratch_v[lane] : ARGMAX_NEG_INF;
    idx = lane < warps ? scratch_i[lane] : ARGMAX_NO_INDEX;
    warp_argmax(v, idx);
}
