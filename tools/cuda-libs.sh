#!/usr/bin/env bash
# Puts the CUDA libraries that cudarc loads at run time (cuBLAS, NVRTC, cuDNN, NCCL), and the
# NVTX library `c2f --nvtx` loads, where `c2f` finds them, when they came in Python wheels
# (PyTorch's own, for one) rather than with a CUDA toolkit. cudarc asks for plain names
# (libnccl.so, libcudnn.so, ...) and the wheels ship versioned ones, so each library found is
# linked under its plain name into FOLDER (default target/cuda-libs); its own folder goes on the
# path too, because cuDNN 9 and NVRTC load their parts from there by versioned name. Prints the
# export to evaluate, and what it found to stderr:
#   eval "$(tools/cuda-libs.sh [FOLDER])"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
libdir=${1:-$root/target/cuda-libs}
mkdir -p "$libdir"
libdir=$(cd "$libdir" && pwd)
path=${LD_LIBRARY_PATH:-}
sites=$(python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)
for lib in cublas cublasLt nvrtc nvrtc-builtins cudnn nccl nvtx3interop; do
  found=""
  for dir in $sites /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -d "$dir" ] || continue
    found=$(find -L "$dir" -name "lib${lib}.so*" -type f 2>/dev/null | sort | head -1)
    [ -n "$found" ] && break
  done
  if [ -n "$found" ]; then
    ln -sf "$found" "$libdir/lib${lib}.so"
    case ":$path:" in *":$(dirname "$found"):"*) ;; *) path="$(dirname "$found")${path:+:$path}" ;; esac
    echo "lib${lib}.so -> $found" >&2
  else
    echo "lib${lib}.so: not found" >&2
  fi
done
printf 'export LD_LIBRARY_PATH=%q\n' "$libdir${path:+:$path}"
