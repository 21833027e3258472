"""Measurements of one generator: quality (FID) and every classifier's detection metrics.

Generators are sampled once per evaluation and judged by all classifiers that exist; real logits
of each classifier on the held-out real images are computed once and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gangaps.config import Config
from gangaps.data import RealData, to_model_range
from gangaps.errors import UserError
from gangaps.metrics.detection import bootstrap_ci, detection_metrics


def cache_dir() -> Path:
    return Path(os.environ.get("GANGAPS_CACHE", Path.home() / ".cache" / "gangaps"))


class QualityMeter:
    """FID of generated uint8 images against the held-out real images (lazy, cached set-up);
    on MNIST also the LeNet's digit histogram: mode coverage and its KL from the real one."""

    def __init__(self, cfg: Config, real: RealData, device: torch.device) -> None:
        self.cfg, self.real, self.device = cfg, real, device
        self._lenet = None
        self._real_stats = None
        self._real_hist = None

    def prepare(self) -> None:
        """Load (or train) the feature network and the real statistics now, not at first use."""
        if self.cfg.evaluation.fid == "lenet" and self._lenet is None:
            self._lenet_setup()

    def snapshot_record(self, fake: torch.Tensor) -> dict:
        """The FID of `fake` as one line of a snapshot metric file (gangaps.train.snapshots):
        the same features and held-out reference as the final quality evaluation."""
        kind = self.cfg.evaluation.fid
        scores = self(fake)
        if kind == "lenet":
            features = {"lenet_hash": self._lenet.info.get("hash")}
        else:  # whether the real statistics came from the cache says nothing of the value
            features = {"protocol": {k: v for k, v in scores["protocol"].items()
                                     if k != "real_stats_cached"}}
        return {"metric": f"fid_{kind}", "value": float(scores[f"fid_{kind}"]),
                "n_fake": len(fake), "n_real": len(self.real.eval_real), "features": kind,
                "reference": f"held-out real images of {self.real.name}", **features}

    def __call__(self, fake: torch.Tensor) -> dict:
        kind = self.cfg.evaluation.fid
        if kind == "none":
            return {}
        if kind == "lenet":
            return self._lenet_fid(fake)
        return self._inception_fid(fake)

    def _lenet_fid(self, fake: torch.Tensor) -> dict:
        from gangaps.metrics.frechet import FeatureStats, fid_from_stats
        from gangaps.metrics.lenet import class_histogram, lenet_features, mode_metrics
        if self._lenet is None:
            self._lenet_setup()
        x = to_model_range(fake)
        fake_stats = FeatureStats().update(lenet_features(self._lenet, x))
        hist = class_histogram(self._lenet, x)
        return {"fid_lenet": fid_from_stats(fake_stats, self._real_stats),
                **mode_metrics(hist, self._real_hist),
                "class_histogram": [round(float(v), 4) for v in hist]}

    def _lenet_setup(self) -> None:
        from gangaps.metrics.frechet import FeatureStats
        from gangaps.metrics.lenet import class_histogram, lenet_features, load_or_train_lenet
        if self.real.channels != 1 or self.real.resolution != 28:
            raise UserError("evaluation.fid=lenet needs 28×28 gray images (MNIST); use inception")
        self._lenet = load_or_train_lenet(cache_dir() / "lenet", self.cfg.data.path,
                                          device=self.device)
        real = to_model_range(self.real.eval_real)
        self._real_stats = FeatureStats().update(lenet_features(self._lenet, real))
        self._real_hist = class_histogram(self._lenet, real)

    def _inception_fid(self, fake: torch.Tensor) -> dict:
        from gangaps.metrics.inception import inception_metrics
        ev = self.cfg.evaluation
        out = inception_metrics(fake, self.real.eval_real, ev.inception_weights,
                                cache_dir=cache_dir() / "fid",
                                real_cache_key=f"{self.real.name}-heldout{len(self.real.eval_real)}",
                                device=self.device)
        protocol = out.pop("protocol", {})
        return {**out, "protocol": protocol}


def detection_record(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                     bootstrap: int = 0, seed: int = 0) -> dict:
    """Detector metrics of one classifier on one generator (+ 95% CIs when bootstrap > 0)."""
    metrics = detection_metrics(real_logits, fake_logits)
    if bootstrap > 0:
        for name in ("accuracy", "fake_recall"):
            lo, hi = bootstrap_ci(real_logits, fake_logits, name, n_boot=bootstrap, seed=seed)
            metrics[f"{name}_ci95"] = [lo, hi]
    return metrics
