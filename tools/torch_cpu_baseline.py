#!/usr/bin/env python3
"""PyTorch on the CPU, the CPU backend's peer: torchvision's InceptionV3 forward+backward up to
Mixed_6e in train mode, float32, at the shapes `benches/inception_cpu.rs` times, on all of this
machine's cores unless --threads says otherwise. Prints one TORCHCPU line per shape.

    python3 tools/torch_cpu_baseline.py [--threads N]

Needs torch and torchvision (pip install torch torchvision; not part of the test command).
"""
import argparse
import time

import torch
import torchvision

CASES = [("mixed6e_w1.0_b8_160", 8, 160), ("mixed6e_w1.0_b4_299", 4, 299)]


def backbone() -> torch.nn.Module:
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    blocks = []
    for name, module in net.named_children():
        blocks.append(module)
        if name == "Mixed_6e":
            break
    return torch.nn.Sequential(*blocks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = backbone().train()
    for name, batch, size in CASES:
        x = torch.randn(batch, 3, size, size)
        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        step()
        reps = 5
        start = time.perf_counter()
        for _ in range(reps):
            step()
        secs = (time.perf_counter() - start) / reps
        print(f"TORCHCPU\t{name}\ttorch {torch.__version__} ({args.threads} threads)\t"
              f"{batch / secs:.2f} img/s\t{secs * 1e3:.0f} ms/step")


if __name__ == "__main__":
    main()
