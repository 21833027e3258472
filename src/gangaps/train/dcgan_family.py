"""The DCGAN family: the MNIST networks of `gangaps.models.dcgan` and the non-saturating loss.

Fusable: a group of instances trains as one `GroupGenerator`/`GroupDiscriminator` pair. The
losses are written once for both: logits end in the batch dimension, so `mean(-1)` gives one
loss per instance ([n] for a group, a scalar alone).

`options.ema_kimg` keeps G_ema, an exponential moving average of G (its BatchNorm statistics
averaged with the weights), which is then what is sampled, evaluated and shown to classifiers:
averaging damps the oscillation of GAN training (Yazıcı et al. 2019) and of the controlled fool
weight. Training itself is unchanged: G, D and the fool term never see G_ema.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.config import GANConfig
from gangaps.errors import UserError
from gangaps.models.dcgan import Discriminator, Generator, GroupDiscriminator, GroupGenerator
from gangaps.models.grouped import StreamDropout, fuse_state
from gangaps.train import distributed as ddp
from gangaps.train.family import GANFamily, Phase, PhaseResult, ema_beta, update_ema


class DCGANFamily(GANFamily):
    name = "dcgan"
    # ema_kimg: G_ema's half-life in thousands of images (None: no G_ema); ema_rampup: at
    # most this fraction of the images seen so far (None: none), as StyleGAN2's
    options = {"width": 1.0, "dropout": 0.3, "ema_kimg": None, "ema_rampup": 0.05}
    fusable = True
    _ema: tuple[float | None, float | None] = (None, None)  # set by build/fuse

    def resolve_options(self, cfg: GANConfig) -> dict[str, Any]:
        o = super().resolve_options(cfg)
        w, p = o["width"], o["dropout"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 16:
            raise UserError(f"gan.options.width must be a number in (0, 16] (got {w!r})")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise UserError(f"gan.options.dropout must be a number in [0, 1) (got {p!r})")
        for key in ("ema_kimg", "ema_rampup"):
            v = o[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise UserError(f"gan.options.{key} must be null or a number > 0 (got {v!r})")
        return o

    def build(self, cfg: GANConfig, channels: int, resolution: int) -> nn.ModuleDict:
        if resolution != 28:
            raise UserError(f"gan.family=dcgan is the 28×28 MNIST network; got data.resolution={resolution}")
        opts = self.resolve_options(cfg)
        return self._with_ema(opts, {
            "G": Generator(cfg.z_dim, channels, opts["width"]),
            "D": Discriminator(channels, opts["width"], opts["dropout"]),
        })

    def fuse(self, cfg: GANConfig, channels: int, instances: Sequence[nn.ModuleDict]) -> nn.ModuleDict:
        opts, n = self.resolve_options(cfg), len(instances)
        nets = self._with_ema(opts, {
            "G": GroupGenerator(n, cfg.z_dim, channels, opts["width"]),
            "D": GroupDiscriminator(n, channels, opts["width"], opts["dropout"]),
        })
        nets.load_state_dict(fuse_state([i.state_dict() for i in instances], nets.state_dict()))
        return nets

    def _with_ema(self, opts: dict[str, Any], nets: dict[str, nn.Module]) -> nn.ModuleDict:
        self._ema = (opts["ema_kimg"], opts["ema_rampup"])
        if opts["ema_kimg"] is not None:  # a copy of G's start (a fused G: all instances')
            nets["G_ema"] = copy.deepcopy(nets["G"]).requires_grad_(False)
        return nn.ModuleDict(nets)

    def end_step(self, nets: nn.ModuleDict, step: int, batch_size: int) -> None:
        if "G_ema" in nets:  # images over all ranks, as StyleGAN2's; one decay for a group
            beta = ema_beta(*self._ema, step, batch_size * ddp.world_size())
            update_ema(nets["G_ema"], nets["G"], beta, average_buffers=True)

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
