"""Inception FID/KID through torch-fidelity, offline, with a randomly initialised InceptionV3.

The weights file is made here: torch-fidelity's own architecture, random (He-normal) weights,
saved as a state dict. Numbers are meaningless as image quality, but every code path (weights
loading, uint8 conversion, caching, FID/KID, protocol) is the real one. Inception resizes to
299 px, so each image costs ~6 GFLOP on CPU: the sets are kept tiny.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from gangaps.data.mnist import to_model_range
from gangaps.errors import UserError
from gangaps.metrics.inception import (
    CONFIG_KEY,
    WEIGHTS_URL,
    _Source,
    inception_metrics,
    load_inception,
    to_uint8_rgb,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest.one_thread)

N = 8  # images per set


class _RandomInception(FeatureExtractorInceptionV3):
    """torch-fidelity's network, built from an empty state dict instead of its download."""

    def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ANN001
        assert not state_dict  # only ever fed the empty dict below
        return super().load_state_dict(state_dict, strict=False)


def _make_weights(path: Path, seed: int) -> None:
    empty = path.with_suffix(".empty.pth")
    torch.save({}, empty)
    torch.manual_seed(seed)
    net = _RandomInception("inception-v3-compat", ["2048"],
                           feature_extractor_weights_path=str(empty))
    # default init shrinks activations ~10x per block (features ~1e-8); He init keeps them O(1)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    empty.unlink()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    _make_weights(path, seed=0)
    return path


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random RGB images (uint8 [N, 3, 24, 24]) and a strongly perturbed copy."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(N, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(24, 24), mode="bilinear", align_corners=False)
    real = (x * 255).round().to(torch.uint8)
    noise = torch.randn(N, 3, 24, 24, generator=g) * 80
    fake = (real.float() + noise).clamp(0, 255).round().to(torch.uint8)
    return real, fake


