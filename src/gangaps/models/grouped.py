"""Building blocks of fused networks: N independent instances of one network as one module.

HFTA (Wang et al., MLSys 2021) fuses many small models into one: instance i owns channel
group i of every grouped convolution, slice i of every batched linear layer and its own
BatchNorm channels. A fused network registers the same state-dict keys, in the same order, as
the network it fuses, and every fused tensor is the instance tensors stacked instance-major
(`fuse_tensor`): a [c, ...] tensor of one instance is rows i·c:(i+1)·c of the fused [n·c, ...]
one, a linear weight [out, in] is slice i of [n, out, in]. So weights, optimizer moments and
buffers all fuse and unfuse with one rule, whatever the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def fuse_tensor(parts: Sequence[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Instance tensors -> the fused tensor of `shape`. 0-dim tensors (BatchNorm's batch count,
    Adam's step) are one shared counter, equal in every instance."""
    if parts[0].ndim == 0:
        return parts[0].clone()
    return torch.stack(list(parts)).reshape(shape)


def instance_tensor(fused: torch.Tensor, i: int, n: int, shape: torch.Size) -> torch.Tensor:
    """Instance i's part (of shape `shape`) of a fused tensor: the inverse of `fuse_tensor`."""
    if fused.ndim == 0:
        return fused.clone()
    return fused.reshape(n, *shape)[i].clone()


def fuse_state(states: Sequence[dict[str, torch.Tensor]],
               like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack instances' state dicts into the state dict of a fused module (`like`)."""
    return {k: fuse_tensor([s[k] for s in states], v.shape) for k, v in like.items()}


def instance_state(fused: dict[str, torch.Tensor], i: int, n: int,
                   like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Instance i's state dict (keys and shapes of `like`, one instance) out of a fused one."""
    return {k: instance_tensor(fused[k], i, n, v.shape) for k, v in like.items()}


class BatchedLinear(nn.Module):
    """n linear layers at once: x [n, B, in] -> [n, B, out] (one bmm), or, with
    `concat=True`, [B, n·out] (instance i's features at i·out:(i+1)·out, as BatchNorm1d over
    n·out features expects)."""

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True,
                 concat: bool = False) -> None:
        super().__init__()
        self.n, self.concat = n, concat
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.bmm(x, self.weight.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.transpose(0, 1).reshape(y.shape[1], -1) if self.concat else y


def dropout_mask(shape: Sequence[int], p: float, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """Inverted-dropout scale (0 or 1/(1-p)) drawn from one instance's own stream."""
    keep = torch.rand(tuple(shape), generator=generator, device=device) >= p
    return keep * (1.0 / (1.0 - p))


class StreamDropout(nn.Module):
    """Dropout over [B, n·c, ...] whose masks come from per-instance generators, one per
    channel group (set `generators` before training: a list of n torch.Generators). Instance i
    draws exactly the mask it would draw alone (n = 1, the same generator), so a fused group
    and its instances trained one by one see the same masks. Without generators it is
    ordinary dropout on the global RNG."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generators: list[torch.Generator] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generators is None:
            return nn.functional.dropout(x, self.p, True)
        n = len(self.generators)
        part = (x.shape[0], x.shape[1] // n, *x.shape[2:])
        masks = [dropout_mask(part, self.p, g, x.device) for g in self.generators]
        mask = masks[0] if n == 1 else torch.stack(masks, 1).reshape(x.shape)
        return x * mask.to(x.dtype)
