"""GAN-classifiers: real-vs-generated detectors, distinct from any GAN's discriminator.

Every classifier takes images exactly as generators produce them ([-1, 1], N×C×H×W at the
data resolution) and returns one logit per image (real > 0). Its input transform T (resize,
normalisation) lives inside `forward`, written with differentiable ops only, so the same
module serves as a held-out evaluator and as a frozen fooling target that passes gradients
back into a generator. Training-time augmentation (crops, flips, blur, JPEG) is the trainer's
business, not the model's.

A new architecture plugs in with `@register("name")` on a builder
`(in_channels, resolution, **options) -> GANClassifier`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gangaps.errors import UserError


class GANClassifier(nn.Module):
    """Base class: differentiable preprocessing T, then a network that outputs one logit.

    input_size: side the network sees (None keeps the data resolution).
    mean, std: per-channel normalisation applied after mapping [-1, 1] to [0, 1].
    fixed_input: the network takes input_size × input_size inputs only (a flatten + dense
    head); without it any side works, so `forward(x, resize=False)` can see native pixels.
    """

    def __init__(
        self,
        net: nn.Module,
        in_channels: int,
        input_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        net_channels: int | None = None,
        fixed_input: bool = False,
    ) -> None:
        super().__init__()
        self.fixed_input = fixed_input
        self.net = net
        self.in_channels = in_channels
        self.input_size = input_size
        self.net_channels = net_channels or in_channels
        mean = mean or (0.5,) * self.net_channels
        std = std or (0.5,) * self.net_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """T: [-1, 1] images -> the network's input. Differentiable end to end.

        resize=False skips the resize to input_size (evaluation at native pixels; a
        fixed_input network must then be given input_size images, e.g. crops or tiles)."""
        if x.shape[1] != self.net_channels:
            x = x.expand(-1, self.net_channels, -1, -1)  # gray -> RGB for ImageNet-shaped nets
        if resize and self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.input_size)
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, x: torch.Tensor, resize: bool = True) -> torch.Tensor:
        return self.net(self.preprocess(x, resize)).reshape(x.shape[0])


Builder = Callable[..., GANClassifier]
ARCHITECTURES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        assert name not in ARCHITECTURES, f"classifier {name!r} registered twice"
        ARCHITECTURES[name] = fn
        return fn

    return wrap


def build_classifier(arch: str, in_channels: int, resolution: int, **options) -> GANClassifier:
    """Build a registered architecture for images of `in_channels` × `resolution`²."""
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UserError(f"unknown classifier arch {arch!r}; known: {known}")
    try:
        return ARCHITECTURES[arch](in_channels, resolution, **options)
    except TypeError as e:  # unknown option names come back as TypeError from the builder
        raise UserError(f"classifier {arch!r}: {e}") from None
    except (RuntimeError, MemoryError) as e:  # sizes valid one by one, too big together
        raise UserError(f"classifier {arch!r}: cannot build it with options {options} "
                        f"({str(e).splitlines()[0][:120]})") from None


@register("small_cnn")
def small_cnn(in_channels: int, resolution: int, width: int = 32) -> GANClassifier:
    """Three 3×3 convolutions, global average pool, one logit (paper.md §4 default).

    Deliberately unlike the DCGAN discriminator (5×5 kernels, dropout, flatten+dense).
    """
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 4096:
        raise UserError(f"classifier 'small_cnn': option width must be an integer in [1, 4096], "
                        f"got {width!r}")
    if in_channels not in (1, 3) or resolution < 1:
        raise UserError(f"classifier 'small_cnn': needs 1 or 3 channels, got {in_channels}")
    w = width
    net = nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1),
    )
    return GANClassifier(net, in_channels)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: a fooling target or evaluator, never updated."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# Registers the larger architectures (resnet18/50, patch, spectrum, dcgan_d) on import; at the
# bottom because classifier_zoo needs GANClassifier and register from this module.
from gangaps.models import classifier_zoo  # noqa: E402, F401
