"""StyleGAN2 as a GAN family: NVIDIA's four loss phases on the networks of `models.stylegan2`.

Same training recipe as stylegan2-ada-pytorch (`training/loss.py`, `training_loop.py`):

- Gmain: non-saturating softplus(-D(aug(G(z)))), with style mixing; the loop adds λ·L_fool
  to this phase only (`fool=True`), on the very images D judged (before D's augmentation).
- Greg: path-length regularisation every `pl_interval` steps on a batch shrunk by
  `pl_batch_shrink`, loss scaled by the interval; the running mean `pl_mean` is a buffer.
- Dmain: softplus(D(aug(G(z)))) + softplus(-D(aug(x))).
- Dreg: lazy R1 (γ/2)·‖∇_x D(aug(x))‖² every `r1_interval` steps, scaled by the interval.
- Lazy regularisation keeps Adam's effective hyper-parameters: lr·c and β^c, c = I/(I+1).
- G_ema (in `nets`, so checkpointed and used by `sampler()`) follows G with
  β = 0.5^(batch / (ema_kimg·1000)), optionally ramped up over the first images.

Everything a resumed run needs is a parameter or buffer in `nets` (G, D, G_ema, the
augmentation pipe's p, pl_mean) or optimizer state; every random draw uses torch's global
RNG, which the loop checkpoints, so a resumed run repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import copy
import math
import weakref
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.config import GANConfig
from gangaps.errors import UserError
from gangaps.models.stylegan2 import Discriminator, Generator
from gangaps.train import distributed as ddp
from gangaps.train.diffaugment import MODES, AugmentPipe, parse_policy
from gangaps.train.family import GANFamily, Phase, PhaseResult, ema_beta, update_ema


class _LossState(nn.Module):
    """Loss statistics that must survive a resume (a buffer is checkpointed with `nets`)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pl_mean", torch.zeros(()))


