#!/usr/bin/env python3
"""Writes torchvision's ImageNet InceptionV3 weights as a safetensors file with torchvision's
state-dict names, for `c2f train --weights FILE`. Needs torch, torchvision and safetensors, and
internet access the first time (torchvision downloads IMAGENET1K_V1).

    python3 tools/export_torchvision_weights.py inception_v3_imagenet.safetensors

The auxiliary head and `num_batches_tracked` are dropped: the runtime builds neither (it would
ignore them anyway).
"""
import sys

import torch
import torchvision
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT.safetensors")
    model = torchvision.models.inception_v3(weights="IMAGENET1K_V1")
    state = {
        name: tensor.detach().to(torch.float32).contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith("AuxLogits.") and not name.endswith("num_batches_tracked")
    }
    save_file(state, sys.argv[1])
    print(f"wrote {len(state)} tensors to {sys.argv[1]}")


if __name__ == "__main__":
    main()
