// Batched 2-D transpose with a type conversion: for x[batch][rows][cols] (row-major),
//   y[b][c][r] = Out(x[b][r][c])                       (transpose_IN_OUT)
//   y[b][c][r] = Out(float(y[b][c][r]) + float(x[b][r][c]))  (transpose_accumulate_IN_OUT)
// IN, OUT ∈ {f32, bf16}. NCHW -> NHWC is rows = C, cols = H·W; NHWC -> NCHW the other way round;
// a convolution's weights KCRS -> KRSC are batch = K, rows = C, cols = R·S.
// The conversions are those of cast.cu: bf16 -> f32 exact (a NaN's payload kept), f32 -> bf16
// rounded to nearest even with NaN quieted, and the sum one f32 addition rounded once. A
// same-type copy moves the bits unchanged, so the results are the CPU reference's bits (a NaN
// sum's payload aside, which the hardware picks).
//
// One block per TR x TC tile of one matrix (TR, TC powers of two up to 256, TR·TC from 256 to
// 4096, chosen by the launcher): the block reads the tile's rows into shared memory (a warp
// reads consecutive columns of x) and writes its columns out (a warp writes consecutive rows of
// y), so both sides are coalesced whatever the shape; bf16 sits in the tile widened to f32,
// which is exact. A side shorter than 64 gets a tile that narrow and that much longer the other
// way (NHWC with C = 3, weights with R·S = 1), so few threads idle. Grid: x over the tiles of
// one matrix (row tile · col tiles + col tile: no 65,535 limit), y and z over the batch (z
// counts groups of gridDim.y matrices, for a batch past 65,535). No loop over matrices: one
// would keep every tile address live across it (over 100 registers).
#include "common.cuh"

#define TRANSPOSE_THREADS 256
// Elements per thread of the largest tile (4096 / 256).
#define TRANSPOSE_PER_THREAD 16

// The tile, TR rows of `pitch` floats: the launcher pads the pitch so that neither a warp's row
// of TC values nor its column of TR values falls on one bank twice (TC + 1, odd, for tall
// tiles; TC + 32/TR for flat ones, whose warp reads 32/TR columns of all TR rows).
extern __shared__ float transpose_tile[];

// Out(v) where v is an In value widened exactly: the bits of a same-type copy (so a bf16 NaN is
// not quieted), else the cast's rounding.
template <bool ACCUMULATE, typename In, typename Out>
__device__ __forceinline__ void transpose_store(Out* __restrict__ p, long long i, float v) {
    if constexpr (!ACCUMULATE && sizeof(In) == 2 && sizeof(Out) == 2) {
        p[i] = (bf16_bits)(__float_as_uint(v) >> 16);
    } else {
        store_f32(p, i, v);
    }
}

template <bool ACCUMULATE, typename In, typename Out>
__device__ __forceinline__ void transpose_run(const In* __restrict__ x, Out* __restrict__ y,
                                              long long batch, int rows, int cols, int col_tiles,
                                              int log_tr, int log_tc, int pitch) {
    const int tr = 1 << log_tr, tc = 1 << log_tc;
    const int per_thread = (tr * tc) / TRANSPOSE_THREADS;
    const int r0 = (blockIdx.x / col_tiles) << log_tr;
    const int c0 = (blockIdx.x % col_tiles) << log_tc;
    // Rows and columns of the tile inside the matrix. Offsets within a matrix fit an int up to
    // a tile past its edges (the launcher checks), so the addresses of a partial tile's idle
    // threads do not overflow.
    const int tile_rows = min(tr, rows - r0), tile_cols = min(tc, cols - c0);
    // Reading, thread t takes column t mod TC of rows t / TC + k·(256 / TC); writing, row
    // t mod TR of columns t / TR + k·(256 / TR). TR, TC <= 256.
    const int load_c = threadIdx.x & (tc - 1), load_r = threadIdx.x >> log_tc;
    const int load_step = TRANSPOSE_THREADS >> log_tc;
    const int store_r = threadIdx.x & (tr - 1), store_c = threadIdx.x >> log_tr;
    const int store_step = TRANSPOSE_THREADS >> log_tr;
    const bool load_in = load_c < tile_cols, store_in = store_r < tile_rows;
    const int load_at = (r0 + load_r) * cols + c0 + load_c;
    const int store_at = (c0 + store_c) * rows + r0 + store_r;
    // The batch over grid y and z: past 65,535 matrices z counts the groups of gridDim.y.
    const long long b = blockIdx.y + (long long)blockIdx.z * gridDim.y;
    if (b >= batch) return;  // the whole block
    const long long plane = (long long)rows * cols;
    const In* xb = x + b * plane + load_at;
    Out* yb = y + b * plane + store_at;
    // All the tile's loads first, so that they are in flight together.
    float v[TRANSPOSE_PER_THREAD];
#pragma unroll
    for (int k = 0; k < TRANSPOSE_PER_THREAD; ++k) {
        v[k] = 0.0f;
        if (k < per_thread && load_in && load_r + k * load_step < tile_rows)
            v[k] = load_f32(xb, k * load_step * cols);
    }
#pragma unroll
    for (int k = 0; k < TRANSPOSE_PER_THREAD; ++k)
        if (k < per_thread) transpose_tile[(load_r + k * load_step) * pitch + load_c] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TRANSPOSE_PER_THREAD; ++k) {
        if (k < per_thread && store_in && store_c + k * store_step < tile_cols) {
            const int at = k * store_step * rows;
            float value = transpose_tile[store_r * pitch + store_c + k * store_step];
            if constexpr (ACCUMULATE) value = load_f32(yb, at) + value;
            transpose_store<ACCUMULATE, In>(yb, at, value);
        }
    }
}

#define TRANSPOSE_ENTRY(NAME, ACCUMULATE, IN, OUT)                                              \
    extern "C" __global__ void __launch_bounds__(TRANSPOSE_THREADS)                             \
        NAME(const IN* x, OUT* y, long long batch, int rows, int cols, int col_tiles,           \
             int log_tr, int log_tc, int pitch) {                                               \
        transpose_run<ACCUMULATE>(x, y, batch, rows, cols, col_tiles, log_tr, log_tc, pitch);   \
    }

TRANSPOSE_ENTRY(transpose_f32_f32, false, float, float)
TRANSPOSE_ENTRY(transpose_bf16_bf16, false, bf16_bits, bf16_bits)
TRANSPOSE_ENTRY(transpose_f32_bf16, false, float, bf16_bits)
TRANSPOSE_ENTRY(transpose_bf16_f32, false, bf16_bits, float)
TRANSPOSE_ENTRY(transpose_accumulate_f32_f32, true, float, float)
TRANSPOSE_ENTRY(transpose_accumulate_bf16_bf16, true, bf16_bits, bf16_bits)
TRANSPOSE_ENTRY(transpose_accumulate_f32_bf16, true, float, bf16_bits)
TRANSPOSE_ENTRY(transpose_accumulate_bf16_f32, true, bf16_bits, float)
