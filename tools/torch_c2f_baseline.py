#!/usr/bin/env python3
"""PyTorch on the GPU, the peer of `benches/coarse2fine_gpu.rs`: one Coarse2Fine training step as
a PyTorch user would write it, with the Rust model's defaults (torchvision's InceptionV3 up to
Mixed_6e shared by both passes, M = 8 attention maps by a 1x1 convolution and ReLU, BAP with the
signed square root and per-sample normalisation, coarse and fine heads on 100 x the part features
for 200 classes, center losses with moving-average centers (lambda 1, beta 0.05), the learnable
up-sampler of stride-2 transposed convolutions (kernel 4, 8 channels between layers) and a
bilinear resize to the input, the per-sample max-normalised mask, and SGD with momentum 0.9 and
weight decay 1e-5), at batch 64, 299² and 448², in the modes of `tools/torch_baseline.py`.
Prints TORCHGPU lines named as the Rust bench's NETBENCH lines (`coarse2fine_b64_299`, ...).

    python3 tools/torch_c2f_baseline.py [--batch 64] [--steps 10]
"""
import argparse

import torch
import torch.nn.functional as F

from torch_baseline import model, time_training

MAPS, CLASSES, LAMBDA, BETA = 8, 200, 1.0, 0.05


def upsampler_channels(side: int, size: int) -> list:
    """The Rust project's default stack (`upsampler::default_channels`): as many stride-2 layers
    as take the map side to at least a quarter of the input side, 8 channels between them."""
    layers = 1
    while (side << layers) * 4 < size:
        layers += 1
    return [1] + [8] * (layers - 1) + [1]


class Coarse2Fine(torch.nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.backbone = model("mixed6e")
        with torch.no_grad():
            side = self.backbone(torch.zeros(1, 3, size, size)).shape[-1]
        self.attention = torch.nn.Conv2d(768, MAPS, 1, bias=False)
        self.coarse = torch.nn.Linear(MAPS * 768, CLASSES)
        self.fine = torch.nn.Linear(MAPS * 768, CLASSES)
        channels = upsampler_channels(side, size)
        layers = []
        for i, (ci, co) in enumerate(zip(channels, channels[1:])):
            layers.append(torch.nn.ConvTranspose2d(ci, co, 4, stride=2, padding=1))
            if i + 2 < len(channels):
                layers.append(torch.nn.ReLU())
        self.upsampler = torch.nn.Sequential(*layers)
        self.register_buffer("centers_coarse", torch.zeros(CLASSES, MAPS * 768))
        self.register_buffer("centers_fine", torch.zeros(CLASSES, MAPS * 768))

    def parts(self, x):
        f = self.backbone(x)
        a = F.relu(self.attention(f))
        p = torch.einsum("bmhw,bnhw->bmn", a, f) / (f.shape[2] * f.shape[3])
        s = torch.sign(p) * torch.sqrt(p.abs() + 1e-12)
        return a, F.normalize(s.flatten(1), dim=1, eps=1e-12)

    def center_loss(self, z, labels, centers):
        loss = (z - centers[labels]).square().sum(dim=1).mean()
        with torch.no_grad():
            centers.index_add_(0, labels, BETA * (z.detach().float() - centers[labels]))
        return loss

    def forward(self, x, labels, chosen):
        a, z = self.parts(x)
        coarse = self.coarse(100 * z)
        u = a[torch.arange(a.shape[0], device=a.device), chosen].unsqueeze(1)
        u = F.interpolate(self.upsampler(u), size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        top = u.amax(dim=(2, 3), keepdim=True)
        mask = torch.where(top > 0, u.clamp_min(0) / top, torch.ones_like(u))
        _, zf = self.parts(x * mask)
        fine = self.fine(100 * zf)
        return (F.cross_entropy(coarse.float(), labels) + F.cross_entropy(fine.float(), labels)
                + LAMBDA * (self.center_loss(z, labels, self.centers_coarse)
                            + self.center_loss(zf, labels, self.centers_fine)))


def run(size: int, mode: str, batch: int, steps: int) -> None:
    labels = torch.arange(batch, device="cuda") % CLASSES
    chosen = torch.arange(batch, device="cuda") % MAPS
    time_training(f"coarse2fine_b{batch}_{size}", Coarse2Fine(size).cuda().train(),
                  torch.randn(batch, 3, size, size, device="cuda"), mode, batch, steps,
                  lambda net, x: net(x, labels, chosen))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    for size in [299, 448]:
        for mode in ["fp32", "fp32-benchmark", "amp"]:
            run(size, mode, args.batch, args.steps)


if __name__ == "__main__":
    main()
