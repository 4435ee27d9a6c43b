#!/usr/bin/env python3
"""WS-DAN (Hu et al. 2019, "See Better Before Looking Closer", arXiv 1901.09891) in PyTorch with
autograd, written from the paper and the definition in docs/method.md ("WS-DAN"), not from the
Rust model: the independent reference that `tools/make_wsdan_golden.py` holds the Rust model to,
and the PyTorch peer that `tools/gpu-check.sh run` times a WS-DAN step of ours against.

The model: torchvision's InceptionV3 up to Mixed_6e (F, N = 768 channels); M attention maps
A = ReLU(BN(conv1x1(F))) (no conv bias, BN eps 1e-3, momentum 0.1); BAP as Coarse2Fine's
(`torch_c2f_baseline.bap`); logits = fc(100 f); the attention regularisation, one center per
part (a [1, M·N] bank, every sample pulled to it) or with `centers="per-class"` one per class,
moved per sample in batch order (c <- (1 - beta) c + beta f). A training step runs the raw
image, then its attention crop, then its attention drop through the same network (train-mode
BN, each pass moving the running statistics) and sums CE(raw) + CE(crop) + CE(drop) +
the center term of the raw pass. The augmentation takes no gradient. The random choices
(which map each sample crops and drops by, and the thresholds) are passed in.

Interpolation is bilinear with align_corners=True, written as matrices: output index o of a
segment of n_in source positions reads position src = o · (n_in − 1)/(n_out − 1), split between
floor(src) and the next one. The positions and weights are computed in `weights` (float32 by
default: what PyTorch's float32 path and our kernels do for every element type; float64 gives
PyTorch's float64 path) and applied in the tensor's own type.

    python3 tools/torch_wsdan.py --time [--batch 64] [--steps 10]   (a CUDA device)
    python3 tools/torch_wsdan.py --check                            (CPU: the helpers' checks)

`--time` prints TORCHGPU lines (`wsdan_b64_299`, ...) in the modes of `tools/torch_baseline.py`:
fp32 with cudnn.benchmark off and on, and bf16 AMP + channels_last; the defaults M = 32 maps,
200 classes.
"""
import argparse
import math

import torch
import torch.nn.functional as F

from torch_baseline import model, time_training
from torch_c2f_baseline import FEATURE_SCALE, bap, center_loss, update_centers

MAPS, CLASSES, LAMBDA, BETA = 32, 200, 1.0, 0.05
BN_EPS, BN_MOMENTUM = 1e-3, 0.1
MASS_EPS = 1e-12
CROP_THETA, DROP_THETA = (0.4, 0.6), (0.2, 0.5)
CROP_PADDING, INFER_THETA, INFER_PADDING = 0.1, 0.1, 0.05


def maps_by_mass(a, draws):
    """[B] map indices: for sample i, map k with probability ∝ sqrt(Σ_hw A[i, k] + 1e-12), by
    inverting the cumulative weights at draws[i] in [0, 1) (the first k whose cumulative weight
    exceeds draws[i] times the total, as numpy's random.choice does)."""
    weight = torch.sqrt(a.sum(dim=(2, 3)) + MASS_EPS)
    cumulative = weight.cumsum(dim=1)
    below = cumulative <= draws.unsqueeze(1).to(cumulative.dtype) * cumulative[:, -1:]
    return below.sum(dim=1).clamp(max=a.shape[1] - 1)


def interp_matrix(starts, ends, size_out: int, length: int, dtype, weights=torch.float32):
    """[B, size_out, length]: row o of sample b holds the bilinear align_corners=True weights of
    output o over the source segment [starts[b], ends[b]) of an axis of `length` positions; the
    positions and weights are computed in `weights`, the matrix is of `dtype`."""
    n_in = (ends - starts).unsqueeze(1)
    o = torch.arange(size_out, device=starts.device).to(weights).unsqueeze(0)
    scale = (n_in - 1).to(weights) / max(size_out - 1, 1)
    src = scale * o
    i0 = torch.minimum(src.floor().long(), n_in - 1)
    lam1 = (src - i0.to(weights)).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    # One term per neighbour (not their sum) where both are the last position, so that each
    # weight meets the input alone, as in PyTorch's kernels.
    start = starts.unsqueeze(1)
    return ((1 - lam1).to(dtype).unsqueeze(2) * F.one_hot(start + i0, length).to(dtype)
            + lam1.to(dtype).unsqueeze(2) * F.one_hot(start + i1, length).to(dtype))


