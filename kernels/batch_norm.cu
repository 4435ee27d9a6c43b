// Batch norm over NCHW (PyTorch BatchNorm2d) with an optional fused ReLU, training and inference
// modes, forward and backward.
//
// x [N, C, H, W] in T; gamma, beta, running stats, saved stats and parameter gradients in f32.
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
#include "common.cuh"

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
template <typename T>
__device__ __forceinline__ float masked_grad(const T* y, const T* dy, long long i, int relu) {
    const float g = load_f32(dy, i);
    return relu && load_f32(y, i) <= 0.0f ? 0.0f : g;
}

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
            if (u < cnt) store_f32(y, at[u], bn_act(fmaf(v[u] - mean, scale, shift), relu));
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
        const float invstd = 1.0f / sqrtf(acc.m2 / (float)n + eps);
        stats[0] = acc.mean;
        stats[1] = invstd;
        if (k == 0) {
            save_mean[c] = acc.mean;
            save_invstd[c] = invstd;
            running_mean[c] = momentum * acc.mean + (1.0f - momentum) * running_mean[c];
            running_var[c] = momentum * (acc.m2 / (float)(n - 1)) + (1.0f - momentum) * running_var[c];
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
    const float inv_n = 1.0f / (float)n;
    const float mean_g = sum_g * inv_n, proj = dot * inv_n * invstd * invstd;
    const float scale = invstd * gamma[c];
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
            if (u < cnt) store_f32(dx, at[u], (gv[u] - (xv[u] - m) * proj - mean_g) * scale);
        }
    }
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

BN_ENTRY_POINTS(f32, float)
BN_ENTRY_POINTS(bf16, bf16_bits)
