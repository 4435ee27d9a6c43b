#!/usr/bin/env python3
"""PyTorch on the GPU, the peer of the small-op kernel benches: the same op, shape and step
(forward then backward, or one update) as the Rust benches in `benches/{sgd,axpby,softmax_ce,
sigmoid_bce,mask,augment}.rs`, written as a PyTorch user writes it (autograd for the gradients, the
optimizer's for-loop, foreach and fused SGD). Timed with CUDA events over 50 calls after 3
warm-up calls, as the Rust benches' summary lines are; prints one line per case:

    TORCHOP<TAB>group<TAB>case<TAB>variant<TAB>card<TAB>us

`group` and `case` are the Rust bench's group and its `ours_` row's name without the prefix.
`--join LOGDIR` reads those lines and the benches' `BENCH` lines from LOGDIR/bench-*.txt and
prints one `VSTORCH` line per pair: how many times faster our kernel is than PyTorch (target:
at least 1x). It needs no torch, so it can be checked without a GPU.

    python3 tools/torch_ops_baseline.py            # on the GPU machine
    python3 tools/torch_ops_baseline.py --join DIR
"""
import argparse
import glob
import os
import sys

WARM_UP, ITERS = 3, 50
INCEPTION_V3_PARAMS = 23_834_568  # torchvision inception_v3(aux_logits=False)


def time_us(torch, step) -> float:
    for _ in range(WARM_UP):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ITERS):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / ITERS


def cases(torch):
    """Yields (group, case, variant, step) with the Rust benches' shapes."""
    F = torch.nn.functional
    dev = "cuda"

    def rand(*shape):
        return torch.empty(*shape, device=dev).uniform_(-1, 1)

    # SGD: benches/sgd.rs, momentum 0.9, weight decay 1e-5, one flat buffer.
    for variant in ["for-loop", "foreach", "fused"]:
        p = torch.nn.Parameter(rand(INCEPTION_V3_PARAMS))
        p.grad = rand(INCEPTION_V3_PARAMS)
        opt = torch.optim.SGD([p], lr=1e-3, momentum=0.9, weight_decay=1e-5,
                              foreach=variant == "foreach", fused=variant == "fused" or None)
        yield "sgd_gpu_f32", f"n{INCEPTION_V3_PARAMS}", variant, opt.step

    # axpby: benches/axpby.rs.
    parts = 64 * 8 * 768
    for n, alpha, beta, name in [(parts, 100.0, 0.0, "beta0"), (parts, 100.0, 0.5, "beta0.5"),
                                 (INCEPTION_V3_PARAMS, 1.0, 1.0, "beta1")]:
        x, y = rand(n), rand(n)
        if beta == 0.0:
            step = lambda x=x, y=y, a=alpha: torch.mul(x, a, out=y)
        elif beta == 1.0:
            step = lambda x=x, y=y, a=alpha: y.add_(x, alpha=a)
        else:
            step = lambda x=x, y=y, a=alpha, b=beta: y.mul_(b).add_(x, alpha=a)
        yield "axpby_gpu_f32", f"n{n}_{name}", "eager", step

    # Softmax cross-entropy: benches/softmax_ce.rs, mean loss and its gradient.
    for classes in [200, 5089]:
        x = (rand(64, classes) * 6).requires_grad_()
        labels = torch.randint(0, classes, (64,), device=dev)
        step = lambda x=x, labels=labels: torch.autograd.grad(F.cross_entropy(x, labels), x)
        yield "softmax_ce_gpu_f32", f"B64_C{classes}", "autograd", step

    # Sigmoid BCE: benches/sigmoid_bce.rs.
    for batch, outputs in [(64, 40), (1024, 1000)]:
        x = (rand(batch, outputs) * 6).requires_grad_()
        t = torch.randint(0, 2, (batch, outputs), device=dev).float()
        step = lambda x=x, t=t: torch.autograd.grad(F.binary_cross_entropy_with_logits(x, t), x)
        yield "sigmoid_bce_gpu_f32", f"B{batch}_A{outputs}", "autograd", step

    # The fine branch: benches/mask.rs, batch 64 at 299².
    a = rand(64, 8, 17, 17).requires_grad_()
    dy = rand(64, 8, 17, 17)
    yield "mask_gpu_f32", "relu_B64_M8_17x17", "autograd", \
        lambda: torch.autograd.grad(torch.relu(a), a, dy)
    k = torch.arange(64, device=dev) % 8
    rows = torch.arange(64, device=dev)
    ds = rand(64, 17, 17)
    a.grad = torch.zeros_like(a)

    def select():
        # The chosen map's gradient accumulates into A's, as the Rust bench's does.
        a[rows, k].backward(ds)
    yield "mask_gpu_f32", "select_B64_M8_17x17", "autograd", select
    small = rand(64, 1, 272, 272).requires_grad_()
    big_grad = rand(64, 1, 299, 299)
    yield "mask_gpu_f32", "resize_B64_272to299", "autograd", lambda: torch.autograd.grad(
        F.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False), small,
        big_grad)
    u = rand(64, 1, 299, 299).requires_grad_()
    image, dxf = rand(64, 3, 299, 299), rand(64, 3, 299, 299)

    def mask():
        top = u.amax(dim=(2, 3), keepdim=True)
        mk = torch.where(top > 0, u.clamp_min(0) / top, torch.ones_like(u))
        return torch.autograd.grad(mk * image, u, dxf)
    yield "mask_gpu_f32", "mask_B64_C3_299x299", "autograd", mask
    yield from augment_cases(torch, rand)


