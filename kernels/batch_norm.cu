// Batch norm (PyTorch BatchNorm2d) with an optional fused ReLU, training and inference modes,
// forward and backward, over NCHW (bn_*) and channels-last NHWC (bn_nhwc_*).
//
// NCHW: x [N, C, H, W] in T; gamma, beta, running stats, saved stats and parameter gradients in f32.
// A channel's n = N*H*W elements, in the order j = b*HW + p, are split into `chunks` ranges of
// `chunk_len` (the last one shorter, none empty). Every kernel over the data runs on a grid
// (chunks, C) of 256 threads: block (k, c) walks range k of channel c. A channel total is formed
// from the per-block partials in a fixed order; no float atomics: the same bits on every run.
//
// Training forward:  bn_stats (per thread Welford in groups of 4, Chan merges in a fixed order;
//   partial mean and M2 per block), then bn_train_apply (each block merges its channel's partials;
//   block 0 saves mean and invstd and updates the running stats; every block writes its y).
// Inference forward: bn_infer_apply with the running stats.
// Training backward: bn_train_grad_reduce (partials of sum g and sum g (x - mean), g = dy masked
//   by y > 0 under ReLU), then bn_train_grad_input (dx; block 0 accumulates dgamma, dbeta).
// Inference backward: bn_infer_grad_reduce (the same partials, and dx, which needs no channel
//   sum), then bn_param_grads (dgamma, dbeta; one block per channel).
//
// NHWC: x [N, H, W, C], row j = b*HW + p holds C contiguous channels. The same stages, partials
// and per-element math, on a grid (chunks, C / tile): block (k, t) walks row range k of a tile of
// `tile` channels (channels_last.cuh), each thread VEC channels of every slots-th row, so a warp
// reads contiguous spans of rows with 16-byte loads. Per thread, Welford in groups of BN_GROUP
// rows as NCHW (one pass over x: the statistics read x once, the apply once more); then a fixed
// tree over the block's row slots. The reduction order differs from NCHW's, so statistics and
// gradient sums agree with it to f32 rounding, not bit for bit; the element-wise outputs given
// the same statistics (inference forward and backward) are the same bits.
#include "common.cuh"
#include "channels_last.cuh"

#define BN_THREADS 256
#define BN_GROUP 4

// Walks one thread's elements of channel c in range [j0, j1): j = j0 + threadIdx.x + i*blockDim.x
// addresses x[(b*C + c)*HW + p] with j = b*HW + p. One division per thread, none per element.
struct ChannelWalker {
    long long addr, step_addr, wrap_addr;
    int p, step_p, hw, count;
    __device__ ChannelWalker(int c, int C, int HW, long long j0, long long j1) {
        const long long j = j0 + threadIdx.x, stride = blockDim.x;
        count = j < j1 ? (int)((j1 - j + stride - 1) / stride) : 0;
        const long long b = j / HW;
        p = (int)(j - b * HW);
        hw = HW;
        addr = (b * C + c) * HW + p;
        step_p = (int)(stride % HW);
        step_addr = (stride / HW) * C * HW + step_p;
        // Crossing into the next sample's row of the same channel: +C*HW, and p went back by HW.
        wrap_addr = (long long)(C - 1) * HW;
    }
    __device__ __forceinline__ void advance() {
        p += step_p;
        addr += step_addr;
        if (p >= hw) {
            p -= hw;
            addr += wrap_addr;
        }
    }
};

// Range k of a channel of n elements.
__device__ __forceinline__ long long chunk_begin(int k, int chunk_len) {
    return (long long)k * chunk_len;
}
__device__ __forceinline__ long long chunk_end(int k, int chunk_len, int n) {
    return min((long long)n, (long long)(k + 1) * chunk_len);
}

// ReLU as PyTorch: NaN passes through. The backward mask is threshold_backward's: zero where the
// saved output is <= 0.
__device__ __forceinline__ float bn_act(float v, int relu) { return relu && v <= 0.0f ? 0.0f : v; }
__device__ __forceinline__ float bn_mask(float g, float y, int relu) {
    return relu && y <= 0.0f ? 0.0f : g;
}
template <typename T>
__device__ __forceinline__ float masked_grad(const T* y, const T* dy, long long i, int relu) {
    return bn_mask(load_f32(dy, i), relu ? load_f32(y, i) : 1.0f, relu);
}

// y of one value.
__device__ __forceinline__ float bn_apply_value(float v, float mean, float scale, float shift,
                                                int relu) {
    return bn_act(fmaf(v - mean, scale, shift), relu);
}

// invstd from a channel's M2 over n values.
__device__ __forceinline__ float bn_invstd(float m2, int n, float eps) {
    return 1.0f / sqrtf(m2 / (float)n + eps);
}

