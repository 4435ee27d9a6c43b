// The channel copy behind the InceptionV3 runtime's concat and split (concat.rs), NCHW
// contiguous: grid (chunks, N), a plain copy of each sample's contiguous run of channels.
#include "common.cuh"

// dst[n * dst_stride + dst_offset + r] = src[n * src_stride + src_offset + r] for r < chunk;
// sample n = blockIdx.y. A bit copy, no conversion.
template <typename T>
__device__ void channel_copy_impl(const T* __restrict__ src, T* __restrict__ dst, int chunk,
                                  int src_stride, int src_offset, int dst_stride, int dst_offset) {
    const unsigned int t = thread_index();
    if (t >= (unsigned int)chunk) return;
    const long long n = blockIdx.y;
    dst[n * dst_stride + dst_offset + t] = src[n * src_stride + src_offset + t];
}

#define CONCAT_ENTRY_POINTS(SUFFIX, T)                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                              \
        channel_copy_##SUFFIX(const T* src, T* dst, int chunk, int src_stride, int src_offset,     \
                              int dst_stride, int dst_offset) {                                    \
        channel_copy_impl<T>(src, dst, chunk, src_stride, src_offset, dst_stride, dst_offset);     \
    }

CONCAT_ENTRY_POINTS(f32, float)
CONCAT_ENTRY_POINTS(bf16, bf16_bits)
