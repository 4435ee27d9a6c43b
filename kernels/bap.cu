// Fused bilinear attention pooling (WS-DAN), forward and backward.
//
// A [B, M, HW] attention maps, F [B, N, HW] features, HW = H*W.
//   P[b,m,n] = (1/HW) sum_hw A[b,m,hw] F[b,n,hw]
//   S = sign(P) sqrt(|P| + 1e-12)
//   Z[b,:] = S[b,:] / max(||S[b,:]||, 1e-12)          (the whole M*N vector of a sample)
// F is by far the largest operand (768 channels against 8 or 32 maps), so every kernel reads it
// exactly once per 8 maps (forward) or per 32 maps (backward), in 128-byte rows, and the maps
// live in shared memory or registers (the first version tiled it as a square GEMM and read F
// once per map tile row, at 13% of copy bandwidth on an H200).
// Forward: bap_pool (P + signed sqrt + per-block sum of squares) then bap_normalize.
// Backward: bap_grad_dot (partials of the per-sample dot Z.dZ), bap_grad_pooled (G = dP/HW,
// written channel-major [B, N, M] so a channel's maps are adjacent), then bap_grad_inputs, which
// reads F once and writes dF and dA.
// All reductions run in a fixed order: the same bits on every run.
//
// Channels-last (NHWC, the bap_nhwc_* entry points, at most 32 maps): A [B, HW, M], F [B, HW, N];
// the parts, norms and G are the same tensors as in NCHW. See the NHWC section below.
#include "common.cuh"
#include "channels_last.cuh"

#define SQRT_EPS 1e-12f
#define NORM_EPS 1e-12f

// sign(p) sqrt(|p| + eps), with sign(0) = 0 as torch.sign.
__device__ __forceinline__ float signed_sqrt(float p) {
    return p == 0.0f ? 0.0f : copysignf(sqrtf(fabsf(p) + SQRT_EPS), p);
}

// The forward's last step for one (m, n): S = signed_sqrt(P) stored at parts[b, m, n] when it is
// inside M x N; returns sumsq + S^2 (sumsq unchanged outside).
template <typename T>
__device__ __forceinline__ float store_part(T* __restrict__ parts, float total, float inv_hw,
                                            int b, int m, int n, int M, int N, float sumsq) {
    if (n >= N || m >= M) return sumsq;
    const float s = signed_sqrt(total * inv_hw);
    store_f32(parts, ((long long)b * M + m) * N + n, s);
    return fmaf(s, s, sumsq);
}

// Forward: grid (ceil(N / 32), B), 256 threads. Warp w owns channels n0 + 4w .. n0 + 4w + 3 and
// its lanes stride over HW, so each step loads 4 rows' 32 consecutive values of F; the maps come
// 8 at a time from shared memory (a chunk of POOL_HW positions of each). A lane's 32 partial sums
// (4 channels x 8 maps) are then summed over the warp by a transposing butterfly (31 shuffles),
// after which lane l holds the total of sum l: channel l / 8, map l % 8.
#define POOL_CHANNELS 32
#define POOL_ROWS 4
#define POOL_MAPS 8
#define POOL_HW 512

// One butterfly step of warp_transpose_sum: pairs of lanes WIDTH apart swap halves of their
// first 2 WIDTH sums, the lower lane keeping [0, WIDTH) and the upper [WIDTH, 2 WIDTH).
template <int WIDTH, int N>
__device__ __forceinline__ void transpose_sum_step(float (&v)[N], bool upper) {
#pragma unroll
    for (int i = 0; i < WIDTH; ++i) {
        const float send = upper ? v[i] : v[i + WIDTH];
        const float keep = upper ? v[i + WIDTH] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, WIDTH);
    }
}

