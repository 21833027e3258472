"""DetectorAugment: each step does what it claims, is seeded, and is off when disabled."""

from __future__ import annotations

import pytest
import torch

from gangaps.data.augment import DetectorAugment, center_crop, gaussian_blur, jpeg_roundtrip
from gangaps.errors import UserError


def _images(n: int = 8, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    """Textured images in [-1, 1]: smooth colour structure plus pixel-level luminance noise
    (has high frequencies; the noise is shared by the channels, like photos' fine detail)."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, c, s // 4, s // 4, generator=g),
                                             size=(s, s), mode="bilinear")
    noise = torch.rand(n, 1, s, s, generator=g)
    return (0.7 * smooth + 0.3 * noise) * 2 - 1


def _high_freq_energy(x: torch.Tensor) -> float:
    """Energy of horizontal + vertical first differences: large for sharp images."""
    return float((x.diff(dim=-1) ** 2).mean() + (x.diff(dim=-2) ** 2).mean())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_is_exact_mirror_per_image():
    x = _images(16)
    y = DetectorAugment(flip=True)(x, _gen(1))
    flipped = [bool(torch.equal(yi, xi.flip(-1))) for xi, yi in zip(x, y, strict=True)]
    kept = [bool(torch.equal(yi, xi)) for xi, yi in zip(x, y, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))  # each is one or the other
    assert 0 < sum(flipped) < 16  # per-image coin, not one coin for the batch


def test_blur_sigma_zero_is_identity():
    x = _images()
    y = DetectorAugment(blur_prob=1.0, blur_sigma=(0.0, 0.0))(x, _gen(0))
    assert torch.equal(y, x)


def test_larger_sigma_removes_more_high_frequency_energy():
    x = _images()
    energies = [_high_freq_energy(gaussian_blur(x, torch.full((8,), s))) for s in (0.0, 0.7, 2.0)]
    assert energies[0] == pytest.approx(_high_freq_energy(x))
    assert energies[0] > 1.5 * energies[1] > 1.5 * energies[2]
    # Blur preserves the mean (normalised kernel, reflect padding).
    blurred = gaussian_blur(x, torch.full((8,), 2.0))
    assert torch.allclose(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)


def test_blur_sigma_is_per_image():
    x = _images(2)
    y = gaussian_blur(x, torch.tensor([0.0, 2.0]))
    assert torch.equal(y[0], x[0])
    assert not torch.allclose(y[1], x[1], atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_quality_100_near_identity_and_10_lossy(channels):
    x = _images(4, c=channels)
    err_100 = (jpeg_roundtrip(x, [100] * 4) - x).abs().mean()
    err_10 = (jpeg_roundtrip(x, [10] * 4) - x).abs().mean()
    # 8-bit quantisation + DCT rounding; colour also loses chroma detail to PIL's default 4:2:0
    # subsampling (what real-world JPEG does), so its bound is looser.
    assert err_100 < (0.01 if channels == 1 else 0.04)
    assert err_10 > 0.1 and err_10 > 4 * err_100


def test_jpeg_through_augment_changes_images_and_keeps_range():
    x = _images()
    y = DetectorAugment(jpeg_prob=1.0, jpeg_quality=(10, 20))(x, _gen(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() > 0.05


def test_same_seed_same_output_different_seed_differs():
    aug = DetectorAugment(crop=24, flip=True, blur_prob=0.5, jpeg_prob=0.5)
    x = _images(8)
    a, b, c = aug(x, _gen(3)), aug(x, _gen(3)), aug(x, _gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stored_generator_is_used_and_resumable():
    aug = DetectorAugment(crop=24, flip=True, blur_prob=0.5, generator=_gen(5))
    x = _images(8)
    state = aug.generator.get_state()
    first = aug(x)
    assert torch.equal(first, aug(x, _gen(5)))  # same stream as an explicit generator
    assert not torch.equal(aug(x), first)  # the stored generator advanced
    aug.generator.set_state(state)
    assert torch.equal(aug(x), first)  # restoring its state replays the batch


def test_uint8_in_uint8_out():
    x8 = ((_images(4) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(DetectorAugment()(x8, _gen(0)), x8)  # exact when nothing is applied
    aug = DetectorAugment(crop=20, flip=True, blur_prob=1.0, blur_sigma=(1.0, 2.0))
    y8 = aug(x8, _gen(1))
    yf = aug(x8.float() / 127.5 - 1, _gen(1))
    assert y8.dtype == torch.uint8 and y8.shape == (4, 3, 20, 20)
    assert (y8.float() / 127.5 - 1 - yf).abs().max() <= 1 / 127.5 + 1e-6


def test_probability_zero_leaves_images_unchanged():
    x = _images()
    aug = DetectorAugment(flip=False, blur_prob=0.0, blur_sigma=(1.0, 3.0), jpeg_prob=0.0,
                          jpeg_quality=(10, 10))
    y = aug(x, _gen(0))
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()  # a copy: the caller's batch is never modified


def test_random_crop_is_a_window_of_the_input():
    x = _images(6, s=32)
    y = DetectorAugment(crop=20)(x, _gen(0))
    assert y.shape == (6, 3, 20, 20)
    offsets = set()
    for xi, yi in zip(x, y, strict=True):
        hits = [(t, l) for t in range(13) for l in range(13)
                if torch.equal(xi[:, t:t + 20, l:l + 20], yi)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # per-image offsets


@pytest.mark.parametrize("crop", [32, None, 30])
def test_padded_crop_is_a_shifted_window_of_the_reflect_padded_input(crop):
    x = _images(6, s=32)
    y = DetectorAugment(crop=crop, pad=3)(x, _gen(0))
    side = crop or 32  # without crop, the padded images are cropped back to their own size
    assert y.shape == (6, 3, side, side)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="reflect")
    offsets = set()
    for xi, yi in zip(padded, y, strict=True):
        n = 38 - side + 1
        hits = [(t, l) for t in range(n) for l in range(n) if torch.equal(xi[:, t:t + side, l:l + side], yi)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1
    with pytest.raises(UserError, match="smaller than the images"):
        DetectorAugment(pad=32)(x, _gen(0))


def test_center_crop_and_eval_view():
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert torch.equal(center_crop(x, 2), x[..., 2:4, 2:4])
    assert torch.equal(DetectorAugment(crop=4).eval_view(x), x[..., 1:5, 1:5])
    assert DetectorAugment().eval_view(x) is x
    with pytest.raises(UserError):
        center_crop(x, 7)


def test_crop_larger_than_images_is_user_error():
    with pytest.raises(UserError, match="larger than"):
        DetectorAugment(crop=64)(_images(2, s=32), _gen(0))


def test_from_config_and_describe_round_trip():
    cfg = {"crop": 24, "flip": True, "blur_prob": 0.1, "blur_sigma": [0, 3], "jpeg_prob": 0.1,
           "jpeg_quality": [30, 100]}
    aug = DetectorAugment.from_config(cfg)
    assert aug.blur_sigma == (0.0, 3.0) and aug.jpeg_quality == (30, 100)
    d = aug.describe()
    assert d == {**cfg, "pad": 0, "blur_sigma": [0.0, 3.0]}
    assert DetectorAugment.from_config(d) == aug
    assert DetectorAugment.from_config(None) == DetectorAugment()
    assert DetectorAugment(generator=_gen(0)) == DetectorAugment()  # RNG is not a setting
    g = _gen(0)
    assert DetectorAugment.from_config(cfg, generator=g).generator is g


@pytest.mark.parametrize("cfg", [
    {"blur_probability": 0.5},
    {"blur_prob": 1.5},
    {"jpeg_prob": -0.1},
    {"blur_sigma": [3, 1]},
    {"jpeg_quality": [0, 100]},
    {"jpeg_quality": [30.5, 90]},
    {"crop": 0},
    {"crop": True},
    {"pad": -1},
    {"pad": 1.5},
    {"flip": "yes"},
    {"generator": None},
])
def test_bad_config_is_user_error(cfg):
    with pytest.raises(UserError):
        DetectorAugment.from_config(cfg)
