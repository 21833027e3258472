"""DCGAN for 28×28 MNIST: the TensorFlow tutorial networks (paper.md §4) and their loss.

Only networks and the non-saturating loss live here; training, the fool term, checkpoints and
logging come from the one loop in `gangaps.train.gan`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.config import GANConfig
from gangaps.errors import UserError
from gangaps.train.family import GANFamily, Phase, PhaseResult


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, C, 28, 28] in [-1, 1]. `width` scales every layer (1 = paper)."""

    def __init__(self, z_dim: int = 100, channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (max(1, round(c * width)) for c in (256, 128, 64))
        self.z_dim = z_dim
        self.fc = nn.Sequential(nn.Linear(z_dim, 7 * 7 * c1, bias=False), nn.BatchNorm1d(7 * 7 * c1),
                                nn.LeakyReLU(0.3))
        self.c1 = c1
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 5, 1, 2, bias=False), nn.BatchNorm2d(c2), nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(c2, c3, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(c3),
            nn.LeakyReLU(0.3),
            nn.ConvTranspose2d(c3, channels, 5, 2, 2, output_padding=1, bias=False), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.fc(z).view(-1, self.c1, 7, 7))


class Discriminator(nn.Module):
    """image [N, C, 28, 28] -> logit [N] (real > 0)."""

    def __init__(self, channels: int = 1, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__()
        c1, c2 = (max(1, round(c * width)) for c in (64, 128))
        self.net = nn.Sequential(
            nn.Conv2d(channels, c1, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(dropout),
            nn.Conv2d(c1, c2, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(dropout),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class DCGANFamily(GANFamily):
    name = "dcgan"
    options = {"width": 1.0, "dropout": 0.3}

    def resolve_options(self, cfg: GANConfig) -> dict[str, Any]:
        o = super().resolve_options(cfg)
        w, p = o["width"], o["dropout"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 16:
            raise UserError(f"gan.options.width must be a number in (0, 16] (got {w!r})")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise UserError(f"gan.options.dropout must be a number in [0, 1) (got {p!r})")
        return o

    def build(self, cfg: GANConfig, channels: int, resolution: int) -> nn.ModuleDict:
        if resolution != 28:
            raise UserError(f"gan.family=dcgan is the 28×28 MNIST network; got data.resolution={resolution}")
        opts = self.resolve_options(cfg)
        return nn.ModuleDict({
            "G": Generator(cfg.z_dim, channels, opts["width"]),
            "D": Discriminator(channels, opts["width"], opts["dropout"]),
        })

    def phases(self, cfg: GANConfig) -> list[Phase]:
        return [Phase("D", opt="D"), Phase("G", opt="G", fool=True)]

    def phase_loss(self, phase: Phase, nets: nn.ModuleDict, real: torch.Tensor,
                   z: torch.Tensor, step: int) -> PhaseResult:
        G, D = nets["G"], nets["D"]
        if phase.name == "D":
            with torch.no_grad():
                fake = G(z)
            real_logits, fake_logits = D(real), D(fake)
            # -log(sigmoid(D(x))) - log(1 - sigmoid(D(G(z))))
            loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            return PhaseResult(loss, {"loss_D": loss.detach(), "D_real": real_logits.mean().detach(),
                                      "D_fake": fake_logits.mean().detach()})
        fake = G(z)
        loss = F.softplus(-D(fake)).mean()  # non-saturating: -log(sigmoid(D(G(z))))
        return PhaseResult(loss, {"loss_G": loss.detach()}, fake=fake)
