"""From a config to the experiment's jobs: iterations -> generator and classifier jobs.

Pure functions of the config (no I/O), so `status`, the runner and the report agree on what the
experiment is: which instances are held out, which classifiers each iteration must fool,
every seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gangaps.config import Config, classifier_ids


def derive_seed(base: int, *parts: object) -> int:
    """A distinct, stable 31-bit seed per (run seed, job identity)."""
    h = hashlib.sha256(repr((base, *parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class GeneratorSpec:
    iteration: int
    instance: int
    seed: int
    split: str  # "train" (classifiers see it) | "heldout"
    fool_targets: tuple[tuple[int, str], ...]  # (iteration, classifier id) it must fool
    init_from: tuple[int, int] | None  # (iteration, instance) when init: previous


@dataclass(frozen=True)
class ClassifierJobSpec:
    iteration: int
    clf_id: str
    arch: str
    options: dict
    seed: int
    role: str  # "target" (fooled by the next iterations) | "heldout"
    train_instances: tuple[int, ...]
    pretrained: str | None = None  # a released detector's file: loaded, not trained (no deps)


def generator_split(cfg: Config, instance: int) -> str:
    """The last `heldout_instances` instances of every iteration are held out."""
    e = cfg.experiment
    return "heldout" if instance >= e.instances - e.heldout_instances else "train"


def classifier_specs(cfg: Config, k: int) -> list[ClassifierJobSpec]:
    train = tuple(n for n in range(cfg.experiment.instances) if generator_split(cfg, n) == "train")
    out = []
    for spec in cfg.classifiers:
        for seed, clf_id in zip(spec.seeds, classifier_ids(spec)):
            out.append(ClassifierJobSpec(k, clf_id, spec.arch, dict(spec.options),
                                         derive_seed(cfg.seed, "classifier", k, clf_id, seed),
                                         spec.role, train, spec.pretrained))
    return out


def fool_targets(cfg: Config, k: int) -> tuple[tuple[int, str], ...]:
    mode = cfg.experiment.fool_mode
    if k == 0 or mode == "none" or cfg.experiment.fool_lambda == 0:
        return ()
    iterations = range(k) if mode == "fool-all" else [k - 1]
    targets = [(i, c) for i in iterations for c in classifier_specs(cfg, i) if c.role == "target"]
    # a pretrained classifier is one network in every iteration: fooled once (its latest copy),
    # not weighted by the number of earlier iterations
    latest = {c.clf_id: i for i, c in targets if c.pretrained is not None}
    return tuple((i, c.clf_id) for i, c in targets if c.pretrained is None or latest[c.clf_id] == i)


def generator_specs(cfg: Config, k: int) -> list[GeneratorSpec]:
    init_prev = cfg.experiment.init == "previous" and k > 0
    return [GeneratorSpec(k, n, derive_seed(cfg.seed, "generator", k, n), generator_split(cfg, n),
                          fool_targets(cfg, k), (k - 1, n) if init_prev else None)
            for n in range(cfg.experiment.instances)]
