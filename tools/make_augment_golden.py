"""Golden file for WS-DAN's augmentation (crates/c2f-kernels/src/augment.rs): the project's
definition written with PyTorch ops in float32, as a PyTorch reimplementation writes it: each
map normalised by its min and max, up-sampled with F.interpolate(mode="bilinear",
align_corners=True) (= F.upsample_bilinear), the crop box from torch.nonzero of U >= theta_c
padded by floor(padding * side), the crop x[b, :, y0:y1, x0:x1] resized with
F.interpolate(align_corners=True), and the drop x * (U < theta_d). Thresholds are redrawn until
they lie at least 1e-4 from every up-sampled value, so the boxes and drops do not hang on
rounding. Also the crops of given boxes, 1-pixel and 1-row ones among them.

The file holds `x` [B, C, H, W], `maps` [B, 1, h, w], `theta_crop`, `theta_drop` [B], `boxes`
[B, 4] (as float64: y0, x0, y1, x1), `crops`, `drops`, `given_boxes`, `given_crops`, `padding`.

Run: /work/torchenv/bin/python tools/make_augment_golden.py  (writes tests/data/augment_golden.safetensors)
"""

import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

B, C, H, W, h, w = 4, 3, 23, 31, 6, 5
PADDING = 0.1


def upsampled(m):
    lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
    return F.interpolate((m - lo) / (hi - lo), size=(H, W), mode="bilinear", align_corners=True)


def away(gen, u, lo, hi):
    """A threshold in [lo, hi) at least 1e-4 from every value of u."""
    while True:
        theta = lo + (hi - lo) * torch.rand((), generator=gen).item()
        theta = float(torch.tensor(theta, dtype=torch.float32))
        if (u - theta).abs().min().item() > 1e-4:
            return theta


def crop(x, box):
    y0, x0, y1, x1 = box
    return F.interpolate(x[None, :, y0:y1, x0:x1], size=(H, W), mode="bilinear",
                         align_corners=True)[0]


def main():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=gen)
    # Blobs with noise, after a ReLU: the boxes are smaller than the image.
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    maps = []
    for _ in range(B):
        cy, cx = h * torch.rand((), generator=gen), w * torch.rand((), generator=gen)
        blob = 2 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6)
        maps.append(torch.relu(blob + 0.6 * torch.rand(h, w, generator=gen) - 0.4))
    maps = torch.stack(maps)[:, None]
    u = upsampled(maps)[:, 0]
    theta_crop = [away(gen, u[b], 0.4, 0.6) for b in range(B)]
    theta_drop = [away(gen, u[b], 0.2, 0.5) for b in range(B)]
    pad_h, pad_w = math.floor(PADDING * H), math.floor(PADDING * W)
    boxes, crops, drops = [], [], []
    for b in range(B):
        hits = torch.nonzero(u[b] >= theta_crop[b])
        box = [max(hits[:, 0].min().item() - pad_h, 0), max(hits[:, 1].min().item() - pad_w, 0),
               min(hits[:, 0].max().item() + 1 + pad_h, H),
               min(hits[:, 1].max().item() + 1 + pad_w, W)]
        boxes.append(box)
        crops.append(crop(x[b], box))
        drops.append(x[b] * (u[b] < theta_drop[b]))
    given = [[5, 7, 6, 8], [0, 3, 1, 30], [2, 0, 22, 1], [4, 9, 17, 25]]
    out = {
        "x": x, "maps": maps,
        "theta_crop": torch.tensor(theta_crop), "theta_drop": torch.tensor(theta_drop),
        "boxes": torch.tensor(boxes, dtype=torch.float64),
        "crops": torch.stack(crops), "drops": torch.stack(drops),
        "given_boxes": torch.tensor(given, dtype=torch.float64),
        "given_crops": torch.stack([crop(x[b], box) for b, box in enumerate(given)]),
        "padding": torch.tensor([PADDING], dtype=torch.float64),
    }
    path = (pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
            / "augment_golden.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes); boxes {boxes}")


if __name__ == "__main__":
    main()
