// The center loss and its moving-average center update in one pass, under one of two rules
// (`normalized`, see crates/c2f-kernels/src/center_loss.rs):
//
// f [B, D] features (the normalised BAP output, storage T), y [B] labels (int), c [C, D] centers
// (always f32: a state accumulator, whatever T is).
//   normalized = 0, the paper's Eq. 2 and 3:
//     loss = (lambda/B) sum_i ||f_i - c_{y_i}||^2,  df_i = (2 lambda/B) (f_i - c_{y_i})
//     c_y  = (1 - beta) c_y + beta f_i               (once per sample, in batch order)
//   normalized = 1, the WS-DAN reimplementations':
//     chat_k = c_k / max(||c_k||, 1e-12)             (a zero center stays zero)
//     loss and df as above against chat,  c_k += beta sum_{i: y_i = k} (f_i - chat_k)
// The loss is always taken against the centers before the update.
//
// Fused path, two kernels over a grid (D chunks of CL_CHUNK, B). Only the block of the FIRST
// sample of each label does work, so each center chunk is read and written by exactly one block:
//   center_loss_center_sumsq: records the smallest bad-label index (an int atomicMax) and never
//     reads a center for a bad label; with `normalized`, partial ||c_k||^2 per chunk.
//   center_loss_update: with `normalized`, ||c_k|| from the partials in a fixed order; then for
//     every sample of the label in index order writes df and moves the center in registers;
//     writes c_k once. Skips every write when a bad label was recorded. The last block to finish
//     (int counter) sums the loss partials in a fixed order, writes the result triple (and the
//     loss to `out[0]` where `out` is not null: the trainer's step stats, which stay on the
//     device) and resets the status for the next call.
// The loss weight enters as two scales read from a device slot, scales = [2 lambda/B, lambda/B]
// (lambda warms up over the epochs), so that a captured step replays with the scales the host
// wrote before each replay. No float atomics anywhere: the same bits on every run.
#include "common.cuh"

#include "center_loss.cuh"

// Must match `CHUNK` in center_loss.rs: CL_THREADS threads x 4 elements per block.
#define CL_PER_THREAD 4
#define CL_CHUNK (CL_THREADS * CL_PER_THREAD)

// state[] layout (int, zeroed at allocation, reset by the update kernel's last block):
//   [0] status: 0 ok, else B - (smallest bad-label index)   [1] finished update blocks
//   [2] loss bits (f32)   [3] status copied for the host   [4] the bad label
#define ST_STATUS 0
#define ST_COUNTER 1
#define ST_LOSS 2
#define ST_BAD 3
#define ST_LABEL 4

// True when no sample before i has label k. Every thread of the block must call it.
__device__ __forceinline__ bool first_occurrence(const int* labels, int i, int k) {
    int seen = 0;
    for (int t = threadIdx.x; t < i; t += blockDim.x) seen |= labels[t] == k;
    return !__syncthreads_or(seen);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS)
    center_loss_center_sumsq(const float* __restrict__ centers, const int* __restrict__ labels,
                             float* __restrict__ sumsq, int* state, int B, int D, int C,
                             int normalized) {
    __shared__ float scratch[32];
    const int i = blockIdx.y, j = blockIdx.x;
    const int k = labels[i];
    if (!valid_label(k, C)) {
        if (j == 0 && threadIdx.x == 0) atomicMax(&state[ST_STATUS], B - i);
        return;
    }
    if (!normalized || !first_occurrence(labels, i, k)) return;
    const float* c = centers + (long long)k * D;
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < CL_PER_THREAD; ++u) {
        const int d = j * CL_CHUNK + u * CL_THREADS + threadIdx.x;
        if (d < D) {
            const float v = c[d];
            s = fmaf(v, v, s);
        }
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) sumsq[(long long)i * gridDim.x + j] = s;
}

