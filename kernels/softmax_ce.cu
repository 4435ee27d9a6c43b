// Softmax cross-entropy (PyTorch F.cross_entropy, mean reduction).
//
// Cross-entropy: logits [B, C] in T, labels [B] int.
//   m_b = max_j x[b,j]   s_b = sum_j exp(x[b,j] - m_b)   p[b,j] = exp(x[b,j] - m_b) / s_b
//   loss = (1/B) sum_b -((x[b,y_b] - m_b) - log s_b)
//   dx[b,j] = coef (p[b,j] - [j == y_b]),  coef = loss_scale / B   (assigned)
//   pred[b] = argmax_j x[b,j], ties to the first index, NaN above everything (torch.argmax)
// softmax_ce_rows: one block per sample (max/argmax, then the sum, then the gradient), writes the
// row's loss to row_loss[b] and whether its prediction is its label to row_correct[b]; a bad label is recorded as B - b with an int atomicMax (so the
// smallest bad index wins) and its x[b, y_b] is never read. softmax_ce_finish: one block sums
// row_loss and row_correct in a fixed order, writes the result triple, and where `out` is not
// null [loss, correct count] as floats there (NaN loss after a bad label: the trainer's step
// stats, which stay on the device), then resets the status for the next call.
//
// No float atomics anywhere: the same bits on every run.
#include "common.cuh"

#define CE_THREADS 256

// state[] layout (int, zeroed at allocation, reset by softmax_ce_finish):
//   [0] status: 0 ok, else B - (smallest bad-label index)
//   [1] loss bits (f32)   [2] status copied for the host   [3] the bad label
#define CE_STATUS 0
#define CE_LOSS 1
#define CE_BAD 2
#define CE_LABEL 3

#define CE_NAN_BITS 0x7fc00000

// grid (B), CE_THREADS threads. With GRAD false, dlogits is not touched (evaluation).
template <typename T, bool GRAD>
__device__ void softmax_ce_rows_impl(const T* __restrict__ logits, const int* __restrict__ labels,
                                     T* __restrict__ dlogits, int* __restrict__ predictions,
                                     float* __restrict__ row_loss, int* __restrict__ row_correct,
                                     int* state, int B, int C, float coef) {
    __shared__ float scratch[32];
    __shared__ float arg_v[32];
    __shared__ int arg_i[32];
    const int b = blockIdx.x;
    const long long row = (long long)b * C;
    const T* x = logits + row;
    const int label = labels[b];
    const bool valid = label >= 0 && label < C;

    float best = ARGMAX_NEG_INF;
    int best_i = ARGMAX_NO_INDEX;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float v = load_f32(x, j);
        if (argmax_better(v, j, best, best_i)) {
            best = v;
            best_i = j;
        }
    }
    block_argmax(best, best_i, arg_v, arg_i);
    const float mx = best;

    float sum = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) sum += expf(load_f32(x, j) - mx);
    sum = block_sum(sum, scratch);

    if (threadIdx.x == 0) {
        predictions[b] = best_i;
        row_correct[b] = valid && best_i == label ? 1 : 0;
        if (valid) {
            row_loss[b] = -((load_f32(x, label) - mx) - logf(sum));
        } else {
            row_loss[b] = __int_as_float(CE_NAN_BITS);
            atomicMax(&state[CE_STATUS], B - b);
        }
    }
    if constexpr (GRAD) {
        // A bad label gets no one-hot term: the row is unspecified but nothing is written out of
        // bounds.
        const float inv = 1.0f / sum;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            const float p = expf(load_f32(x, j) - mx) * inv;
            store_f32(dlogits, row + j, coef * (j == label ? p - 1.0f : p));
        }
    }
}

extern "C" __global__ void __launch_bounds__(CE_THREADS)
    softmax_ce_finish(const float* __restrict__ row_loss, const int* __restrict__ row_correct,
                      const int* __restrict__ labels, int* state, float* __restrict__ out, int B) {
    __shared__ float scratch[32];
    // Every thread reads the status before block_sum's barrier; thread 0 resets it after.
    const int bad = *(volatile int*)&state[CE_STATUS];
    float total = 0.0f;
    float correct = 0.0f;  // a count: exact in f32 below 2^24
    if (bad == 0) {
        for (int i = threadIdx.x; i < B; i += blockDim.x) total += row_loss[i];
    }
    for (int i = threadIdx.x; i < B; i += blockDim.x) correct += (float)row_correct[i];
    total = block_sum(total, scratch);
    correct = block_sum(correct, scratch);
    if (threadIdx.x == 0) {
        const float loss = bad == 0 ? total / (float)B : __int_as_float(CE_NAN_BITS);
        if (out != nullptr) {
            out[0] = loss;
            out[1] = correct;
        }
        state[CE_LOSS] = __float_as_int(loss);
        state[CE_BAD] = bad;
        state[CE_LABEL] = bad == 0 ? 0 : labels[B - bad];
        state[CE_STATUS] = 0;
    }
}

#define SOFTMAX_CE_ENTRY_POINTS(SUFFIX, T)                                                          \
    extern "C" __global__ void __launch_bounds__(CE_THREADS)                                       \
        softmax_ce_forward_backward_##SUFFIX(const T* logits, const int* labels, T* dlogits,       \
                                             int* predictions, float* row_loss, int* row_correct,  \
                                             int* state, int B, int C, float coef) {               \
        softmax_ce_rows_impl<T, true>(logits, labels, dlogits, predictions, row_loss, row_correct, \
                                      state, B, C, coef);                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(CE_THREADS)                                       \
        softmax_ce_forward_##SUFFIX(const T* logits, const int* labels, int* predictions,          \
                                    float* row_loss, int* row_correct, int* state, int B, int C) { \
        softmax_ce_rows_impl<T, false>(logits, labels, nullptr, predictions, row_loss,             \
                                       row_correct, state, B, C, 0.0f);                            \
    }

SOFTMAX_CE_ENTRY_POINTS(f32, float)
SOFTMAX_CE_ENTRY_POINTS(bf16, bf16_bits)
