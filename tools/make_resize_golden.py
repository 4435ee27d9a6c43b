"""Golden file for the training transform's crop + resize (crates/c2f-train/src/data/transform.rs,
`crop_resize`): torchvision's `resized_crop` semantics, i.e. crop first, then bilinear resize
with antialiasing (`resize(..., BILINEAR, antialias=True)`, which follows PIL's BILINEAR: a
triangle filter whose support widens by the shrink factor, clamped at the crop's edges).

For each case the file holds `{case}.image` (uint8, H x W x 3, uniform noise: the worst case
for border handling), `{case}.crop` (int64 x, y, w, h), `{case}.torch` (float64, 3 x OH x OW,
torchvision on the crop as a float64 tensor, on the 0-255 scale, no rounding) and `{case}.pil`
(uint8, OH x OW x 3, PIL's `Image.resize` of the crop: what torchvision gives on PIL images,
which round to 8 bits after each pass).

Run: /work/torchenv/bin/python tools/make_resize_golden.py  (writes tests/data/resize_golden.safetensors)
"""

import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

CASES = {
    # name: (image h, w), crop (x, y, w, h), output (h, w)
    "shrink_3x": ((48, 64), (5, 3, 50, 40), (13, 17)),
    "shrink_slight": ((40, 40), (4, 6, 31, 31), (29, 29)),
    "enlarge": ((20, 24), (2, 1, 13, 11), (37, 37)),
    "mixed": ((40, 40), (0, 0, 40, 40), (29, 53)),
    "whole_odd": ((37, 29), (0, 0, 29, 37), (16, 11)),
}


def main():
    rng = np.random.default_rng(20)
    out = {}
    for name, ((h, w), (cx, cy, cw, ch), (oh, ow)) in CASES.items():
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        crop = image[cy : cy + ch, cx : cx + cw]
        x = torch.from_numpy(crop.astype(np.float64)).permute(2, 0, 1).unsqueeze(0)
        y = F.resize(x, [oh, ow], interpolation=InterpolationMode.BILINEAR, antialias=True)
        pil = np.asarray(Image.fromarray(crop).resize((ow, oh), Image.BILINEAR))
        out[f"{name}.image"] = torch.from_numpy(image)
        out[f"{name}.crop"] = torch.tensor([cx, cy, cw, ch], dtype=torch.int64)
        out[f"{name}.torch"] = y[0].contiguous()
        out[f"{name}.pil"] = torch.from_numpy(pil.copy())
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "resize_golden.safetensors"
    save_file(out, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
