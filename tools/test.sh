#!/usr/bin/env bash
# The test command (README, .ci/run): installs the pinned nvcc on first use so every kernel is
# really compiled (with its ptxas report checked), then format, lints, tests, and one pass over
# every benchmark in test mode. GPU tests print `skipped: no CUDA device` where there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=$(tools/cuda-toolchain.sh)
export NVCC
echo "nvcc: $NVCC"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# --nocapture: the GPU tests' `skipped: no CUDA device` lines show where there is no GPU.
cargo test --workspace -- --nocapture
# Criterion runs each benchmark once in test mode: the bench code cannot rot unnoticed.
cargo test --workspace --benches
# Every GPU test once more, on the CPU emulator of the CUDA driver (tools/cuda-emu): the real
# launchers and kernel sources, with launch limits, writes outside a buffer and missing barriers
# checked, and stand-ins for cuDNN, cuBLAS and NCCL (a world of one). A pass there is not a pass
# on a GPU (docs/gpu-status.md).
python3 tools/cuda-emu/build.py target/cuda-emu
# NVRTC (in the toolchain's wheels) goes on the library path the way gpu-check.sh and users put
# CUDA libraries there, so that script runs here too; the emulator's folder comes first.
eval "$(PATH="$PWD/.cuda-toolchain/bin:$PATH" tools/cuda-libs.sh target/cuda-libs)"
# NVTX ranges through NVIDIA's library (the toolchain's wheel) with no profiler attached.
C2F_REQUIRE_NVTX=1 cargo test --test kernels -- --nocapture nvtx::
emulated() { LD_LIBRARY_PATH="$PWD/target/cuda-emu:$LD_LIBRARY_PATH" C2F_REQUIRE_GPU=1 "$@"; }
# Every test binary's GPU tests, then the runtime's CUDA backend and the trainer's GPU step in
# full (their CPU halves are what the GPU halves are compared to).
emulated cargo test --workspace --tests -- --nocapture gpu_ emulator_
emulated cargo test --test runtime --test model -- --nocapture inception_cuda:: train_gpu::
# A build without nvcc compiles each kernel with NVRTC on first use. NVRTC needs no GPU: every
# kernel is compiled that way here, then a training step in f32 and one in bf16 run on modules
# NVRTC built, against the CPU (the rest of train_gpu:: would run the same modules again).
emulated cargo test --test kernels -- --nocapture kernel_build::every_kernel_compiles_with_nvrtc
C2F_FORCE_NVRTC=1 emulated cargo test --test model -- --nocapture \
  train_gpu::coarse2fine_step_matches_cpu train_gpu::bf16_coarse2fine_step_matches_cpu_f64
# The GPU benchmarks once each at tiny shapes, so the bench code the GPU check runs has run.
C2F_BENCH_SMOKE=1 emulated cargo test \
  --bench augment --bench axpby --bench bap --bench batch_norm --bench cast --bench center_loss \
  --bench conv_transpose \
  --bench mask --bench pool --bench sgd --bench sigmoid_bce --bench softmax_ce --bench transpose \
  --bench inception_gpu --bench coarse2fine_gpu --bench pretrain_upsampler --bench nccl_allreduce
# The GPU check's join of PyTorch's op timings with ours, on made-up lines (it needs no torch).
join_dir=$(mktemp -d)
printf 'BENCH\tg\tours_case\tcard\t10.00\t1.0\t0.100\t\n' >"$join_dir/bench-ours.txt"
printf 'TORCHOP\tg\tcase\teager\tcard\t25.00\n' >"$join_dir/bench-torch-ops.txt"
python3 tools/torch_ops_baseline.py --join "$join_dir" |
  grep -q -F "$(printf 'VSTORCH\tg\tcase vs PyTorch eager\t2.50x\tmeets the 1x target')"
rm -r "$join_dir"
# The GPU check's bf16-against-f32 accuracy verdict, on made-up runs: within a point passes,
# two points below fails.
acc_dir=$(mktemp -d)
mkdir -p "$acc_dir/f32/coarse2fine" "$acc_dir/bf16/coarse2fine"
printf '{"model":"coarse2fine","epoch":1,"test_average":0.80}\n' >"$acc_dir/f32/coarse2fine/metrics.jsonl"
printf '{"model":"coarse2fine","epoch":1,"test_average":0.795}\n' >"$acc_dir/bf16/coarse2fine/metrics.jsonl"
python3 tools/precision_accuracy.py --compare "$acc_dir/f32" "$acc_dir/bf16" | grep -q "within 1 point"
printf '{"model":"coarse2fine","epoch":1,"test_average":0.78}\n' >"$acc_dir/bf16/coarse2fine/metrics.jsonl"
if python3 tools/precision_accuracy.py --compare "$acc_dir/f32" "$acc_dir/bf16"; then
  echo "precision_accuracy.py passed a bf16 run two points below f32" >&2
  exit 1
fi
rm -r "$acc_dir"
# The tools scripts that only run where torch is (the GPU machine) are at least compiled here.
python3 -m py_compile tools/*.py tools/cuda-emu/*.py
