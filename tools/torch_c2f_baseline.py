#!/usr/bin/env python3
"""PyTorch on the GPU, the peer of `benches/coarse2fine_gpu.rs`: one Coarse2Fine training step as
a PyTorch user would write it, with the Rust model's defaults (torchvision's InceptionV3 up to
Mixed_6e shared by both passes, M = 8 attention maps by a 1x1 convolution and ReLU, BAP with the
signed square root and per-sample normalisation, coarse and fine heads on 100 x the part features
for 200 classes, the center loss of the paper's Eq. 2 and 3 (raw centers from zero, one bank for
both passes, lambda 1, beta 0.05), the learnable
up-sampler of stride-2 transposed convolutions (kernel 4, 8 channels between layers) and a
bilinear resize to the input, the per-sample max-normalised mask, and SGD with momentum 0.9 and
weight decay 1e-5), at batch 64, 299² and 448², in the modes of `tools/torch_baseline.py`.
Prints TORCHGPU lines named as the Rust bench's NETBENCH lines less their precision
(`coarse2fine_b64_299`, ...), the mode beside.

    python3 tools/torch_c2f_baseline.py [--batch 64] [--steps 10]
"""
import argparse

import torch
import torch.nn.functional as F

from torch_baseline import MODES, model, time_training

MAPS, CLASSES, LAMBDA, BETA = 8, 200, 1.0, 0.05
FEATURE_SCALE, SQRT_EPS, NORM_EPS = 100.0, 1e-12, 1e-12


def upsampler_channels(side: int, size: int) -> list:
    """The Rust project's default stack (`upsampler::default_channels`): as many stride-2 layers
    as take the map side to at least a quarter of the input side, 8 channels between them."""
    layers = 1
    while (side << layers) * 4 < size:
        layers += 1
    return [1] + [8] * (layers - 1) + [1]


def center_loss(z, labels, centers, lam: float):
    """The paper's Eq. 2 over a batch: lambda times the mean over samples of |f_i - c_{y_i}|^2,
    against the raw centers c_y (the paper's (1/C) sum runs over the classes of the feature
    matrices at hand, one per sample here)."""
    return lam * (z - centers[labels].to(z.dtype)).square().sum(dim=1).mean()


def update_centers(centers, z, labels, beta: float) -> None:
    """The paper's Eq. 3, c_y <- (1 - beta) c_y + beta f, applied once per sample in batch order.
    For a class seen n times, with features f_1 .. f_n in that order, this is
    c <- (1 - beta)^n c + sum_j beta (1 - beta)^(n - j) f_j, computed here for every class at
    once: n from the label counts, j from each sample's running count of its label."""
    with torch.no_grad():
        onehot = F.one_hot(labels, centers.shape[0]).to(centers.dtype)
        n = onehot.sum(dim=0)
        j = (onehot.cumsum(dim=0) * onehot).sum(dim=1)
        weight = beta * (1 - beta) ** (n[labels] - j)
        centers.mul_(((1 - beta) ** n).unsqueeze(1))
        centers.index_add_(0, labels, weight.unsqueeze(1) * z.detach().to(centers.dtype))


def center_loss_normalized(z, labels, centers, lam: float, beta: float):
    """The WS-DAN reimplementations' rule (`--center-rule normalized`): the loss against the
    normalised center c^ = c / |c|, then every center of the batch moves by
    beta * sum_{i: y_i = k} (f_i - c^_k), c^ taken before the move."""
    unit = F.normalize(centers[labels], dim=1, eps=NORM_EPS)
    loss = lam * (z - unit).square().sum(dim=1).mean()
    with torch.no_grad():
        centers.index_add_(0, labels, beta * (z.detach().to(centers.dtype) - unit))
    return loss


def bap(a, f):
    """Bilinear attention pooling of maps A [B, M, h, w] and features F [B, N, h, w]:
    P[b, m, n] = mean over h·w of A·F, the signed square root, and the L2 normalisation of the
    whole M·N vector per sample -> [B, M·N]. `tools/torch_wsdan.py` pools with it too."""
    p = torch.einsum("bmhw,bnhw->bmn", a, f) / (f.shape[2] * f.shape[3])
    s = torch.sign(p) * torch.sqrt(p.abs() + SQRT_EPS)
    return F.normalize(s.flatten(1), dim=1, eps=NORM_EPS)


