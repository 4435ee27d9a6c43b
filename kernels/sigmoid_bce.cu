// Sigmoid binary cross-entropy for multi-label heads (PyTorch
// F.binary_cross_entropy_with_logits, mean reduction over every element).
//
// Logits x [B, A] in T, targets t [B, A] in T (0 or 1, or soft targets in [0, 1]):
//   l[b,a]  = max(x, 0) - x t + log1p(exp(-|x|))        (stable for any x)
//   row[b]  = (sum_a l[b,a]) / A
//   loss    = (sum_b row[b]) / B
//   dx[b,a] = coef (sigmoid(x) - t),  coef = loss_scale / (B A)   (assigned)
//   pred[b,a] = x > 0 (0 or 1; NaN gives 0)
// sigmoid_bce_forward_backward: one block per sample; the row mean goes to row_loss[b].
// sigmoid_bce_finish: one block sums row_loss in a fixed order and writes the loss bits to
// result[0]. No float atomics: the same bits on every run.
#include "common.cuh"

#define BCE_THREADS 128

__device__ __forceinline__ float stable_sigmoid(float x) {
    const float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// grid (B), BCE_THREADS threads.
template <typename T>
__device__ void sigmoid_bce_rows_impl(const T* __restrict__ logits, const T* __restrict__ targets,
                                      T* __restrict__ dlogits, int* __restrict__ predictions,
                                      float* __restrict__ row_loss, int A, float coef) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * A;
    float sum = 0.0f;
    for (int a = threadIdx.x; a < A; a += blockDim.x) {
        const float x = load_f32(logits, row + a);
        const float t = load_f32(targets, row + a);
        sum += fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
        predictions[row + a] = x > 0.0f ? 1 : 0;
        store_f32(dlogits, row + a, coef * (stable_sigmoid(x) - t));
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) row_loss[blockIdx.x] = sum / (float)A;
}

extern "C" __global__ void __launch_bounds__(BCE_THREADS)
    sigmoid_bce_finish(const float* __restrict__ row_loss, float* __restrict__ result, int B) {
    __shared__ float scratch[32];
    float total = 0.0f;
    for (int i = threadIdx.x; i < B; i += blockDim.x) total += row_loss[i];
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) result[0] = total / (float)B;
}

#define SIGMOID_BCE_ENTRY_POINTS(SUFFIX, T)                                                        \
    extern "C" __global__ void __launch_bounds__(BCE_THREADS)                                      \
        sigmoid_bce_forward_backward_##SUFFIX(const T* logits, const T* targets, T* dlogits,       \
                                              int* predictions, float* row_loss, int A,            \
                                              float coef) {                                        \
        sigmoid_bce_rows_impl<T>(logits, targets, dlogits, predictions, row_loss, A, coef);        \
    }

SIGMOID_BCE_ENTRY_POINTS(f32, float)
SIGMOID_BCE_ENTRY_POINTS(bf16, bf16_bits)
