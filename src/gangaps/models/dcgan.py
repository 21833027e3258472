"""DCGAN for 28×28 MNIST: the TensorFlow tutorial networks (paper.md §4), alone or fused.

`Generator` and `Discriminator` are one instance. `GroupGenerator` and `GroupDiscriminator`
are n instances of them as one network (`gangaps.models.grouped`): same state-dict keys, every
tensor the instances' stacked, nothing shared between instances. Their tensors are
instance-first: z [n, B, z_dim] -> images [n, B, C, 28, 28] -> logits [n, B].
"""

from __future__ import annotations

import torch
from torch import nn

from gangaps.models.grouped import BatchedLinear, StreamDropout


def _widths(width: float, *base: int) -> list[int]:
    return [max(1, round(c * width)) for c in base]


def _g_convs(c1: int, c2: int, c3: int, channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(n * c1, n * c2, 5, 1, 2, bias=False, groups=n), nn.BatchNorm2d(n * c2),
        nn.LeakyReLU(0.3),
        nn.ConvTranspose2d(n * c2, n * c3, 5, 2, 2, output_padding=1, bias=False, groups=n),
        nn.BatchNorm2d(n * c3), nn.LeakyReLU(0.3),
        nn.ConvTranspose2d(n * c3, n * channels, 5, 2, 2, output_padding=1, bias=False, groups=n),
        nn.Tanh())


def _d_convs(channels: int, c1: int, c2: int, dropout: float, n: int) -> list[nn.Module]:
    return [nn.Conv2d(n * channels, n * c1, 5, 2, 2, groups=n), nn.LeakyReLU(0.3),
            StreamDropout(dropout),
            nn.Conv2d(n * c1, n * c2, 5, 2, 2, groups=n), nn.LeakyReLU(0.3),
            StreamDropout(dropout)]


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, C, 28, 28] in [-1, 1]. `width` scales every layer (1 = paper)."""

    def __init__(self, z_dim: int = 100, channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _widths(width, 256, 128, 64)
        self.z_dim, self.c1 = z_dim, c1
        self.fc = nn.Sequential(nn.Linear(z_dim, 7 * 7 * c1, bias=False), nn.BatchNorm1d(7 * 7 * c1),
                                nn.LeakyReLU(0.3))
        self.convs = _g_convs(c1, c2, c3, channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.fc(z).view(-1, self.c1, 7, 7))


class Discriminator(nn.Module):
    """image [N, C, 28, 28] -> logit [N] (real > 0)."""

    def __init__(self, channels: int = 1, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__()
        c1, c2 = _widths(width, 64, 128)
        self.net = nn.Sequential(*_d_convs(channels, c1, c2, dropout, 1), nn.Flatten(),
                                 nn.Linear(c2 * 7 * 7, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class GroupGenerator(nn.Module):
    """n Generators: z [n, B, z_dim] -> images [n, B, C, 28, 28]."""

    def __init__(self, n: int, z_dim: int = 100, channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _widths(width, 256, 128, 64)
        self.n, self.z_dim, self.c1, self.channels = n, z_dim, c1, channels
        self.fc = nn.Sequential(BatchedLinear(n, z_dim, 7 * 7 * c1, bias=False, concat=True),
                                nn.BatchNorm1d(n * 7 * 7 * c1), nn.LeakyReLU(0.3))
        self.convs = _g_convs(c1, c2, c3, channels, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[1]
        x = self.convs(self.fc(z).view(b, self.n * self.c1, 7, 7))
        return x.view(b, self.n, self.channels, 28, 28).transpose(0, 1)


class _InstanceFeatures(nn.Module):
    """[B, n·c, H, W] -> [n, B, c·H·W]: each instance's flattened features, for its own linear."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.n, -1).transpose(0, 1)


class GroupDiscriminator(nn.Module):
    """n Discriminators: images [n, B, C, 28, 28] -> logits [n, B]."""

    def __init__(self, n: int, channels: int = 1, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__()
        c1, c2 = _widths(width, 64, 128)
        self.n = n
        self.net = nn.Sequential(*_d_convs(channels, c1, c2, dropout, n), _InstanceFeatures(n),
                                 BatchedLinear(n, c2 * 7 * 7, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = x.shape[:2]
        return self.net(x.transpose(0, 1).reshape(b, n * x.shape[2], *x.shape[3:])).squeeze(-1)
