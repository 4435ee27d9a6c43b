// Kernels for tests/kernels/cuda_emulator.rs, which checks that the emulator computes what a GPU would
// and refuses or reports what a GPU would refuse or corrupt. Built into the emulator only.
#include "common.cuh"

// y[i] = 2 x[i].
extern "C" __global__ void emu_selftest_double(const float* x, float* y, int n) {
    const unsigned int i = thread_index();
    if (i < (unsigned int)n) y[i] = 2.0f * x[i];
}

// One sum per block of x[block * blockDim.x ...], through block_sum's shuffles and barriers.
extern "C" __global__ void emu_selftest_block_sum(const float* x, float* sums) {
    __shared__ float scratch[32];
    const float total = block_sum(x[thread_index()], scratch);
    if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// Writes y[n], one element past the end.
extern "C" __global__ void emu_selftest_write_past_end(float* y, int n) {
    const unsigned int i = thread_index();
    if (i <= (unsigned int)n) y[i] = 1.0f;
}

// Odd lanes exit before a shuffle that names them.
extern "C" __global__ void emu_selftest_shuffle_after_exit(float* y) {
    if (threadIdx.x % 2 == 1) return;
    y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 2);
}

// Half of one warp waits at __syncthreads while the other half waits at a shuffle: a deadlock.
extern "C" __global__ void emu_selftest_warp_split(float* y) {
    float v = 1.0f;
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    y[threadIdx.x] = v;
}

extern "C" __global__ void __launch_bounds__(64) emu_selftest_bounded(float* y) {
    y[thread_index()] = 1.0f;
}

// Each thread reads its neighbour's shared slot with no barrier after the writes: a race.
extern "C" __global__ void emu_selftest_shared_race(float* y) {
    __shared__ float slots[64];
    slots[threadIdx.x] = (float)(threadIdx.x + 1000 * blockIdx.x);
    y[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// Reads 256 bytes past the end of x: beyond the guard bytes, into the page that faults.
extern "C" __global__ void emu_selftest_read_past_end(const float* x, float* y, int n) {
    y[0] = x[n + 64];
}

// A float4 load from x + 1, 4 bytes past a 16-byte boundary.
extern "C" __global__ void emu_selftest_misaligned(const float* x, float* y, int) {
    const float4 v = *reinterpret_cast<const float4*>(x + 1);
    y[0] = v.x;
}