def resize_segments(x, boxes, size, weights=torch.float32):
    """x [B, C, H_in, W_in] -> [B, C, H, W]: each sample's box (y0, x0, y1, x1; end exclusive)
    resized bilinearly with align_corners=True to `size` (H, W)."""
    rows = interp_matrix(boxes[:, 0], boxes[:, 2], size[0], x.shape[2], x.dtype, weights)
    cols = interp_matrix(boxes[:, 1], boxes[:, 3], size[1], x.shape[3], x.dtype, weights)
    return rows.unsqueeze(1) @ x @ cols.unsqueeze(1).transpose(2, 3)


def whole(batch: int, height: int, width: int, device):
    """[B, 4] boxes (y0, x0, y1, x1) of a whole height x width image."""
    return torch.tensor([0, 0, height, width], device=device).expand(batch, 4)


def upsampled(maps, size, weights=torch.float32):
    """The maps [B, h, w] normalised by their own min and max, up-sampled to `size`:
    U [B, H, W]. A flat map (max == min, all zero for one) gives U = 0, never a NaN: below every
    threshold (all are positive), so its box is the whole image and it drops nothing."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    normalised = (maps - low) / span
    b, h, w = maps.shape
    grid = whole(b, h, w, maps.device)
    return resize_segments(normalised.unsqueeze(1), grid, size, weights).squeeze(1)


def attention_boxes(maps, thresholds, padding: float, size, weights=torch.float32):
    """[B, 4] crop boxes (y0, x0, y1, x1; end exclusive) of maps [B, h, w] on an image of
    `size`: the rows and columns where U >= thresholds[i], padded by floor(padding · H) rows and
    floor(padding · W) columns and clamped to the image; the whole image where no pixel passes
    (as for a flat map)."""
    u = upsampled(maps, size, weights)
    hit = u >= thresholds.to(u.dtype).view(-1, 1, 1)
    boxes = []
    for axis, n, pad in [(2, size[0], math.floor(padding * size[0])),
                         (1, size[1], math.floor(padding * size[1]))]:
        # argmax takes the first maximum: where nothing passes, first is 0 and last n - 1.
        line = hit.any(dim=axis).long()
        first = line.argmax(dim=1)
        last = n - 1 - line.flip(1).argmax(dim=1)
        boxes.append(((first - pad).clamp(min=0), (last + 1 + pad).clamp(max=n)))
    (y0, y1), (x0, x1) = boxes
    return torch.stack([y0, x0, y1, x1], dim=1)


def crop_resize(x, boxes, weights=torch.float32):
    """Each sample's box of x [B, C, H, W] resized to H x W (bilinear, align_corners=True)."""
    return resize_segments(x, boxes, x.shape[2:], weights)


def drop_mask(maps, thresholds, x, weights=torch.float32):
    """[B, 1, H, W] in x's type and size: 1 where U < thresholds[i], 0 elsewhere; x · mask is
    the dropped image."""
    u = upsampled(maps, x.shape[2:], weights)
    keep = u < thresholds.to(u.dtype).view(-1, 1, 1)
    return keep.to(x.dtype).unsqueeze(1)


def threshold_margin(maps, thresholds, size, weights=torch.float32) -> float:
    """The smallest |U − threshold| over the maps' pixels: how far the boxes and masks are from
    changing."""
    u = upsampled(maps, size, weights)
    return (u - thresholds.to(u.dtype).view(-1, 1, 1)).abs().min().item()


def random_choices(a):
    """The training draws of the definition for maps A [B, M, h, w]: a crop map and a drop map
    per sample, each by mass, θ_c ~ U[0.4, 0.6], θ_d ~ U[0.2, 0.5]."""
    b, a = a.shape[0], a.float()

    def uniform(lo: float, hi: float):
        return torch.empty(b, device=a.device).uniform_(lo, hi)

    return (maps_by_mass(a, uniform(0, 1)), maps_by_mass(a, uniform(0, 1)),
            uniform(*CROP_THETA), uniform(*DROP_THETA))


class Attention(torch.nn.Module):
    """A = ReLU(BN(conv1x1(F))): `weight` [M, 768, 1, 1] (no bias) and `bn`."""

    def __init__(self, maps: int, channels: int = 768):
        super().__init__()
        bound = 1.0 / math.sqrt(channels)
        self.weight = torch.nn.Parameter(torch.empty(maps, channels, 1, 1).uniform_(-bound, bound))
        self.bn = torch.nn.BatchNorm2d(maps, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, f):
        return F.relu(self.bn(F.conv2d(f, self.weight)))


