// Fused bilinear attention pooling (WS-DAN), forward and backward.
//
// A [B, M, HW] attention maps, F [B, N, HW] features, HW = H*W.
//   P[b,m,n] = (1/HW) sum_hw A[b,m,hw] F[b,n,hw]
//   S = sign(P) sqrt(|P| + 1e-12)
//   Z[b,:] = S[b,:] / max(||S[b,:]||, 1e-12)          (the whole M*N vector of a sample)
// Forward: bap_pool (GEMM tile + signed sqrt + per-tile sum of squares) then bap_normalize.
// Backward: bap_grad_dot (partials of the per-sample dot Z.dZ) then bap_grad_inputs, which forms
// G = dP/HW tile by tile from Z and dZ, reads F once per 32 maps, and writes dF and dA.
// All reductions run in a fixed order: the same bits on every run.
#include "common.cuh"

#define SQRT_EPS 1e-12f
#define NORM_EPS 1e-12f

// sign(p) sqrt(|p| + eps), with sign(0) = 0 as torch.sign.
__device__ __forceinline__ float signed_sqrt(float p) {
    return p == 0.0f ? 0.0f : copysignf(sqrtf(fabsf(p) + SQRT_EPS), p);
}

// Forward tile: 32 maps x 64 channels per block, HW in chunks of 32, 256 threads (16 x 16).
#define POOL_TM 32
#define POOL_TN 64
#define POOL_TK 32

template <typename T>
__device__ void bap_pool_impl(const T* __restrict__ att, const T* __restrict__ feat,
                              T* __restrict__ parts, float* __restrict__ tile_sumsq, int M, int N,
                              int HW) {
    __shared__ float as[POOL_TM][POOL_TK + 1];
    __shared__ float fs[POOL_TN][POOL_TK + 1];
    __shared__ float scratch[32];
    const int b = blockIdx.z, m0 = blockIdx.y * POOL_TM, n0 = blockIdx.x * POOL_TN;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const T* a_b = att + (long long)b * M * HW;
    const T* f_b = feat + (long long)b * N * HW;

    float acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < HW; k0 += POOL_TK) {
        for (int e = threadIdx.x; e < POOL_TM * POOL_TK; e += blockDim.x) {
            const int r = e / POOL_TK, k = e % POOL_TK;
            const int m = m0 + r, hw = k0 + k;
            as[r][k] = (m < M && hw < HW) ? load_f32(a_b, (long long)m * HW + hw) : 0.0f;
        }
        for (int e = threadIdx.x; e < POOL_TN * POOL_TK; e += blockDim.x) {
            const int r = e / POOL_TK, k = e % POOL_TK;
            const int n = n0 + r, hw = k0 + k;
            fs[r][k] = (n < N && hw < HW) ? load_f32(f_b, (long long)n * HW + hw) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < POOL_TK; ++k) {
            float av[2], fv[4];
#pragma unroll
            for (int i = 0; i < 2; ++i) av[i] = as[ty + 16 * i][k];
#pragma unroll
            for (int j = 0; j < 4; ++j) fv[j] = fs[tx + 16 * j][k];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], fv[j], acc[i][j]);
        }
        __syncthreads();
    }

    const float inv_hw = 1.0f / (float)HW;
    float sumsq = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int m = m0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (m < M && n < N) {
                const float p = acc[i][j] * inv_hw;
                const float s = signed_sqrt(p);
                store_f32(parts, ((long long)b * M + m) * N + n, s);
                sumsq = fmaf(s, s, sumsq);
            }
        }
    }
    sumsq = block_sum(sumsq, scratch);
    if (threadIdx.x == 0) {
        const int tiles = gridDim.x * gridDim.y;
        tile_sumsq[(long long)b * tiles + blockIdx.y * gridDim.x + blockIdx.x] = sumsq;
    }
}

// Sums a sample's partials in a fixed order. Every block of the sample does the same sum.
__device__ __forceinline__ float sample_sum(const float* partials, int b, int count) {
    float total = 0.0f;
    for (int t = 0; t < count; ++t) total += partials[(long long)b * count + t];
    return total;
}

template <typename T>
__device__ void bap_normalize_impl(T* __restrict__ parts, const float* __restrict__ tile_sumsq,
                                   float* __restrict__ norms, int tiles, int MN) {
    __shared__ float norm_shared;
    const int b = blockIdx.y;
    if (threadIdx.x == 0) norm_shared = sqrtf(sample_sum(tile_sumsq, b, tiles));
    __syncthreads();
    const float norm = norm_shared;
    if (blockIdx.x == 0 && threadIdx.x == 0) norms[b] = norm;
    const float inv = 1.0f / fmaxf(norm, NORM_EPS);
    T* p = parts + (long long)b * MN;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < MN; i += gridDim.x * blockDim.x) {
        store_f32(p, i, load_f32(p, i) * inv);
    }
}

