// Dropout (PyTorch F.dropout) in training: out = in * f_i with f_i = scale if the element is kept,
// else 0, so forward (x -> y) and backward (dy -> dx) are the same kernel.
// keep_i = (mix(key + (i+1) GAMMA) >> 40) >= threshold, key = mix(seed + (step+1) GAMMA), with
// seed and threshold = ceil(p 2^24) from the host and step read from a device slot (two 32-bit
// words, low first), so that a captured step replays with the step the host wrote before each
// replay (dropout.rs documents the formula). Every result is the same bits on every run.
#include "common.cuh"

#define DROPOUT_THREADS 256

// splitmix64's output function (the finaliser of testing::SplitMix64::next_u64).
__device__ __forceinline__ unsigned long long splitmix64_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull

// Grid-stride over n elements: out[i] = in[i] * (keep_i ? scale : 0).
template <typename T>
__device__ void dropout_apply_impl(const T* __restrict__ in, T* __restrict__ out, long long n,
                                   unsigned long long seed, const unsigned int* step_words,
                                   unsigned int threshold, float scale) {
    const unsigned long long step =
        (unsigned long long)step_words[0] | ((unsigned long long)step_words[1] << 32);
    const unsigned long long key = splitmix64_mix(seed + (step + 1ull) * SPLITMIX64_GAMMA);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const unsigned long long u =
            splitmix64_mix(key + ((unsigned long long)i + 1ull) * SPLITMIX64_GAMMA);
        const float f = (unsigned int)(u >> 40) >= threshold ? scale : 0.0f;
        store_f32(out, i, load_f32(in, i) * f);
    }
}

#define DROPOUT_ENTRY_POINTS(SUFFIX, T)                                                            \
    extern "C" __global__ void __launch_bounds__(DROPOUT_THREADS)                                  \
        dropout_apply_##SUFFIX(const T* in, T* out, long long n, unsigned long long seed,          \
                               const unsigned int* step, unsigned int threshold, float scale) {    \
        dropout_apply_impl<T>(in, out, n, seed, step, threshold, scale);                           \
    }

DROPOUT_ENTRY_POINTS(f32, float)
DROPOUT_ENTRY_POINTS(bf16, bf16_bits)