// Saves a channel's mean and invstd and updates its running stats (the variance unbiased).
__device__ __forceinline__ void bn_save_stats(int c, float mean, float m2, float invstd, int n,
                                              float momentum, float* running_mean,
                                              float* running_var, float* save_mean,
                                              float* save_invstd) {
    save_mean[c] = mean;
    save_invstd[c] = invstd;
    running_mean[c] = momentum * mean + (1.0f - momentum) * running_mean[c];
    running_var[c] = momentum * (m2 / (float)(n - 1)) + (1.0f - momentum) * running_var[c];
}

// The training backward's per-channel coefficients: dx = (g - (x - mean) * proj - mean_g) * scale.
struct BnGradCoef {
    float mean_g, proj, scale;
    __device__ __forceinline__ BnGradCoef() {}
    __device__ __forceinline__ BnGradCoef(float sum_g, float dot, float invstd, float gamma, int n) {
        const float inv_n = 1.0f / (float)n;
        mean_g = sum_g * inv_n;
        proj = dot * inv_n * invstd * invstd;
        scale = invstd * gamma;
    }
    __device__ __forceinline__ float dx(float g, float x, float mean) const {
        return (g - (x - mean) * proj - mean_g) * scale;
    }
};

// Count, mean and sum of squared deviations of a set of values.
struct Welford {
    float n, mean, m2;
};

// Chan et al.'s merge. Not symmetric in its rounding, so callers merge in a fixed order.
__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    const float n = a.n + b.n, delta = b.mean - a.mean, r = b.n / n;
    Welford out;
    out.n = n;
    out.mean = fmaf(delta, r, a.mean);
    out.m2 = a.m2 + b.m2 + delta * delta * a.n * r;
    return out;
}

// Two-pass statistics of the first cnt (1..BN_GROUP) values.
__device__ __forceinline__ Welford welford_group(const float (&v)[BN_GROUP], int cnt) {
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < BN_GROUP; ++u) sum += u < cnt ? v[u] : 0.0f;
    Welford w;
    w.n = (float)cnt;
    w.mean = sum / w.n;
    w.m2 = 0.0f;
#pragma unroll
    for (int u = 0; u < BN_GROUP; ++u) {
        const float d = v[u] - w.mean;
        w.m2 = u < cnt ? fmaf(d, d, w.m2) : w.m2;
    }
    return w;
}

// Tree over the warp in a fixed order; lane 0 gets the warp's total.
__device__ __forceinline__ Welford warp_welford(Welford w) {
    for (int o = 16; o > 0; o >>= 1) {
        Welford other;
        other.n = __shfl_down_sync(0xffffffffu, w.n, o);
        other.mean = __shfl_down_sync(0xffffffffu, w.mean, o);
        other.m2 = __shfl_down_sync(0xffffffffu, w.m2, o);
        w = welford_merge(w, other);
    }
    return w;
}

// Merge over the block in a fixed order; thread 0 gets the total. Every thread must call it;
// blockDim.x is a multiple of 32.
__device__ Welford block_welford(Welford w, float (*scratch)[32]) {
    w = warp_welford(w);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) {
        scratch[0][warp] = w.n;
        scratch[1][warp] = w.mean;
        scratch[2][warp] = w.m2;
    }
    __syncthreads();
    if (warp == 0) {
        w.n = lane < warps ? scratch[0][lane] : 0.0f;
        w.mean = lane < warps ? scratch[1][lane] : 0.0f;
        w.m2 = lane < warps ? scratch[2][lane] : 0.0f;
        w = warp_welford(w);
    }
    return w;
}

// Stage 1 of the training statistics: mean and M2 of block (k, c)'s range.
template <typename T>
__device__ void bn_stats_impl(const T* __restrict__ x, float* __restrict__ part_mean,
                              float* __restrict__ part_m2, int C, int HW, int n, int chunk_len) {
    __shared__ float scratch[3][32];
    const int c = blockIdx.y, k = blockIdx.x;
    ChannelWalker w(c, C, HW, chunk_begin(k, chunk_len), chunk_end(k, chunk_len, n));
    Welford acc;
    acc.n = acc.mean = acc.m2 = 0.0f;
    for (int left = w.count; left > 0; left -= BN_GROUP) {
        const int cnt = min(left, BN_GROUP);
        float v[BN_GROUP];
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            v[u] = 0.0f;
            if (u < cnt) {
                v[u] = load_f32(x, w.addr);
                w.advance();
            }
        }
        acc = welford_merge(acc, welford_group(v, cnt));
    }
    acc = block_welford(acc, scratch);
    if (threadIdx.x == 0) {
        part_mean[(long long)c * gridDim.x + k] = acc.mean;
        part_m2[(long long)c * gridDim.x + k] = acc.m2;
    }
}