// Backward, with r = ||S|| and S = Z r:
//   dS = (dZ - Z (Z.dZ)) / r           (r >= eps; below eps the normalisation is a plain scale)
//   dP = dS / (2 |S|)                  (0 where P == 0, where S is 0)
// and G = dP / HW is what both input gradients contract with. Z.dZ per sample comes from
// bap_grad_dot's partials, one per block of grid (chunks, B).
template <typename T>
__device__ void bap_grad_dot_impl(const T* __restrict__ parts, const T* __restrict__ d_parts,
                                  float* __restrict__ dot_partials, int MN) {
    __shared__ float scratch[32];
    const int b = blockIdx.y;
    const T* z = parts + (long long)b * MN;
    const T* dz = d_parts + (long long)b * MN;
    float dot = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < MN; i += gridDim.x * blockDim.x) {
        dot = fmaf(load_f32(z, i), load_f32(dz, i), dot);
    }
    dot = block_sum(dot, scratch);
    if (threadIdx.x == 0) dot_partials[(long long)b * gridDim.x + blockIdx.x] = dot;
}

struct PooledGrad {
    float dot, r_eff, inv_hw;
    __device__ PooledGrad(const float* norms, const float* dot_partials, int chunks, int b, int HW) {
        const float r = norms[b];
        dot = r >= NORM_EPS ? sample_sum(dot_partials, b, chunks) : 0.0f;
        r_eff = fmaxf(r, NORM_EPS);
        inv_hw = 1.0f / (float)HW;
    }
    __device__ __forceinline__ float operator()(float z, float dz) const {
        const float s_abs = fabsf(z) * r_eff;
        return s_abs > 0.0f ? (dz - z * dot) / r_eff * 0.5f / s_abs * inv_hw : 0.0f;
    }
};

// Bench baseline only: G materialised in the storage type for cuBLAS; grid (chunks, B).
template <typename T>
__device__ void bap_baseline_grad_pooled_impl(const T* __restrict__ parts,
                                              const float* __restrict__ norms,
                                              const float* __restrict__ dot_partials, int chunks,
                                              const T* __restrict__ d_parts,
                                              T* __restrict__ grad_pooled, int MN, int HW) {
    const int b = blockIdx.y;
    const PooledGrad grad(norms, dot_partials, chunks, b, HW);
    const long long base = (long long)b * MN;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < MN; i += gridDim.x * blockDim.x) {
        store_f32(grad_pooled, base + i, grad(load_f32(parts, base + i), load_f32(d_parts, base + i)));
    }
}

// One block: one sample, 32 HW positions, all N channels, 32 maps at a time.
//   dF[n,hw] = sum_m G[m,n] A[m,hw]      dA[m,hw] = sum_n G[m,n] F[n,hw]
// 256 threads: tx = HW position, ty = 0..7 picks rows ty, ty+8, ty+16, ty+24.
#define GRAD_TH 32
#define GRAD_TC 32

