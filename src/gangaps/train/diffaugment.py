"""Differentiable augmentation of everything the StyleGAN2 discriminator sees.

Two modes share one set of ops (Zhao et al. 2020, "Differentiable Augmentation for
Data-Efficient GAN Training": color, translation, cutout):

- `diffaugment`: every op on every image, every time (p fixed at 1);
- `ada`: "ADA-lite": each op is applied to each image with probability p, and p is tuned as
  in Karras et al. 2020 (ADA) from the sign of D's logits on reals, towards a target r_t.
- `none`: identity.

The ops are differentiable in the image, so fakes get gradients through them, and they are
applied to reals and fakes alike (otherwise D would learn the augmentation as a tell).
All randomness comes from torch's global RNG on the images' device, which the training loop
checkpoints; p and the ADA statistics are buffers, so a checkpoint holds them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.errors import UserError
from gangaps.train.distributed import all_reduce_sum

MODES = ("diffaugment", "ada", "none")
OPS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    ops = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in ops if p not in OPS]
    if unknown:
        raise UserError(f"augment policy: unknown op(s) {unknown}; known: {', '.join(OPS)}")
    return ops


def _gate(n: int, p: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Per-image 0/1 float mask of images an op applies to (None: all of them)."""
    if p is None:
        return None
    return (torch.rand(n, 1, 1, 1, device=device) < p).float()


def color(x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Random brightness (+U(-0.5, 0.5)), saturation (×U(0, 2)), contrast (×U(0.5, 1.5))."""
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    brightness = torch.rand(shape, device=x.device) - 0.5
    saturation = torch.rand(shape, device=x.device) * 2
    contrast = torch.rand(shape, device=x.device) + 0.5
    if gate is not None:  # gated-off images get the identity (offset 0, factor 1)
        brightness = brightness * gate
        saturation = 1 + (saturation - 1) * gate
        contrast = 1 + (contrast - 1) * gate
    x = x + brightness.to(x.dtype)
    if x.shape[1] > 1:  # saturation is meaningless for gray images
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * saturation.to(x.dtype) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast.to(x.dtype) + mean


def translation(x: torch.Tensor, ratio: float = 0.125,
                gate: torch.Tensor | None = None) -> torch.Tensor:
    """Shift each image by an integer offset in [-ratio·size, ratio·size] per axis, zero fill."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1), device=x.device)
    if gate is not None:
        g = gate.reshape(n, 1).long()
        dy, dx = dy * g, dx * g
    # Output pixel (i, j) reads input (i - dy, j - dx); out-of-range reads land in the zero
    # border of a 1-pixel padding (index 0), in-range reads are offset by that padding.
    ys = torch.arange(h, device=x.device).unsqueeze(0) - dy  # [n, h]
    xs = torch.arange(w, device=x.device).unsqueeze(0) - dx  # [n, w]
    ys = torch.where((ys >= 0) & (ys < h), ys + 1, torch.zeros_like(ys))
    xs = torch.where((xs >= 0) & (xs < w), xs + 1, torch.zeros_like(xs))
    padded = F.pad(x, [1, 1, 1, 1])
    rows = torch.arange(n, device=x.device).reshape(n, 1, 1)
    out = padded[rows, :, ys.unsqueeze(2), xs.unsqueeze(1)]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_format_of(x))


def cutout(x: torch.Tensor, ratio: float = 0.5, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Zero one (ratio·size)² square per image at a uniformly random centre (may overhang)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    yy = torch.arange(h, device=x.device).reshape(1, h, 1)
    xx = torch.arange(w, device=x.device).reshape(1, 1, w)
    y0, x0 = cy - ch // 2, cx - cw // 2  # top-left corner of the square
    inside = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw)  # [n, h, w]
    if gate is not None:
        inside = inside & gate.reshape(n, 1, 1).bool()
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class AugmentPipe(nn.Module):
    """D-side augmentation with its state (p, ADA statistics) in buffers.

    Call `observe(real_logits)` on D's logits for (augmented) reals and `update(...)` once per
    training step; both are no-ops unless mode == 'ada'.
    """

    def __init__(self, mode: str = "diffaugment", policy: str = "color,translation,cutout",
                 ada_target: float = 0.6, ada_interval: int = 4, ada_kimg: float = 500.0,
                 p_init: float = 0.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserError(f"augment: unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode
        self.ops = parse_policy(policy) if mode != "none" else ()
        self.ada_target, self.ada_interval, self.ada_kimg = ada_target, ada_interval, ada_kimg
        self.register_buffer("p", torch.tensor(1.0 if mode == "diffaugment" else p_init))
        # Sum and count of sign(D(real)) since the last ADA adjustment.
        self.register_buffer("ada_sum", torch.zeros(()))
        self.register_buffer("ada_count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ops:
            return x
        p = self.p if self.mode == "ada" else None
        for op in self.ops:
            gate = _gate(x.shape[0], p, x.device)
            if op == "color":
                x = color(x, gate)
            elif op == "translation":
                x = translation(x, gate=gate)
            else:
                x = cutout(x, gate=gate)
        return x

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        if self.mode == "ada":  # tensor ops only: no GPU sync in the training step
            self.ada_sum += real_logits.detach().float().sign().sum()
            self.ada_count += real_logits.numel()

    @torch.no_grad()
    def update(self, step: int, batch_size: int) -> None:
        """ADA heuristic after step `step` (0-based; batch_size over all ranks): every
        `ada_interval` steps, move p by sign(r_t - target) · (images since the last update)
        / (ada_kimg · 1000), clamped to [0, 1]."""
        if self.mode != "ada" or (step + 1) % self.ada_interval:
            return
        all_reduce_sum(self.ada_sum)  # multi-GPU: statistics of every rank's reals
        all_reduce_sum(self.ada_count)
        rt = self.ada_sum / self.ada_count.clamp(min=1)
        adjust = torch.sign(rt - self.ada_target) * (batch_size * self.ada_interval) \
            / (self.ada_kimg * 1000)
        self.p.copy_((self.p + adjust).clamp(0.0, 1.0))
        self.ada_sum.zero_()
        self.ada_count.zero_()
