#!/usr/bin/env python3
"""Writes tests/data/inception_golden.safetensors: torchvision's InceptionV3 run forward and
backward in float64, in train mode, on a fixed small batch, with every parameter, running statistic and input
value drawn from a counter-based generator that the Rust side implements identically
(`c2f_inception::init`), so no weights file needs committing.

The generator (documented here and in crates/c2f-inception/src/init.rs):
    key(name)   = FNV-1a 64 of the tensor name's UTF-8 bytes
    mix(z)      = splitmix64's output function:
                  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9; z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
                  z ^ (z >> 31)                                  (all mod 2^64)
    u(name, i)  = (mix(key(name) + (i + 1) * 0x9e3779b97f4a7c15) >> 40) / 2^24   in [0, 1)
    value       = float32(lo + (hi - lo) * u), computed in float64
with (lo, hi) per tensor: conv and fc weights ±1/sqrt(fan_in), fc.bias ±1/sqrt(fan_in),
bn.weight [0.8, 1.2], bn.bias [-0.1, 0.1], running_mean [-0.1, 0.1], running_var [0.8, 1.2],
the input image ("input") [-1, 1]. Labels are [3, 7].

The case: batch 2 x 3 x 107 x 107, width 1.0, 10 classes, aux head off, transform_input off,
BatchNorm in train mode (momentum 0.1, eps 0.001), dropout before fc replaced by identity (its
random mask cannot match across implementations), mean softmax cross-entropy.

Why float64: in float32, PyTorch's own gradients for this case differ from its float64 ones by
about 2% (median over parameters; ReLU and max-pool decisions flip on rounding), so a float32
golden file cannot hold any implementation to 1e-4. The float64 run can: the Rust CPU backend runs
in f64 against it, and its f32 run is checked against it with bounds that say what f32 can do.

Recorded (float64 unless said): "mixed_6e" (the whole Mixed_6e output), "logits", "loss", for every parameter
"grad_norm/NAME" (L2 norm of its gradient) and "grad_at/NAME" (the gradient at flat indices
0, n/3, 2n/3, n-1), the updated running statistics of two BN layers as "running/NAME", and
"init/NAME" (float32: the first 8 generated values of two tensors, to check the generator).

Needs torch, torchvision, safetensors, numpy:  python3 tools/make_golden.py [OUT]
"""
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

MASK = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(name: str, n: int, lo: float, hi: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a(name)) + i * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    return (lo + (hi - lo) * u).astype(np.float32)


def value_range(name: str, shape) -> tuple:
    if name.endswith("running_mean") or name.endswith("bn.bias"):
        return -0.1, 0.1
    if name.endswith("running_var") or name.endswith("bn.weight"):
        return 0.8, 1.2
    fan_in = int(np.prod(shape[1:])) if name.endswith("weight") else int(shape[0])
    if name == "fc.bias":
        fan_in = 2048
    bound = 1.0 / np.sqrt(fan_in)
    return -bound, bound


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/inception_golden.safetensors"
    torch.use_deterministic_algorithms(True)
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=10, transform_input=False
    )
    model.dropout = torch.nn.Identity()
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name.endswith("num_batches_tracked"):
                continue
            lo, hi = value_range(name, tuple(tensor.shape))
            tensor.copy_(torch.from_numpy(uniform(name, tensor.numel(), lo, hi)).view(tensor.shape))
    init = {name: state[name].reshape(-1)[:8].clone() for name in ["Conv2d_1a_3x3.conv.weight"]}
    model = model.double()
    model.train()
    state = model.state_dict()

    x32 = torch.from_numpy(uniform("input", 2 * 3 * 107 * 107, -1.0, 1.0)).view(2, 3, 107, 107)
    init["input"] = x32.reshape(-1)[:8].clone()
    x = x32.double()
    labels = torch.tensor([3, 7])
    captured = {}
    model.Mixed_6e.register_forward_hook(lambda m, i, o: captured.__setitem__("mixed_6e", o))
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()

    record = {
        "mixed_6e": captured["mixed_6e"].detach().contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    for name, p in model.named_parameters():
        g = p.grad.detach().reshape(-1).double()
        n = g.numel()
        at = torch.tensor([0, n // 3, 2 * n // 3, n - 1])
        record[f"grad_norm/{name}"] = g.norm().reshape(1)
        record[f"grad_at/{name}"] = g[at]
    for bn in ["Conv2d_1a_3x3.bn", "Mixed_6e.branch_pool.bn"]:
        for stat in ["running_mean", "running_var"]:
            record[f"running/{bn}.{stat}"] = state[f"{bn}.{stat}"].detach().clone()
    for name, values in init.items():
        record[f"init/{name}"] = values
    save_file(record, out, metadata={
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "case": "float64, batch 2x3x107x107, width 1.0, 10 classes, train mode, dropout off, labels [3, 7]",
    })
    print(f"wrote {len(record)} tensors to {out}; loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
