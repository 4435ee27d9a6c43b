// Center loss, BENCH BASELINE ONLY (crates/c2f-baselines; kernels/center_loss.cu is the fused
// op): the same computation as separate, unfused kernels, one op each with f32 intermediates in
// global memory, the way a framework would run it:
//   segments -> gather c[y] -> (normalised rule: row sum of squares) -> diff -> row sum of
//   squares -> loss -> scale -> segmented update. Deterministic too (no float atomics). It assumes valid labels: an
// out-of-range label is skipped (never a wild access) but not reported. Not used in training.
#include "common.cuh"
#include "center_loss.cuh"

// first[i]: sample i is the first of its (valid) label; next[i]: the next sample with the same
// label, or -1. One thread per sample.
extern "C" __global__ void __launch_bounds__(CL_THREADS)
    center_loss_baseline_segments(const int* __restrict__ labels, int* __restrict__ first,
                              int* __restrict__ next, int B, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B) return;
    const int k = labels[i];
    int is_first = valid_label(k, C) ? 1 : 0;
    for (int t = 0; t < i && is_first; ++t) is_first = labels[t] != k;
    int nx = -1;
    for (int t = i + 1; t < B && nx < 0; ++t) nx = labels[t] == k ? t : -1;
    first[i] = is_first;
    next[i] = nx;
}

extern "C" __global__ void __launch_bounds__(CL_THREADS)
    center_loss_baseline_gather(const float* __restrict__ centers, const int* __restrict__ labels,
                            float* __restrict__ gathered, int B, int D, int C) {
    const long long n = (long long)B * D;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(e / D), d = (int)(e % D);
        const int k = labels[i];
        gathered[e] = valid_label(k, C) ? centers[(long long)k * D + d] : 0.0f;
    }
}

// One block per row.
extern "C" __global__ void __launch_bounds__(CL_THREADS)
    center_loss_baseline_row_sumsq(const float* __restrict__ rows, float* __restrict__ out, int D) {
    __shared__ float scratch[32];
    const float* r = rows + (long long)blockIdx.x * D;
    float s = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) s = fmaf(r[d], r[d], s);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

template <typename T>
__device__ void center_loss_baseline_diff_impl(const T* __restrict__ feat,
                                           const float* __restrict__ gathered,
                                           const float* __restrict__ center_sumsq,
                                           float* __restrict__ diff, int B, int D,
                                           int normalized) {
    const long long n = (long long)B * D;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(e / D);
        const float inv = normalized ? 1.0f / fmaxf(sqrtf(center_sumsq[i]), NORM_EPS) : 1.0f;
        diff[e] = load_f32(feat, e) - gathered[e] * inv;
    }
}

// One block: loss = scale * sum of the B row sums, in index order per thread.
extern "C" __global__ void __launch_bounds__(CL_THREADS)
    center_loss_baseline_loss(const float* __restrict__ row_sumsq, float* __restrict__ loss, int B,
                          float scale) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < B; i += blockDim.x) s += row_sumsq[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) loss[0] = s * scale;
}

template <typename T>
__device__ void center_loss_baseline_scale_impl(const float* __restrict__ diff, T* __restrict__ d_feat,
                                            long long n, float scale) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        store_f32(d_feat, e, scale * diff[e]);
    }
}

// One thread per (first sample of a label, d): walks the label's samples in index order. The
// paper's rule moves the center once per sample by its feature, diff + the gathered center.
extern "C" __global__ void __launch_bounds__(CL_THREADS)
    center_loss_baseline_update(float* __restrict__ centers, const int* __restrict__ labels,
                            const int* __restrict__ first, const int* __restrict__ next,
                            const float* __restrict__ diff, const float* __restrict__ gathered,
                            int B, int D, float beta, int normalized) {
    const long long n = (long long)B * D;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(e / D), d = (int)(e % D);
        if (!first[i]) continue;
        float* c = centers + (long long)labels[i] * D + d;
        float moved = normalized ? 0.0f : *c;
        for (int s = i; s >= 0; s = next[s]) {
            const long long at = (long long)s * D + d;
            moved = normalized ? moved + diff[at]
                               : fmaf(beta, diff[at] + gathered[at], (1.0f - beta) * moved);
        }
        *c = normalized ? fmaf(beta, moved, *c) : moved;
    }
}

#define CENTER_LOSS_UNFUSED_ENTRY_POINTS(SUFFIX, T)                                                \
    extern "C" __global__ void __launch_bounds__(CL_THREADS)                                       \
        center_loss_baseline_diff_##SUFFIX(const T* feat, const float* gathered,                       \
                                       const float* center_sumsq, float* diff, int B, int D,       \
                                       int normalized) {                                           \
        center_loss_baseline_diff_impl<T>(feat, gathered, center_sumsq, diff, B, D, normalized);       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(CL_THREADS)                                       \
        center_loss_baseline_scale_##SUFFIX(const float* diff, T* d_feat, long long n, float scale) {  \
        center_loss_baseline_scale_impl<T>(diff, d_feat, n, scale);                                    \
    }

CENTER_LOSS_UNFUSED_ENTRY_POINTS(f32, float)
CENTER_LOSS_UNFUSED_ENTRY_POINTS(bf16, bf16_bits)
