#!/usr/bin/env python3
"""Writes tests/data/c2f_golden.safetensors: one Coarse2Fine training step (forward and backward,
both passes, the fine branch and the center bank) of the PyTorch model in
`tools/torch_c2f_baseline.py`, in float64, so that `tests/model/c2f_golden.rs` can hold the Rust model
to an implementation written independently with autograd, not only to its own finite
differences. The same class is the model `tools/gpu-check.sh` times against ours, so this also
shows that the two time the same computation.

Every value comes from the counter-based generator of `tools/make_golden.py` (same key, mix and
mapping), with these ranges:
    backbone tensors (torchvision names)      make_golden.value_range
    upsampler.{i}.weight                       [0, 1/sqrt(Cout*4*4)]   (the Rust init_range)
    upsampler.{i}.bias                         [0, 0.1]
    attention.weight, fc_coarse.weight,        +-1/sqrt(fan_in)
      fc_fine.weight
    fc_coarse.bias, fc_fine.bias               [-0.1, 0.1]
    centers                                    0, as the paper starts them
    the input image ("input")                  [-1, 1]

The case: batch 3 x 3 x 107 x 107, width 1.0 (Mixed_6e is 768 x 5 x 5), M = 4 maps, 5 classes,
labels [1, 3, 1] (class 1 twice, so its center moves twice within the step; classes 0, 2 and 4
absent, so theirs stay zero), chosen maps [2, 0, 1], lambda 1, beta 0.05, the paper's center
rule (Eq. 2 and 3 on raw centers from zero) with one bank for both passes, the default up-sampler for 5 -> 107
(three stride-2 transposed convolutions, 8 channels between), BatchNorm in train mode (each pass
updates the shared running statistics, coarse then fine).

Recorded (float64): "losses" (coarse CE, fine CE, coarse and fine center terms), "coarse_logits",
"fine_logits", "upsampled" (the up-sampled map before the mask's normalisation), for every
parameter "grad_norm/NAME" and "grad_at/NAME" (flat indices 0, n/3, 2n/3, n-1), the center bank
after both passes' updates as "centers", and the running statistics of two BN
layers after both passes as "running/NAME".

Needs torch, torchvision, safetensors, numpy:  python3 tools/make_c2f_golden.py [OUT]
"""
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from make_golden import uniform, value_range
from torch_c2f_baseline import Coarse2Fine

SIZE, MAPS, CLASSES = 107, 4, 5
LABELS, CHOSEN = [1, 3, 1], [2, 0, 1]
RUNNING = ["Conv2d_1a_3x3.bn", "Mixed_6e.branch_pool.bn"]


def rust_name(name: str) -> str:
    """The Rust model's state name of a PyTorch tensor name."""
    if name.startswith("backbone."):
        return name[len("backbone."):]
    return name


def gradient_record(net) -> dict:
    """"grad_norm/NAME" (L2 norm) and "grad_at/NAME" (flat indices 0, n/3, 2n/3, n-1) of every
    parameter's gradient, by its Rust name. `tools/make_wsdan_golden.py` records them too."""
    record = {}
    for name, p in net.named_parameters():
        g = p.grad.detach().reshape(-1)
        n = g.numel()
        rust = rust_name(name)
        record[f"grad_norm/{rust}"] = g.norm().reshape(1)
        record[f"grad_at/{rust}"] = g[torch.tensor([0, n // 3, 2 * n // 3, n - 1])].contiguous()
    return record


def head_range(name: str, shape) -> tuple:
    if name.startswith("upsampler."):
        if name.endswith("bias"):
            return 0.0, 0.1
        return 0.0, 1.0 / np.sqrt(np.prod(shape[1:]))
    if name.endswith("bias"):
        return -0.1, 0.1
    bound = 1.0 / np.sqrt(np.prod(shape[1:]))
    return -bound, bound


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[out, in] weights of PyTorch's bilinear resize (align_corners=False) computed in float32,
    as its float32 forward and our kernels compute them for every type; its float64 forward
    computes them in float64, a difference of up to 1e-6 that the fine pass amplifies."""
    f32 = np.float32
    scale = f32(size_in) / f32(size_out)
    r = np.zeros((size_out, size_in), dtype=np.float64)
    for o in range(size_out):
        src = max(f32(scale * f32(o + 0.5)) - f32(0.5), f32(0))
        i0 = min(int(np.floor(src)), size_in - 1)
        i1 = i0 + 1 if i0 < size_in - 1 else i0
        lam = f32(src - f32(i0))
        r[o, i0] += float(f32(1) - lam)
        r[o, i1] += float(lam)
    return torch.from_numpy(r)


def resize(u, size: int):
    return resize_matrix(u.shape[2], size) @ u @ resize_matrix(u.shape[3], size).T


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/c2f_golden.safetensors"
    torch.use_deterministic_algorithms(True)
    net = Coarse2Fine(SIZE, maps=MAPS, classes=CLASSES, lam=1.0, beta=0.05, resize=resize)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            # The center bank starts at zero (the paper's start), as registered.
            if name.endswith("num_batches_tracked") or name == "centers":
                continue
            rust = rust_name(name)
            shape = tuple(tensor.shape)
            lo, hi = (value_range if name.startswith("backbone.") else head_range)(rust, shape)
            tensor.copy_(torch.from_numpy(uniform(rust, tensor.numel(), lo, hi)).view(shape))
    net = net.double().train()

    batch = len(LABELS)
    x = torch.from_numpy(uniform("input", batch * 3 * SIZE * SIZE, -1.0, 1.0)).double()
    out_ = net(x.view(batch, 3, SIZE, SIZE), torch.tensor(LABELS), torch.tensor(CHOSEN))
    losses = out_["losses"]
    sum(losses).backward()

    record = {
        "losses": torch.stack([l.detach() for l in losses]),
        "coarse_logits": out_["coarse_logits"].detach().contiguous(),
        "fine_logits": out_["fine_logits"].detach().contiguous(),
        "upsampled": out_["upsampled"].detach().contiguous(),
    }
    record.update(gradient_record(net))
    state = net.state_dict()
    record["centers"] = state["centers"].detach().clone()
    for bn in RUNNING:
        for stat in ["running_mean", "running_var"]:
            record[f"running/{bn}.{stat}"] = state[f"backbone.{bn}.{stat}"].detach().clone()
    save_file(record, out, metadata={
        "torch": torch.__version__,
        "case": f"float64, batch {batch}x3x{SIZE}x{SIZE}, width 1.0, {MAPS} maps, {CLASSES} classes, "
                f"labels {LABELS}, chosen maps {CHOSEN}, lambda 1, beta 0.05, the paper's "
                f"center rule from zero, one bank, train mode",
    })
    print(f"wrote {len(record)} tensors to {out}; losses {[round(l.item(), 6) for l in losses]}")


if __name__ == "__main__":
    main()