class Coarse2Fine(torch.nn.Module):
    """Coarse2Fine from the paper's equations, with the Rust model's tensor names: the backbone's
    under `backbone.` + torchvision's name, `attention.weight`, `upsampler.{i}.weight|bias`,
    `fc_coarse.*`, `fc_fine.*`, and the center banks: one, `centers` (the paper's C center
    matrices, pulled on and moved by both passes' features, the coarse pass first), or with
    `banks="separate"` one per pass, `centers_coarse` / `centers_fine`. `rule="moving-average"`
    is Eq. 2 and 3 on raw centers from zero; `rule="normalized"` the WS-DAN reimplementations'.
    `tools/make_c2f_golden.py` holds the Rust model to it."""

    def __init__(self, size: int, maps: int = MAPS, classes: int = CLASSES,
                 lam: float = LAMBDA, beta: float = BETA, resize=None,
                 rule: str = "moving-average", banks: str = "shared"):
        super().__init__()
        self.size, self.lam, self.beta, self.rule, self.banks = size, lam, beta, rule, banks
        self.resize = resize or (lambda u, size: F.interpolate(
            u, size=(size, size), mode="bilinear", align_corners=False))
        self.backbone = model("mixed6e")
        with torch.no_grad():
            side = self.backbone(torch.zeros(1, 3, size, size)).shape[-1]
        self.attention = torch.nn.Conv2d(768, maps, 1, bias=False)
        channels = upsampler_channels(side, size)
        self.upsampler = torch.nn.ModuleList(
            torch.nn.ConvTranspose2d(ci, co, 4, stride=2, padding=1)
            for ci, co in zip(channels, channels[1:]))
        self.fc_coarse = torch.nn.Linear(maps * 768, classes)
        self.fc_fine = torch.nn.Linear(maps * 768, classes)
        for bank in (["centers"] if banks == "shared" else ["centers_coarse", "centers_fine"]):
            self.register_buffer(bank, torch.zeros(classes, maps * 768))

    def parts(self, x):
        """Attention maps and the normalised BAP part features of one pass."""
        f = self.backbone(x)
        a = F.relu(self.attention(f))
        return a, bap(a, f)

    def center_term(self, z, labels, bank: str):
        """One pass's center-loss term, and its move of the bank."""
        centers = getattr(self, "centers" if self.banks == "shared" else bank)
        if self.rule == "normalized":
            return center_loss_normalized(z, labels, centers, self.lam, self.beta)
        loss = center_loss(z, labels, centers, self.lam)
        update_centers(centers, z, labels, self.beta)
        return loss

    def upsample(self, u):
        """Transposed convolutions with ReLU between them, then the bilinear resize."""
        for i, layer in enumerate(self.upsampler):
            u = layer(u)
            if i + 1 < len(self.upsampler):
                u = F.relu(u)
        return self.resize(u, self.size)

    def forward(self, x, labels, chosen) -> dict:
        """One training forward: the four loss terms (`losses`, in the Rust `Losses` order) and
        what led to them."""
        a, z = self.parts(x)
        coarse = self.fc_coarse(FEATURE_SCALE * z)
        center_coarse = self.center_term(z, labels, "centers_coarse")
        u = self.upsample(a[torch.arange(a.shape[0], device=a.device), chosen].unsqueeze(1))
        top = u.amax(dim=(2, 3), keepdim=True)
        # The divisor is 1 where the ones mask is taken, so no NaN reaches the gradient.
        positive = top > 0
        mask = torch.where(positive, u.clamp_min(0) / torch.where(positive, top, 1), 1)
        _, zf = self.parts(x * mask)
        fine = self.fc_fine(FEATURE_SCALE * zf)
        return {
            "coarse_logits": coarse, "fine_logits": fine, "upsampled": u,
            "losses": [F.cross_entropy(coarse, labels), F.cross_entropy(fine, labels),
                       center_coarse, self.center_term(zf, labels, "centers_fine")],
        }


def run(size: int, mode: str, batch: int, steps: int) -> None:
    labels = torch.arange(batch, device="cuda") % CLASSES
    chosen = torch.arange(batch, device="cuda") % MAPS
    time_training(f"coarse2fine_b{batch}_{size}", Coarse2Fine(size).cuda().train(),
                  torch.randn(batch, 3, size, size, device="cuda"), mode, batch, steps,
                  lambda net, x: sum(net(x, labels, chosen)["losses"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    for size in [299, 448]:
        for mode in MODES:
            run(size, mode, args.batch, args.steps)


if __name__ == "__main__":
    main()
