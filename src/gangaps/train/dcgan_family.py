"""The DCGAN family: the MNIST networks of `gangaps.models.dcgan` and the non-saturating loss.

Fusable: a group of instances trains as one `GroupGenerator`/`GroupDiscriminator` pair. The
losses are written once for both: logits end in the batch dimension, so `mean(-1)` gives one
loss per instance ([n] for a group, a scalar alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.config import GANConfig
from gangaps.errors import UserError
from gangaps.models.dcgan import Discriminator, Generator, GroupDiscriminator, GroupGenerator
from gangaps.models.grouped import StreamDropout, fuse_state
from gangaps.train.family import GANFamily, Phase, PhaseResult


class DCGANFamily(GANFamily):
    name = "dcgan"
    options = {"width": 1.0, "dropout": 0.3}
    fusable = True

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

    def fuse(self, cfg: GANConfig, channels: int, instances: Sequence[nn.ModuleDict]) -> nn.ModuleDict:
        opts, n = self.resolve_options(cfg), len(instances)
        nets = nn.ModuleDict({
            "G": GroupGenerator(n, cfg.z_dim, channels, opts["width"]),
            "D": GroupDiscriminator(n, channels, opts["width"], opts["dropout"]),
        })
        nets.load_state_dict(fuse_state([i.state_dict() for i in instances], nets.state_dict()))
        return nets

    def use_generators(self, nets: nn.ModuleDict, generators: list[torch.Generator]) -> None:
        for m in nets["D"].modules():
            if isinstance(m, StreamDropout):
                m.generators = generators

    def phases(self, cfg: GANConfig) -> list[Phase]:
        return [Phase("D", opt="D"), Phase("G", opt="G", fool=True)]

    def phase_loss(self, phase: Phase, nets: nn.ModuleDict, real: torch.Tensor,
                   z: torch.Tensor, step: int) -> PhaseResult:
        G, D = nets["G"], nets["D"]
        if phase.name == "D":
            with torch.no_grad():
                fake = G(z)
            # float32 logits (a no-op in fp32): under bf16 autocast the loss keeps its precision
            real_logits, fake_logits = D(real).float(), D(fake).float()
            # -log(sigmoid(D(x))) - log(1 - sigmoid(D(G(z))))
            loss = F.softplus(-real_logits).mean(-1) + F.softplus(fake_logits).mean(-1)
            return PhaseResult(loss, {"loss_D": loss.detach(), "D_real": real_logits.mean(-1).detach(),
                                      "D_fake": fake_logits.mean(-1).detach()})
        fake = G(z)
        loss = F.softplus(-D(fake).float()).mean(-1)  # non-saturating: -log(sigmoid(D(G(z))))
        return PhaseResult(loss, {"loss_G": loss.detach()}, fake=fake)