// y = act((x - mean) * scale + shift) over block (k, c)'s range.
template <typename T>
__device__ __forceinline__ void bn_apply_range(const T* __restrict__ x, T* __restrict__ y, int C,
                                               int HW, int n, int chunk_len, float mean,
                                               float scale, float shift, int relu) {
    const int c = blockIdx.y, k = blockIdx.x;
    ChannelWalker w(c, C, HW, chunk_begin(k, chunk_len), chunk_end(k, chunk_len, n));
    for (int left = w.count; left > 0; left -= BN_GROUP) {
        const int cnt = min(left, BN_GROUP);
        long long at[BN_GROUP];
        float v[BN_GROUP];
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            at[u] = w.addr;
            v[u] = 0.0f;
            if (u < cnt) {
                v[u] = load_f32(x, w.addr);
                w.advance();
            }
        }
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            if (u < cnt) store_f32(y, at[u], bn_apply_value(v[u], mean, scale, shift, relu));
        }
    }
}

template <typename T>
__device__ void bn_train_apply_impl(const T* __restrict__ x, const float* __restrict__ part_mean,
                                    const float* __restrict__ part_m2,
                                    const float* __restrict__ gamma,
                                    const float* __restrict__ beta, float* __restrict__ running_mean,
                                    float* __restrict__ running_var, float* __restrict__ save_mean,
                                    float* __restrict__ save_invstd, T* __restrict__ y, int C,
                                    int HW, int n, int chunk_len, float eps, float momentum,
                                    int relu) {
    __shared__ float scratch[3][32];
    __shared__ float stats[2];
    const int c = blockIdx.y, k = blockIdx.x, chunks = gridDim.x;
    Welford acc;
    acc.n = acc.mean = acc.m2 = 0.0f;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
        Welford part;
        part.n = (float)(chunk_end(i, chunk_len, n) - chunk_begin(i, chunk_len));
        part.mean = part_mean[(long long)c * chunks + i];
        part.m2 = part_m2[(long long)c * chunks + i];
        acc = welford_merge(acc, part);
    }
    acc = block_welford(acc, scratch);
    if (threadIdx.x == 0) {
        const float invstd = bn_invstd(acc.m2, n, eps);
        stats[0] = acc.mean;
        stats[1] = invstd;
        if (k == 0) {
            bn_save_stats(c, acc.mean, acc.m2, invstd, n, momentum, running_mean, running_var,
                          save_mean, save_invstd);
        }
    }
    __syncthreads();
    bn_apply_range(x, y, C, HW, n, chunk_len, stats[0], gamma[c] * stats[1], beta[c], relu);
}

template <typename T>
__device__ void bn_infer_apply_impl(const T* __restrict__ x, const float* __restrict__ gamma,
                                    const float* __restrict__ beta,
                                    const float* __restrict__ running_mean,
                                    const float* __restrict__ running_var, T* __restrict__ y, int C,
                                    int HW, int n, int chunk_len, float eps, int relu) {
    const int c = blockIdx.y;
    const float invstd = 1.0f / sqrtf(running_var[c] + eps);
    bn_apply_range(x, y, C, HW, n, chunk_len, running_mean[c], gamma[c] * invstd, beta[c], relu);
}

// Stage 1 of both backwards: partials of sum g and sum g (x - mean) over block (k, c)'s range,
// g = dy masked by ReLU. In inference mode (INFER) also writes dx = g * gamma * invstd, with
// invstd = 1/sqrt(running_var + eps); training mode passes null gamma, running_var and dx.
template <typename T, bool INFER>
__device__ void bn_grad_reduce_impl(const T* __restrict__ x, const T* __restrict__ y,
                                    const T* __restrict__ dy, const float* __restrict__ mean,
                                    const float* __restrict__ gamma,
                                    const float* __restrict__ running_var, T* __restrict__ dx,
                                    float* __restrict__ part_dy, float* __restrict__ part_dot,
                                    int C, int HW, int n, int chunk_len, float eps, int relu) {
    __shared__ float scratch[32];
    const int c = blockIdx.y, k = blockIdx.x;
    const float m = mean[c];
    const float scale = INFER ? gamma[c] * (1.0f / sqrtf(running_var[c] + eps)) : 0.0f;
    ChannelWalker w(c, C, HW, chunk_begin(k, chunk_len), chunk_end(k, chunk_len, n));
    float sum_g = 0.0f, dot = 0.0f;
    for (int left = w.count; left > 0; left -= BN_GROUP) {
        const int cnt = min(left, BN_GROUP);
        long long at[BN_GROUP];
        float gv[BN_GROUP], xv[BN_GROUP];
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            at[u] = w.addr;
            gv[u] = xv[u] = 0.0f;
            if (u < cnt) {
                gv[u] = masked_grad(y, dy, w.addr, relu);
                xv[u] = load_f32(x, w.addr);
                w.advance();
            }
        }
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            if (u < cnt) {
                sum_g += gv[u];
                dot = fmaf(gv[u], xv[u] - m, dot);
                if constexpr (INFER) store_f32(dx, at[u], gv[u] * scale);
            }
        }
    }
    sum_g = block_sum(sum_g, scratch);
    dot = block_sum(dot, scratch);
    if (threadIdx.x == 0) {
        part_dy[(long long)c * gridDim.x + k] = sum_g;
        part_dot[(long long)c * gridDim.x + k] = dot;
    }
}

