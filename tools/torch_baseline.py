#!/usr/bin/env python3
"""PyTorch on the GPU, the CUDA backend's peer: torchvision's InceptionV3 forward+backward in
train mode at batch 64, 299² and 448², up to Mixed_6e and full (1000 classes, aux head off),
in fp32 (cudnn.benchmark off, as PyTorch defaults; the peer of the Rust bench's `_f32` rows),
fp32 + cudnn.benchmark (the peer of its `_f32_timed` rows), tf32 (TF32 allowed in cuDNN and
cuBLAS, cudnn.benchmark off; the peer of its `_tf32` rows), and AMP (bf16 autocast) +
channels_last + cudnn.benchmark. TF32 is off in every mode but tf32. A step is what the Rust bench's is: forward, backward and an SGD update (momentum
0.9, weight decay 1e-5; PyTorch's default foreach implementation). Timed with CUDA events after a
warm-up; prints one TORCHGPU line per case (images/s, ms/step, peak memory).
`tools/torch_c2f_baseline.py` does the same for a Coarse2Fine step, with `model` and
`time_training`.
`tools/gpu-check.sh run` calls it beside the Rust benches, on the same card.

    python3 tools/torch_baseline.py [--batch 64] [--steps 10]
"""
import argparse
from collections import OrderedDict

import torch
import torchvision


def model(depth: str) -> torch.nn.Module:
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    if depth == "full":
        return net
    # Named blocks keep torchvision's tensor names (`Conv2d_1a_3x3.conv.weight`, ...).
    blocks = OrderedDict()
    for name, module in net.named_children():
        blocks[name] = module
        if name == "Mixed_6e":
            break
    return torch.nn.Sequential(blocks)


# The modes, in the order they run.
MODES = ["fp32", "fp32-benchmark", "tf32", "amp"]


def set_mode(mode: str) -> None:
    """cudnn.benchmark on for every mode but plain fp32 and tf32; TF32 off but in tf32."""
    torch.backends.cudnn.benchmark = mode not in ("fp32", "tf32")
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"


def timed(name: str, mode: str, batch: int, steps: int, step) -> None:
    """Runs `step` three times, then times `steps` of it; prints the TORCHGPU line."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"TORCHGPU\t{name}\t{mode}\t{torch.cuda.get_device_name()}\t"
          f"{batch / ms * 1e3:.0f} img/s\t{ms:.1f} ms/step\t{peak:.1f} GiB peak", flush=True)
    torch.cuda.empty_cache()


def time_training(name: str, net, x, mode: str, batch: int, steps: int, loss) -> None:
    """Times steps of forward (`loss(net, x)`), backward and SGD in `mode`: channels_last and
    bf16 autocast under AMP."""
    set_mode(mode)
    if mode == "amp":
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "amp"):
            value = loss(net, x)
        value.backward()
        opt.step()

    timed(name, mode, batch, steps, step)


def run(depth: str, size: int, mode: str, batch: int, steps: int) -> None:
    time_training(f"{depth}_b{batch}_{size}", model(depth).cuda().train(),
                  torch.randn(batch, 3, size, size, device="cuda"), mode, batch, steps,
                  lambda net, x: net(x).float().square().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    for depth in ["mixed6e", "full"]:
        for size in [299, 448]:
            for mode in MODES:
                run(depth, size, mode, args.batch, args.steps)


if __name__ == "__main__":
    main()
