"""What a GAN family provides to the one training loop: networks, optimizers, phases, losses.

The loop (`gangaps.train.gan`) owns data, latents, the fool term, checkpoints, logging and
resume. A family owns only what differs between GANs: how to build G and D, which loss phases
run how often (StyleGAN2's lazy regularisation is just phases with an interval), and the loss
of each phase. A phase that returns `fake` (the generator's main phase) gets λ·L_fool added by
the loop on those very images, so the fool term is written once for every family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gangaps.config import GANConfig
from gangaps.errors import UserError


@dataclass(frozen=True)
class Phase:
    name: str
    opt: str  # which optimizer steps after this phase ("G" or "D")
    interval: int = 1  # run every `interval` steps (lazy regularisation)
    fool: bool = False  # the loop adds λ·L_fool to this phase's loss


@dataclass
class PhaseResult:
    loss: torch.Tensor
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)  # tensors: no sync
    fake: torch.Tensor | None = None  # generated images, for the fool term


class GANFamily:
    """Base class; subclasses set `name`, `options` (defaults) and implement build/phase_loss."""

    name: str = ""
    options: dict[str, Any] = {}
    fusable = False  # can a group of instances train as one fused model (`fuse`)?

    def resolve_options(self, cfg: GANConfig) -> dict[str, Any]:
        unknown = set(cfg.options) - set(self.options)
        if unknown:
            raise UserError(f"gan.options: unknown key(s) {sorted(unknown)} for family "
                            f"{self.name!r}; known: {sorted(self.options)}")
        return {**self.options, **cfg.options}

    def build(self, cfg: GANConfig, channels: int, resolution: int) -> nn.ModuleDict:
        """Return at least 'G' and 'D' (and 'G_ema' if the family keeps one)."""
        raise NotImplementedError

    def fuse(self, cfg: GANConfig, channels: int, instances: Sequence[nn.ModuleDict]) -> nn.ModuleDict:
        """n instances built by `build` as one fused model: the same state-dict keys, every
        tensor the instances' stacked (`gangaps.models.grouped`), nothing shared. Its phase
        losses and stats are per instance ([n]); its images instance-first ([n, B, ...])."""
        raise UserError(f"gan.family={self.name} trains one instance at a time (gan.group_size=1)")

    def use_generators(self, nets: nn.ModuleDict, generators: list[torch.Generator]) -> None:
        """Draw module randomness (dropout) from these per-instance streams; default: the
        global RNG."""

    def optimizers(self, cfg: GANConfig, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        # foreach: the multi-tensor Adam (CUDA's default) also on CPU, 5 % faster a step there
        return {k: torch.optim.Adam(nets[k].parameters(), lr=cfg.lr, betas=cfg.betas,
                                    **adam_kernel(nets[k])) for k in ("G", "D")}

    def channels_last(self, cfg: GANConfig, device: torch.device) -> bool:
        """Train in the channels_last memory format (the loop converts the nets once)?"""
        return cfg.channels_last

    def compile(self, nets: nn.ModuleDict, backend: str) -> None:
        """`gan.compile`: torch.compile the networks in place (state-dict keys unchanged)."""
        for net in nets.values():
            net.compile(backend=backend)

    def phases(self, cfg: GANConfig) -> list[Phase]:
        raise NotImplementedError

    def phase_loss(self, phase: Phase, nets: nn.ModuleDict, real: torch.Tensor,
                   z: torch.Tensor, step: int) -> PhaseResult:
        raise NotImplementedError

    def end_step(self, nets: nn.ModuleDict, step: int, batch_size: int) -> None:
        """After all phases of a step (EMA updates and the like)."""

    def last_layer(self, nets: nn.ModuleDict) -> torch.Tensor:
        """The weight of G's output layer, where the fool term's adaptive balance compares
        gradient norms. Default: the last parameter G registers (its output layer); in a fused
        model its dim 0 splits evenly into the instances' own parts."""
        return list(nets["G"].parameters())[-1]

    def sampler(self, nets: nn.ModuleDict) -> nn.Module:
        """The network whose samples are evaluated and shown to classifiers: z -> images."""
        return nets["G_ema"] if "G_ema" in nets else nets["G"]


def ema_beta(ema_kimg: float, rampup: float | None, step: int, batch_size: int) -> float:
    """Per-step decay β of the generator's EMA: a half-life of `ema_kimg` thousand images, or
    of `rampup` × the images seen so far while that is shorter (NVIDIA's StyleGAN2 schedule)."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, step * batch_size * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float, average_buffers: bool) -> None:
    """ema <- β·ema + (1-β)·net for the parameters. Floating buffers are averaged too when
    `average_buffers` (BatchNorm statistics, which must match the averaged weights), else
    copied (StyleGAN2's w_avg and filters, as NVIDIA); integer buffers are always copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        if average_buffers and b.is_floating_point():
            b_ema.lerp_(b, 1.0 - beta)
        else:
            b_ema.copy_(b)


def adam_kernel(net: nn.Module) -> dict[str, bool]:
    """Adam's implementation: on CUDA the fused kernel (one launch, step counters on the
    device: no host read a step); elsewhere the multi-tensor one (the CPU numbers of record)."""
    return {"fused": True} if next(net.parameters()).is_cuda else {"foreach": True}


def get_family(name: str) -> GANFamily:
    if name == "dcgan":
        from gangaps.train.dcgan_family import DCGANFamily
        return DCGANFamily()
    if name == "stylegan2":
        try:
            from gangaps.train.stylegan2_family import StyleGAN2Family
        except ImportError:
            raise UserError("gan.family=stylegan2 is not available in this build") from None
        return StyleGAN2Family()
    raise UserError(f"unknown gan.family {name!r}; known: dcgan, stylegan2")
