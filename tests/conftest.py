"""Shared test set-up: real data from ../shared, tiny configs of the real code paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found under {DATA}")
    return DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One cache (LeNet, FID statistics) per test session, never the user's."""
    os.environ.setdefault("GANGAPS_CACHE", str(tmp_path_factory.mktemp("gangaps-cache")))


@pytest.fixture(scope="session")
def session_lenet(data_root: Path) -> Path:
    """The LeNet of FID(LeNet) in this session's cache: the user's cached one copied in when
    there is one (tests never write the user's cache), else trained there once (~80 s)."""
    import shutil

    from gangaps.metrics.lenet import INFO_FILE, MODEL_FILE, load_or_train_lenet
    cache = Path(os.environ["GANGAPS_CACHE"]) / "lenet"
    user = Path.home() / ".cache" / "gangaps" / "lenet"
    if not (cache / INFO_FILE).exists() and (user / INFO_FILE).exists() \
            and (user / MODEL_FILE).exists():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(user / MODEL_FILE, cache / MODEL_FILE)
        shutil.copy(user / INFO_FILE, cache / INFO_FILE)
    load_or_train_lenet(cache, data_root)
    return cache


def tiny_overrides(**extra: object) -> list[str]:
    """A complete experiment at toy size: 2 iterations × 3 instances, seconds per job."""
    base = {
        "experiment.iterations": 2, "experiment.instances": 3,
        "experiment.heldout_instances": 1, "gan.kimg": 2, "gan.batch_size": 32,
        "gan.lr": 2e-4, "gan.betas": "[0.5,0.999]", "gan.options.width": 0.125,
        "gan.checkpoint_kimg": 0.5, "gan.log_kimg": 0.25,
        "classifier_training.n_real": 600, "classifier_training.n_fake": 600,
        "classifier_training.epochs": 2, "classifier_training.batch_size": 64,
        "classifier_training.lr": 1e-3, "classifiers.0.options.width": 8,
        "classifiers.1.options.width": 8,
        "evaluation.n_fake": 200, "evaluation.n_real": 200, "evaluation.fid": "none",
        "evaluation.bootstrap": 50,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """An uninterrupted demo-size run (tests/robustness.py), made once for the robustness tests."""
    from tests import robustness as rb
    out = tmp_path_factory.mktemp("tiny-reference") / "run"
    res = rb.run(out)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """A module that sets torch's thread count leaves it as it found it. Results depend on the
    thread count (float sums in another order; Adam's first step lr·g/|g| flips sign for a g
    near 0), so a count leaked from one module changed another's comparisons (the one-step
    'fused equals alone' check failed at 1 thread after test_classifier_training)."""
    import torch
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread() -> None:
    """One intra-op thread for a module of tiny networks: on the shared 2-core test box two
    spinning OpenMP threads made small convolutions up to ~4x slower than one (measured), and
    one thread fixes the float reductions. `_restore_torch_threads` puts the count back."""
    import torch
    torch.set_num_threads(1)
