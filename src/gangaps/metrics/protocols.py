"""Named measurement protocols and the FID / KID / precision-recall of one image set.

A protocol fixes how many fakes and which reals: `fid50k_full` is stylegan2-ada-pytorch's
published setting (50,000 generated images against the statistics of the whole dataset);
`heldout` is the in-run evaluation (evaluation.n_fake generated images against the held-out
real images, evaluation.n_real of them), so `gangaps metrics RUN --protocol heldout` repeats a
run's own quality numbers. Every value is stored with its protocol, n_fake, n_real and features.

Features: Inception (torch-fidelity, `gangaps.metrics.inception`) for any images; LeNet
(`gangaps.metrics.lenet`) for 28×28 gray MNIST. KID and precision/recall are torch-fidelity's
`kid_features_to_metric` and `prc_features_to_metric` (k = 3) on the same features as the FID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from gangaps.errors import UserError

METRICS = ("fid", "kid", "prc")
KID_SUBSET, KID_SUBSETS = 1000, 100  # torch-fidelity's defaults


@dataclass(frozen=True)
class Protocol:
    name: str
    n_fake: int | None  # None: the run's evaluation.n_fake (a folder of fakes: all of it)
    real: str  # "full": every image of the dataset; "heldout": the held-out real images
    text: str


PROTOCOLS = {
    "fid50k_full": Protocol("fid50k_full", 50_000, "full", "50k generated images against the "
                            "full dataset (stylegan2-ada-pytorch's fid50k_full / kid50k_full)"),
    "heldout": Protocol("heldout", None, "heldout", "evaluation.n_fake generated images against "
                        "the held-out real images (the in-run evaluation)"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UserError(f"--protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics {text!r}; choose from {','.join(METRICS)}")
    return names


def lenet_metrics(fake: Callable[[], Iterable[torch.Tensor]], real: torch.Tensor,
                  metrics: tuple[str, ...], device: torch.device, data_root: str | None) -> dict:
    """FID / KID / precision-recall on LeNet features of uint8 [N, 1, 28, 28] images."""
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from gangaps.data import to_model_range
    from gangaps.metrics.frechet import FeatureStats, fid_from_stats
    from gangaps.metrics.lenet import (
        FEATURE_DIM,
        default_cache_dir,
        lenet_features,
        load_or_train_lenet,
    )

    def check(x: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise UserError(f"--features lenet needs 28×28 gray images; the {what} images are "
                            f"{list(x.shape[1:])}: use --features inception")
        return x

    model = load_or_train_lenet(default_cache_dir(), data_root, device=device)
    real_f = lenet_features(model, to_model_range(check(real, "real")))
    fake_f = torch.cat([lenet_features(model, to_model_range(check(b, "fake"))) for b in fake()])
    n_fake, n_real = len(fake_f), len(real_f)
    if min(n_fake, n_real) < 2:
        raise UserError(f"FID needs >= 2 images per side, got {n_fake} fake, {n_real} real")
    out: dict[str, Any] = {}
    if "fid" in metrics:
        out["fid_lenet"] = fid_from_stats(FeatureStats(FEATURE_DIM).update(fake_f),
                                          FeatureStats(FEATURE_DIM).update(real_f))
    subset = min(KID_SUBSET, n_fake, n_real)
    if "kid" in metrics:
        k = kid_features_to_metric(fake_f, real_f, kid_subsets=KID_SUBSETS,
                                   kid_subset_size=subset, verbose=False)
        out.update(kid_lenet=k["kernel_inception_distance_mean"],
                   kid_lenet_std=k["kernel_inception_distance_std"])
    if "prc" in metrics:
        p = prc_features_to_metric(fake_f, real_f, save_cpu_ram=True, verbose=False)
        out.update(precision=p["precision"], recall=p["recall"], f_score=p["f_score"])
    out["protocol"] = {
        "features": f"LeNet penultimate layer ({FEATURE_DIM}-d), gangaps.metrics.lenet",
        "lenet_hash": model.info.get("hash"), "lenet_test_accuracy": model.info.get("test_accuracy"),
        "n_fake": n_fake, "n_real": n_real,
        "frechet": "gangaps.metrics.frechet (float64, tested against scipy)",
        **({"kid": "torch_fidelity.metric_kid.kid_features_to_metric", "kid_subset_size": subset,
            "kid_subsets": KID_SUBSETS} if "kid" in metrics else {}),
        **({"prc": "torch_fidelity.metric_prc.prc_features_to_metric, neighborhood 3, on LeNet "
                   "features"} if "prc" in metrics else {}),
    }
    return out


def inception_set_metrics(fake: Any, real: Any, metrics: tuple[str, ...], weights: str | None,
                          device: torch.device, real_cache_key: str | None,
                          feature_layer: str, batch_size: int = 64) -> dict:
    """FID / KID / precision-recall on torch-fidelity's Inception features (see inception.py)."""
    from gangaps.metrics.inception import inception_metrics
    from gangaps.metrics.lenet import default_cache_dir

    out = inception_metrics(fake, real, weights, cache_dir=default_cache_dir().parent / "fid",
                            real_cache_key=real_cache_key, kid="kid" in metrics,
                            batch_size=batch_size, device=device, prc="prc" in metrics,
                            feature_layer=feature_layer)
    if "fid" not in metrics:
        out.pop("fid_inception")
    return out
