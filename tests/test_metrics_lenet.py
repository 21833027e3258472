"""FID (LeNet): the trained extractor, its cache, and that the distance tracks image damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gangaps.data.mnist import find_mnist, load_mnist, to_model_range
from gangaps.errors import UserError
from gangaps.metrics.lenet import (
    ENV_CACHE,
    FEATURE_DIM,
    INFO_FILE,
    MODEL_FILE,
    LeNet,
    accuracy,
    default_cache_dir,
    fid_lenet,
    lenet_features,
    load_or_train_lenet,
    mnist_test_stats,
    stats_path,
    train_lenet,
)
from tests.conftest import DATA

ROOT = os.environ.get("GANGAPS_DATA_ROOT", str(DATA))


def _have_mnist() -> bool:
    try:
        find_mnist(ROOT)
    except UserError:
        return False
    return True


pytestmark = [pytest.mark.skipif(not _have_mnist(), reason=f"MNIST idx files not under {ROOT}"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def lenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding a trained LeNet: trained here once per run, unless the user's
    cache already has one, which is copied (tests never write to the user's cache)."""
    d = tmp_path_factory.mktemp("lenet_cache")
    user = default_cache_dir()
    if (user / MODEL_FILE).exists() and (user / INFO_FILE).exists():
        shutil.copy(user / MODEL_FILE, d / MODEL_FILE)
        shutil.copy(user / INFO_FILE, d / INFO_FILE)
    model = load_or_train_lenet(d, ROOT)
    assert (d / MODEL_FILE).exists() and (d / INFO_FILE).exists()
    if model.info["trained"]:
        print(f"\ntrained LeNet: {model.info}")
    return d


@pytest.fixture(scope="module")
def lenet(lenet_dir: Path) -> LeNet:
    return load_or_train_lenet(lenet_dir, ROOT)


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist("test", ROOT)
    return to_model_range(images), labels


@pytest.fixture(scope="module")
def real_stats(lenet: LeNet, lenet_dir: Path):
    return mnist_test_stats(lenet, ROOT, lenet_dir)


def test_lenet_reaches_99_percent(lenet: LeNet, mnist_test) -> None:
    x, y = mnist_test
    acc = accuracy(lenet, x, y)
    assert acc >= 0.99
    # the recorded accuracy is the one measured at training time on the same split
    assert lenet.info["test_accuracy"] == pytest.approx(acc)


def test_cache_is_reused_not_retrained(lenet_dir: Path, lenet: LeNet) -> None:
    before = {f: (lenet_dir / f).stat().st_mtime_ns for f in (MODEL_FILE, INFO_FILE)}
    again = load_or_train_lenet(lenet_dir, ROOT)
    assert again.info["trained"] is False
    assert {f: (lenet_dir / f).stat().st_mtime_ns for f in before} == before
    for (k, a), (_, b) in zip(lenet.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert again.info["hash"] == lenet.info["hash"]


def test_env_var_selects_cache_root(lenet_dir: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CACHE, str(tmp_path))
    assert default_cache_dir() == tmp_path / "lenet"
    shutil.copytree(lenet_dir, tmp_path / "lenet")
    assert load_or_train_lenet(None, ROOT).info["trained"] is False  # found via the env var


def test_info_that_does_not_match_the_weights_is_remeasured(lenet_dir: Path, lenet: LeNet,
                                                             tmp_path: Path) -> None:
    """A JSON from a racing writer (another network) must not vouch for these weights."""
    shutil.copytree(lenet_dir, tmp_path / "c")
    info = json.loads((tmp_path / "c" / INFO_FILE).read_text())
    (tmp_path / "c" / INFO_FILE).write_text(json.dumps({**info, "hash": "other",
                                                        "test_accuracy": 0.5}))
    model = load_or_train_lenet(tmp_path / "c", ROOT)
    assert model.info["hash"] == lenet.info["hash"]
    assert model.info["test_accuracy"] == pytest.approx(lenet.info["test_accuracy"])
    assert json.loads((tmp_path / "c" / INFO_FILE).read_text())["hash"] == lenet.info["hash"]


def test_training_is_deterministic_under_a_seed() -> None:
    threads = torch.get_num_threads()
    a, acc_a = train_lenet(ROOT, epochs=1, seed=3, n_train=512, n_test=500)
    b, acc_b = train_lenet(ROOT, epochs=1, seed=3, n_train=512, n_test=500)
    c, _ = train_lenet(ROOT, epochs=1, seed=4, n_train=512, n_test=500)
    assert acc_a == acc_b
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    assert torch.get_num_threads() == threads  # training runs on 1 thread, then restores


def test_features_shape_and_input_checks(lenet: LeNet, mnist_test) -> None:
    x, _ = mnist_test
    f = lenet_features(lenet, x[:37], batch_size=10)  # uneven batches
    assert f.shape == (37, FEATURE_DIM) and f.dtype == torch.float32
    assert torch.allclose(f, lenet_features(lenet, x[:37]), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        lenet_features(lenet, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        lenet_features(lenet, torch.zeros(2, 3, 28, 28))


def test_real_stats_cached_beside_model_and_keyed_on_weights(lenet: LeNet, lenet_dir: Path,
                                                              real_stats) -> None:
    files = list(lenet_dir.glob("mnist_test_stats-*.safetensors"))
    assert [p.name for p in files] == [f"mnist_test_stats-{lenet.info['hash']}.safetensors"]
    mtime = files[0].stat().st_mtime_ns
    again = mnist_test_stats(lenet, ROOT, lenet_dir)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not recomputed
    assert again.count == real_stats.count == 10_000
    assert torch.equal(again.mean_cov()[1], real_stats.mean_cov()[1])
    # a network with other weights maps to another stats file, never the cached one
    other = LeNet()
    assert stats_path(other, lenet_dir) != files[0]
    with torch.no_grad():
        other.load_state_dict(lenet.state_dict())
        assert stats_path(other, lenet_dir) == files[0]  # hash follows the weights
        other.fc1.bias.add_(1e-3)
    assert stats_path(other, lenet_dir) != files[0]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, padding with the background value -1."""
    k = torch.arange(-4, 5, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (4, 4, 0, 0), value=-1.0), g.view(1, 1, 1, 9))
    return F.conv2d(F.pad(x, (0, 0, 4, 4), value=-1.0), g.view(1, 1, 9, 1))


def test_fid_small_for_real_digits_and_grows_with_damage(lenet: LeNet, real_stats) -> None:
    train, _ = load_mnist("train", ROOT)
    x = to_model_range(train[:2000])
    fid_real = fid_lenet(lenet, x, real_stats)
    assert fid_real < 10.0  # train vs test digits: same distribution, only sampling noise
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert fid_lenet(lenet, noise, real_stats) > 50 * fid_real
    shifted = torch.roll(x, shifts=(3, 3), dims=(2, 3))  # 3 px right and down
    assert fid_lenet(lenet, shifted, real_stats) > 10 * fid_real
    blurred = [fid_lenet(lenet, _blur(x, s), real_stats) for s in (0.75, 1.0, 1.5, 2.5)]
    assert blurred[0] > 5 * fid_real
    assert all(a < b for a, b in zip(blurred, blurred[1:], strict=False)), blurred