template <typename T>
__device__ void bap_grad_inputs_impl(const T* __restrict__ att, const T* __restrict__ feat,
                                     const T* __restrict__ parts, const T* __restrict__ d_parts,
                                     const float* __restrict__ norms,
                                     const float* __restrict__ dot_partials, int chunks,
                                     T* __restrict__ d_att, T* __restrict__ d_feat, int M, int N,
                                     int HW) {
    __shared__ float as[GRAD_TC][GRAD_TH];
    __shared__ float fs[GRAD_TC][GRAD_TH];
    __shared__ float gs[GRAD_TC][GRAD_TC + 1];
    const int b = blockIdx.y, hw0 = blockIdx.x * GRAD_TH;
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int hw = hw0 + tx;
    const T* a_b = att + (long long)b * M * HW;
    const T* f_b = feat + (long long)b * N * HW;
    const T* z_b = parts + (long long)b * M * N;
    const T* dz_b = d_parts + (long long)b * M * N;
    const PooledGrad grad(norms, dot_partials, chunks, b, HW);
    T* da_b = d_att + (long long)b * M * HW;
    T* df_b = d_feat + (long long)b * N * HW;

    for (int m0 = 0; m0 < M; m0 += GRAD_TC) {
        for (int e = threadIdx.x; e < GRAD_TC * GRAD_TH; e += blockDim.x) {
            const int r = e / GRAD_TH, c = e % GRAD_TH;
            const int m = m0 + r, h = hw0 + c;
            as[r][c] = (m < M && h < HW) ? load_f32(a_b, (long long)m * HW + h) : 0.0f;
        }
        float da[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int n0 = 0; n0 < N; n0 += GRAD_TC) {
            for (int e = threadIdx.x; e < GRAD_TC * GRAD_TH; e += blockDim.x) {
                const int r = e / GRAD_TH, c = e % GRAD_TH;
                const int n = n0 + r, h = hw0 + c;
                fs[r][c] = (n < N && h < HW) ? load_f32(f_b, (long long)n * HW + h) : 0.0f;
            }
            for (int e = threadIdx.x; e < GRAD_TC * GRAD_TC; e += blockDim.x) {
                const int r = e / GRAD_TC, c = e % GRAD_TC;
                const int m = m0 + r, n = n0 + c;
                const long long idx = (long long)m * N + n;
                gs[r][c] = (m < M && n < N) ? grad(load_f32(z_b, idx), load_f32(dz_b, idx)) : 0.0f;
            }
            __syncthreads();
            float df[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 8
            for (int k = 0; k < GRAD_TC; ++k) {
                const float a = as[k][tx], f = fs[k][tx];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    df[j] = fmaf(gs[k][ty + 8 * j], a, df[j]);
                    da[j] = fmaf(gs[ty + 8 * j][k], f, da[j]);
                }
            }
            if (hw < HW) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int n = n0 + ty + 8 * j;
                    if (n < N) {
                        const long long idx = (long long)n * HW + hw;
                        store_f32(df_b, idx, m0 == 0 ? df[j] : load_f32(df_b, idx) + df[j]);
                    }
                }
            }
            __syncthreads();
        }
        if (hw < HW) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int m = m0 + ty + 8 * j;
                if (m < M) store_f32(da_b, (long long)m * HW + hw, da[j]);
            }
        }
    }
}

// Bench baseline only (cuBLAS GEMM + separate kernels): signed square root of the GEMM's P
// (already scaled by 1/HW) and each sample's sum of squares, one block per sample; then
// bap_normalize with one tile per sample.
template <typename T>
__device__ void bap_baseline_signed_sqrt_impl(const T* __restrict__ pooled, T* __restrict__ parts,
                                              float* __restrict__ sumsq, int MN) {
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < MN; i += blockDim.x) {
        const long long idx = (long long)b * MN + i;
        const float p = load_f32(pooled, idx);
        const float s = signed_sqrt(p);
        store_f32(parts, idx, s);
        acc = fmaf(s, s, acc);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) sumsq[b] = acc;
}

#define BAP_ENTRY_POINTS(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_pool_##SUFFIX(const T* att, const T* feat, T* parts, float* tile_sumsq, int M, int N,  \
                          int HW) {                                                                \
        bap_pool_impl<T>(att, feat, parts, tile_sumsq, M, N, HW);                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_normalize_##SUFFIX(T* parts, const float* tile_sumsq, float* norms, int tiles,         \
                               int MN) {                                                           \
        bap_normalize_impl<T>(parts, tile_sumsq, norms, tiles, MN);                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_grad_dot_##SUFFIX(const T* parts, const T* d_parts, float* dot_partials, int MN) {     \
        bap_grad_dot_impl<T>(parts, d_parts, dot_partials, MN);                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_grad_inputs_##SUFFIX(const T* att, const T* feat, const T* parts, const T* d_parts,    \
                                 const float* norms, const float* dot_partials, int chunks,        \
                                 T* d_att, T* d_feat, int M, int N, int HW) {                      \
        bap_grad_inputs_impl<T>(att, feat, parts, d_parts, norms, dot_partials, chunks, d_att,     \
                                d_feat, M, N, HW);                                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_baseline_signed_sqrt_##SUFFIX(const T* pooled, T* parts, float* sumsq, int MN) {       \
        bap_baseline_signed_sqrt_impl<T>(pooled, parts, sumsq, MN);                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_baseline_grad_pooled_##SUFFIX(const T* parts, const float* norms,                      \
                                          const float* dot_partials, int chunks, const T* d_parts, \
                                          T* grad_pooled, int MN, int HW) {                        \
        bap_baseline_grad_pooled_impl<T>(parts, norms, dot_partials, chunks, d_parts, grad_pooled, \
                                         MN, HW);                                                  \
    }

BAP_ENTRY_POINTS(f32, float)
BAP_ENTRY_POINTS(bf16, bf16_bits)
