#!/usr/bin/env python3
"""Writes tests/data/wsdan_golden.safetensors: one WS-DAN training step (the raw, crop and drop
passes, forward and backward, and the center bank's move) and the inference that follows it, of
the PyTorch model in `tools/torch_wsdan.py`, in float64, so that the Rust WS-DAN can be held to
an implementation written independently, from the paper and the definition in docs/method.md.

Every value comes from the counter-based generator of `tools/make_golden.py` (same key, mix and
mapping), named by the Rust state names, with these ranges:
    backbone tensors (torchvision names)        make_golden.value_range
    attention.weight [M, 768, 1, 1], fc.weight  +-1/sqrt(fan_in)  (768 and M·768)
    attention.bn.weight                         [0.5, 1.5]
    attention.bn.bias, fc.bias                  [-0.1, 0.1]
    attention.bn.running_mean / running_var     0 / 1 (BatchNorm's start, not drawn)
    centers [1, M·768]                          0
    the input image ("input") [B, 3, H, W]      [-1, 1]

The case: batch 3 x 3 x 107 x 107, width 1.0 (Mixed_6e is 768 x 5 x 5), M = 4 maps, 5 classes,
labels [1, 3, 1], crop maps [2, 0, 1], drop maps [1, 3, 3], θ_c [0.5, 0.45, 0.55],
θ_d [0.3, 0.25, 0.45], λ 1, β 0.05, one center per part, the interpolation weights computed in
float32 (see torch_wsdan.py: computed in float64 instead, the crop logits move by 1e-4 and the
backbone's gradients by up to 0.6%, so an implementation must compute them the same way). Every
pixel of the up-sampled crop, drop and refinement maps is checked to lie at least 1e-6 from its
threshold (boxes and masks are discrete: a closer pixel could flip between implementations). In
inference mode the maps hardly depend on the image here (the drawn running statistics of the
backbone dominate), so the three samples share their refinement box.

Recorded (float64; index tensors as float64 too):
    "losses"                      [CE raw, CE crop, CE drop, center]
    "raw_logits", "crop_logits", "drop_logits"        [B, C]
    "boxes"                       [B, 4] crop boxes: y0, x0, y1, x1, rows y0..y1-1 and
                                  columns x0..x1-1 of the image (end exclusive)
    "crop_sums", "drop_sums"      [B] the sum of each crop (resized) and drop image
    "grad_norm/NAME", "grad_at/NAME"   every parameter's gradient (sum of the three passes): L2
                                  norm, and values at flat indices 0, n/3, 2n/3, n-1 (row-major)
    "centers"                     [1, M·768] after the step's B moves
    "running/NAME"                running_mean and running_var of Conv2d_1a_3x3.bn,
                                  Mixed_6e.branch_pool.bn and attention.bn after the three passes
    "infer_raw_logits", "infer_refined_logits"        [B, C] inference (BN in inference mode)
                                  after the step, parameters unchanged
    "infer_boxes"                 [B, 4] the refinement boxes, as "boxes"
    "infer_strict_boxes", "infer_strict_refined_logits"   the same at θ = 0.8 instead of 0.1:
                                  in this case the mean map passes 0.1 up to the image's edges
                                  (the box is the whole image and the refined logits equal the
                                  raw ones), so these exercise the padding and the crop of
                                  inference, for a model that takes θ as a parameter
    "second/losses", "second/grad_norm/NAME", "second/grad_at/NAME", "second/centers"
                                  a second training step after the inference (same parameters,
                                  choices and input, gradients zeroed), against the bank the
                                  first step moved: with the bank at zero the center term is
                                  |f|² = 1 for any f, and its gradient vanishes through the L2
                                  normalisation, so only this step tests it; the boxes, masks and
                                  logits are the first step's (train-mode BN ignores the running
                                  statistics)

Needs torch, torchvision, safetensors, numpy:
    python3 tools/make_wsdan_golden.py [OUT]    (checks, then writes)
    python3 tools/make_wsdan_golden.py --check  (the helpers' checks, central differences of the
                                                 loss along 3 directions of the head parameters,
                                                 a step with an all-zero crop map; writes nothing)
"""
import argparse

import numpy as np
import torch
from safetensors.torch import save_file

from make_c2f_golden import gradient_record, rust_name
from make_golden import uniform, value_range
from torch_wsdan import (CROP_PADDING, INFER_PADDING, INFER_THETA, WSDAN, check,
                         threshold_margin)

SIZE, MAPS, CLASSES = 107, 4, 5
LABELS = [1, 3, 1]
CROP_MAPS, DROP_MAPS = [2, 0, 1], [1, 3, 3]
THETA_C, THETA_D = [0.5, 0.45, 0.55], [0.3, 0.25, 0.45]
RUNNING = ["Conv2d_1a_3x3.bn", "Mixed_6e.branch_pool.bn", "attention.bn"]
STRICT_THETA = 0.8
MARGIN = 1e-6