def augment_cases(torch, rand):
    """WS-DAN's augmentation: benches/augment.rs, batch 64, 32 maps, its boxes and thresholds."""
    F = torch.nn.functional
    dev = "cuda"
    try:
        import torchvision
    except ImportError:
        torchvision = None
    gen = torch.Generator(device="cpu").manual_seed(7)
    for side, map_side in [(299, 17), (448, 26)]:
        x = rand(64, 3, side, side)
        # Boxes of 0.4 to 0.9 of each side, as the Rust bench's (other draws, the same sizes).
        length = (side * (0.4 + 0.5 * torch.rand(64, 2, generator=gen))).long().clamp_min(1)
        start = (torch.rand(64, 2, generator=gen) * (side - length + 1)).long()
        boxes = torch.cat([start, start + length], dim=1).tolist()  # y0, x0, y1, x1

        def crop_loop(x=x, boxes=boxes, side=side):
            return torch.cat([F.interpolate(x[i:i + 1, :, y0:y1, x0:x1], size=(side, side),
                                            mode="bilinear", align_corners=True)
                              for i, (y0, x0, y1, x1) in enumerate(boxes)])
        yield "augment_gpu_f32", f"crop_B64_C3_{side}x{side}", "loop", crop_loop
        # roi_align samples each output bin's centre, not the align_corners grid: the same
        # work, not the same values.
        if torchvision is not None:
            rois = torch.tensor([[i, x0, y0, x1 - 1, y1 - 1] for i, (y0, x0, y1, x1)
                                 in enumerate(boxes)], dtype=torch.float, device=dev)
            yield "augment_gpu_f32", f"crop_B64_C3_{side}x{side}", "roi_align", \
                lambda x=x, rois=rois, side=side: torchvision.ops.roi_align(
                    x, rois, (side, side), sampling_ratio=1, aligned=False)

        maps = rand(64, 1, map_side, map_side).clamp_min(0)
        theta_d = torch.empty(64, 1, 1, 1, device=dev).uniform_(0.2, 0.5)

        def up(m, side=side):
            lo = m.amin(dim=(2, 3), keepdim=True)
            hi = m.amax(dim=(2, 3), keepdim=True)
            return F.interpolate((m - lo) / (hi - lo), size=(side, side), mode="bilinear",
                                 align_corners=True)
        yield "augment_gpu_f32", f"drop_B64_C3_{side}x{side}_maps{map_side}x{map_side}", \
            "eager", lambda x=x, maps=maps, t=theta_d: x * (up(maps) < t)

        a = rand(64, 32, map_side, map_side).clamp_min(0)
        draws = torch.rand(64, 1, device=dev)
        theta_c = torch.empty(64, 1, 1, device=dev).uniform_(0.4, 0.6)
        rows = torch.arange(64, device=dev)
        pixels = torch.arange(side, device=dev)

        def boxes_step(a=a, draws=draws, t=theta_c, side=side):
            w = (a.sum(dim=(2, 3)).clamp_min(0) + 1e-12).sqrt()
            cdf = w.cumsum(1)
            k = torch.searchsorted(cdf, draws * cdf[:, -1:], right=True).clamp_max(31)
            hit = up(a[rows, k[:, 0]].unsqueeze(1))[:, 0] >= t
            found = []
            for axis in (2, 1):  # rows, then columns
                any_hit = hit.any(axis)
                first = torch.where(any_hit, pixels, side).amin(1)
                last = torch.where(any_hit, pixels, -1).amax(1)
                found += [first, last]
            pad = int(0.1 * side)
            return torch.stack([(found[0] - pad).clamp_min(0), (found[2] - pad).clamp_min(0),
                                (found[1] + 1 + pad).clamp_max(side),
                                (found[3] + 1 + pad).clamp_max(side)], dim=1)
        yield "augment_gpu_f32", f"boxes_B64_M32_{map_side}x{map_side}_to{side}", "eager", \
            boxes_step


def measure() -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    card = torch.cuda.get_device_name()
    for group, case, variant, step in cases(torch):
        us = time_us(torch, step)
        print(f"TORCHOP\t{group}\t{case}\t{variant}\t{card}\t{us:.2f}", flush=True)
        torch.cuda.empty_cache()


def join(logdir: str) -> None:
    ours, torch_rows = {}, []
    for path in sorted(glob.glob(os.path.join(logdir, "bench-*.txt"))):
        with open(path) as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if cols[0] == "BENCH" and len(cols) >= 5 and cols[2].startswith("ours_"):
                    ours[(cols[1], cols[2][len("ours_"):])] = float(cols[4])
                elif cols[0] == "TORCHOP" and len(cols) == 6:
                    torch_rows.append(cols)
    for _, group, case, variant, _, us in torch_rows:
        mine = ours.get((group, case))
        if mine is None:
            print(f"VSTORCH\t{group}\t{case} vs PyTorch {variant}\tno ours_{case} BENCH line")
            continue
        speedup = float(us) / mine
        verdict = "meets" if speedup >= 1.0 else "misses"
        print(f"VSTORCH\t{group}\t{case} vs PyTorch {variant}\t{speedup:.2f}x\t"
              f"{verdict} the 1x target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--join", metavar="LOGDIR",
                        help="compare TORCHOP and BENCH lines already in LOGDIR/bench-*.txt")
    args = parser.parse_args()
    if args.join:
        join(args.join)
    else:
        measure()


if __name__ == "__main__":
    sys.exit(main())