class WSDAN(torch.nn.Module):
    """WS-DAN with the Rust model's state names: `backbone.` + torchvision's names,
    `attention.weight`, `attention.bn.*`, `fc.weight`, `fc.bias` and the buffer `centers`
    ([1, M·768] per part, [C, M·768] per class)."""

    def __init__(self, maps: int = MAPS, classes: int = CLASSES, lam: float = LAMBDA,
                 beta: float = BETA, centers: str = "per-part", weights=torch.float32):
        super().__init__()
        self.lam, self.beta, self.per_class, self.weights = lam, beta, centers == "per-class", weights
        self.backbone = model("mixed6e")
        self.attention = Attention(maps)
        self.fc = torch.nn.Linear(maps * 768, classes)
        self.register_buffer("centers", torch.zeros(classes if self.per_class else 1, maps * 768))

    def parts(self, x):
        """Attention maps and the normalised BAP part features of one pass."""
        f = self.backbone(x)
        a = self.attention(f)
        return a, bap(a, f)

    def classify(self, x):
        return self.fc(FEATURE_SCALE * self.parts(x)[1])

    def augment(self, x, a, crop_maps, drop_maps, theta_c, theta_d):
        """The crop boxes, crop images and drop images of a batch, from its maps A; in x's type
        (float32 under AMP), with no gradient."""
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            maps = a.detach().to(x.dtype)
            rows = torch.arange(x.shape[0], device=x.device)
            boxes = attention_boxes(maps[rows, crop_maps], theta_c, CROP_PADDING, x.shape[2:],
                                    self.weights)
            crop = crop_resize(x, boxes, self.weights)
            drop = x * drop_mask(maps[rows, drop_maps], theta_d, x, self.weights)
        if x.is_contiguous(memory_format=torch.channels_last):
            crop = crop.contiguous(memory_format=torch.channels_last)
        return boxes, crop, drop

    def forward(self, x, labels, choose) -> dict:
        """One training forward. `choose(a)` gives (crop_maps, drop_maps, theta_c, theta_d) for
        the raw pass's maps: `random_choices`, or fixed values. Returns the four loss terms
        (`losses`: CE raw, CE crop, CE drop, center) and what led to them."""
        a, f = self.parts(x)
        raw = self.fc(FEATURE_SCALE * f)
        bank = labels if self.per_class else torch.zeros_like(labels)
        center = center_loss(f, bank, self.centers, self.lam)
        update_centers(self.centers, f, bank, self.beta)
        boxes, crop, drop = self.augment(x, a, *choose(a))
        crop_logits = self.classify(crop)
        drop_logits = self.classify(drop)
        return {
            "raw_logits": raw, "crop_logits": crop_logits, "drop_logits": drop_logits,
            "boxes": boxes, "crop": crop, "drop": drop, "maps": a,
            "losses": [F.cross_entropy(raw, labels), F.cross_entropy(crop_logits, labels),
                       F.cross_entropy(drop_logits, labels), center],
        }

    def infer(self, x, threshold: float = INFER_THETA) -> dict:
        """Inference (call in eval mode): the raw logits, the refinement box from the mean map
        (θ = 0.1 unless said, padding 0.05), the logits of that crop, and the two heads' mean
        softmax."""
        a, f = self.parts(x)
        raw = self.fc(FEATURE_SCALE * f)
        theta = torch.full((x.shape[0],), threshold, dtype=x.dtype, device=x.device)
        boxes = attention_boxes(a.mean(dim=1), theta, INFER_PADDING, x.shape[2:], self.weights)
        refined = self.classify(crop_resize(x, boxes, self.weights))
        return {"raw_logits": raw, "refined_logits": refined, "boxes": boxes, "maps": a,
                "probabilities": (raw.softmax(dim=1) + refined.softmax(dim=1)) / 2}


