// SGD with momentum and weight decay over a flat f32 parameter buffer (torch.optim.SGD with
// dampening 0, no Nesterov):
//   d = grad_scale g + weight_decay p
//   buf = momentum buf + d      (momentum > 0; buf starts at zero)
//   p  -= lr buf                (momentum = 0: p -= lr d, buf is not touched)
// `sgd_step_bf16_copy` also writes the bf16 working copy of the new weights in the same pass (the
// bf16 step's convolutions take bf16 weights), with the same f32 results as `sgd_step`.
// One grid-stride kernel, float4 loads and stores when all buffers are aligned (the scalar tail
// after the last full float4), scalar otherwise. Element-wise: the same bits on every run. The
// learning rate is read from a device slot (one per parameter group), so that a step captured
// into a CUDA graph replays with the rate the host wrote before each replay.
#include "common.cuh"

#define SGD_THREADS 256

struct SgdArgs {
    float lr, momentum, weight_decay, grad_scale;
};

__device__ __forceinline__ void sgd_one(float& p, float g, float& buf, const SgdArgs& a) {
    const float d = fmaf(a.weight_decay, p, a.grad_scale * g);
    if (a.momentum != 0.0f) {
        buf = fmaf(a.momentum, buf, d);
        p = fmaf(-a.lr, buf, p);
    } else {
        p = fmaf(-a.lr, d, p);
    }
}

// One step over n elements; with COPY, also copy[i] = bf16(new p[i]) (round to nearest even)
// in the same pass, the bf16 working copy of the bf16 step. The f32 results do not depend on
// COPY. The float4 path needs params, grads and momentum_buf 16-byte aligned and copy 8-byte
// aligned (four bf16).
template <bool COPY>
__device__ __forceinline__ void sgd_run(float* __restrict__ params,
                                        const float* __restrict__ grads,
                                        float* __restrict__ momentum_buf,
                                        bf16_bits* __restrict__ copy, long long n,
                                        const SgdArgs& a) {
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const unsigned long long addr_bits = (unsigned long long)params |
                                         (unsigned long long)grads |
                                         (unsigned long long)momentum_buf;
    const bool copy_aligned = !COPY || (((unsigned long long)copy) & 7ull) == 0;
    long long scalar_from = 0;
    if ((addr_bits & 15ull) == 0 && copy_aligned) {
        const long long quads = n >> 2;
        float4* p4 = reinterpret_cast<float4*>(params);
        const float4* g4 = reinterpret_cast<const float4*>(grads);
        float4* b4 = reinterpret_cast<float4*>(momentum_buf);
        for (long long q = start; q < quads; q += stride) {
            float4 p = p4[q];
            const float4 g = g4[q];
            float4 b = a.momentum != 0.0f ? b4[q] : float4{0.0f, 0.0f, 0.0f, 0.0f};
            sgd_one(p.x, g.x, b.x, a);
            sgd_one(p.y, g.y, b.y, a);
            sgd_one(p.z, g.z, b.z, a);
            sgd_one(p.w, g.w, b.w, a);
            p4[q] = p;
            if (a.momentum != 0.0f) b4[q] = b;
            if constexpr (COPY) {
                // The four bf16 in one 8-byte store, the first at the lowest address.
                reinterpret_cast<unsigned long long*>(copy)[q] =
                    bf16x2_bits(p.x, p.y) |
                    ((unsigned long long)bf16x2_bits(p.z, p.w) << 32);
            }
        }
        scalar_from = quads << 2;
    }
    for (long long i = scalar_from + start; i < n; i += stride) {
        float p = params[i], buf = a.momentum != 0.0f ? momentum_buf[i] : 0.0f;
        sgd_one(p, grads[i], buf, a);
        params[i] = p;
        if (a.momentum != 0.0f) momentum_buf[i] = buf;
        if constexpr (COPY) copy[i] = f32_to_bf16(p);
    }
}

extern "C" __global__ void __launch_bounds__(SGD_THREADS)
    sgd_step(float* __restrict__ params, const float* __restrict__ grads,
             float* __restrict__ momentum_buf, long long n, const float* __restrict__ lr,
             float momentum, float weight_decay, float grad_scale) {
    const SgdArgs a = {*lr, momentum, weight_decay, grad_scale};
    sgd_run<false>(params, grads, momentum_buf, nullptr, n, a);
}

extern "C" __global__ void __launch_bounds__(SGD_THREADS)
    sgd_step_bf16_copy(float* __restrict__ params, const float* __restrict__ grads,
                       float* __restrict__ momentum_buf, bf16_bits* __restrict__ copy,
                       long long n, const float* __restrict__ lr, float momentum,
                       float weight_decay, float grad_scale) {
    const SgdArgs a = {*lr, momentum, weight_decay, grad_scale};
    sgd_run<true>(params, grads, momentum_buf, copy, n, a);
}
