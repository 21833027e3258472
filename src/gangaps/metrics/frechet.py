"""Fréchet distance between Gaussians fitted to features, and streaming feature statistics.

Used for FID with our own feature extractors (LeNet on MNIST). Inception FID goes through
torch-fidelity (gangaps.metrics.inception) so its numbers follow the standard protocol.
"""

from __future__ import annotations

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


class FeatureStats:
    """Running mean and covariance of feature vectors, in float64.

    Batches are merged with Chan et al.'s pairwise update (mean + centred scatter), which stays
    accurate when features have a large mean, unlike accumulating raw sums of x and x x^T.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.count = 0
        self.dim = dim
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None  # sum of outer products of centred features

    def update(self, features: Array) -> FeatureStats:
        """Add a batch [N, D] of features (any float dtype/device); returns self."""
        x = torch.as_tensor(features).detach().to("cpu", torch.float64)
        if x.dim() != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(x.shape)}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"feature dim {x.shape[1]} != {self.dim} of earlier batches")
        nb = x.shape[0]
        if nb == 0:
            return self
        mb = x.mean(0)
        xc = x - mb
        m2b = xc.T @ xc
        if self.count == 0:
            self._mean, self._m2 = mb, m2b
        else:
            na = self.count
            n = na + nb
            delta = mb - self._mean
            self._mean = self._mean + delta * (nb / n)
            self._m2 = self._m2 + m2b + torch.outer(delta, delta) * (na * nb / n)
        self.count += nb
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator (e.g. from another worker) into this one; returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.dim, self.count = other.dim, other.count
            self._mean, self._m2 = other._mean.clone(), other._m2.clone()
            return self
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        na, nb = self.count, other.count
        n = na + nb
        delta = other._mean - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + other._m2 + torch.outer(delta, delta) * (na * nb / n)
        self.count = n
        return self

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [D], unbiased covariance [D, D]) in float64, like np.cov(rowvar=False)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.count}")
        return self._mean.clone(), self._m2 / (self.count - 1)

    def to_state(self) -> dict[str, torch.Tensor]:
        """Tensors only, so gangaps.io.save_state can cache it."""
        if self.count == 0:
            raise ValueError("no features accumulated")
        return {"count": torch.tensor(self.count, dtype=torch.int64),
                "mean": self._mean.clone(), "m2": self._m2.clone()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> FeatureStats:
        mean = torch.as_tensor(state["mean"]).to(torch.float64)
        m2 = torch.as_tensor(state["m2"]).to(torch.float64)
        count = int(state["count"])
        if mean.dim() != 1 or m2.shape != (mean.shape[0], mean.shape[0]) or count < 1:
            raise ValueError("malformed FeatureStats state")
        stats = cls(mean.shape[0])
        stats.count, stats._mean, stats._m2 = count, mean, m2
        return stats


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root; eigenvalues that rounding made slightly negative become 0."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}), in float64.

    tr((S1 S2)^{1/2}) equals the sum of square roots of the eigenvalues of the symmetric PSD
    matrix sqrt(S1) S2 sqrt(S1) (same spectrum as S1 S2), so two `eigh` calls suffice: no scipy
    `sqrtm`, no complex parts, and singular covariances (N < D features) are fine.
    """
    def f64(a: Array) -> torch.Tensor:
        return torch.as_tensor(a).detach().to("cpu", torch.float64)

    mu1, mu2 = f64(mu1).reshape(-1), f64(mu2).reshape(-1)
    s1, s2 = f64(sigma1), f64(sigma2)
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    # symmetrise: covariances accumulated in floating point are symmetric only up to rounding
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    eig = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    tr_covmean = eig.sqrt().sum()
    diff = mu1 - mu2
    fid = diff.dot(diff) + s1.trace() + s2.trace() - 2 * tr_covmean
    # the true value is >= 0; only rounding (~1e-12 relative) can push it below
    return max(float(fid), 0.0)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between two accumulated feature distributions."""
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


def frechet_distance_features(x1: Array, x2: Array) -> float:
    """Fréchet distance between Gaussians fitted (mean, np.cov) to feature sets [N1, D], [N2, D].

    With fewer samples than dimensions the covariances have rank < N, and the trace term is
    computed exactly from the N1 x N2 cross matrix of centred features A, B instead of D x D
    products: the nonzero eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T / c, so
    tr((S1 S2)^{1/2}) = nuclear_norm(A B^T) / sqrt(c), c = (N1 - 1)(N2 - 1).
    """
    a = torch.as_tensor(x1).detach().to("cpu", torch.float64)
    b = torch.as_tensor(x2).detach().to("cpu", torch.float64)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N>=2, D] feature sets, got {tuple(a.shape)}, {tuple(b.shape)}")
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if max(n1, n2) >= d:  # full-rank regime: D x D is the small side
        return frechet_distance(a.mean(0), torch.cov(a.T).reshape(d, d),
                                b.mean(0), torch.cov(b.T).reshape(d, d))
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    tr1 = ac.pow(2).sum() / (n1 - 1)
    tr2 = bc.pow(2).sum() / (n2 - 1)
    tr_covmean = torch.linalg.svdvals(ac @ bc.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    diff = mu1 - mu2
    return max(float(diff.dot(diff) + tr1 + tr2 - 2 * tr_covmean), 0.0)