template <typename T>
__device__ void center_loss_update_impl(const T* __restrict__ feat, const int* __restrict__ labels,
                                        float* __restrict__ centers, const float* __restrict__ sumsq,
                                        T* __restrict__ d_feat, float* __restrict__ loss_parts,
                                        int* state, float* __restrict__ out, int B, int D,
                                        const float* __restrict__ scales, float beta,
                                        int normalized) {
    const float grad_scale = scales[0], loss_scale = scales[1];
    extern __shared__ int lab[];  // B labels
    __shared__ float scratch[32];
    __shared__ float inv_norm;
    __shared__ int is_last;
    const int i = blockIdx.y, j = blockIdx.x, chunks = gridDim.x;
    // Set by the previous kernel; only the last block of this one resets it, after every block
    // has read it, so the whole grid sees one value.
    const int bad = *(volatile int*)&state[ST_STATUS];
    for (int t = threadIdx.x; t < B; t += blockDim.x) lab[t] = labels[t];
    __syncthreads();
    const int k = lab[i];
    float part = 0.0f;
    if (bad == 0 && first_occurrence(lab, i, k)) {
        // `normalized` is the same for the whole grid, so the barrier is reached by all or none.
        if (normalized) {
            if (threadIdx.x == 0) {
                float total = 0.0f;
                for (int t = 0; t < chunks; ++t) total += sumsq[(long long)i * chunks + t];
                inv_norm = 1.0f / fmaxf(sqrtf(total), NORM_EPS);
            }
            __syncthreads();
        }
        const float inv = normalized ? inv_norm : 1.0f;
        const float keep = 1.0f - beta;
        float* c = centers + (long long)k * D;
        // target: what the loss is taken against; moved: the center as the samples move it (the
        // paper's rule), or the sum of (f - chat) (the normalised rule).
        float raw[CL_PER_THREAD], target[CL_PER_THREAD], moved[CL_PER_THREAD];
#pragma unroll
        for (int u = 0; u < CL_PER_THREAD; ++u) {
            const int d = j * CL_CHUNK + u * CL_THREADS + threadIdx.x;
            raw[u] = d < D ? c[d] : 0.0f;
            target[u] = normalized ? raw[u] * inv : raw[u];
            moved[u] = normalized ? 0.0f : raw[u];
        }
        float sq = 0.0f;
        for (int s = i; s < B; ++s) {
            if (lab[s] != k) continue;
            const long long row = (long long)s * D;
#pragma unroll
            for (int u = 0; u < CL_PER_THREAD; ++u) {
                const int d = j * CL_CHUNK + u * CL_THREADS + threadIdx.x;
                if (d < D) {
                    const float f = load_f32(feat, row + d);
                    const float diff = f - target[u];
                    store_f32(d_feat, row + d, grad_scale * diff);
                    moved[u] = normalized ? moved[u] + diff : fmaf(beta, f, keep * moved[u]);
                    sq = fmaf(diff, diff, sq);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < CL_PER_THREAD; ++u) {
            const int d = j * CL_CHUNK + u * CL_THREADS + threadIdx.x;
            if (d < D) c[d] = normalized ? fmaf(beta, moved[u], raw[u]) : moved[u];
        }
        part = block_sum(sq, scratch);
    }
    if (threadIdx.x == 0) {
        if (bad == 0) loss_parts[(long long)i * chunks + j] = part;
        __threadfence();
        is_last = atomicAdd(&state[ST_COUNTER], 1) == chunks * B - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    float total = 0.0f;
    if (bad == 0) {
        for (int t = threadIdx.x; t < chunks * B; t += blockDim.x) total += __ldcg(&loss_parts[t]);
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) {
        const float loss = bad == 0 ? total * loss_scale : __int_as_float(0x7fc00000);  // NaN
        if (out != nullptr) out[0] = loss;
        state[ST_LOSS] = __float_as_int(loss);
        state[ST_BAD] = bad;
        state[ST_LABEL] = bad == 0 ? 0 : lab[B - bad];
        state[ST_STATUS] = 0;
        state[ST_COUNTER] = 0;
    }
}

#define CENTER_LOSS_ENTRY_POINTS(SUFFIX, T)                                                         \
    extern "C" __global__ void __launch_bounds__(CL_THREADS)                                       \
        center_loss_update_##SUFFIX(const T* feat, const int* labels, float* centers,              \
                                    const float* sumsq, T* d_feat, float* loss_parts, int* state,  \
                                    float* out, int B, int D, const float* scales, float beta,     \
                                    int normalized) {                                              \
        center_loss_update_impl<T>(feat, labels, centers, sumsq, d_feat, loss_parts, state, out,   \
                                   B, D, scales, beta, normalized);                                \
    }

CENTER_LOSS_ENTRY_POINTS(f32, float)
CENTER_LOSS_ENTRY_POINTS(bf16, bf16_bits)
