// Transposed 2-D convolution (PyTorch ConvTranspose2d, groups 1, dilation 1), forward and backward.
//
// x [B, Ci, H, W] and y [B, Co, Ho, Wo] are in T (f32 or bf16 bits); w [Ci, Co, K, K], the bias
// [Co] and their gradients are f32. Ho = (H-1) S - 2P + K + OP, the same for Wo.
//   y[b,co,oy,ox] = bias[co] + sum_{ci,ky,kx} x[b,ci,iy,ix] w[ci,co,ky,kx],  oy = iy S - P + ky
// Forward (ct_forward): gather, one thread per output pixel and CO_T output channels. Only the
// taps ky = (oy+P) mod S, stepping by S, reach an input row. The weights of a tile of input
// channels live in shared memory as [tap][ci][co], so each x value feeds CO_T FMAs (float4 loads).
// dx (ct_grad_input): a strided direct convolution of dy, one thread per input pixel and CI_T
// input channels; the whole block reads the same tap, so the [tap][co][ci] weights broadcast.
// dw (ct_grad_weight + ct_finalize_params): each block sums a fixed set of (sample, row, column)
// tiles into its own partials, one thread per (co, tap) and CI_T accumulators; then one fixed-order
// sum over the partials is added to dw. db: a block_sum per piece of each (sample, channel) plane,
// summed the same way.
// No float atomics anywhere: the same bits on every run.
#include "common.cuh"

#define CT_THREADS 256
// Floats between two taps' weight rows in the forward's shared tile, so that the four phases a
// stride-2 warp touches land on different banks.
#define CT_TAP_PAD 4
// Partial sums of dw are reduced in CT_PHASES interleaved groups per entry, then in order.
#define CT_PHASES 8
// Pixels per step of a dw thread, whose dy loads are in flight together.
#define CT_DW_UNROLL 4

extern __shared__ float4 ct_smem[];

// acc[i] += v * w[i]; w is 16-byte aligned when N is a multiple of 4.
template <int N>
__device__ __forceinline__ void fma_row(float (&acc)[N], float v, const float* w) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; ++i) {
            const float4 q = reinterpret_cast<const float4*>(w)[i];
            acc[4 * i + 0] = fmaf(v, q.x, acc[4 * i + 0]);
            acc[4 * i + 1] = fmaf(v, q.y, acc[4 * i + 1]);
            acc[4 * i + 2] = fmaf(v, q.z, acc[4 * i + 2]);
            acc[4 * i + 3] = fmaf(v, q.w, acc[4 * i + 3]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = fmaf(v, w[i], acc[i]);
    }
}