def head_range(name: str, shape) -> tuple:
    if name == "attention.bn.weight":
        return 0.5, 1.5
    if name.endswith("bias"):
        return -0.1, 0.1
    bound = 1.0 / np.sqrt(np.prod(shape[1:]))
    return -bound, bound


def golden_net() -> WSDAN:
    """The case's network, in float64, train mode, every value from the generator."""
    net = WSDAN(maps=MAPS, classes=CLASSES, lam=1.0, beta=0.05)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            # The center bank and the attention BN's statistics keep their starts (0, and 0/1).
            if (name.endswith("num_batches_tracked") or name == "centers"
                    or name.startswith("attention.bn.running")):
                continue
            rust = rust_name(name)
            shape = tuple(tensor.shape)
            lo, hi = (value_range if name.startswith("backbone.") else head_range)(rust, shape)
            tensor.copy_(torch.from_numpy(uniform(rust, tensor.numel(), lo, hi)).view(shape))
    return net.double().train()


def golden_input() -> torch.Tensor:
    batch = len(LABELS)
    x = uniform("input", batch * 3 * SIZE * SIZE, -1.0, 1.0)
    return torch.from_numpy(x).double().view(batch, 3, SIZE, SIZE)


def fixed(crop_maps, drop_maps, theta_c, theta_d):
    """A `choose` for WSDAN.forward that gives these choices whatever the maps."""
    choices = (torch.tensor(crop_maps), torch.tensor(drop_maps),
               torch.tensor(theta_c, dtype=torch.float64), torch.tensor(theta_d, dtype=torch.float64))
    return lambda a: choices


CHOOSE = fixed(CROP_MAPS, DROP_MAPS, THETA_C, THETA_D)


def margins(maps, size) -> dict:
    """The distance of the nearest up-sampled pixel to its threshold, per thresholded map, with
    the weights in float32 (as recorded) and float64 (PyTorch's float64 path)."""
    rows = torch.arange(maps.shape[0])
    cases = {
        "crop": (maps[rows, torch.tensor(CROP_MAPS)], torch.tensor(THETA_C, dtype=torch.float64)),
        "drop": (maps[rows, torch.tensor(DROP_MAPS)], torch.tensor(THETA_D, dtype=torch.float64)),
    }
    return {(what, w): threshold_margin(m, theta, size, w)
            for what, (m, theta) in cases.items() for w in (torch.float32, torch.float64)}


def require_margins(found: dict, what: str) -> None:
    for (case, weights), margin in found.items():
        print(f"{what} {case} threshold margin ({weights}): {margin:.3e}")
        if margin < MARGIN:
            raise SystemExit(f"{what} {case}: a pixel lies {margin:.2e} from its threshold, under "
                             f"{MARGIN}: pick other thresholds")


def head_loss_check(net: WSDAN, x, labels) -> None:
    """Central differences of the float64 training loss in 3 random directions of the head
    parameters against autograd, with the boxes and masks unchanged by the steps, against the
    bank moved by one step (from zero the center term is constant)."""
    heads = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    with torch.no_grad():
        net(x, labels, CHOOSE)
    # Every evaluation starts from the same center bank and running statistics.
    buffers = {n: b.clone() for n, b in net.named_buffers()}

    def loss():
        net.load_state_dict(buffers, strict=False)
        out = net(x, labels, CHOOSE)
        return sum(out["losses"]), out["boxes"], out["drop"]

    net.zero_grad()
    value, boxes, drop = loss()
    value.backward()
    g = torch.Generator().manual_seed(1)
    eps = 1e-5
    for direction in range(3):
        d = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in heads]
        norm = torch.sqrt(sum((v * v).sum() for v in d))
        d = [v / norm for v in d]
        analytic = sum((p.grad * v).sum() for p, v in zip(heads, d)).item()
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, v in zip(heads, d):
                    p.add_(sign * eps * v)
                value_at, boxes_at, drop_at = loss()
                for p, v in zip(heads, d):
                    p.sub_(sign * eps * v)
            if not (torch.equal(boxes_at, boxes) and torch.equal(drop_at, drop)):
                raise SystemExit("a finite-difference step moved a box or a mask")
            values.append(value_at.item())
        numeric = (values[0] - values[1]) / (2 * eps)
        error = abs(numeric - analytic) / max(abs(analytic), 1e-300)
        print(f"direction {direction}: autograd {analytic:.12e}, central difference "
              f"{numeric:.12e}, relative {error:.1e}")
        if error > 1e-6:
            raise SystemExit(f"finite differences disagree with autograd: {error:.2e}")


