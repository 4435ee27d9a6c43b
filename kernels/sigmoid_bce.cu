// Sigmoid binary cross-entropy for multi-label heads (PyTorch
// F.binary_cross_entropy_with_logits, mean reduction over every element).
//
// Logits x [B, A] in T, targets t [B, A] in T (0 or 1, or soft targets in [0, 1]):
//   l[b,a]  = max(x, 0) - x t + log1p(exp(-|x|))        (stable for any x)
//   row[b]  = (sum_a l[b,a]) / A
//   loss    = (sum_b row[b]) / B
//   dx[b,a] = coef (sigmoid(x) - t),  coef = loss_scale / (B A)   (assigned)
//   pred[b,a] = x > 0 (0 or 1; NaN gives 0)
// sigmoid_bce_forward_backward: one block per sample; the row mean goes to row_loss[b], the
// number of answers equal to their target to row_correct[b].
// sigmoid_bce_finish: one block sums row_loss and row_correct in a fixed order and writes the
// loss to result[0], and where `out` is not null [loss, correct answers] there (the trainer's
// step stats, which stay on the device). No float atomics: the same bits on every run.
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
                                      float* __restrict__ row_loss,
                                      float* __restrict__ row_correct, int A, float coef) {
    __shared__ float scratch[32];
    const long long row = (long long)blockIdx.x * A;
    float sum = 0.0f;
    float correct = 0.0f;  // a count: exact in f32 below 2^24
    for (int a = threadIdx.x; a < A; a += blockDim.x) {
        const float x = load_f32(logits, row + a);
        const float t = load_f32(targets, row + a);
        sum += fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
        const int pred = x > 0.0f ? 1 : 0;
        predictions[row + a] = pred;
        correct += (float)pred == t ? 1.0f : 0.0f;
        store_f32(dlogits, row + a, coef * (stable_sigmoid(x) - t));
    }
    sum = block_sum(sum, scratch);
    correct = block_sum(correct, scratch);
    if (threadIdx.x == 0) {
        row_loss[blockIdx.x] = sum / (float)A;
        row_correct[blockIdx.x] = correct;
    }
}

extern "C" __global__ void __launch_bounds__(BCE_THREADS)
    sigmoid_bce_finish(const float* __restrict__ row_loss, const float* __restrict__ row_correct,
                       float* __restrict__ result, float* __restrict__ out, int B) {
    __shared__ float scratch[32];
    float total = 0.0f;
    float correct = 0.0f;
    for (int i = threadIdx.x; i < B; i += blockDim.x) {
        total += row_loss[i];
        correct += row_correct[i];
    }
    total = block_sum(total, scratch);
    correct = block_sum(correct, scratch);
    if (threadIdx.x == 0) {
        result[0] = total / (float)B;
        if (out != nullptr) {
            out[0] = total / (float)B;
            out[1] = correct;
        }
    }
}

#define SIGMOID_BCE_ENTRY_POINTS(SUFFIX, T)                                                        \
    extern "C" __global__ void __launch_bounds__(BCE_THREADS)                                      \
        sigmoid_bce_forward_backward_##SUFFIX(const T* logits, const T* targets, T* dlogits,       \
                                              int* predictions, float* row_loss,                   \
                                              float* row_correct, int A, float coef) {             \
        sigmoid_bce_rows_impl<T>(logits, targets, dlogits, predictions, row_loss, row_correct, A,  \
                                 coef);                                                            \
    }

SIGMOID_BCE_ENTRY_POINTS(f32, float)
SIGMOID_BCE_ENTRY_POINTS(bf16, bf16_bits)
