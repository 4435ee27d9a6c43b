#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler from PyPI wheels into a git-ignored venv and prints the
# path of nvcc. NVRTC comes too (`lib/` beside nvcc's `bin/`): it needs no GPU, so the tests
# compile every kernel with it as a build without nvcc does at run time. The pins matter:
# unpinned, pip pulls 13.5 parts whose PTX (ISA 9.5) ptxas 13.0 and the GPU machines' CUDA 13.0
# driver reject. NVIDIA's NVTX 3 library comes too, which `c2f --nvtx` loads; the tests call it
# with no profiler attached.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cuda-toolchain"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-nvtx==13.0.85
)
stamp="$venv/.pins"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${pins[@]}" >&2
  echo "${pins[*]}" >"$stamp"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
nvcc="$site/nvidia/cu13/bin/nvcc"
[ -x "$nvcc" ] || { echo "cuda-toolchain: nvcc not found at $nvcc after install" >&2; exit 1; }
echo "$nvcc"
