"""Detection metrics against scikit-learn (test-only dependency) and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from gangaps.metrics.detection import (
    METRICS,
    ORACLE,
    bootstrap_ci,
    bootstrap_values,
    detection_metrics,
    mean_std,
    oracle_accuracy,
)


def _sk(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """sklearn AP / AUC with fake as the positive class and score -logit (CNNDetection)."""
    y = np.r_[np.zeros(real.size), np.ones(fake.size)]
    s = -np.r_[real, fake]
    return average_precision_score(y, s), roc_auc_score(y, s)


@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_auc_match_sklearn_random_and_tied(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    real = rng.normal(0.7, 1.0, 257)
    fake = rng.normal(-0.3, 1.5, 131)
    if decimals is not None:  # rounding creates many ties, inside and across the classes
        real, fake = real.round(decimals), fake.round(decimals)
    m = detection_metrics(torch.from_numpy(real), fake)  # tensor or array
    ap, auc = _sk(real, fake)
    assert m["ap"] == pytest.approx(ap, abs=1e-12)
    assert m["auc"] == pytest.approx(auc, abs=1e-12)


def test_all_scores_tied_and_degenerate_cases() -> None:
    # one threshold only: AP = fraction of positives, AUC = 0.5 (sklearn agrees)
    real, fake = np.zeros(30), np.zeros(10)
    m = detection_metrics(real, fake)
    ap, auc = _sk(real, fake)
    assert m["ap"] == pytest.approx(ap) == pytest.approx(0.25)
    assert m["auc"] == pytest.approx(auc) == pytest.approx(0.5)
    # logit exactly 0 is called fake: real recall 0, fake recall 1
    assert m["real_recall"] == 0.0 and m["fake_recall"] == 1.0 and m["accuracy"] == 0.5


def test_perfect_and_inverted_separation() -> None:
    good = detection_metrics([1.0, 2.0, 3.0], [-1.0, -2.0])
    assert good == {"accuracy": 1.0, "real_recall": 1.0, "fake_recall": 1.0, "ap": 1.0, "auc": 1.0}
    bad = detection_metrics([-1.0, -2.0, -3.0], [1.0, 2.0])
    assert bad["accuracy"] == 0.0 and bad["auc"] == 0.0
    assert bad["ap"] == pytest.approx(_sk(np.array([-1.0, -2, -3]), np.array([1.0, 2]))[0])


def test_recalls_and_balanced_accuracy_by_hand() -> None:
    real = [0.5, -0.1, 2.0, 0.0]  # 2 of 4 > 0 (0.0 is called fake)
    fake = [-1.0, 0.0, 0.3]  # 2 of 3 <= 0
    m = detection_metrics(real, fake)
    assert m["real_recall"] == 0.5
    assert m["fake_recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    # balanced: duplicating the real set changes nothing
    assert detection_metrics(real * 5, fake)["accuracy"] == pytest.approx(m["accuracy"])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        detection_metrics([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([float("nan")], [1.0])
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci([1.0], [-1.0], metric="f1")


@pytest.mark.parametrize("metric", METRICS)
def test_bootstrap_values_equal_a_per_resample_reference(metric: str) -> None:
    """Replay the documented draw order and recompute every resample with sklearn / numpy."""
    rng = np.random.default_rng(5)
    real = rng.normal(0.5, 1, 40).round(1)  # ties on purpose
    fake = rng.normal(-0.5, 1, 25).round(1)
    n_boot = 30
    got = bootstrap_values(real, fake, metric, n_boot=n_boot, seed=7)
    g_real, g_fake = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    ir = torch.randint(real.size, (n_boot, real.size), generator=g_real).numpy()
    if_ = torch.randint(fake.size, (n_boot, fake.size), generator=g_fake).numpy()
    want = []
    for i in range(n_boot):
        r, f = real[ir[i]], fake[if_[i]]
        ap, auc = _sk(r, f)
        rr, fr = np.mean(r > 0), np.mean(f <= 0)
        want.append({"accuracy": (rr + fr) / 2, "real_recall": rr, "fake_recall": fr,
                     "ap": ap, "auc": auc}[metric])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_bootstrap_ci_properties() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(1, 1, 2000), rng.normal(-1, 1, 2000)
    for metric in METRICS:
        point = detection_metrics(real, fake)[metric]
        lo, hi = bootstrap_ci(real, fake, metric, n_boot=400, seed=1)
        assert lo < point < hi, metric
        # a 50% interval sits inside the 95% one; same seed -> same draws
        lo50, hi50 = bootstrap_ci(real, fake, metric, n_boot=400, level=0.5, seed=1)
        assert lo <= lo50 < hi50 <= hi
        assert bootstrap_ci(real, fake, metric, n_boot=400, seed=1) == (lo, hi)
    # more images -> a narrower interval (width ~ 1/sqrt(n))
    lo_s, hi_s = bootstrap_ci(real[:200], fake[:200], "accuracy", n_boot=400)
    lo_l, hi_l = bootstrap_ci(real, fake, "accuracy", n_boot=400)
    assert (hi_l - lo_l) < 0.6 * (hi_s - lo_s)


def test_bootstrap_chunking_does_not_change_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import gangaps.metrics.detection as det

    real, fake = np.linspace(-1, 2, 50), np.linspace(-2, 1, 30)
    whole = bootstrap_values(real, fake, "ap", n_boot=20, seed=3)
    monkeypatch.setattr(det, "_BOOT_CELLS", 3 * 80)  # 3 resamples per chunk
    np.testing.assert_array_equal(bootstrap_values(real, fake, "ap", n_boot=20, seed=3), whole)


def test_mean_std() -> None:
    assert mean_std([2.0]) == (2.0, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert mean_std(torch.tensor([1.0, 3.0])) == (2.0, pytest.approx(2**0.5))
    with pytest.raises(ValueError):
        mean_std([])


def _oracle_by_brute_force(real: np.ndarray, fake: np.ndarray) -> float:
    """Balanced accuracy at every threshold t (called real iff logit > t), the best one."""
    ts = np.r_[-np.inf, np.unique(np.r_[real, fake])]
    return max((np.mean(real > t) + np.mean(fake <= t)) / 2 for t in ts)


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_oracle_accuracy_is_the_best_threshold_balanced_accuracy(decimals: int | None) -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.normal(2.0, 1.0, 97), rng.normal(1.0, 1.0, 61)  # biased: both mostly > 0
    if decimals is not None:
        real, fake = real.round(decimals), fake.round(decimals)
    got = oracle_accuracy(real, fake)
    assert got == pytest.approx(_oracle_by_brute_force(real, fake), abs=1e-12)
    assert got > detection_metrics(real, fake)["accuracy"] + 0.05  # the bias costs logit-0 accuracy
    assert oracle_accuracy([1.0, 2.0], [-1.0]) == 1.0
    assert oracle_accuracy([0.0, 0.0], [0.0]) == 0.5  # one tie block: nothing separates them
    assert oracle_accuracy([-1.0, -2.0], [1.0, 2.0]) == 0.5  # inverted: no threshold does better


def test_oracle_accuracy_bootstrap_equals_a_per_resample_reference() -> None:
    rng = np.random.default_rng(5)
    real, fake = rng.normal(0.5, 1, 40).round(1), rng.normal(-0.5, 1, 25).round(1)
    got = bootstrap_values(real, fake, ORACLE, n_boot=20, seed=7)
    g_real, g_fake = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    ir = torch.randint(real.size, (20, real.size), generator=g_real).numpy()
    if_ = torch.randint(fake.size, (20, fake.size), generator=g_fake).numpy()
    want = [_oracle_by_brute_force(real[ir[i]], fake[if_[i]]) for i in range(20)]
    np.testing.assert_allclose(got, want, atol=1e-12)
