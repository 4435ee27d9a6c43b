// ReLU after the fine branch's attention conv, NCHW contiguous or any length; relu.rs documents
// the formulas. One thread per element. No float atomics: every result is the same bits on every
// run.
#include "common.cuh"

#define RELU_THREADS 256

// ReLU. Forward y = x < 0 ? 0 : x (NaN passes, as torch.relu); backward dx = y <= 0 ? 0 : dy
// (a select, as PyTorch's threshold_backward: a NaN y passes dy, a NaN dy under y <= 0 is 0).

template <typename T>
__device__ void relu_forward_impl(const T* __restrict__ x, T* __restrict__ y, int n) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)n) return;
    const float v = load_f32(x, t);
    store_f32(y, t, v < 0.0f ? 0.0f : v);
}

template <typename T>
__device__ void relu_backward_impl(const T* __restrict__ y, const T* __restrict__ dy,
                                   T* __restrict__ dx, int n) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)n) return;
    store_f32(dx, t, load_f32(y, t) <= 0.0f ? 0.0f : load_f32(dy, t));
}

#define RELU_ENTRY_POINTS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(RELU_THREADS)                                     \
        relu_forward_##SUFFIX(const T* x, T* y, int n) {                                           \
        relu_forward_impl<T>(x, y, n);                                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(RELU_THREADS)                                     \
        relu_backward_##SUFFIX(const T* y, const T* dy, T* dx, int n) {                            \
        relu_backward_impl<T>(y, dy, dx, n);                                                       \
    }

RELU_ENTRY_POINTS(f32, float)
RELU_ENTRY_POINTS(bf16, bf16_bits)
