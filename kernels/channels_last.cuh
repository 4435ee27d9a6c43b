// Channels-last (NHWC) helpers shared by the kernels over rows of C channels, x[j*C + c]: a
// thread owns VEC consecutive channels of a row. VEC is 16 bytes' worth (8 bf16 or 4 f32) when C
// is a multiple of it and every buffer is 16-byte aligned, so a warp's loads are whole 16-byte
// vectors over contiguous rows; else 1 (odd C, C = 1, or a misaligned view). Include after
// common.cuh.
#pragma once

// VEC of the vector path for T.
#define NHWC_VEC(T) (16 / (int)sizeof(T))

// Whether the vector path applies: C a multiple of VEC and the buffers' addresses (or-ed
// together by the caller) 16-byte aligned.
template <typename T>
__device__ __forceinline__ bool nhwc_vectorised(int C, unsigned long long addresses) {
    return C % NHWC_VEC(T) == 0 && (addresses & 15ull) == 0;
}

// v = the VEC channels at p[i..i+VEC) as f32.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, long long i, float (&v)[VEC]) {
    if constexpr (VEC == 1) {
        v[0] = load_f32(p, i);
    } else {
        static_assert(VEC * sizeof(T) == 16, "a vector is 16 bytes");
        const float4 q = *reinterpret_cast<const float4*>(p + i);
        const float w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if constexpr (sizeof(T) == 4) {
                v[u] = w[u];
            } else {
                // Two bf16 per word, the lower address in the low half.
                const unsigned int bits = __float_as_uint(w[u]);
                v[2 * u] = __uint_as_float(bits << 16);
                v[2 * u + 1] = __uint_as_float(bits & 0xffff0000u);
            }
        }
    }
}

// p[i..i+VEC) = v, each value rounded to T once.
template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ p, long long i, const float (&v)[VEC]) {
    if constexpr (VEC == 1) {
        store_f32(p, i, v[0]);
    } else {
        float w[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            if constexpr (sizeof(T) == 4) {
                w[u] = v[u];
            } else {
                w[u] = __uint_as_float(bf16x2_bits(v[2 * u], v[2 * u + 1]));
            }
        }
        float4 q;
        q.x = w[0];
        q.y = w[1];
        q.z = w[2];
        q.w = w[3];
        *reinterpret_cast<float4*>(p + i) = q;
    }
}

// A block's threads over a tile of `tile` channels (a power of two) starting at blockIdx.y*tile:
// `lanes` = tile/VEC threads side by side cover one row's tile (thread = slot*lanes + lane), and
// the block's `slots` rows of lanes walk rows `slots` apart.
struct RowTile {
    int lanes, lane, slot, slots, c0;
    bool active;  // c0 < C; an inactive thread still takes part in the block's reductions
    __device__ RowTile(int tile, int vec, int C) {
        lanes = tile / vec;
        lane = threadIdx.x % lanes;
        slot = threadIdx.x / lanes;
        slots = blockDim.x / lanes;
        c0 = blockIdx.y * tile + lane * vec;
        active = c0 < C;
    }
};

// Combines the slots' per-channel states acc[u][0..M) with merge(a, b) (a = a (+) b) in a fixed
// tree (slot s takes slot s + half, half halving), so the result is the same bits on every run;
// every thread gets its channels' totals. Every thread of the block must call it; `scratch`
// holds M * blockDim.x * VEC floats. blockDim.x / lanes is a power of two.
template <int VEC, int M, typename Merge>
__device__ void tile_reduce(float (&acc)[VEC][M], float* scratch, const RowTile& t, Merge merge) {
    const int stride = blockDim.x * VEC, at = threadIdx.x * VEC;
#pragma unroll
    for (int u = 0; u < VEC; ++u)
#pragma unroll
        for (int m = 0; m < M; ++m) scratch[m * stride + at + u] = acc[u][m];
    for (int half = t.slots / 2; half > 0; half >>= 1) {
        __syncthreads();
        if (t.slot < half) {
            const int other = at + half * t.lanes * VEC;
#pragma unroll
            for (int u = 0; u < VEC; ++u) {
                float b[M];
#pragma unroll
                for (int m = 0; m < M; ++m) b[m] = scratch[m * stride + other + u];
                merge(acc[u], b);
#pragma unroll
                for (int m = 0; m < M; ++m) scratch[m * stride + at + u] = acc[u][m];
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < VEC; ++u)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[u][m] = scratch[m * stride + t.lane * VEC + u];
    __syncthreads();
}
