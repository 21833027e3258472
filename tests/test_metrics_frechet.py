"""Fréchet distance against a scipy.linalg.sqrtm reference, identities, and FeatureStats."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from gangaps.io import load_state, save_state
from gangaps.metrics.frechet import (
    FeatureStats,
    fid_from_stats,
    frechet_distance,
    frechet_distance_features,
)


def _reference(mu1, s1, mu2, s2) -> float:
    """The textbook formula (TTUR / pytorch-fid) with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_cov(rng: np.random.Generator, d: int, eigs: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * eigs) @ q.T


@pytest.mark.parametrize("d", [2, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scipy_well_conditioned(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    s1 = _random_cov(rng, d, rng.uniform(0.5, 2.0, d))
    s2 = _random_cov(rng, d, rng.uniform(0.1, 3.0, d))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_reference(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
    # torch float32 inputs work too (converted to float64 inside)
    got32 = frechet_distance(*(torch.tensor(a, dtype=torch.float32) for a in (mu1, s1, mu2, s2)))
    assert got32 == pytest.approx(got, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_ill_conditioned(seed: int) -> None:
    """Eigenvalues spanning 1e-9..1e3 (condition number 1e12)."""
    rng = np.random.default_rng(seed)
    d = 48
    s1 = _random_cov(rng, d, np.logspace(-9, 3, d))
    s2 = _random_cov(rng, d, rng.permutation(np.logspace(-9, 3, d)))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = _reference(mu1, s1, mu2, s2)
    # absolute error relative to the scale of the terms (traces ~ 1e4)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, abs=1e-6 * np.trace(s1))


def test_singular_covariances_from_few_samples() -> None:
    """N < D features give rank-deficient covariances, the usual case with small sample sets."""
    rng = np.random.default_rng(3)
    d, n = 64, 20
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.5
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    ref = _reference(mu1, s1, mu2, s2)
    assert got == pytest.approx(ref, rel=1e-6)


def test_identities() -> None:
    rng = np.random.default_rng(4)
    d = 32
    s = _random_cov(rng, d, np.logspace(-6, 2, d))
    mu = rng.normal(size=d)
    # trace(s) ≈ 430 with eigenvalues down to 1e-6: 2·tr(√(s s)) cancels tr(s)+tr(s) to ~1e-10
    # of the trace (measured 5e-8 with numpy 2.x/scipy 1.16 BLAS, 1e-9 before)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9 * np.trace(s))
    shift = rng.normal(size=d)
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(shift @ shift, rel=1e-8)
    # symmetric in its two arguments
    s2 = _random_cov(rng, d, rng.uniform(0.1, 2, d))
    assert frechet_distance(mu, s, 0 * mu, s2) == pytest.approx(frechet_distance(0 * mu, s2, mu, s))
    # 1-D closed form: (m1-m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_streaming_equals_numpy_and_merges() -> None:
    rng = np.random.default_rng(5)
    # large common offset: naive sum(x x^T) accumulation in float32 would lose the covariance
    x = rng.normal(size=(1003, 12)) * rng.uniform(0.1, 3, 12) + 1e4
    st = FeatureStats()
    for chunk in np.array_split(x, 7):
        st.update(torch.tensor(chunk, dtype=torch.float64))
    st.update(np.zeros((0, 12)))  # empty batches are ignored
    mu, cov = st.mean_cov()
    assert st.count == 1003 and mu.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-9)

    a, b = FeatureStats().update(x[:400]), FeatureStats().update(x[400:])
    merged = FeatureStats().merge(a).merge(b)
    np.testing.assert_allclose(merged.mean_cov()[1].numpy(), cov.numpy(), rtol=1e-8, atol=1e-9)
    assert fid_from_stats(st, merged) == pytest.approx(0.0, abs=1e-6)


def test_feature_stats_state_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(6)
    st = FeatureStats().update(rng.normal(size=(50, 5)))
    save_state(tmp_path / "s.safetensors", st.to_state())
    back = FeatureStats.from_state(load_state(tmp_path / "s.safetensors"))
    assert back.count == 50
    for u, v in zip(st.mean_cov(), back.mean_cov(), strict=True):
        assert torch.equal(u, v)
    # accumulation continues after a reload
    extra = rng.normal(size=(10, 5))
    st.update(extra)
    back.update(extra)
    assert torch.equal(st.mean_cov()[1], back.mean_cov()[1])


def test_feature_stats_errors() -> None:
    st = FeatureStats().update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        st.mean_cov()
    with pytest.raises(ValueError, match="dim"):
        st.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        FeatureStats().update(np.zeros(3))


@pytest.mark.parametrize(("n1", "n2", "d"), [(20, 30, 64), (5, 5, 128), (40, 50, 16)])
def test_distance_from_features_matches_stats_route(n1: int, n2: int, d: int) -> None:
    """The low-rank (N < D) shortcut and the full-rank route agree with the scipy formula."""
    rng = np.random.default_rng(n1 + d)
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n2, d)) + 0.2
    ref = _reference(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    got = frechet_distance_features(a, torch.tensor(b))
    assert got == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-8 * ref)