def check() -> None:
    """The helpers against PyTorch's own interpolation (its weights bit for bit, in float32 and
    float64) and on degenerate maps; raises on a mismatch."""
    # The weights themselves, bit for bit: PyTorch's resize of each unit vector is its column.
    for dtype in [torch.float32, torch.float64]:
        for n_in, n_out in [(5, 107), (50, 107), (1, 107), (107, 107), (17, 299), (26, 448)]:
            unit = torch.eye(n_in, dtype=dtype).view(n_in, 1, n_in, 1)
            theirs = F.interpolate(unit, size=(n_out, 1), mode="bilinear", align_corners=True)
            ours = interp_matrix(torch.tensor([0]), torch.tensor([n_in]), n_out, n_in, dtype, dtype)
            assert torch.equal(ours[0], theirs.view(n_in, n_out).T), \
                f"{dtype} weights of {n_in} -> {n_out} differ from PyTorch's"
    g = torch.Generator().manual_seed(0)
    # Peaked, so that the boxes fall inside the image.
    maps = torch.rand(3, 5, 5, generator=g, dtype=torch.float64) ** 4
    x = torch.rand(3, 2, 107, 107, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[0, 0, 107, 107], [10, 3, 60, 100], [50, 50, 51, 53]])
    for dtype, weights, tolerance in [(torch.float64, torch.float64, 1e-12),
                                      (torch.float32, torch.float32, 1e-6)]:
        m, xs = maps.to(dtype), x.to(dtype)
        ours = upsampled(m, (107, 97), weights)
        low, high = m.amin(dim=(1, 2), keepdim=True), m.amax(dim=(1, 2), keepdim=True)
        theirs = F.interpolate(((m - low) / (high - low)).unsqueeze(1), size=(107, 97),
                               mode="bilinear", align_corners=True).squeeze(1)
        cropped = crop_resize(xs, boxes, weights)
        for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
            piece = F.interpolate(xs[i:i + 1, :, y0:y1, x0:x1], size=(107, 107),
                                  mode="bilinear", align_corners=True)
            error = (cropped[i] - piece[0]).abs().max().item()
            assert error < tolerance, f"crop {i} ({dtype}): {error:.2e} from F.interpolate"
        error = (ours - theirs).abs().max().item()
        assert error < tolerance, f"up-sampled map ({dtype}): {error:.2e} from F.interpolate"
    # Boxes against the definition read per sample, with nonzero(): padded first and last rows
    # and columns that pass, clamped.
    size, theta = (107, 97), torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)
    got = attention_boxes(maps, theta, CROP_PADDING, size).tolist()
    for u, t, box in zip(upsampled(maps, size), theta, got):
        hit = torch.nonzero(u >= t)
        (r0, c0), (r1, c1) = hit.amin(dim=0).tolist(), hit.amax(dim=0).tolist()
        pad_h, pad_w = math.floor(CROP_PADDING * size[0]), math.floor(CROP_PADDING * size[1])
        want = [max(r0 - pad_h, 0), max(c0 - pad_w, 0), min(r1 + 1 + pad_h, size[0]),
                min(c1 + 1 + pad_w, size[1])]
        assert box == want, f"box {box}, by nonzero() {want}"
    # Cumulative weights 1, 3, 3, 5 of 5 (masses 1, 4, 0, 4; by mass it would be 1, 5, 5, 9).
    masses = torch.tensor([1.0, 4.0, 0.0, 4.0]).view(1, 4, 1, 1).expand(5, 4, 1, 1)
    picked = maps_by_mass(masses, torch.tensor([0.0, 0.19, 0.2, 0.59, 0.99])).tolist()
    assert picked == [0, 0, 1, 1, 3], f"maps_by_mass picked {picked}"
    # Flat maps: the whole image, nothing dropped, no NaN.
    flat = torch.stack([torch.zeros(5, 5), torch.full((5, 5), 0.7)]).double()
    u = upsampled(flat, (107, 107))
    got = attention_boxes(flat, torch.full((2,), CROP_THETA[0]), CROP_PADDING, (107, 107)).tolist()
    mask = drop_mask(flat, torch.full((2,), DROP_THETA[0]), x[:2])
    assert (u == 0).all(), "a flat map's U is not 0"
    assert got == [[0, 0, 107, 107]] * 2, f"flat maps' boxes: {got}"
    assert (mask == 1).all(), "a flat map dropped pixels"
    print("torch_wsdan helpers: interpolation, map choice and flat maps OK")


def run(size: int, mode: str, batch: int, steps: int) -> None:
    labels = torch.arange(batch, device="cuda") % CLASSES
    time_training(f"wsdan_b{batch}_{size}", WSDAN().cuda().train(),
                  torch.randn(batch, 3, size, size, device="cuda"), mode, batch, steps,
                  lambda net, x: sum(net(x, labels, random_choices)["losses"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", action="store_true", help="time training steps on the GPU")
    parser.add_argument("--check", action="store_true", help="check the helpers (CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if not (args.time or args.check):
        parser.error("say --time or --check")
    if args.check:
        check()
    if args.time:
        for size in [299, 448]:
            for mode in ["fp32", "fp32-benchmark", "amp"]:
                run(size, mode, args.batch, args.steps)


if __name__ == "__main__":
    main()