// A channel's total of `chunks` partials, in a fixed order; every thread gets it.
__device__ __forceinline__ float channel_sum(const float* partials, int c, int chunks,
                                             float* scratch) {
    float v = 0.0f;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) v += partials[(long long)c * chunks + i];
    return block_sum(v, scratch);
}

// dx = (g - (x - mean) * dot * invstd^2 / n - sum_g / n) * gamma * invstd, as PyTorch's
// batch_norm_backward_elemt. Block 0 of each channel accumulates dgamma += dot * invstd and
// dbeta += sum_g.
template <typename T>
__device__ void bn_train_grad_input_impl(const T* __restrict__ x, const T* __restrict__ y,
                                         const T* __restrict__ dy,
                                         const float* __restrict__ save_mean,
                                         const float* __restrict__ save_invstd,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ part_dy,
                                         const float* __restrict__ part_dot, T* __restrict__ dx,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta,
                                         int C, int HW, int n, int chunk_len, int relu) {
    __shared__ float scratch[32];
    const int c = blockIdx.y, k = blockIdx.x, chunks = gridDim.x;
    const float sum_g = channel_sum(part_dy, c, chunks, scratch);
    const float dot = channel_sum(part_dot, c, chunks, scratch);
    const float m = save_mean[c], invstd = save_invstd[c];
    if (k == 0 && threadIdx.x == 0) {
        dgamma[c] += dot * invstd;
        dbeta[c] += sum_g;
    }
    const BnGradCoef coef(sum_g, dot, invstd, gamma[c], n);
    ChannelWalker w(c, C, HW, chunk_begin(k, chunk_len), chunk_end(k, chunk_len, n));
    for (int left = w.count; left > 0; left -= BN_GROUP) {
        const int cnt = min(left, BN_GROUP);
        long long at[BN_GROUP];
        float gv[BN_GROUP], xv[BN_GROUP];
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            at[u] = w.addr;
            gv[u] = xv[u] = 0.0f;
            if (u < cnt) {
                gv[u] = masked_grad(y, dy, w.addr, relu);
                xv[u] = load_f32(x, w.addr);
                w.advance();
            }
        }
#pragma unroll
        for (int u = 0; u < BN_GROUP; ++u) {
            if (u < cnt) store_f32(dx, at[u], coef.dx(gv[u], xv[u], m));
        }
    }
}

// ---- NHWC ----

// Welford's merge on tile_reduce's float[3] states: {n, mean, m2}.
struct WelfordMerge3 {
    __device__ __forceinline__ void operator()(float (&a)[3], const float (&b)[3]) const {
        Welford x, y;
        x.n = a[0], x.mean = a[1], x.m2 = a[2];
        y.n = b[0], y.mean = b[1], y.m2 = b[2];
        const Welford r = welford_merge(x, y);
        a[0] = r.n, a[1] = r.mean, a[2] = r.m2;
    }
};
struct SumMerge2 {
    __device__ __forceinline__ void operator()(float (&a)[2], const float (&b)[2]) const {
        a[0] += b[0];
        a[1] += b[1];
    }
};

// Slot 0 writes block (k, tile)'s partials of its channels: acc[u][a] to part_a, acc[u][b] to
// part_b, at [c * chunks + k].
template <int VEC, int M>
__device__ __forceinline__ void bn_nhwc_write_partials(const float (&acc)[VEC][M], int a, int b,
                                                       float* __restrict__ part_a,
                                                       float* __restrict__ part_b,
                                                       const RowTile& t) {
    if (t.slot != 0 || !t.active) return;
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
        const long long at = (long long)(t.c0 + u) * gridDim.x + blockIdx.x;
        part_a[at] = acc[u][a];
        part_b[at] = acc[u][b];
    }
}

// Floats of tile_reduce scratch a block needs for M values per channel.
#define BN_NHWC_SCRATCH(T, M) ((M) * BN_THREADS * (16 / (int)sizeof(T)))

