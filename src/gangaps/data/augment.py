"""Detector (GAN-classifier) training augmentation, after CNNDetection's "Blur+JPEG(p)".

Works on batches of images in [-1, 1] (N×C×H×W, C = 1 or 3), every random draw coming from
a caller-supplied `torch.Generator`, so a seeded trainer gets the same augmented batches on a
re-run. Order as in CNNDetection's `data/datasets.py`: Gaussian blur → JPEG → random crop →
horizontal flip. Draws are per image (blur σ, JPEG quality, crop offset, flip).

Output size: `crop` set → N×C×crop×crop (no resize or padding back); `crop=None` → the input
size. Classifiers resize inside their own preprocessing where their architecture needs a fixed
size, so training crops need not match the evaluation size; for evaluation use `eval_view`
(center crop to the same `crop`, no blur/JPEG/flip), as CNNDetection does.

JPEG is non-differentiable (uint8 round trip on CPU): this module is for classifier training
data, never for the fooling path of a generator.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gangaps.errors import UserError

# scipy.ndimage.gaussian_filter's default truncation (CNNDetection blurs with it).
_TRUNCATE = 4.0


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central size×size crop of an N×C×H×W batch (offsets rounded down, as torchvision's)."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise UserError(f"center crop {size} is larger than the images ({h}×{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """One normalised 1-D Gaussian per σ (K×(2·radius+1)); σ = 0 gives an exact delta."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigmas.to(torch.float64).clamp_min(1e-12)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    # Tiny σ underflows to exactly [0, …, 1, …, 0] anyway; make σ = 0 exact by construction.
    delta = (t == 0).to(torch.float64).expand_as(k)
    return torch.where(sigmas[:, None] <= 1e-6, delta, k).to(torch.float32)


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur image i of an N×C×H×W batch with its own σ_i (separable, reflect padding)."""
    n, c, h, w = x.shape
    radius = math.ceil(_TRUNCATE * float(sigmas.max())) if n else 0
    radius = min(radius, h - 1, w - 1)  # reflect padding needs pad < side
    if radius == 0:
        return x.clone()
    k = gaussian_kernels(sigmas.cpu(), radius).to(x.device, x.dtype)  # N×L
    k = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    y = x.reshape(1, n * c, h, w)
    # 'reflect' mirrors about the edge pixel, close to scipy's default 'reflect' boundary
    # and, unlike zero padding, does not darken the borders.
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _pil_jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """One C×H×W uint8 image through PIL's JPEG encoder and decoder."""
    arr = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    # PIL defaults, as CNNDetection's PIL path: colour images get 4:2:0 chroma subsampling,
    # which is part of what real-world JPEG does to GAN artifacts.
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = torch.from_numpy(np.asarray(Image.open(buf)).copy())
    return out[None] if out.ndim == 2 else out.permute(2, 0, 1)


