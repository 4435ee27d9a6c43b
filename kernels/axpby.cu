// y = alpha x + beta y, element-wise: scaling (beta = 0), accumulating gradients (beta = 1).
// beta = 0 assigns without reading y, so y may hold anything (NaN poison included) before.
#include "common.cuh"

#define AXPBY_THREADS 256

template <typename T>
__device__ void axpby_impl(const T* __restrict__ x, T* __restrict__ y, long long n, float alpha,
                           float beta) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float ax = alpha * load_f32(x, i);
        store_f32(y, i, beta == 0.0f ? ax : fmaf(beta, load_f32(y, i), ax));
    }
}

#define AXPBY_ENTRY_POINTS(SUFFIX, T)                                                              \
    extern "C" __global__ void __launch_bounds__(AXPBY_THREADS)                                    \
        axpby_##SUFFIX(const T* x, T* y, long long n, float alpha, float beta) {                   \
        axpby_impl<T>(x, y, n, alpha, beta);                                                       \
    }

AXPBY_ENTRY_POINTS(f32, float)
AXPBY_ENTRY_POINTS(bf16, bf16_bits)
