#!/usr/bin/env python3
"""Builds the CUDA emulator: a libcuda.so.1 that runs kernels/*.cu and kernels/baselines/*.cu on
the CPU (driver.cpp), and stands in for the cuDNN convolutions, cuBLAS GEMMs and NCCL collectives
we call (libraries.cpp).

Each kernel file (and selftest.cu, for tests/kernels/cuda_emulator.rs) is compiled as host C++ with device.h force-included, after two rewrites:
`extern __shared__ T name[];` becomes a pointer into the emulator's dynamic shared memory, and
one EMU_KERNEL line per `extern "C"` entry point is appended, with its __launch_bounds__, read
from the preprocessed source. Usage: build.py [OUT_DIR] (default target/cuda-emu). Then run a
test with LD_LIBRARY_PATH=OUT_DIR, and cudarc loads this library as the driver.
"""
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KERNELS = ROOT / "kernels"
# The alignment sanitizer ends the process at a misaligned load or store (a float4 from an address
# that is not 16-byte aligned), which a GPU refuses with a misaligned-address error.
CXX = [os.environ.get("CXX", "g++"), "-std=c++17", "-O2", "-fPIC", "-ffp-contract=off",
       "-fsanitize=alignment", "-fno-sanitize-recover=alignment",
       f"-I{KERNELS}", f"-I{HERE}", "-include", str(HERE / "device.h")]

DYNAMIC_SHARED = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")
ENTRY = re.compile(
    r'extern "C"\s+void\s+(?:__emu_launch_bounds__\(\s*([^,)]+)[^)]*\)\s*)?(\w+)\s*\(')


def entry_points(source: pathlib.Path) -> list[tuple[str, str]]:
    """(name, max threads expression or "0") for each kernel in the file."""
    pre = subprocess.run(CXX + ["-DEMU_SCAN", "-E", "-P", "-x", "c++", str(source)], check=True,
                         capture_output=True, text=True).stdout
    found = [(m.group(2), m.group(1) or "0") for m in ENTRY.finditer(pre)]
    if not found:
        sys.exit(f"build.py: no extern \"C\" kernels found in {source}")
    return found


def translate(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    text = DYNAMIC_SHARED.sub(r"\1* const \2 = reinterpret_cast<\1*>(emu::dynamic_shared);",
                              source.read_text())
    lines = [f'#line 1 "{source}"', text, '#include "registry.h"']
    lines += [f"EMU_KERNEL({name}, ({bound}))" for name, bound in entry_points(source)]
    cpp = out / "src" / f"{source.stem}.cpp"
    cpp.write_text("\n".join(lines) + "\n")
    return cpp


def compile_object(cpp: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    obj = out / "obj" / f"{cpp.stem}.o"
    subprocess.run(CXX + ["-c", str(cpp), "-o", str(obj)], check=True)
    return obj


def main() -> None:
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "cuda-emu")
    (out / "src").mkdir(parents=True, exist_ok=True)
    (out / "obj").mkdir(parents=True, exist_ok=True)
    # The kernels crate's files, then the bench baselines' (crates/c2f-baselines); stems are unique
    # across both, as each becomes src/STEM.cpp.
    kernel_files = sorted(KERNELS.glob("*.cu")) + sorted(KERNELS.glob("baselines/*.cu"))
    kernel_files += [HERE / "selftest.cu"]
    sources = [translate(cu, out) for cu in kernel_files]
    sources += [HERE / "driver.cpp", HERE / "libraries.cpp"]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        objects = list(pool.map(lambda cpp: compile_object(cpp, out), sources))
    lib = out / "libcuda.so.1"
    subprocess.run(CXX[:1] + ["-shared", "-fsanitize=alignment", "-o", str(lib)] + [str(o) for o in objects], check=True)
    # One object for the driver and the library stand-ins, so they share the allocation table:
    # the dynamic loader opens each name below as the same library.
    for name in ["libcuda.so", "libcudnn.so", "libcublas.so", "libnccl.so"]:
        link = out / name
        link.unlink(missing_ok=True)
        link.symlink_to(lib.name)
    print(f"cuda-emu: {lib} ({len(kernel_files)} kernel files)")


if __name__ == "__main__":
    main()
