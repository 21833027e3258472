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
  al. 2021); 1 with `adaptive=False` (the plain fixed λ);
- or a controller (`target` set, `fool_weighting: controlled`): a multiplier m per instance,
  raised while fewer than `target` of the step's fakes are called real by the classifiers
  and lowered while more are, by a factor of 10 every `adjust_steps` steps at most, within
  [1/adaptive_max, adaptive_max]. Like ADA's augmentation probability, it pushes only as
  long as the generator is detected, and backs off once it fools (a fixed λ either pushes
  after the goal is met, or not enough at a seed where the classifier is hard to fool). m
  lives on the device (no host sync) and is checkpointed with the job
  (`state_dict_for_resume`, through `TrainState.companions`). The loop feeds it (`control`)
  the fooled fraction of the network that is evaluated: G_ema where the family keeps one,
  because an average of G fools far less than G itself (docs/findings-mnist.md §10).
"""

from __future__ import annotations

import math
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
    target: float | None = None  # the controller's fooled fraction (None: no controller)
    adjust_steps: float = 1.0  # steps for the controller's multiplier to change tenfold

    @classmethod
    def from_config(cls, experiment, total_steps: int, batch_size: int) -> FoolSchedule:
        """From `experiment.fool_*` (fractions of training, kimg) and the job's length in
        steps of `batch_size` images per instance."""
        controlled = experiment.fool_weighting == "controlled"
        return cls(experiment.fool_lambda, round(experiment.fool_start * total_steps),
                   round(experiment.fool_ramp * total_steps),
                   experiment.fool_weighting == "adaptive", experiment.fool_adaptive_max,
                   experiment.fool_target if controlled else None,
                   max(1.0, experiment.fool_adjust_kimg * 1000 / batch_size))

    def scale(self, step: int) -> float:
        """λ · schedule(step): the weight before balancing."""
        if step < self.start:
            return 0.0
        if self.ramp <= 0:
            return self.lam
        return self.lam * min(1.0, (step - self.start) / self.ramp)


class FoolTerm(nn.Module):
    """L_fool over `classifiers` (already chosen by fool_mode), weighted by a FoolSchedule."""

    def __init__(self, classifiers: Sequence[nn.Module], schedule: FoolSchedule,
                 instances: int = 1) -> None:
        super().__init__()
        self.classifiers = nn.ModuleList(freeze(c) for c in classifiers)
        self.schedule = schedule
        # the controller's log10 multiplier per instance (0: weight λ · schedule)
        self.register_buffer("log_multiplier", torch.zeros(instances), persistent=False)

    @property
    def active(self) -> bool:
        return len(self.classifiers) > 0 and self.schedule.lam > 0

    def train(self, mode: bool = True) -> FoolTerm:
        return super().train(False)  # classifiers stay in eval mode whatever the caller does

    @property
    def controlled(self) -> bool:
        return self.active and self.schedule.target is not None

    @torch.no_grad()
    def fooled(self, fake: torch.Tensor) -> torch.Tensor:
        """Fraction of `fake` ([B, ...] or [n, B, ...]) the classifiers call real ([] or [n])."""
        return self._scores(fake)[1]

    def control(self, fooled: torch.Tensor, steps: int = 1) -> None:
        """The controller's move for `steps` steps: m goes towards the target, by
        steps/adjust_steps (log10) up while fewer than the target of the fakes were `fooled`
        ([n] or a scalar), down while more were, within the clamp."""
        m = self.log_multiplier.reshape(fooled.shape)
        m.add_(torch.sign(self.schedule.target - fooled) * (steps / self.schedule.adjust_steps))
        m.clamp_(-math.log10(self.schedule.adaptive_max), math.log10(self.schedule.adaptive_max))

    def state_dict_for_resume(self) -> dict[str, torch.Tensor]:
        """What a resumed job needs to continue the weight exactly (the controller's m)."""
        return {"log_multiplier": self.log_multiplier.detach().cpu()}

    def load_state_for_resume(self, state: dict[str, torch.Tensor]) -> None:
        if state["log_multiplier"].shape != self.log_multiplier.shape:
            raise ValueError("the checkpoint's fool controller has another instance count")
        self.log_multiplier.copy_(state["log_multiplier"])

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        """Unweighted L_fool (real = logit > 0): mean_c softplus(-C(T(fake))).

        fake [B, C, H, W] (one instance) -> a scalar; [n, B, C, H, W] (a fused group, each
        instance's own fakes) -> [n], each instance's own loss. The frozen classifiers score
        all instances' fakes in one pass (every instance of a group fools the same ones).
        """
        return self._scores(fake)[0]

    def _scores(self, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_fool, fraction of fakes the classifiers call real), each a scalar or [n]."""
        if fake.ndim == 4:
            loss, fooled = self._scores(fake[None])
            return loss[0], fooled[0]
        n = fake.shape[0]
        # float32 whatever the caller's autocast (gan.bf16): in bf16 the uint8 grid itself is
        # off by up to half a grey level, and the frozen classifiers were trained in float32
        with torch.autocast(fake.device.type, enabled=False):
            x = quantize_straight_through(fake.flatten(0, 1).float())
            logits = torch.stack([c(x).view(n, -1) for c in self.classifiers])  # [c, n, B]
            return F.softplus(-logits).mean((0, 2)), (logits.detach() > 0).float().mean((0, 2))

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
        loss, fooled = self._scores(fake)
        weight = torch.full_like(loss.detach(), scale)
        stats = {}
        if self.controlled:  # this step's weight from m so far; the caller then calls control
            weight = weight * 10.0 ** self.log_multiplier.reshape(loss.shape)
            stats["fooled"] = fooled
        if self.schedule.adaptive:
            # instances share no parameter: the gradient of the sum is each one's own gradient
            n = loss.numel()
            g_adv, = torch.autograd.grad(adv_loss.sum(), last_layer, retain_graph=True)
            g_fool, = torch.autograd.grad(loss.sum(), last_layer, retain_graph=True)
            ratio = g_adv.reshape(n, -1).norm(dim=1) / (g_fool.reshape(n, -1).norm(dim=1) + 1e-8)
            weight = weight * ratio.clamp(0.0, self.schedule.adaptive_max).reshape(loss.shape)
        return weight * loss, {"loss_fool": loss.detach(), "fool_weight": weight.detach(), **stats}