class StyleGAN2Family(GANFamily):
    name = "stylegan2"
    options: dict[str, Any] = {
        # networks (defaults: NVIDIA --cfg=auto below 512 px)
        "w_dim": 512,
        "mapping_layers": 2,
        "channel_base": 16384,
        "channel_max": 512,
        "mbstd_group_size": 4,
        "conv_clamp": 256,  # NVIDIA clamps activations whenever it trains in reduced precision
        # architecture (NVIDIA's defaults; other values come with networks converted from theirs)
        "g_architecture": "skip",
        "d_architecture": "resnet",
        "mbstd_num_channels": 1,
        "use_noise": True,
        # loss
        "r1_gamma": None,  # None: NVIDIA's auto heuristic 0.0002·res²/batch
        "r1_interval": 16,
        "pl_weight": 2.0,
        "pl_interval": 4,
        "pl_decay": 0.01,
        "pl_batch_shrink": 2,
        "style_mixing_prob": 0.9,
        "ema_kimg": None,  # None: NVIDIA's auto batch·10/32
        "ema_rampup": 0.05,  # None: no ramp-up
        # augmentation of D's inputs, and dataset x-flips of reals
        "augment": "diffaugment",  # diffaugment | ada | none
        "augment_policy": "color,translation,cutout",
        "ada_target": 0.6,
        "ada_kimg": 500.0,
        "ada_interval": 4,
        "xflip": True,
        # speed (CUDA only; ignored on CPU)
        "mixed_precision": "bf16",  # bf16 | none
        "channels_last": True,
    }

    def __init__(self) -> None:
        self._o: dict[str, Any] | None = None
        self._gamma = 0.0
        self._ema_kimg = 0.0
        self._cfg: GANConfig | None = None
        # gan.compile: compiled views of each `nets`' networks (keyed weakly by the nets, so
        # throwaway nets, e.g. the FLOP count's, stay eager and nothing is kept alive)
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ setup

    def resolve_options(self, cfg: GANConfig) -> dict[str, Any]:
        o = super().resolve_options(cfg)
        if o["augment"] not in MODES:
            raise UserError(f"gan.options.augment={o['augment']!r}; known: {', '.join(MODES)}")
        parse_policy(o["augment_policy"])
        if o["mixed_precision"] not in ("bf16", "none"):
            raise UserError(f"gan.options.mixed_precision={o['mixed_precision']!r}; "
                            "known: bf16, none")
        for key in ("r1_interval", "pl_interval", "pl_batch_shrink", "ada_interval",
                    "mapping_layers", "w_dim", "channel_base", "channel_max"):
            if not isinstance(o[key], int) or o[key] < 1:
                raise UserError(f"gan.options.{key} must be an integer >= 1 (got {o[key]!r})")
        for key in ("pl_weight", "style_mixing_prob", "pl_decay"):
            if not isinstance(o[key], (int, float)) or o[key] < 0:
                raise UserError(f"gan.options.{key} must be a number >= 0 (got {o[key]!r})")
        if isinstance(o["ada_target"], bool) or not isinstance(o["ada_target"], (int, float)) \
                or not -1 <= o["ada_target"] <= 1:
            raise UserError(f"gan.options.ada_target must be in [-1, 1] (got {o['ada_target']!r})")
        if not isinstance(o["ada_kimg"], (int, float)) or o["ada_kimg"] <= 0:
            raise UserError(f"gan.options.ada_kimg must be a number > 0 (got {o['ada_kimg']!r})")
        g = o["mbstd_group_size"]
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise UserError("gan.options.mbstd_group_size must be null or an integer >= 1 "
                            f"(got {o['mbstd_group_size']!r})")
        if o["conv_clamp"] is not None and (not isinstance(o["conv_clamp"], (int, float))
                                            or o["conv_clamp"] <= 0):
            raise UserError(f"gan.options.conv_clamp must be null or a number > 0 "
                            f"(got {o['conv_clamp']!r})")
        for key in ("g_architecture", "d_architecture"):
            if o[key] not in ("orig", "skip", "resnet"):
                raise UserError(f"gan.options.{key} must be orig, skip or resnet (got {o[key]!r})")
        if isinstance(o["mbstd_num_channels"], bool) or not isinstance(o["mbstd_num_channels"], int) \
                or o["mbstd_num_channels"] < 0:
            raise UserError("gan.options.mbstd_num_channels must be an integer >= 0 "
                            f"(got {o['mbstd_num_channels']!r})")
        for key in ("xflip", "channels_last", "use_noise"):
            if not isinstance(o[key], bool):
                raise UserError(f"gan.options.{key} must be true or false (got {o[key]!r})")
        if o["channel_max"] > 4096 or o["w_dim"] > 4096 or o["mapping_layers"] > 64:
            raise UserError("gan.options: channel_max and w_dim must be <= 4096, "
                            "mapping_layers <= 64")
        for key in ("r1_gamma", "ema_kimg", "ema_rampup"):
            if o[key] is not None and (not isinstance(o[key], (int, float)) or o[key] < 0):
                raise UserError(f"gan.options.{key} must be null or a number >= 0 "
                                f"(got {o[key]!r})")
        return o

    def _setup(self, cfg: GANConfig, resolution: int) -> dict[str, Any]:
        o = self.resolve_options(cfg)
        self._o, self._cfg = o, cfg
        self._gamma = (0.0002 * resolution**2 / cfg.batch_size if o["r1_gamma"] is None
                       else float(o["r1_gamma"]))
        self._ema_kimg = (cfg.batch_size * 10 / 32 if o["ema_kimg"] is None
                          else float(o["ema_kimg"]))
        return o

    def build(self, cfg: GANConfig, channels: int, resolution: int) -> nn.ModuleDict:
        o = self._setup(cfg, resolution)
        if resolution < 4 or resolution & (resolution - 1):
            raise UserError(f"gan.family=stylegan2 needs a power-of-two data.resolution >= 4; "
                            f"got {resolution}")
        net = dict(channel_base=o["channel_base"], channel_max=o["channel_max"],
                   conv_clamp=o["conv_clamp"])
        G = Generator(z_dim=cfg.z_dim, w_dim=o["w_dim"], img_resolution=resolution,
                      img_channels=channels, mapping_layers=o["mapping_layers"],
                      architecture=o["g_architecture"], use_noise=o["use_noise"], **net)
        D = Discriminator(img_resolution=resolution, img_channels=channels,
                          mbstd_group_size=o["mbstd_group_size"], architecture=o["d_architecture"],
                          mbstd_num_channels=o["mbstd_num_channels"], **net)
        G_ema = copy.deepcopy(G).requires_grad_(False)
        augment = AugmentPipe(o["augment"], o["augment_policy"], o["ada_target"],
                              o["ada_interval"], o["ada_kimg"])
        return nn.ModuleDict({"G": G, "D": D, "G_ema": G_ema, "augment": augment,
                              "loss_state": _LossState()})

    def last_layer(self, nets: nn.ModuleDict) -> torch.Tensor:
        """The highest-resolution ToRGB weight: the output layer ("skip" sums every ToRGB, and
        the last one is nearest the image)."""
        syn = nets["G"].synthesis
        return getattr(syn, f"b{syn.block_resolutions[-1]}").torgb.weight

    def _lazy(self, name: str) -> float:
        """Adam correction for a phase that also steps every `interval` steps: c = I/(I+1)."""
        assert self._o is not None, "build() first"
        if name == "G" and self._o["pl_weight"] > 0:
            return self._o["pl_interval"] / (self._o["pl_interval"] + 1)
        if name == "D" and self._gamma > 0:
            return self._o["r1_interval"] / (self._o["r1_interval"] + 1)
        return 1.0

    def optimizers(self, cfg: GANConfig, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        opts = {}
        for k in ("G", "D"):
            c = self._lazy(k)
            opts[k] = torch.optim.Adam(nets[k].parameters(), lr=cfg.lr * c,
                                       betas=(cfg.betas[0] ** c, cfg.betas[1] ** c), eps=1e-8,
                                       fused=True if next(nets[k].parameters()).is_cuda else None)
            ddp.average_gradients_before_step(opts[k])  # no-op without a process group
        ddp.broadcast_module(nets)  # multi-GPU: every rank starts from rank 0's weights
        return opts

    def phases(self, cfg: GANConfig) -> list[Phase]:
        o = self._o if self._o is not None else self.resolve_options(cfg)
        gamma = self._gamma if self._o is not None else (o["r1_gamma"] is None or o["r1_gamma"])
        out = [Phase("Gmain", opt="G", fool=True)]
        if o["pl_weight"] > 0:
            out.append(Phase("Greg", opt="G", interval=o["pl_interval"]))
        out.append(Phase("Dmain", opt="D"))
        if gamma:
            out.append(Phase("Dreg", opt="D", interval=o["r1_interval"]))
        return out

    # ------------------------------------------------------------------ forward passes

    def channels_last(self, cfg: GANConfig, device: torch.device) -> bool:
        """NHWC layout (cuDNN's fast path): options.channels_last on CUDA, or gan.channels_last
        on any device (the loop formats the nets once; `_images` the inputs)."""
        o = self._o if self._o is not None else self.resolve_options(cfg)
        return cfg.channels_last or (device.type == "cuda" and o["channels_last"])

    def compile(self, nets: nn.ModuleDict, backend: str) -> None:
        """Compiled D, mapping and synthesis for the main phases only. R1 and path length
        differentiate twice (create_graph=True), which compiled modules do not support
        (aot_autograd), so the lazy regularisation phases (1/r1_interval and 1/pl_interval of
        the steps) run the same parameters eagerly."""
        G = nets["G"]
        self._compiled[nets] = {name: torch.compile(m, backend=backend) for name, m in
                                (("D", nets["D"]), ("mapping", G.mapping),
                                 ("synthesis", G.synthesis))}

    def _autocast(self, device: torch.device):
        if self._cfg.bf16 or (device.type == "cuda" and self._o["mixed_precision"] == "bf16"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last(self._cfg, x.device):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _run_G(self, G: Generator, z: torch.Tensor, fast: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and the (mixed) ws they came from. With probability style_mixing_prob, the ws
        from a uniformly drawn cutoff in [1, num_ws) on come from a second latent. `fast`: the
        compiled modules to use (`compile`), if any."""
        fast = fast or {}
        mapping, synthesis = fast.get("mapping", G.mapping), fast.get("synthesis", G.synthesis)
        ws = mapping(z, update_w_avg=True)
        if self._o["style_mixing_prob"] > 0:
            num_ws = ws.shape[1]
            cutoff = torch.randint(1, num_ws, (), device=z.device)
            mix = torch.rand((), device=z.device) < self._o["style_mixing_prob"]
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))
            ws2 = mapping(torch.randn_like(z), update_w_avg=False)
            later = (torch.arange(num_ws, device=z.device) >= cutoff).reshape(1, -1, 1)
            ws = torch.where(later, ws2, ws)  # tensor ops only: no GPU sync for the cutoff
        return self._images(synthesis(ws)), ws

    def _run_D(self, nets: nn.ModuleDict, img: torch.Tensor, fast: dict | None = None
               ) -> torch.Tensor:
        # float32 logits: under bf16 autocast D's last layer would round them to 8 bits.
        D = (fast or {}).get("D", nets["D"])
        return D(nets["augment"](img)).squeeze(1).float()

    def _real(self, real: torch.Tensor) -> torch.Tensor:
        if self._o["xflip"]:  # NVIDIA's --mirror: each real image flipped with probability 1/2
            flip = torch.rand(real.shape[0], 1, 1, 1, device=real.device) < 0.5
            real = torch.where(flip, real.flip(3), real)
        return self._images(real)

    # ------------------------------------------------------------------ the phases

    def phase_loss(self, phase: Phase, nets: nn.ModuleDict, real: torch.Tensor,
                   z: torch.Tensor, step: int) -> PhaseResult:
        assert self._o is not None, "build() first"
        G, D = nets["G"], nets["D"]
        fast = self._compiled.get(nets)  # compiled modules (gan.compile), main phases only
        # Only the network this phase optimizes builds parameter gradients.
        G.requires_grad_(phase.opt == "G")
        D.requires_grad_(phase.opt == "D")
        with self._autocast(real.device):
            if phase.name == "Gmain":
                fake, _ = self._run_G(G, z, fast)
                logits = self._run_D(nets, fake, fast)
                loss = F.softplus(-logits).mean()
                return PhaseResult(loss, _stats(loss_G=loss), fake=fake)
            if phase.name == "Greg":
                return self._path_length(nets, z, phase.interval)
            if phase.name == "Dmain":
                with torch.no_grad():
                    fake, _ = self._run_G(G, z, fast)
                fake_logits = self._run_D(nets, fake, fast)
                real_logits = self._run_D(nets, self._real(real), fast)
                nets["augment"].observe(real_logits)
                loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
                return PhaseResult(loss, _stats(loss_D=loss, D_real=real_logits.mean(),
                                                D_fake=fake_logits.mean(),
                                                augment_p=nets["augment"].p))
            if phase.name == "Dreg":
                return self._r1(nets, real, phase.interval)
        raise ValueError(f"unknown phase {phase.name!r}")

    def _path_length(self, nets: nn.ModuleDict, z: torch.Tensor, interval: int) -> PhaseResult:
        o, state = self._o, nets["loss_state"]
        n = max(1, z.shape[0] // o["pl_batch_shrink"])
        img, ws = self._run_G(nets["G"], z[:n])
        # Random image-space direction, scaled so the expected length does not depend on res.
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()
        pl_mean = state.pl_mean.lerp(lengths.mean().detach(), o["pl_decay"])
        state.pl_mean.copy_(pl_mean)
        penalty = (lengths - pl_mean).square()
        # img[:, 0, 0, 0] * 0 keeps every synthesis parameter in the graph (NVIDIA does it
        # so DDP sees all gradients); the interval compensates for running 1/interval steps.
        loss = (img[:, 0, 0, 0] * 0 + penalty * o["pl_weight"]).mean() * interval
        return PhaseResult(loss, _stats(pl_penalty=penalty.mean(), pl_mean=pl_mean))

    def _r1(self, nets: nn.ModuleDict, real: torch.Tensor, interval: int) -> PhaseResult:
        x = self._real(real).detach().requires_grad_(True)
        logits = self._run_D(nets, x)
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = grad.float().square().sum(dim=(1, 2, 3))
        loss = (logits * 0 + penalty * (self._gamma / 2)).mean() * interval
        return PhaseResult(loss, _stats(r1_penalty=penalty.mean()))

    # ------------------------------------------------------------------ after each step

    @torch.no_grad()
    def end_step(self, nets: nn.ModuleDict, step: int, batch_size: int) -> None:
        batch_size *= ddp.world_size()  # EMA and ADA count images over all ranks, as NVIDIA
        beta = ema_beta(self._ema_kimg, self._o["ema_rampup"], step, batch_size)
        update_ema(nets["G_ema"], nets["G"], beta, average_buffers=False)
        nets["augment"].update(step, batch_size)


def _stats(**values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The phase's scalars as device tensors (the loop reads them only at log time: no host
    sync per step), copied by the stack so later in-place updates (augment p) do not show."""
    keys = list(values)
    flat = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    return dict(zip(keys, flat.unbind(), strict=True))