def jpeg_roundtrip(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """Encode and decode each image as JPEG (PIL) at its quality (1..100). Non-differentiable.

    Goes through uint8 like any saved image: even quality 100 is only near-identity.
    """
    if x.shape[0] == 0:
        return x.clone()
    u8 = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    out = [_pil_jpeg(img, int(q)) for img, q in zip(u8, qualities, strict=True)]
    return (torch.stack(out).to(x.device, torch.float32) / 127.5 - 1).to(x.dtype)


def _range(name: str, value: Any, lo: float, hi: float, integer: bool) -> tuple:
    """Validate a (low, high) pair within [lo, hi]; a single number means (v, v)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = (value, value)
    ok_type = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if integer else (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool))
    if (not isinstance(value, list | tuple) or len(value) != 2 or not all(map(ok_type, value))
            or not lo <= value[0] <= value[1] <= hi):
        kind = "integers" if integer else "numbers"
        raise UserError(f"augment {name} must be two {kind} low <= high in [{lo}, {hi}], "
                        f"got {value!r}")
    return (int(value[0]), int(value[1])) if integer else (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class DetectorAugment:
    """CNNDetection-style augmentation for GAN-classifier training batches.

    crop: random square crop side (None: no crop). pad: reflect-pad every side by this many
    pixels before the crop (torchvision's RandomCrop padding), so `crop` = image side with
    `pad` = 4 is a random shift of up to 4 px that keeps the whole size and scale; without
    `crop` the padded images are cropped back to their own size. flip: random horizontal
    flip (p = 0.5).
    blur_prob / blur_sigma: Gaussian blur with σ ~ U[blur_sigma] with that probability.
    jpeg_prob / jpeg_quality: JPEG re-compression, quality ~ U{jpeg_quality} (inclusive).
    "Blur+JPEG(0.5)" is `DetectorAugment(crop, True, 0.5, (0, 3), 0.5, (30, 100))`.
    generator: default source of randomness when a call passes none (the trainer keeps one
    here and checkpoints its state); not a setting, so not compared, logged or configured.
    """

    crop: int | None = None
    pad: int = 0
    flip: bool = False
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.crop is not None and (isinstance(self.crop, bool) or not isinstance(
                self.crop, int) or self.crop < 1):
            raise UserError(f"augment crop must be a positive integer or null, got {self.crop!r}")
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise UserError(f"augment pad must be a non-negative integer, got {self.pad!r}")
        if not isinstance(self.flip, bool):
            raise UserError(f"augment flip must be true or false, got {self.flip!r}")
        for name in ("blur_prob", "jpeg_prob"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
                raise UserError(f"augment {name} must be a probability in [0, 1], got {p!r}")
            object.__setattr__(self, name, float(p))
        object.__setattr__(self, "blur_sigma",
                           _range("blur_sigma", self.blur_sigma, 0.0, 50.0, integer=False))
        object.__setattr__(self, "jpeg_quality",
                           _range("jpeg_quality", self.jpeg_quality, 1, 100, integer=True))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None,
                    generator: torch.Generator | None = None) -> DetectorAugment:
        """Build from a config mapping (e.g. YAML); unknown keys are a UserError."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)} - {"generator"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UserError(f"unknown augment option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**cfg, generator=generator)

    def describe(self) -> dict[str, Any]:
        """Plain dict of the settings, for logs and run records."""
        return {"crop": self.crop, "pad": self.pad, "flip": self.flip, "blur_prob": self.blur_prob,
                "blur_sigma": list(self.blur_sigma), "jpeg_prob": self.jpeg_prob,
                "jpeg_quality": list(self.jpeg_quality)}

    def check_size(self, h: int, w: int) -> None:
        """UserError unless pad and crop fit h×w images (callers check before decoding data)."""
        if self.pad >= min(h, w):  # reflect padding mirrors inside the image
            raise UserError(f"augment pad {self.pad} must be smaller than the images ({h}×{w})")
        if self.crop is not None and (self.crop > h + 2 * self.pad or self.crop > w + 2 * self.pad):
            raise UserError(f"augment crop {self.crop} is larger than the images ({h}×{w}"
                            f"{f' padded by {self.pad}' if self.pad else ''})")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a training batch; all randomness from `generator` (CPU), else `self.generator`.

        Float input is taken to be in [-1, 1] and comes back as float; uint8 input (0..255, as
        datasets are stored) comes back as uint8, rounded after the float-domain steps.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"augment expects N×C×H×W images with C = 1 or 3, got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            y = self(x.float() / 127.5 - 1, generator)
            return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        n, _, h, w = x.shape
        self.check_size(h, w)
        g = generator if generator is not None else self.generator

        def chosen(p: float) -> torch.Tensor:
            # Always draw, even for p = 0 or 1, so the stream position (and hence every later
            # draw) does not depend on which steps are enabled.
            return torch.rand(n, generator=g) < p

        x = x.clone()
        blur_on = chosen(self.blur_prob)
        lo, hi = self.blur_sigma
        sigmas = lo + (hi - lo) * torch.rand(n, generator=g)
        idx = blur_on.nonzero().flatten()
        if len(idx):
            x[idx.to(x.device)] = gaussian_blur(x[idx.to(x.device)], sigmas[idx])

        jpeg_on = chosen(self.jpeg_prob)
        qualities = torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (n,),
                                  generator=g)
        idx = jpeg_on.nonzero().flatten()
        if len(idx):
            x[idx.to(x.device)] = jpeg_roundtrip(x[idx.to(x.device)], qualities[idx].tolist())

        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        if self.crop is not None or self.pad:
            s = self.crop or min(h, w)
            h, w = x.shape[-2:]
            tops = torch.randint(0, h - s + 1, (n,), generator=g).tolist()
            lefts = torch.randint(0, w - s + 1, (n,), generator=g).tolist()
            x = torch.stack([img[:, t:t + s, l:l + s] for img, t, l in
                             zip(x, tops, lefts, strict=True)]) if n else x[..., :s, :s]

        flip_on = chosen(0.5 if self.flip else 0.0)
        idx = flip_on.nonzero().flatten().to(x.device)
        if len(idx):
            x[idx] = x[idx].flip(-1)
        return x

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic evaluation view: center crop to `crop` if set, nothing else."""
        return x if self.crop is None else center_crop(x, self.crop)