// grid (ceil(Ho*Wo / 256), ceil(Co / CO_T), B). Shared: KK * (ci_tile * CO_T + CT_TAP_PAD) floats.
template <typename T, int CO_T>
__device__ void ct_forward_impl(const T* __restrict__ x, const float* __restrict__ w,
                                const float* __restrict__ bias, T* __restrict__ y, int Ci, int Co,
                                int H, int W, int Ho, int Wo, int K, int S, int P, int ci_tile) {
    float* w_s = reinterpret_cast<float*>(ct_smem);
    const int b = blockIdx.z, co0 = blockIdx.y * CO_T;
    const int KK = K * K, HW = H * W, HWo = Ho * Wo;
    const int tap_stride = ci_tile * CO_T + CT_TAP_PAD;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = pix < HWo;
    const int oy = active ? pix / Wo : 0, ox = active ? pix % Wo : 0;
    const int ky0 = (oy + P) % S, kx0 = (ox + P) % S;

    float acc[CO_T];
#pragma unroll
    for (int c = 0; c < CO_T; ++c) acc[c] = co0 + c < Co ? bias[co0 + c] : 0.0f;

    const T* x_b = x + (long long)b * Ci * HW;
    for (int ci0 = 0; ci0 < Ci; ci0 += ci_tile) {
        const int n_ci = min(ci_tile, Ci - ci0);
        __syncthreads();
        for (int e = threadIdx.x; e < KK * ci_tile * CO_T; e += blockDim.x) {
            const int q = e / CO_T, c = e % CO_T;
            const int tap = q / ci_tile, ci = q - tap * ci_tile;
            const bool ok = ci < n_ci && co0 + c < Co;
            w_s[tap * tap_stride + ci * CO_T + c] =
                ok ? w[((long long)(ci0 + ci) * Co + co0 + c) * KK + tap] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        for (int ky = ky0; ky < K; ky += S) {
            const int ny = oy + P - ky;  // a multiple of S, decreasing with ky
            if (ny < 0) break;
            const int iy = ny / S;
            if (iy >= H) continue;
            for (int kx = kx0; kx < K; kx += S) {
                const int nx = ox + P - kx;
                if (nx < 0) break;
                const int ix = nx / S;
                if (ix >= W) continue;
                const float* ws = w_s + (ky * K + kx) * tap_stride;
                const T* xp = x_b + (long long)ci0 * HW + iy * W + ix;
                for (int ci = 0; ci < n_ci; ++ci)
                    fma_row<CO_T>(acc, load_f32(xp, (long long)ci * HW), ws + ci * CO_T);
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int c = 0; c < CO_T; ++c)
        if (co0 + c < Co) store_f32(y, ((long long)b * Co + co0 + c) * HWo + pix, acc[c]);
}

// dx[b,ci,iy,ix] = sum_{co,ky,kx} dy[b,co,iy S - P + ky, ix S - P + kx] w[ci,co,ky,kx].
// grid (ceil(H*W / 256), ceil(Ci / CI_T), B). Shared: KK * co_tile * CI_T floats.
template <typename T, int CI_T>
__device__ void ct_grad_input_impl(const T* __restrict__ dy, const float* __restrict__ w,
                                   T* __restrict__ dx, int Ci, int Co, int H, int W, int Ho, int Wo,
                                   int K, int S, int P, int co_tile) {
    float* w_s = reinterpret_cast<float*>(ct_smem);
    const int b = blockIdx.z, ci0 = blockIdx.y * CI_T;
    const int KK = K * K, HW = H * W, HWo = Ho * Wo;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = pix < HW;
    const int iy = active ? pix / W : 0, ix = active ? pix % W : 0;

    float acc[CI_T];
#pragma unroll
    for (int c = 0; c < CI_T; ++c) acc[c] = 0.0f;

    const T* dy_b = dy + (long long)b * Co * HWo;
    for (int co0 = 0; co0 < Co; co0 += co_tile) {
        const int n_co = min(co_tile, Co - co0);
        __syncthreads();
        for (int e = threadIdx.x; e < KK * co_tile * CI_T; e += blockDim.x) {
            const int q = e / CI_T, ci = e % CI_T;
            const int tap = q / co_tile, c = q - tap * co_tile;
            const bool ok = c < n_co && ci0 + ci < Ci;
            w_s[e] = ok ? w[((long long)(ci0 + ci) * Co + co0 + c) * KK + tap] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        for (int ky = 0; ky < K; ++ky) {
            const int oy = iy * S - P + ky;
            if (oy < 0) continue;
            if (oy >= Ho) break;
            for (int kx = 0; kx < K; ++kx) {
                const int ox = ix * S - P + kx;
                if (ox < 0) continue;
                if (ox >= Wo) break;
                const float* ws = w_s + (ky * K + kx) * co_tile * CI_T;
                const T* dp = dy_b + (long long)co0 * HWo + oy * Wo + ox;
                for (int c = 0; c < n_co; ++c)
                    fma_row<CI_T>(acc, load_f32(dp, (long long)c * HWo), ws + c * CI_T);
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int c = 0; c < CI_T; ++c)
        if (ci0 + c < Ci) store_f32(dx, ((long long)b * Ci + ci0 + c) * HW + pix, acc[c]);
}

// Partial dw of one chunk: part[chunk][ci][co][tap] = sum over the chunk's tiles of
// x[b,ci,iy,ix] dy[b,co,iy S - P + ky, ix S - P + kx]. Chunk c owns tiles c, c + n_chunks, ...
// of the (sample, tile row, tile column) grid; a tile is tile_rows x tile_cols <= 256 pixels.
// One thread per entry e = (co, tap) of the block's co tile; when there are fewer than 256 entries
// G = 256 / E thread groups split the tile's pixels and are summed in order at the end.
// grid (n_chunks, ceil(Ci / CI_T), ceil(Co / co_tile)). Shared: 256 * CI_T floats.
template <typename T, int CI_T>
__device__ void ct_grad_weight_impl(const T* __restrict__ x, const T* __restrict__ dy,
                                    float* __restrict__ part, int B, int Ci, int Co, int H, int W,
                                    int Ho, int Wo, int K, int S, int P, int co_tile, int tile_rows,
                                    int tile_cols, int n_chunks) {
    float* s_mem = reinterpret_cast<float*>(ct_smem);
    const int chunk = blockIdx.x, ci0 = blockIdx.y * CI_T, co0 = blockIdx.z * co_tile;
    const int KK = K * K, HWo = Ho * Wo;
    const int n_co = min(co_tile, Co - co0);
    const int E = n_co * KK;
    const int threads = blockDim.x;
    const int G = E >= threads ? 1 : threads / E;
    const int TP = tile_rows * tile_cols;
    const int tiles_y = (H + tile_rows - 1) / tile_rows, tiles_x = (W + tile_cols - 1) / tile_cols;
    const int n_tiles = B * tiles_y * tiles_x;
    const int gr = G / tile_cols, gc = G % tile_cols;

    for (int e_base = 0; e_base < E; e_base += threads) {
        int g, e;
        if (G > 1) {
            g = threadIdx.x / E;
            e = threadIdx.x % E;
        } else {
            g = 0;
            e = e_base + threadIdx.x;
        }
        const bool on = g < G && e < E;
        const int co_l = on ? e / KK : 0, tap = on ? e % KK : 0;
        const int ky = tap / K, kx = tap % K;

        float acc[CI_T];
#pragma unroll
        for (int c = 0; c < CI_T; ++c) acc[c] = 0.0f;

        for (int t = chunk; t < n_tiles; t += n_chunks) {
            const int tx = t % tiles_x, q = t / tiles_x;
            const int ty = q % tiles_y, b = q / tiles_y;
            const int iy0 = ty * tile_rows, ix0 = tx * tile_cols;
            __syncthreads();
            for (int i = threadIdx.x; i < TP * CI_T; i += threads) {
                const int ci = i % CI_T, p = i / CI_T;
                const int iy = iy0 + p / tile_cols, ix = ix0 + p % tile_cols;
                s_mem[i] = ci0 + ci < Ci && iy < H && ix < W
                               ? load_f32(x, (((long long)b * Ci + ci0 + ci) * H + iy) * W + ix)
                               : 0.0f;
            }
            __syncthreads();
            if (!on) continue;
            const T* dp = dy + ((long long)b * Co + co0 + co_l) * HWo;
            int r = g / tile_cols, c = g % tile_cols;
            // CT_DW_UNROLL pixels a step, every dy load issued before the first FMA: each
            // thread keeps that many loads in flight, where one at a time left it waiting on
            // memory. The FMAs keep the pixel order, so the sums are those of one at a time.
            for (int p0 = g; p0 < TP; p0 += CT_DW_UNROLL * G) {
                float v[CT_DW_UNROLL];
                bool hit[CT_DW_UNROLL];
#pragma unroll
                for (int u = 0; u < CT_DW_UNROLL; ++u) {
                    const int iy = iy0 + r, ix = ix0 + c;
                    const int oy = iy * S - P + ky, ox = ix * S - P + kx;
                    hit[u] = p0 + u * G < TP && iy < H && ix < W && oy >= 0 && oy < Ho &&
                             ox >= 0 && ox < Wo;
                    v[u] = hit[u] ? load_f32(dp, (long long)oy * Wo + ox) : 0.0f;
                    c += gc;
                    r += gr;
                    if (c >= tile_cols) {
                        c -= tile_cols;
                        ++r;
                    }
                }
#pragma unroll
                for (int u = 0; u < CT_DW_UNROLL; ++u)
                    if (hit[u]) fma_row<CI_T>(acc, v[u], s_mem + (p0 + u * G) * CI_T);
            }
        }

        float* out = part + (long long)chunk * Ci * Co * KK;
        if (G > 1) {
            // Groups hand their sums over through shared memory, [g][e][ci], summed in g order.
            __syncthreads();
            if (on) {
#pragma unroll
                for (int c = 0; c < CI_T; ++c) s_mem[(g * E + e) * CI_T + c] = acc[c];
            }
            __syncthreads();
            for (int i = threadIdx.x; i < E * CI_T; i += threads) {
                const int ci = i % CI_T, ee = i / CI_T;
                float sum = 0.0f;
                for (int gg = 0; gg < G; ++gg) sum += s_mem[gg * E * CI_T + i];
                if (ci0 + ci < Ci) out[((long long)(ci0 + ci) * Co + co0) * KK + ee] = sum;
            }
        } else if (on) {
#pragma unroll
            for (int c = 0; c < CI_T; ++c)
                if (ci0 + c < Ci) out[((long long)(ci0 + c) * Co + co0) * KK + e] = acc[c];
        }
    }
}

// part_b[b][chunk][co] = sum of dy over one of the `chunks` equal pieces of the (b, co) plane.
// grid (Co, chunks, B).
template <typename T>
__device__ void ct_grad_bias_impl(const T* __restrict__ dy, float* __restrict__ part_b, int Co,
                                  int HWo) {
    __shared__ float scratch[32];
    const int co = blockIdx.x, chunk = blockIdx.y, b = blockIdx.z, chunks = gridDim.y;
    const int len = (HWo + chunks - 1) / chunks;
    const int end = min(HWo, (chunk + 1) * len);
    const T* p = dy + ((long long)b * Co + co) * HWo;
    float s = 0.0f;
#pragma unroll 4
    for (int i = chunk * len + threadIdx.x; i < end; i += blockDim.x) s += load_f32(p, i);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) part_b[((long long)b * chunks + chunk) * Co + co] = s;
}

// dw[i] += sum_c part_w[c][i] and db[co] += sum_j part_b[j][co], each in a fixed order:
// CT_PHASES interleaved partial sums per entry, then those in phase order. 32 entries per block.
extern "C" __global__ void __launch_bounds__(CT_THREADS)
    ct_finalize_params(const float* __restrict__ part_w, const float* __restrict__ part_b,
                       float* __restrict__ dw, float* __restrict__ db, int n_w, int n_chunks,
                       int Co, int n_bias_parts) {
    __shared__ float red[CT_PHASES][33];
    const int lane = threadIdx.x & 31, phase = threadIdx.x >> 5;
    const int i = blockIdx.x * 32 + lane;
    const bool is_w = i < n_w;
    const bool valid = i < n_w + Co;
    float s = 0.0f;
    if (valid) {
        const float* src = is_w ? part_w + i : part_b + (i - n_w);
        const long long stride = is_w ? n_w : Co;
        const int count = is_w ? n_chunks : n_bias_parts;
        for (int c = phase; c < count; c += CT_PHASES) s += src[(long long)c * stride];
    }
    red[phase][lane] = s;
    __syncthreads();
    if (phase == 0 && valid) {
        float t = red[0][lane];
#pragma unroll
        for (int p = 1; p < CT_PHASES; ++p) t += red[p][lane];
        if (is_w)
            dw[i] += t;
        else
            db[i - n_w] += t;
    }
}

#define CT_TILED_ENTRY_POINTS(SUFFIX, T, N)                                                        \
    extern "C" __global__ void __launch_bounds__(CT_THREADS)                                       \
        ct_forward_c##N##_##SUFFIX(const T* x, const float* w, const float* bias, T* y, int Ci,    \
                                   int Co, int H, int W, int Ho, int Wo, int K, int S, int P,      \
                                   int ci_tile) {                                                  \
        ct_forward_impl<T, N>(x, w, bias, y, Ci, Co, H, W, Ho, Wo, K, S, P, ci_tile);              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(CT_THREADS)                                       \
        ct_grad_input_c##N##_##SUFFIX(const T* dy, const float* w, T* dx, int Ci, int Co, int H,   \
                                      int W, int Ho, int Wo, int K, int S, int P, int co_tile) {   \
        ct_grad_input_impl<T, N>(dy, w, dx, Ci, Co, H, W, Ho, Wo, K, S, P, co_tile);               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(CT_THREADS, 3) ct_grad_weight_c##N##_##SUFFIX(    \
        const T* x, const T* dy, float* part, int B, int Ci, int Co, int H, int W, int Ho, int Wo, \
        int K, int S, int P, int co_tile, int tile_rows, int tile_cols, int n_chunks) {            \
        ct_grad_weight_impl<T, N>(x, dy, part, B, Ci, Co, H, W, Ho, Wo, K, S, P, co_tile,          \
                                  tile_rows, tile_cols, n_chunks);                                 \
    }

#define CT_ENTRY_POINTS(SUFFIX, T)                                                                 \
    CT_TILED_ENTRY_POINTS(SUFFIX, T, 1)                                                            \
    CT_TILED_ENTRY_POINTS(SUFFIX, T, 4)                                                            \
    CT_TILED_ENTRY_POINTS(SUFFIX, T, 8)                                                            \
    CT_TILED_ENTRY_POINTS(SUFFIX, T, 16)                                                           \
    extern "C" __global__ void __launch_bounds__(CT_THREADS)                                       \
        ct_grad_bias_##SUFFIX(const T* dy, float* part_b, int Co, int HWo) {                       \
        ct_grad_bias_impl<T>(dy, part_b, Co, HWo);                                                 \
    }

CT_ENTRY_POINTS(f32, float)
CT_ENTRY_POINTS(bf16, bf16_bits)
