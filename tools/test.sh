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