// Stage 1 of the training statistics: mean and M2 of block (k, tile)'s rows, per channel.
template <typename T, int VEC>
__device__ void bn_nhwc_stats_impl(const T* __restrict__ x, float* __restrict__ part_mean,
                                   float* __restrict__ part_m2, int C, int tile, int n,
                                   int chunk_len, float* scratch) {
    const RowTile t(tile, VEC, C);
    const int k = blockIdx.x;
    const long long j1 = chunk_end(k, chunk_len, n);
    Welford w[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) w[u].n = w[u].mean = w[u].m2 = 0.0f;
    if (t.active) {
        const long long step = (long long)t.slots;
        for (long long j = chunk_begin(k, chunk_len) + t.slot; j < j1; j += BN_GROUP * step) {
            int cnt = 0;  // rows of this group in range, without a 64-bit division
#pragma unroll
            for (int g = 0; g < BN_GROUP; ++g) cnt += j + g * step < j1;
            float v[BN_GROUP][VEC];
#pragma unroll
            for (int g = 0; g < BN_GROUP; ++g) {
                if (g < cnt) {
                    load_vec<T, VEC>(x, (j + g * step) * C + t.c0, v[g]);
                } else {
#pragma unroll
                    for (int u = 0; u < VEC; ++u) v[g][u] = 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < VEC; ++u) {
                float column[BN_GROUP];
#pragma unroll
                for (int g = 0; g < BN_GROUP; ++g) column[g] = v[g][u];
                w[u] = welford_merge(w[u], welford_group(column, cnt));
            }
        }
    }
    float acc[VEC][3];
#pragma unroll
    for (int u = 0; u < VEC; ++u) acc[u][0] = w[u].n, acc[u][1] = w[u].mean, acc[u][2] = w[u].m2;
    tile_reduce(acc, scratch, t, WelfordMerge3());
    bn_nhwc_write_partials(acc, 1, 2, part_mean, part_m2, t);
}

// f(offset of this thread's channels in row j) for the block's rows j of range k, slot-strided;
// UNROLL rows in flight.
template <int UNROLL, typename F>
__device__ __forceinline__ void bn_nhwc_rows(const RowTile& t, int C, int n, int chunk_len, F f) {
    const int k = blockIdx.x;
    const long long j1 = chunk_end(k, chunk_len, n);
#pragma unroll UNROLL
    for (long long j = chunk_begin(k, chunk_len) + t.slot; j < j1; j += t.slots) f(j * C + t.c0);
}

// y = act((x - mean) * scale + shift) over block (k, tile)'s rows.
template <typename T, int VEC>
__device__ __forceinline__ void bn_nhwc_apply_rows(const T* __restrict__ x, T* __restrict__ y,
                                                   const RowTile& t, int C, int n, int chunk_len,
                                                   const float (&mean)[VEC],
                                                   const float (&scale)[VEC],
                                                   const float (&shift)[VEC], int relu) {
    bn_nhwc_rows<4>(t, C, n, chunk_len, [&](long long at) {
        float v[VEC];
        load_vec<T, VEC>(x, at, v);
#pragma unroll
        for (int u = 0; u < VEC; ++u) v[u] = bn_apply_value(v[u], mean[u], scale[u], shift[u], relu);
        store_vec<T, VEC>(y, at, v);
    });
}

template <typename T, int VEC>
__device__ void bn_nhwc_train_apply_impl(const T* __restrict__ x,
                                         const float* __restrict__ part_mean,
                                         const float* __restrict__ part_m2,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ beta,
                                         float* __restrict__ running_mean,
                                         float* __restrict__ running_var,
                                         float* __restrict__ save_mean,
                                         float* __restrict__ save_invstd, T* __restrict__ y, int C,
                                         int tile, int n, int chunk_len, float eps, float momentum,
                                         int relu, float* scratch) {
    const RowTile t(tile, VEC, C);
    const int k = blockIdx.x, chunks = gridDim.x;
    // Every block merges its channels' partials (slot-strided, then the tree): no extra launch.
    float acc[VEC][3] = {};
    if (t.active) {
        for (int i = t.slot; i < chunks; i += t.slots) {
            const float count = (float)(chunk_end(i, chunk_len, n) - chunk_begin(i, chunk_len));
#pragma unroll
            for (int u = 0; u < VEC; ++u) {
                const long long at = (long long)(t.c0 + u) * chunks + i;
                const float part[3] = {count, part_mean[at], part_m2[at]};
                WelfordMerge3()(acc[u], part);
            }
        }
    }
    tile_reduce(acc, scratch, t, WelfordMerge3());
    if (!t.active) return;
    float mean[VEC], scale[VEC], shift[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
        const int c = t.c0 + u;
        const float invstd = bn_invstd(acc[u][2], n, eps);
        mean[u] = acc[u][1];
        scale[u] = gamma[c] * invstd;
        shift[u] = beta[c];
        if (k == 0 && t.slot == 0) {
            bn_save_stats(c, acc[u][1], acc[u][2], invstd, n, momentum, running_mean, running_var,
                          save_mean, save_invstd);
        }
    }
    bn_nhwc_apply_rows<T, VEC>(x, y, t, C, n, chunk_len, mean, scale, shift, relu);
}

template <typename T, int VEC>
__device__ void bn_nhwc_infer_apply_impl(const T* __restrict__ x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta,
                                         const float* __restrict__ running_mean,
                                         const float* __restrict__ running_var, T* __restrict__ y,
                                         int C, int tile, int n, int chunk_len, float eps,
                                         int relu) {
    const RowTile t(tile, VEC, C);
    if (!t.active) return;
    float mean[VEC], scale[VEC], shift[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
        const int c = t.c0 + u;
        mean[u] = running_mean[c];
        scale[u] = gamma[c] * (1.0f / sqrtf(running_var[c] + eps));
        shift[u] = beta[c];
    }
    bn_nhwc_apply_rows<T, VEC>(x, y, t, C, n, chunk_len, mean, scale, shift, relu);
}

// g = dy masked by ReLU, and x, of VEC channels of row j.
template <typename T, int VEC>
__device__ __forceinline__ void bn_nhwc_load_grad(const T* __restrict__ x, const T* __restrict__ y,
                                                  const T* __restrict__ dy, long long at, int relu,
                                                  float (&g)[VEC], float (&xv)[VEC]) {
    load_vec<T, VEC>(dy, at, g);
    load_vec<T, VEC>(x, at, xv);
    if (relu) {
        float yv[VEC];
        load_vec<T, VEC>(y, at, yv);
#pragma unroll
        for (int u = 0; u < VEC; ++u) g[u] = bn_mask(g[u], yv[u], relu);
    }
}

// Stage 1 of both backwards, as bn_grad_reduce_impl: partials of sum g and sum g (x - mean).
template <typename T, int VEC, bool INFER>
__device__ void bn_nhwc_grad_reduce_impl(const T* __restrict__ x, const T* __restrict__ y,
                                         const T* __restrict__ dy, const float* __restrict__ mean,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ running_var,
                                         T* __restrict__ dx, float* __restrict__ part_dy,
                                         float* __restrict__ part_dot, int C, int tile, int n,
                                         int chunk_len, float eps, int relu, float* scratch) {
    const RowTile t(tile, VEC, C);
    float acc[VEC][2] = {};
    if (t.active) {
        float m[VEC], scale[VEC];
#pragma unroll
        for (int u = 0; u < VEC; ++u) {
            const int c = t.c0 + u;
            m[u] = mean[c];
            scale[u] = INFER ? gamma[c] * (1.0f / sqrtf(running_var[c] + eps)) : 0.0f;
        }
        bn_nhwc_rows<2>(t, C, n, chunk_len, [&](long long at) {
            float g[VEC], xv[VEC];
            bn_nhwc_load_grad<T, VEC>(x, y, dy, at, relu, g, xv);
#pragma unroll
            for (int u = 0; u < VEC; ++u) {
                acc[u][0] += g[u];
                acc[u][1] = fmaf(g[u], xv[u] - m[u], acc[u][1]);
            }
            if constexpr (INFER) {
#pragma unroll
                for (int u = 0; u < VEC; ++u) g[u] *= scale[u];
                store_vec<T, VEC>(dx, at, g);
            }
        });
    }
    tile_reduce(acc, scratch, t, SumMerge2());
    bn_nhwc_write_partials(acc, 0, 1, part_dy, part_dot, t);
}

// dx as bn_train_grad_input_impl; block 0 of each tile accumulates dgamma and dbeta.
template <typename T, int VEC>
__device__ void bn_nhwc_train_grad_input_impl(
    const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
    const float* __restrict__ save_mean, const float* __restrict__ save_invstd,
    const float* __restrict__ gamma, const float* __restrict__ part_dy,
    const float* __restrict__ part_dot, T* __restrict__ dx, float* __restrict__ dgamma,
    float* __restrict__ dbeta, int C, int tile, int n, int chunk_len, int relu, float* scratch) {
    const RowTile t(tile, VEC, C);
    const int k = blockIdx.x, chunks = gridDim.x;
    float acc[VEC][2] = {};
    if (t.active) {
        for (int i = t.slot; i < chunks; i += t.slots) {
#pragma unroll
            for (int u = 0; u < VEC; ++u) {
                const long long at = (long long)(t.c0 + u) * chunks + i;
                acc[u][0] += part_dy[at];
                acc[u][1] += part_dot[at];
            }
        }
    }
    tile_reduce(acc, scratch, t, SumMerge2());
    if (!t.active) return;
    float m[VEC];
    BnGradCoef coef[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
        const int c = t.c0 + u;
        const float invstd = save_invstd[c];
        m[u] = save_mean[c];
        coef[u] = BnGradCoef(acc[u][0], acc[u][1], invstd, gamma[c], n);
        if (k == 0 && t.slot == 0) {
            dgamma[c] += acc[u][1] * invstd;
            dbeta[c] += acc[u][0];
        }
    }
    bn_nhwc_rows<2>(t, C, n, chunk_len, [&](long long at) {
        float g[VEC], xv[VEC];
        bn_nhwc_load_grad<T, VEC>(x, y, dy, at, relu, g, xv);
#pragma unroll
        for (int u = 0; u < VEC; ++u) g[u] = coef[u].dx(g[u], xv[u], m[u]);
        store_vec<T, VEC>(dx, at, g);
    });
}

// Inference backward, stage 2: one block per channel.
extern "C" __global__ void __launch_bounds__(BN_THREADS)
    bn_param_grads(const float* __restrict__ part_dy, const float* __restrict__ part_dot,
                   int chunks, const float* __restrict__ running_var, float eps,
                   float* __restrict__ dgamma, float* __restrict__ dbeta) {
    __shared__ float scratch[32];
    const int c = blockIdx.x;
    const float sum_g = channel_sum(part_dy, c, chunks, scratch);
    const float dot = channel_sum(part_dot, c, chunks, scratch);
    if (threadIdx.x == 0) {
        dgamma[c] += dot * (1.0f / sqrtf(running_var[c] + eps));
        dbeta[c] += sum_g;
    }
}

#define BN_ENTRY_POINTS(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                      \
        bn_stats_##SUFFIX(const T* x, float* part_mean, float* part_m2, int C, int HW, int n,     \
                          int chunk_len) {                                                         \
        bn_stats_impl<T>(x, part_mean, part_m2, C, HW, n, chunk_len);                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_train_apply_##SUFFIX(             \
        const T* x, const float* part_mean, const float* part_m2, const float* gamma,             \
        const float* beta, float* running_mean, float* running_var, float* save_mean,             \
        float* save_invstd, T* y, int C, int HW, int n, int chunk_len, float eps, float momentum, \
        int relu) {                                                                                \
        bn_train_apply_impl<T>(x, part_mean, part_m2, gamma, beta, running_mean, running_var,     \
                               save_mean, save_invstd, y, C, HW, n, chunk_len, eps, momentum,     \
                               relu);                                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_infer_apply_##SUFFIX(             \
        const T* x, const float* gamma, const float* beta, const float* running_mean,             \
        const float* running_var, T* y, int C, int HW, int n, int chunk_len, float eps,           \
        int relu) {                                                                                \
        bn_infer_apply_impl<T>(x, gamma, beta, running_mean, running_var, y, C, HW, n, chunk_len, \
                               eps, relu);                                                         \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_train_grad_reduce_##SUFFIX(       \
        const T* x, const T* y, const T* dy, const float* save_mean, float* part_dy,              \
        float* part_dot, int C, int HW, int n, int chunk_len, int relu) {                         \
        bn_grad_reduce_impl<T, false>(x, y, dy, save_mean, nullptr, nullptr, nullptr, part_dy,   \
                                      part_dot, C, HW, n, chunk_len, 0.0f, relu);                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_train_grad_input_##SUFFIX(        \
        const T* x, const T* y, const T* dy, const float* save_mean, const float* save_invstd,    \
        const float* gamma, const float* part_dy, const float* part_dot, T* dx, float* dgamma,    \
        float* dbeta, int C, int HW, int n, int chunk_len, int relu) {                            \
        bn_train_grad_input_impl<T>(x, y, dy, save_mean, save_invstd, gamma, part_dy, part_dot,   \
                                    dx, dgamma, dbeta, C, HW, n, chunk_len, relu);                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_infer_grad_reduce_##SUFFIX(       \
        const T* x, const T* y, const T* dy, const float* running_mean, const float* gamma,       \
        const float* running_var, T* dx, float* part_dy, float* part_dot, int C, int HW, int n,   \
        int chunk_len, float eps, int relu) {                                                      \
        bn_grad_reduce_impl<T, true>(x, y, dy, running_mean, gamma, running_var, dx, part_dy,     \
                                     part_dot, C, HW, n, chunk_len, eps, relu);                   \
    }

