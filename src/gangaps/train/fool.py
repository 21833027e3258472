"""The fool term: λ · mean over frozen GAN-classifiers of softplus(-C(T(G(z)))).

Written once for every GAN family. The classifiers are frozen (eval mode, no parameter
gradients) but differentiable: gradients flow through their preprocessing T into the generator.
T starts with the 8-bit quantization the classifiers were trained on (generated images are
stored as uint8, like real ones), passed straight through for the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.models.classifiers import freeze


def quantize_straight_through(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels of uint8; identity for the gradient."""
    q = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    return x + (q - x).detach()


class FoolTerm(nn.Module):
    """L_fool over `classifiers` (already chosen by fool_mode), weighted by λ with an optional ramp."""

    def __init__(self, classifiers: Sequence[nn.Module], lam: float, ramp_steps: int = 0) -> None:
        super().__init__()
        self.classifiers = nn.ModuleList(freeze(c) for c in classifiers)
        self.lam = lam
        self.ramp_steps = ramp_steps

    @property
    def active(self) -> bool:
        return len(self.classifiers) > 0 and self.lam > 0

    def weight(self, step: int) -> float:
        if self.ramp_steps <= 0:
            return self.lam
        return self.lam * min(1.0, step / self.ramp_steps)

    def train(self, mode: bool = True) -> FoolTerm:
        return super().train(False)  # classifiers stay in eval mode whatever the caller does

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        """Unweighted L_fool (real = logit > 0): mean_c softplus(-C(T(fake)))."""
        x = quantize_straight_through(fake)
        return torch.stack([F.softplus(-c(x)).mean() for c in self.classifiers]).mean()
