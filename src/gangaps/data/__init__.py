"""Real images for the experiment, as uint8 tensors [N, C, H, W] split by who may see them.

- `gan_train`: what every GAN instance trains on;
- `classifier_train`: real side of GAN-classifier training (and its validation split);
- `eval_real`: real side of every evaluation; never seen by a classifier in training
  (MNIST: the official test set; image folders: the last `data.heldout_real` images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gangaps.config import DataConfig
from gangaps.errors import UserError


@dataclass
class RealData:
    gan_train: torch.Tensor
    classifier_train: torch.Tensor
    eval_real: torch.Tensor
    name: str  # identifies the data for caches (e.g. FID reference statistics)

    @property
    def channels(self) -> int:
        return self.gan_train.shape[1]

    @property
    def resolution(self) -> int:
        return self.gan_train.shape[-1]


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, as if saved to PNG: the form detectors see images in."""
    return images.detach().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def load_real(cfg: DataConfig) -> RealData:
    if cfg.dataset == "mnist":
        from gangaps.data.mnist import load_mnist
        if cfg.resolution != 28 or cfg.channels != 1:
            raise UserError("data.dataset=mnist is 28×28 gray: set data.resolution=28 data.channels=1")
        train, _ = load_mnist("train", cfg.path, cfg.download)
        test, _ = load_mnist("test", cfg.path, cfg.download)
        train, test = train.unsqueeze(1), test.unsqueeze(1)
        return RealData(train, train, test, "mnist")
    from gangaps.data.images import load_image_dataset
    images = load_image_dataset(cfg.path, cfg.resolution, cfg.channels)
    if cfg.heldout_real >= len(images):
        raise UserError(f"data.heldout_real={cfg.heldout_real} leaves no real image for "
                        f"classifier training ({len(images)} images in {cfg.path})")
    cut = len(images) - cfg.heldout_real
    return RealData(images, images[:cut], images[cut:], f"images-{cfg.resolution}")
