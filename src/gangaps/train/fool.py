"""The fool term: w(step) · mean over frozen GAN-classifiers of softplus(-C(T(G(z)))).

Written once for every GAN family. The classifiers are frozen (eval mode, no parameter
gradients) but differentiable: gradients flow through their preprocessing T into the generator.
T starts with the 8-bit quantization the classifiers were trained on (generated images are
stored as uint8, like real ones), passed straight through for the gradient.

The weight w keeps the GAN game in charge. A frozen classifier's blind spot is far easier to
find than the data distribution, so a fresh generator given the full weight from step 0 learns
the blind spot instead of digits (measured: L_fool falls to ~0 within 2 kimg and the generators
collapse). So w(step) = λ · schedule(step) · balance(step):

- schedule: 0 for the first `start` steps, then a linear ramp to 1 over `ramp` steps;
- balance (`adaptive=True`): ‖∇_θ L_adv‖ / ‖∇_θ L_fool‖ at the generator's last layer θ,
  clamped to [0, adaptive_max] and detached, so λ is the fool gradient's size relative to
  the adversarial one whatever their raw scales (VQGAN's balance of its GAN term, Esser et
  al. 2021); 1 with `adaptive=False` (the plain fixed λ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.models.classifiers import freeze


def quantize_straight_through(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels of uint8; identity for the gradient."""
    q = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    return x + (q - x).detach()


@dataclass(frozen=True)
class FoolSchedule:
    """λ, and when and how strongly it applies (steps; see the module docstring)."""

    lam: float
    start: int = 0
    ramp: int = 0
    adaptive: bool = False
    adaptive_max: float = 10.0

    @classmethod
    def from_config(cls, experiment, total_steps: int) -> FoolSchedule:
        """From `experiment.fool_*` (fractions of training) and the job's length in steps."""
        return cls(experiment.fool_lambda, round(experiment.fool_start * total_steps),
                   round(experiment.fool_ramp * total_steps),
                   experiment.fool_weighting == "adaptive", experiment.fool_adaptive_max)

    def scale(self, step: int) -> float:
        """λ · schedule(step): the weight before balancing."""
        if step < self.start:
            return 0.0
        if self.ramp <= 0:
            return self.lam
        return self.lam * min(1.0, (step - self.start) / self.ramp)


class FoolTerm(nn.Module):
    """L_fool over `classifiers` (already chosen by fool_mode), weighted by a FoolSchedule."""

    def __init__(self, classifiers: Sequence[nn.Module], schedule: FoolSchedule) -> None:
        super().__init__()
        self.classifiers = nn.ModuleList(freeze(c) for c in classifiers)
        self.schedule = schedule

    @property
    def active(self) -> bool:
        return len(self.classifiers) > 0 and self.schedule.lam > 0

    def train(self, mode: bool = True) -> FoolTerm:
        return super().train(False)  # classifiers stay in eval mode whatever the caller does

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        """Unweighted L_fool (real = logit > 0): mean_c softplus(-C(T(fake))).

        fake [B, C, H, W] (one instance) -> a scalar; [n, B, C, H, W] (a fused group, each
        instance's own fakes) -> [n], each instance's own loss. The frozen classifiers score
        all instances' fakes in one pass (every instance of a group fools the same ones).
        """
        if fake.ndim == 4:
            return self(fake[None])[0]
        n = fake.shape[0]
        # float32 whatever the caller's autocast (gan.bf16): in bf16 the uint8 grid itself is
        # off by up to half a grey level, and the frozen classifiers were trained in float32
        with torch.autocast(fake.device.type, enabled=False):
            x = quantize_straight_through(fake.flatten(0, 1).float())
            return torch.stack([F.softplus(-c(x)).view(n, -1).mean(1)
                                for c in self.classifiers]).mean(0)

    def weighted(self, fake: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                 step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """(w · L_fool, stats) to add to the generator's loss at `step`; None while w = 0.

        One instance: fake [B, ...], adv_loss a scalar; a group: fake [n, B, ...], adv_loss
        [n], and terms and stats come back per instance ([n]), each with its own weight.
        `adv_loss` and `last_layer` (a parameter of G both losses depend on; in a group its
        dim 0 splits evenly into the instances' parts) are used only by the adaptive balance,
        per instance on its own part; the term's graph is kept so the caller's backward sees it.
        """
        scale = self.schedule.scale(step) if self.active else 0.0
        if scale == 0.0:
            return None
        loss = self(fake)
        weight = torch.full_like(loss.detach(), scale)
        if self.schedule.adaptive:
            # instances share no parameter: the gradient of the sum is each one's own gradient
            n = loss.numel()
            g_adv, = torch.autograd.grad(adv_loss.sum(), last_layer, retain_graph=True)
            g_fool, = torch.autograd.grad(loss.sum(), last_layer, retain_graph=True)
            ratio = g_adv.reshape(n, -1).norm(dim=1) / (g_fool.reshape(n, -1).norm(dim=1) + 1e-8)
            weight = weight * ratio.clamp(0.0, self.schedule.adaptive_max).reshape(loss.shape)
        return weight * loss, {"loss_fool": loss.detach(), "fool_weight": weight.detach()}
