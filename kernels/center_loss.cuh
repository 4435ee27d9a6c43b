// What the fused center-loss kernels (center_loss.cu) and the bench's unfused baseline
// (baselines/center_loss_unfused.cu) share. Include common.cuh first.
#pragma once

#define NORM_EPS 1e-12f

// Must match `THREADS` in crates/c2f-kernels/src/center_loss.rs.
#define CL_THREADS 256

__device__ __forceinline__ bool valid_label(int k, int C) { return k >= 0 && k < C; }