@pytest.fixture(scope="module")
def runs(weights: Path, images, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The expensive Inception runs, done once and inspected by several tests."""
    real, fake = images
    cache = tmp_path_factory.mktemp("fid_cache")
    out = {"cache": cache}
    out["self"] = inception_metrics(real, real, weights, cache_dir=cache, real_cache_key="toy")
    files = sorted(cache.iterdir())
    out["files_after_self"] = [(p.name, p.stat().st_mtime_ns) for p in files]
    out["pert"] = inception_metrics(fake, real, weights, cache_dir=cache, real_cache_key="toy")
    out["files_after_pert"] = [(p.name, p.stat().st_mtime_ns) for p in sorted(cache.iterdir())]
    return out


def test_fid_of_a_set_with_itself_is_zero(runs) -> None:
    assert runs["self"]["fid_inception"] == pytest.approx(0.0, abs=1e-6)
    assert runs["self"]["protocol"]["real_stats_cached"] is False


def test_fid_and_kid_rise_when_one_side_is_perturbed(runs) -> None:
    pert, same = runs["pert"], runs["self"]
    assert pert["fid_inception"] > 1.0
    assert pert["kid_inception"] > same["kid_inception"] + 1e-3
    assert np.isfinite(pert["kid_inception_std"])


def test_real_stats_cached_and_reused(runs) -> None:
    assert len(runs["files_after_self"]) == 1
    name = runs["files_after_self"][0][0]
    assert name.startswith(f"inception-toy-n{N}-24x24-") and name.endswith(".safetensors")
    assert runs["files_after_pert"] == runs["files_after_self"]  # same file, not rewritten
    assert runs["pert"]["protocol"]["real_stats_cached"] is True


def test_protocol_record(runs, weights: Path) -> None:
    p = runs["pert"]["protocol"]
    assert p["library"] == "torch-fidelity" and p["version"] == torch_fidelity.__version__
    assert p["feature_extractor"] == "inception-v3-compat" and p["feature_layer"] == "2048"
    assert p["weights_md5"] == hashlib.md5(weights.read_bytes()).hexdigest()
    assert p["weights_official"] is False  # random weights are not the TF-converted file
    assert (p["n_fake"], p["n_real"]) == (N, N)
    assert "299" in p["resize"] and "24x24" in p["resize"]
    assert p["reference"] == "toy"
    assert p["kid_subset_size"] == N


class _Tensors(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_matches_torch_fidelity_calculate_metrics(runs, images, weights: Path) -> None:
    """Same weights and images through torch-fidelity's own entry point: identical features,
    hence identical KID (same subsets and seed) and FID up to float rounding."""
    real, fake = images
    ref = torch_fidelity.calculate_metrics(
        input1=_Tensors(fake), input2=_Tensors(real), cuda=False, kid=True, fid=False,
        feature_extractor_weights_path=str(weights), kid_subset_size=N, cache=False,
        save_cpu_ram=True, verbose=False)
    assert runs["pert"]["kid_inception"] == pytest.approx(
        ref["kernel_inception_distance_mean"], rel=1e-6)
    assert runs["pert"]["kid_inception_std"] == pytest.approx(
        ref["kernel_inception_distance_std"], rel=1e-5, abs=1e-9)


def test_new_weights_invalidate_cached_real_stats(runs, images, weights: Path,
                                                  tmp_path: Path) -> None:
    real, fake = images
    # same network, one (unused-by-FID) tensor changed: the MD5 differs, so must the cache key
    state = torch.load(weights, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    other = tmp_path / "other.pth"
    torch.save(state, other)
    out = inception_metrics(fake[:2], real, other, cache_dir=runs["cache"],
                            real_cache_key="toy", kid=False)  # 2 fakes: Inception is slow
    assert out["protocol"]["real_stats_cached"] is False
    assert out["protocol"]["weights_md5"] == hashlib.md5(other.read_bytes()).hexdigest()
    assert len(list(runs["cache"].iterdir())) == 2
    assert "kid_inception" not in out and out["fid_inception"] > 0


def test_missing_or_bad_weights_are_user_errors(tmp_path: Path, images) -> None:
    real, _ = images
    with pytest.raises(UserError) as e:  # null (download) is tested in test_configs_dry_run
        inception_metrics(real, real, tmp_path / "nope.pth")
    msg = str(e.value)
    assert WEIGHTS_URL in msg and CONFIG_KEY in msg and "\n" not in msg
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(UserError, match="state dict"):
        load_inception(not_dict)
    wrong_keys = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong_keys)
    with pytest.raises(UserError, match="InceptionV3"):
        load_inception(wrong_keys)


class _Boom:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned > /dev/null",))


def test_weights_are_never_unpickled_with_code(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": _Boom()}, protocol=2))
    with pytest.raises(UserError, match="plain PyTorch state dict"):
        load_inception(evil)


def test_input_forms_give_the_same_uint8_batches(tmp_path: Path, images) -> None:
    real, _ = images
    want = real
    # float in [-1, 1] (gangaps convention) maps back to the same bytes
    assert torch.equal(to_uint8_rgb(real.float() / 127.5 - 1), want)
    # a folder of PNGs, read as torch-fidelity does (sorted names, PIL RGB)
    for i, img in enumerate(real):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    folder = _Source(tmp_path, batch_size=3, what="real")
    assert torch.equal(torch.cat(list(folder.batches())), want)
    # a callable yielding batches
    calls = _Source(lambda: iter(real.split(5)), batch_size=3, what="real")
    assert torch.equal(torch.cat(list(calls.batches())), want)
    # tensor and callable share the pixel fingerprint; the folder has its own kind
    tensor_fp = _Source(real, batch_size=3, what="real").fingerprint()
    assert calls.fingerprint() == tensor_fp
    assert tensor_fp[1:] == (N, (24, 24)) and folder.fingerprint()[1:] == (N, (24, 24))
    assert _Source(fake_like(real), 3, "real").fingerprint()[0] != tensor_fp[0]


def fake_like(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[0, 0, 0, 0] ^= 1  # one bit of one pixel
    return y


def test_gray_mnist_style_input_is_replicated() -> None:
    gray = to_model_range(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    rgb = to_uint8_rgb(gray)
    assert rgb.shape == (2, 3, 28, 28) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        to_uint8_rgb(torch.full((1, 3, 4, 4), 200.0))