def flat_map_check(x, labels) -> None:
    """A training step and an inference where the crop map of sample 0 is all zero (its BN bias
    pushed far below zero): the whole image is its crop, and nothing is NaN."""
    net = golden_net()
    with torch.no_grad():
        net.attention.bn.bias[CROP_MAPS[0]] = -1e3
    out = net(x, labels, CHOOSE)
    total = sum(out["losses"])
    total.backward()
    assert (out["maps"][0, CROP_MAPS[0]] == 0).all(), "the map is not all zero"
    assert out["boxes"][0].tolist() == [0, 0, SIZE, SIZE], f"box {out['boxes'][0].tolist()}"
    assert torch.allclose(out["crop"][0], x[0], rtol=0, atol=1e-12), "a whole-image crop moved"
    finite = [torch.isfinite(total)] + [torch.isfinite(p.grad).all() for p in net.parameters()]
    assert all(finite), "a NaN or infinity in the step"
    net.eval()
    with torch.no_grad():
        inferred = net.infer(x)
    assert all(torch.isfinite(v).all() for v in inferred.values()), "a NaN in inference"
    print("flat map: whole-image crop, finite loss, gradients and inference")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="tests/data/wsdan_golden.safetensors")
    parser.add_argument("--check", action="store_true",
                        help="also check finite differences and a flat map, write nothing")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    check()
    net = golden_net()
    x = golden_input()
    labels = torch.tensor(LABELS)
    if args.check:
        head_loss_check(net, x, labels)
        flat_map_check(x, labels)
        return

    out = net(x, labels, CHOOSE)
    losses = out["losses"]
    sum(losses).backward()
    require_margins(margins(out["maps"].detach(), (SIZE, SIZE)), "training")

    record = {
        "losses": torch.stack([term.detach() for term in losses]),
        "boxes": out["boxes"].double().contiguous(),
        "crop_sums": out["crop"].sum(dim=(1, 2, 3)),
        "drop_sums": out["drop"].sum(dim=(1, 2, 3)),
    }
    for what in ["raw", "crop", "drop"]:
        record[f"{what}_logits"] = out[f"{what}_logits"].detach().contiguous()
    record.update(gradient_record(net))
    state = net.state_dict()
    record["centers"] = state["centers"].clone()
    for bn in RUNNING:
        for stat in ["running_mean", "running_var"]:
            name = f"{bn}.{stat}"
            record[f"running/{name}"] = state[name if bn.startswith("attention") else
                                              f"backbone.{name}"].clone()

    net.eval()
    for prefix, threshold in [("infer_", INFER_THETA), ("infer_strict_", STRICT_THETA)]:
        with torch.no_grad():
            inferred = net.infer(x, threshold)
        mean_map = inferred["maps"].mean(dim=1)
        theta = torch.full((len(LABELS),), threshold, dtype=torch.float64)
        require_margins({(f"refinement at {threshold}", w):
                         threshold_margin(mean_map, theta, (SIZE, SIZE), w)
                         for w in (torch.float32, torch.float64)}, "inference")
        if threshold == INFER_THETA:
            record["infer_raw_logits"] = inferred["raw_logits"].contiguous()
        record[f"{prefix}refined_logits"] = inferred["refined_logits"].contiguous()
        record[f"{prefix}boxes"] = inferred["boxes"].double().contiguous()
        print(f"refinement boxes at {threshold}, padding {INFER_PADDING}: "
              f"{inferred['boxes'].tolist()}")

    # The same step again against the moved bank: with the bank at zero the center term is
    # |f|^2 = 1 whatever f, so its gradient vanishes through the normalisation; here it does not.
    net.train()
    net.zero_grad()
    second = net(x, labels, CHOOSE)["losses"]
    sum(second).backward()
    record["second/losses"] = torch.stack([term.detach() for term in second])
    record.update({f"second/{k}": v for k, v in gradient_record(net).items()})
    record["second/centers"] = net.centers.clone()

    print(f"crop boxes (y0, x0, y1, x1), padding {CROP_PADDING}: {out['boxes'].tolist()}")
    print(f"dropped pixels per sample: "
          f"{(out['drop'] == 0).all(dim=1).sum(dim=(1, 2)).tolist()} of {SIZE * SIZE}")
    save_file(record, args.out, metadata={
        "torch": torch.__version__,
        "case": f"float64, batch {len(LABELS)}x3x{SIZE}x{SIZE}, width 1.0, {MAPS} maps, "
                f"{CLASSES} classes, labels {LABELS}, crop maps {CROP_MAPS}, drop maps "
                f"{DROP_MAPS}, theta_c {THETA_C}, theta_d {THETA_D}, lambda 1, beta 0.05, "
                f"one center per part from zero, interpolation weights in float32, train mode "
                f"then inference",
    })
    print(f"wrote {len(record)} tensors to {args.out}; losses "
          f"{[round(term.item(), 6) for term in losses]}")


if __name__ == "__main__":
    main()
