// The CUDA device-side names that kernels/*.cu use, for compiling them as host C++ so the
// emulator (driver.cpp) can run them on the CPU. Force-included before each kernel file.
//
// Execution model (driver.cpp): the blocks of a launch run one after another; the threads of a
// block are fibers on one OS thread, switched only at __syncthreads and warp shuffles. So a
// `static` is the block's shared memory, and threadIdx is a global the scheduler sets before it
// resumes a fiber.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#ifdef EMU_SCAN
// build.py preprocesses each file with this to read each kernel's launch bounds.
#define __launch_bounds__(...) __emu_launch_bounds__(__VA_ARGS__)
#else
#define __launch_bounds__(...)
#endif
#define __shared__ static

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

namespace emu {
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;
// Dynamic shared memory (`extern __shared__ T name[]` is rewritten to point here).
extern unsigned char dynamic_shared[];

void block_barrier();
int block_barrier_or(int predicate);
// Every lane of the warp posts 4 bytes, then reads lane `source`'s.
uint32_t warp_exchange(unsigned int mask, uint32_t value, int source_lane_or_self);
int lane_id();

template <typename T>
uint32_t to_bits(T v) {
    static_assert(sizeof(T) == 4, "the emulator shuffles 4-byte values only");
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return u;
}
template <typename T>
T from_bits(uint32_t u) {
    T v;
    std::memcpy(&v, &u, 4);
    return v;
}
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::block_barrier(); }
inline int __syncthreads_or(int predicate) { return emu::block_barrier_or(predicate); }
// Blocks run one at a time, in order, so every write is already visible to the next block.
inline void __threadfence() {}

template <typename T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask) {
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), emu::lane_id() ^ lane_mask));
}
template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta) {
    const int source = emu::lane_id() + (int)delta;
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), source < 32 ? source : -1));
}

template <typename T>
T __ldcg(const T* p) {
    return *p;
}

inline int atomicAdd(int* p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}
inline int atomicMax(int* p, int v) {
    const int old = *p;
    if (v > old) *p = v;
    return old;
}

inline float __int_as_float(int v) { return emu::from_bits<float>((uint32_t)v); }
inline int __float_as_int(float v) { return (int)emu::to_bits(v); }
inline float __uint_as_float(unsigned int v) { return emu::from_bits<float>(v); }
inline unsigned int __float_as_uint(float v) { return emu::to_bits(v); }
// Compiled with -ffp-contract=off, so these are single roundings as on the GPU.
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdividef(float a, float b) { return a / b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