// v[i] (i < N, N = 8 or 32) summed over the warp's lanes for every i; lane l returns the total of
// v[l % N]: transposing steps over the low lane bits, then plain butterflies over the others.
// Fixed order.
template <int N>
__device__ __forceinline__ float warp_transpose_sum(float (&v)[N]) {
    static_assert(N == 8 || N == 32, "8 or 32 sums");
    const int lane = threadIdx.x & 31;
    if constexpr (N == 32) {
        transpose_sum_step<16>(v, (lane & 16) != 0);
        transpose_sum_step<8>(v, (lane & 8) != 0);
    }
    transpose_sum_step<4>(v, (lane & 4) != 0);
    transpose_sum_step<2>(v, (lane & 2) != 0);
    transpose_sum_step<1>(v, (lane & 1) != 0);
    float total = v[0];
    for (int o = N; o < 32; o <<= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    return total;
}

template <typename T>
__device__ void bap_pool_impl(const T* __restrict__ att, const T* __restrict__ feat,
                              T* __restrict__ parts, float* __restrict__ block_sumsq, int M, int N,
                              int HW) {
    __shared__ float as[POOL_MAPS][POOL_HW];
    __shared__ float scratch[32];
    const int b = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_first = blockIdx.x * POOL_CHANNELS + warp * POOL_ROWS;
    const T* a_b = att + (long long)b * M * HW;
    const T* f_rows[POOL_ROWS];
    bool row_ok[POOL_ROWS];
#pragma unroll
    for (int r = 0; r < POOL_ROWS; ++r) {
        row_ok[r] = n_first + r < N;
        f_rows[r] = feat + ((long long)b * N + (row_ok[r] ? n_first + r : 0)) * HW;
    }
    const float inv_hw = 1.0f / (float)HW;
    float sumsq = 0.0f;
    for (int m0 = 0; m0 < M; m0 += POOL_MAPS) {
        float acc[POOL_ROWS * POOL_MAPS];
#pragma unroll
        for (int i = 0; i < POOL_ROWS * POOL_MAPS; ++i) acc[i] = 0.0f;
        for (int k0 = 0; k0 < HW; k0 += POOL_HW) {
            const int len = min(POOL_HW, HW - k0);
            __syncthreads();  // the previous chunk's readers are done with `as`
            for (int e = threadIdx.x; e < POOL_MAPS * POOL_HW; e += blockDim.x) {
                const int m = e / POOL_HW, k = e % POOL_HW;
                as[m][k] = (m0 + m < M && k < len) ? load_f32(a_b, (long long)(m0 + m) * HW + k0 + k)
                                                  : 0.0f;
            }
            __syncthreads();
#pragma unroll 2
            for (int k = lane; k < len; k += 32) {
                float f[POOL_ROWS];
#pragma unroll
                for (int r = 0; r < POOL_ROWS; ++r) f[r] = row_ok[r] ? load_f32(f_rows[r], k0 + k) : 0.0f;
#pragma unroll
                for (int m = 0; m < POOL_MAPS; ++m) {
                    const float a = as[m][k];
#pragma unroll
                    for (int r = 0; r < POOL_ROWS; ++r)
                        acc[r * POOL_MAPS + m] = fmaf(a, f[r], acc[r * POOL_MAPS + m]);
                }
            }
        }
        const float total = warp_transpose_sum(acc);
        const int n = n_first + lane / POOL_MAPS, m = m0 + lane % POOL_MAPS;
        sumsq = store_part(parts, total, inv_hw, b, m, n, M, N, sumsq);
    }
    sumsq = block_sum(sumsq, scratch);
    if (threadIdx.x == 0) block_sumsq[(long long)b * gridDim.x + blockIdx.x] = sumsq;
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

// G = dP/HW channel-major, grad_t [B, N, M] in f32, through a 32 x 32 tile in shared memory so
// that both the read of Z, dZ (along n) and the write (along m) are in rows. Grid
// (ceil(N / 32), ceil(M / 32), B), 256 threads.
template <typename T>
__device__ void bap_grad_pooled_impl(const T* __restrict__ parts, const T* __restrict__ d_parts,
                                     const float* __restrict__ norms,
                                     const float* __restrict__ dot_partials, int chunks,
                                     float* __restrict__ grad_t, int M, int N, int HW) {
    __shared__ float tile[32][33];
    const int b = blockIdx.z, n0 = blockIdx.x * 32, m0 = blockIdx.y * 32;
    const PooledGrad grad(norms, dot_partials, chunks, b, HW);
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    for (int r = ty; r < 32; r += 8) {
        const int m = m0 + r, n = n0 + tx;
        if (m < M && n < N) {
            const long long idx = ((long long)b * M + m) * N + n;
            tile[r][tx] = grad(load_f32(parts, idx), load_f32(d_parts, idx));
        }
    }
    __syncthreads();
    for (int r = ty; r < 32; r += 8) {
        const int n = n0 + r, m = m0 + tx;
        if (m < M && n < N) grad_t[((long long)b * N + n) * M + m] = tile[tx][r];
    }
}

// Input gradients: grid (ceil(HW / 32), B), 256 threads; lane = HW position, warp w = channels
// w * 32 .. w * 32 + 31 of each chunk of GRAD_CHUNK channels, whose G rows sit in shared memory.
//   dF[n,hw] = sum_m G[m,n] A[m,hw]      dA[m,hw] = sum_n G[m,n] F[n,hw]
// A's column at the lane's position lives in registers, MT maps at a time (8, or 32 when
// M > 8); each F value is read once per MT maps and feeds 2 MT FMAs. dA's per-warp partial sums
// meet in shared memory at the end and are added in warp order.
#define GRAD_CHUNK 256

template <typename T, int MT>
__device__ void bap_grad_inputs_impl(const T* __restrict__ att, const T* __restrict__ feat,
                                     const float* __restrict__ grad_t, T* __restrict__ d_att,
                                     T* __restrict__ d_feat, int M, int N, int HW) {
    // G rows of one chunk, then (reused) the warps' dA partials: 8 warps x MT x 32 lanes, the
    // same GRAD_CHUNK x MT floats at 256 threads (the only block size it is launched with).
    __shared__ float smem[GRAD_CHUNK * MT];
    const int b = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hw = blockIdx.x * 32 + lane;
    const bool valid = hw < HW;
    const T* a_b = att + (long long)b * M * HW;
    const T* f_b = feat + (long long)b * N * HW;
    const float* g_b = grad_t + (long long)b * N * M;
    T* da_b = d_att + (long long)b * M * HW;
    T* df_b = d_feat + (long long)b * N * HW;

    for (int m0 = 0; m0 < M; m0 += MT) {
        float a[MT], da[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            a[m] = (valid && m0 + m < M) ? load_f32(a_b, (long long)(m0 + m) * HW + hw) : 0.0f;
            da[m] = 0.0f;
        }
        for (int n0 = 0; n0 < N; n0 += GRAD_CHUNK) {
            __syncthreads();  // the previous chunk's readers are done with `smem`
            for (int e = threadIdx.x; e < GRAD_CHUNK * MT; e += blockDim.x) {
                const int nn = e / MT, m = e % MT;
                smem[e] = (n0 + nn < N && m0 + m < M) ? g_b[(long long)(n0 + nn) * M + m0 + m] : 0.0f;
            }
            __syncthreads();
            const int n_end = min(GRAD_CHUNK, N - n0);
#pragma unroll 4
            for (int j = 0; j < 32; ++j) {
                const int nn = warp * 32 + j;
                if (nn >= n_end) break;  // the same for the whole warp
                const long long idx = (long long)(n0 + nn) * HW + hw;
                const float f = valid ? load_f32(f_b, idx) : 0.0f;
                const float* g = smem + nn * MT;  // one address for the warp: a broadcast
                float df = 0.0f;
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    df = fmaf(g[m], a[m], df);
                    da[m] = fmaf(g[m], f, da[m]);
                }
                if (valid) store_f32(df_b, idx, m0 == 0 ? df : load_f32(df_b, idx) + df);
            }
        }
        __syncthreads();  // every warp is done with the last chunk's G
        float* partial = smem;  // [warp][m][lane]
#pragma unroll
        for (int m = 0; m < MT; ++m) partial[(warp * MT + m) * 32 + lane] = da[m];
        __syncthreads();
        const int warps = blockDim.x >> 5;
        for (int e = threadIdx.x; e < MT * 32; e += blockDim.x) {
            const int m = e / 32, l = e % 32;
            float sum = 0.0f;
            for (int w = 0; w < warps; ++w) sum += partial[(w * MT + m) * 32 + l];
            const int h = blockIdx.x * 32 + l;
            if (m0 + m < M && h < HW) store_f32(da_b, (long long)(m0 + m) * HW + h, sum);
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

// ---- NHWC ----
// Each pixel's channels are contiguous, so a warp's lanes take consecutive channels, NHWC_PAIR
// each, and every step reads one pixel's 64 channels of F in a row; that pixel's maps are the
// same for the whole warp, a shared-memory broadcast. A thread keeps the sums of all its maps
// (MT = 8, or 32 for M <= 32) for its channels in registers, so every element of F is read once
// in the forward and once in the backward (NCHW reads it once per 8 maps forward). Each F value
// feeds M FMAs a pass: at M = 32 the f32 FMA rate, not DRAM, bounds both (batch 64 at Mixed_6e:
// 454 M FMAs, about 15 us on an H100's CUDA cores, against 28 MB of bf16 F, about 9 us).
#define NHWC_PAIR 2
#define NHWC_LANE_CHANNELS (32 * NHWC_PAIR)
// Pixels of A staged in shared memory (f32) at a time.
#define NHWC_CHUNK 32

// as[k][m] = A[b, k0 + k, m] for the chunk's `len` pixels, zero past M and len.
template <typename T, int MT>
__device__ __forceinline__ void stage_maps(float (&as)[NHWC_CHUNK][MT], const T* __restrict__ a_b,
                                           int k0, int len, int M) {
    for (int e = threadIdx.x; e < NHWC_CHUNK * MT; e += blockDim.x) {
        const int k = e / MT, m = e % MT;
        as[k][m] = (k < len && m < M) ? load_f32(a_b, (long long)(k0 + k) * M + m) : 0.0f;
    }
}

// The thread's NHWC_PAIR channels of F at pixel row `row` (an offset of channel 0), 0 past N.
template <typename T>
__device__ __forceinline__ void load_pair(const T* __restrict__ f, long long row, int c0, int N,
                                          float (&v)[NHWC_PAIR]) {
#pragma unroll
    for (int u = 0; u < NHWC_PAIR; ++u) v[u] = c0 + u < N ? load_f32(f, row + c0 + u) : 0.0f;
}

struct SumMerge8 {
    __device__ __forceinline__ void operator()(float (&a)[8], const float (&b)[8]) const {
#pragma unroll
        for (int m = 0; m < 8; ++m) a[m] += b[m];
    }
};

// Forward: grid (B, ceil(N / 64)), 256 threads; lane = a channel pair (RowTile over 64-channel
// tiles), the block's 8 warps = 8 pixel slots walking the pixels 8 apart. The slots' sums meet in
// tile_reduce's tree, 8 maps at a time, then slot s writes map s of every 8, with the signed
// square root, and the block's sum of squares goes to block_sumsq[b, tile] for bap_normalize.
template <typename T, int MT>
__device__ void bap_nhwc_pool_impl(const T* __restrict__ att, const T* __restrict__ feat,
                                   T* __restrict__ parts, float* __restrict__ block_sumsq, int M,
                                   int N, int HW) {
    __shared__ float as[NHWC_CHUNK][MT];
    __shared__ float scratch[8 * 256 * NHWC_PAIR];  // tile_reduce's, for 8 maps of 256 threads
    const RowTile t(NHWC_LANE_CHANNELS, NHWC_PAIR, N);
    const int b = blockIdx.x;
    const T* a_b = att + (long long)b * HW * M;
    const T* f_b = feat + (long long)b * HW * N;
    float acc[MT / 8][NHWC_PAIR][8];
#pragma unroll
    for (int g = 0; g < MT / 8; ++g)
#pragma unroll
        for (int u = 0; u < NHWC_PAIR; ++u)
#pragma unroll
            for (int m = 0; m < 8; ++m) acc[g][u][m] = 0.0f;
    for (int k0 = 0; k0 < HW; k0 += NHWC_CHUNK) {
        const int len = min(NHWC_CHUNK, HW - k0);
        __syncthreads();  // the previous chunk's readers are done with `as`
        stage_maps<T, MT>(as, a_b, k0, len, M);
        __syncthreads();
        for (int k = t.slot; k < len; k += t.slots) {
            float f[NHWC_PAIR];
            load_pair(f_b, (long long)(k0 + k) * N, t.c0, N, f);
#pragma unroll
            for (int g = 0; g < MT / 8; ++g)
#pragma unroll
                for (int m = 0; m < 8; ++m) {
                    const float a = as[k][g * 8 + m];
#pragma unroll
                    for (int u = 0; u < NHWC_PAIR; ++u) acc[g][u][m] = fmaf(a, f[u], acc[g][u][m]);
                }
        }
    }
    const float inv_hw = 1.0f / (float)HW;
    float sumsq = 0.0f;
#pragma unroll
    for (int g = 0; g < MT / 8; ++g) {
        tile_reduce(acc[g], scratch, t, SumMerge8());
        const int m = g * 8 + t.slot;
#pragma unroll
        for (int u = 0; u < NHWC_PAIR; ++u) {
            float total = 0.0f;  // acc[g][u][t.slot], picked without a dynamic register index
#pragma unroll
            for (int j = 0; j < 8; ++j) total = j == t.slot ? acc[g][u][j] : total;
            sumsq = store_part(parts, total, inv_hw, b, m, t.c0 + u, M, N, sumsq);
        }
    }
    sumsq = block_sum(sumsq, scratch);
    if (threadIdx.x == 0) block_sumsq[(long long)b * gridDim.y + blockIdx.y] = sumsq;
}

// Input gradients: grid (ceil(N / 256), B, ceil(HW / NHWC_GRAD_PIXELS)), 256 threads. Warp w
// takes channel group w % 4 (64 channels; the block 256) and pixel slot w / 4. A thread holds G
// for its channel pair and every map in registers (grad_t [B, N, M], bap_grad_pooled's), so
//   dF[p, n] = sum_m G[m, n] A[p, m]      in map order, as NCHW: the same bits for M <= 32;
//   dA[p, m] = sum_n G[m, n] F[p, n]      over the pair, then the warp (warp_transpose_sum), then
// the block's 4 groups in order, into partials [B, tiles, HW, M] (f32) that
// bap_nhwc_grad_att_finish sums over the tiles in order. A block takes NHWC_GRAD_PIXELS pixels so
// that G is loaded once per 96 pixels.
#define NHWC_GRAD_GROUPS 4
#define NHWC_GRAD_TILE (NHWC_GRAD_GROUPS * NHWC_LANE_CHANNELS)
#define NHWC_GRAD_PIXELS 96

template <typename T, int MT>
__device__ void bap_nhwc_grad_inputs_impl(const T* __restrict__ att, const T* __restrict__ feat,
                                          const float* __restrict__ grad_t,
                                          float* __restrict__ d_att_partials,
                                          T* __restrict__ d_feat, int M, int N, int HW) {
    __shared__ float as[NHWC_CHUNK][MT];
    __shared__ float group_sums[NHWC_GRAD_GROUPS][NHWC_CHUNK][MT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp % NHWC_GRAD_GROUPS, slot = warp / NHWC_GRAD_GROUPS;
    const int slots = (blockDim.x >> 5) / NHWC_GRAD_GROUPS;
    const int b = blockIdx.y, tile = blockIdx.x;
    const int c0 = tile * NHWC_GRAD_TILE + group * NHWC_LANE_CHANNELS + lane * NHWC_PAIR;
    const int p_begin = blockIdx.z * NHWC_GRAD_PIXELS, p_end = min(HW, p_begin + NHWC_GRAD_PIXELS);
    const T* a_b = att + (long long)b * HW * M;
    const T* f_b = feat + (long long)b * HW * N;
    T* df_b = d_feat + (long long)b * HW * N;
    float* da_part = d_att_partials + ((long long)b * gridDim.x + tile) * HW * M;
    float g[NHWC_PAIR][MT];
#pragma unroll
    for (int u = 0; u < NHWC_PAIR; ++u)
#pragma unroll
        for (int m = 0; m < MT; ++m)
            g[u][m] = (c0 + u < N && m < M) ? grad_t[((long long)b * N + c0 + u) * M + m] : 0.0f;
    for (int k0 = p_begin; k0 < p_end; k0 += NHWC_CHUNK) {
        const int len = min(NHWC_CHUNK, p_end - k0);
        __syncthreads();  // the previous chunk's readers are done with `as` and `group_sums`
        stage_maps<T, MT>(as, a_b, k0, len, M);
        __syncthreads();
        for (int k = slot; k < len; k += slots) {
            const long long row = (long long)(k0 + k) * N;
            float f[NHWC_PAIR];
            load_pair(f_b, row, c0, N, f);
#pragma unroll
            for (int u = 0; u < NHWC_PAIR; ++u) {
                float df = 0.0f;
#pragma unroll
                for (int m = 0; m < MT; ++m) df = fmaf(g[u][m], as[k][m], df);
                if (c0 + u < N) store_f32(df_b, row + c0 + u, df);
            }
            float da[MT];
#pragma unroll
            for (int m = 0; m < MT; ++m) da[m] = fmaf(g[1][m], f[1], g[0][m] * f[0]);
            const float total = warp_transpose_sum(da);
            if (lane < MT) group_sums[group][k][lane] = total;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < len * MT; e += blockDim.x) {
            const int k = e / MT, m = e % MT;
            if (m >= M) continue;
            float sum = group_sums[0][k][m];
#pragma unroll
            for (int q = 1; q < NHWC_GRAD_GROUPS; ++q) sum += group_sums[q][k][m];
            da_part[(long long)(k0 + k) * M + m] = sum;
        }
    }
}

// One thread per element of dA [B, HW, M]: the channel tiles' partials summed in tile order.
template <typename T>
__device__ void bap_nhwc_grad_att_finish_impl(const float* __restrict__ d_att_partials,
                                              T* __restrict__ d_att, int tiles, int B, int per_sample) {
    const unsigned int i = thread_index();
    if (i >= (unsigned int)B * (unsigned int)per_sample) return;
    const int b = (int)(i / (unsigned int)per_sample), r = (int)(i % (unsigned int)per_sample);
    const float* p = d_att_partials + (long long)b * tiles * per_sample + r;
    float sum = p[0];
    for (int q = 1; q < tiles; ++q) sum += p[(long long)q * per_sample];
    store_f32(d_att, i, sum);
}

#define BAP_NHWC_ENTRY_POINTS(SUFFIX, T, MT)                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_nhwc_pool##MT##_##SUFFIX(const T* att, const T* feat, T* parts, float* block_sumsq,    \
                                     int M, int N, int HW) {                                       \
        bap_nhwc_pool_impl<T, MT>(att, feat, parts, block_sumsq, M, N, HW);                        \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) bap_nhwc_grad_inputs##MT##_##SUFFIX(         \
        const T* att, const T* feat, const float* grad_t, float* d_att_partials, T* d_feat, int M, \
        int N, int HW) {                                                                           \
        bap_nhwc_grad_inputs_impl<T, MT>(att, feat, grad_t, d_att_partials, d_feat, M, N, HW);     \
    }

BAP_NHWC_ENTRY_POINTS(f32, float, 8)
BAP_NHWC_ENTRY_POINTS(f32, float, 32)
BAP_NHWC_ENTRY_POINTS(bf16, bf16_bits, 8)
BAP_NHWC_ENTRY_POINTS(bf16, bf16_bits, 32)

extern "C" __global__ void __launch_bounds__(256)
    bap_nhwc_grad_att_finish_f32(const float* d_att_partials, float* d_att, int tiles, int B,
                                 int per_sample) {
    bap_nhwc_grad_att_finish_impl<float>(d_att_partials, d_att, tiles, B, per_sample);
}
extern "C" __global__ void __launch_bounds__(256)
    bap_nhwc_grad_att_finish_bf16(const float* d_att_partials, bf16_bits* d_att, int tiles, int B,
                                  int per_sample) {
    bap_nhwc_grad_att_finish_impl<bf16_bits>(d_att_partials, d_att, tiles, B, per_sample);
}

#define BAP_ENTRY_POINTS(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_pool_##SUFFIX(const T* att, const T* feat, T* parts, float* block_sumsq, int M, int N, \
                          int HW) {                                                                \
        bap_pool_impl<T>(att, feat, parts, block_sumsq, M, N, HW);                                 \
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
        bap_grad_pooled_##SUFFIX(const T* parts, const T* d_parts, const float* norms,             \
                                 const float* dot_partials, int chunks, float* grad_t, int M,      \
                                 int N, int HW) {                                                  \
        bap_grad_pooled_impl<T>(parts, d_parts, norms, dot_partials, chunks, grad_t, M, N, HW);    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_grad_inputs8_##SUFFIX(const T* att, const T* feat, const float* grad_t, T* d_att,      \
                                  T* d_feat, int M, int N, int HW) {                               \
        bap_grad_inputs_impl<T, 8>(att, feat, grad_t, d_att, d_feat, M, N, HW);                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        bap_grad_inputs32_##SUFFIX(const T* att, const T* feat, const float* grad_t, T* d_att,     \
                                   T* d_feat, int M, int N, int HW) {                              \
        bap_grad_inputs_impl<T, 32>(att, feat, grad_t, d_att, d_feat, M, N, HW);                   \
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