// The NHWC entry points take (C, tile, n, chunk_len) where NCHW's take (C, HW, n, chunk_len),
// and pick VEC from C and their buffers' alignment.
#define BN_NHWC_VEC_OR_SCALAR(T, C, ADDRESSES, CALL_VEC, CALL_SCALAR)                            \
    if (nhwc_vectorised<T>(C, (unsigned long long)(ADDRESSES))) {                                  \
        CALL_VEC;                                                                                  \
    } else {                                                                                       \
        CALL_SCALAR;                                                                               \
    }
#define BN_ADDR(p) ((unsigned long long)(p))

#define BN_NHWC_ENTRY_POINTS(SUFFIX, T)                                                            \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                      \
        bn_nhwc_stats_##SUFFIX(const T* x, float* part_mean, float* part_m2, int C, int tile,     \
                               int n, int chunk_len) {                                             \
        __shared__ float scratch[BN_NHWC_SCRATCH(T, 3)];                                           \
        BN_NHWC_VEC_OR_SCALAR(                                                                     \
            T, C, BN_ADDR(x),                                                                      \
            (bn_nhwc_stats_impl<T, NHWC_VEC(T)>(x, part_mean, part_m2, C, tile, n, chunk_len,      \
                                                scratch)),                                         \
            (bn_nhwc_stats_impl<T, 1>(x, part_mean, part_m2, C, tile, n, chunk_len, scratch)))     \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_nhwc_train_apply_##SUFFIX(        \
        const T* x, const float* part_mean, const float* part_m2, const float* gamma,             \
        const float* beta, float* running_mean, float* running_var, float* save_mean,             \
        float* save_invstd, T* y, int C, int tile, int n, int chunk_len, float eps,               \
        float momentum, int relu) {                                                                \
        __shared__ float scratch[BN_NHWC_SCRATCH(T, 3)];                                           \
        BN_NHWC_VEC_OR_SCALAR(                                                                     \
            T, C, BN_ADDR(x) | BN_ADDR(y),                                                         \
            (bn_nhwc_train_apply_impl<T, NHWC_VEC(T)>(                                             \
                x, part_mean, part_m2, gamma, beta, running_mean, running_var, save_mean,          \
                save_invstd, y, C, tile, n, chunk_len, eps, momentum, relu, scratch)),             \
            (bn_nhwc_train_apply_impl<T, 1>(x, part_mean, part_m2, gamma, beta, running_mean,     \
                                            running_var, save_mean, save_invstd, y, C, tile, n,   \
                                            chunk_len, eps, momentum, relu, scratch)))             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_nhwc_infer_apply_##SUFFIX(        \
        const T* x, const float* gamma, const float* beta, const float* running_mean,             \
        const float* running_var, T* y, int C, int tile, int n, int chunk_len, float eps,         \
        int relu) {                                                                                \
        BN_NHWC_VEC_OR_SCALAR(                                                                     \
            T, C, BN_ADDR(x) | BN_ADDR(y),                                                         \
            (bn_nhwc_infer_apply_impl<T, NHWC_VEC(T)>(x, gamma, beta, running_mean, running_var,  \
                                                      y, C, tile, n, chunk_len, eps, relu)),       \
            (bn_nhwc_infer_apply_impl<T, 1>(x, gamma, beta, running_mean, running_var, y, C,      \
                                            tile, n, chunk_len, eps, relu)))                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_nhwc_train_grad_reduce_##SUFFIX(  \
        const T* x, const T* y, const T* dy, const float* save_mean, float* part_dy,              \
        float* part_dot, int C, int tile, int n, int chunk_len, int relu) {                       \
        __shared__ float scratch[BN_NHWC_SCRATCH(T, 2)];                                           \
        BN_NHWC_VEC_OR_SCALAR(                                                                     \
            T, C, BN_ADDR(x) | BN_ADDR(y) | BN_ADDR(dy),                                           \
            (bn_nhwc_grad_reduce_impl<T, NHWC_VEC(T), false>(x, y, dy, save_mean, nullptr,        \
                                                             nullptr, nullptr, part_dy, part_dot,  \
                                                             C, tile, n, chunk_len, 0.0f, relu,    \
                                                             scratch)),                            \
            (bn_nhwc_grad_reduce_impl<T, 1, false>(x, y, dy, save_mean, nullptr, nullptr,         \
                                                   nullptr, part_dy, part_dot, C, tile, n,         \
                                                   chunk_len, 0.0f, relu, scratch)))               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_nhwc_train_grad_input_##SUFFIX(   \
        const T* x, const T* y, const T* dy, const float* save_mean, const float* save_invstd,    \
        const float* gamma, const float* part_dy, const float* part_dot, T* dx, float* dgamma,    \
        float* dbeta, int C, int tile, int n, int chunk_len, int relu) {                          \
        __shared__ float scratch[BN_NHWC_SCRATCH(T, 2)];                                           \
        BN_NHWC_VEC_OR_SCALAR(                                                                     \
            T, C, BN_ADDR(x) | BN_ADDR(y) | BN_ADDR(dy) | BN_ADDR(dx),                             \
            (bn_nhwc_train_grad_input_impl<T, NHWC_VEC(T)>(x, y, dy, save_mean, save_invstd,      \
                                                           gamma, part_dy, part_dot, dx, dgamma,   \
                                                           dbeta, C, tile, n, chunk_len, relu,     \
                                                           scratch)),                              \
            (bn_nhwc_train_grad_input_impl<T, 1>(x, y, dy, save_mean, save_invstd, gamma,         \
                                                 part_dy, part_dot, dx, dgamma, dbeta, C, tile, n, \
                                                 chunk_len, relu, scratch)))                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) bn_nhwc_infer_grad_reduce_##SUFFIX(  \
        const T* x, const T* y, const T* dy, const float* running_mean, const float* gamma,       \
        const float* running_var, T* dx, float* part_dy, float* part_dot, int C, int tile, int n, \
        int chunk_len, float eps, int relu) {                                                      \
        __shared__ float scratch[BN_NHWC_SCRATCH(T, 2)];                                           \
        BN_NHWC_VEC_OR_SCALAR(                                                                     \
            T, C, BN_ADDR(x) | BN_ADDR(y) | BN_ADDR(dy) | BN_ADDR(dx),                             \
            (bn_nhwc_grad_reduce_impl<T, NHWC_VEC(T), true>(x, y, dy, running_mean, gamma,        \
                                                            running_var, dx, part_dy, part_dot, C, \
                                                            tile, n, chunk_len, eps, relu,         \
                                                            scratch)),                             \
            (bn_nhwc_grad_reduce_impl<T, 1, true>(x, y, dy, running_mean, gamma, running_var, dx, \
                                                  part_dy, part_dot, C, tile, n, chunk_len, eps,   \
                                                  relu, scratch)))                                 \
    }

BN_ENTRY_POINTS(f32, float)
BN_ENTRY_POINTS(bf16, bf16_bits)
BN_NHWC_ENTRY_POINTS(f32, float)
BN_NHWC_ENTRY_POINTS(bf16, bf16_bits)
