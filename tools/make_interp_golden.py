"""Golden file for the interpolators (crates/c2f-train/src/interpolate.rs): PyTorch's
F.interpolate(size=..., align_corners=False) for bilinear, bicubic and nearest, in float64, on a
few small shapes (up and down, integer and non-integer scales). Inputs are random normal from a
fixed seed; for each case the file holds `{case}.input` and `{case}.{mode}` tensors.

Run: /work/torch-venv/bin/python tools/make_interp_golden.py  (writes tests/data/interp_golden.safetensors)
"""

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

CASES = {
    # name: (planes, in_h, in_w, out_h, out_w)
    "up2": (2, 3, 4, 6, 8),
    "up_noninteger": (1, 5, 4, 13, 11),
    "up_13_to_40": (1, 13, 13, 40, 40),
    "down": (1, 9, 7, 4, 5),
    "mixed": (2, 6, 5, 4, 12),
}


def main():
    torch.manual_seed(0)
    out = {}
    for name, (p, ih, iw, oh, ow) in CASES.items():
        x = torch.randn(1, p, ih, iw, dtype=torch.float64)
        out[f"{name}.input"] = x[0].contiguous()
        for mode in ("bilinear", "bicubic", "nearest"):
            kw = {} if mode == "nearest" else {"align_corners": False}
            y = F.interpolate(x, size=(oh, ow), mode=mode, **kw)
            out[f"{name}.{mode}"] = y[0].contiguous()
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "interp_golden.safetensors"
    save_file(out, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
