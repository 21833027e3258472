"""The numbers the report shows, computed from results records (no file access here)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    if not values:
        return math.nan, math.nan, 0
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0, 1
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)), len(values)


def select(records: Iterable[dict], **where) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def values(records: Iterable[dict], **where) -> list[float]:
    return [r["value"] for r in select(records, **where)]


def fid_metric(records: list[dict]) -> str | None:
    names = {r["metric"] for r in records if r["metric"].startswith("fid_")}
    return sorted(names)[0] if names else None


def iteration_table(records: list[dict], iterations: int) -> list[dict]:
    """R2: per iteration FID and the accuracies the paper's hypotheses are about."""
    fid = fid_metric(records)
    rows = []
    for k in range(iterations):
        row: dict = {"iteration": k}
        if fid:
            row["fid"] = _mean_std(values(records, metric=fid, generator_iteration=k))
        for name in ("mode_coverage", "class_kl"):  # MNIST only (the LeNet's digit classes)
            row[name] = _mean_std(values(records, metric=name, generator_iteration=k))
        # H1: this iteration's classifiers on this iteration's held-out generators
        for role in ("target", "heldout"):
            row[f"h1_{role}"] = _mean_std(values(
                records, metric="accuracy", generator_iteration=k, classifier_iteration=k,
                generator_split="heldout", classifier_role=role))
        # H2: the previous iteration's classifiers on this iteration's held-out generators
        if k > 0:
            for role in ("target", "heldout"):
                row[f"prev_{role}"] = _mean_std(values(
                    records, metric="accuracy", generator_iteration=k, classifier_iteration=k - 1,
                    generator_split="heldout", classifier_role=role))
                row[f"prev_{role}_fake_recall"] = _mean_std(values(
                    records, metric="fake_recall", generator_iteration=k,
                    classifier_iteration=k - 1, generator_split="heldout", classifier_role=role))
        rows.append(row)
    return rows


def cross_iteration_matrix(records: list[dict], iterations: int, role: str | None = None,
                           metric: str = "accuracy") -> list[list[float]]:
    """R3: A[i][j] = mean `metric` of iteration-i classifiers on iteration-j held-out generators."""
    where = {"metric": metric, "generator_split": "heldout"}
    if role:
        where["classifier_role"] = role
    return [[_mean_std(values(records, classifier_iteration=i, generator_iteration=j, **where))[0]
             for j in range(iterations)] for i in range(iterations)]


def architecture_matrix(records: list[dict], iterations: int) -> tuple[list[str], list[str], list[list[float]]]:
    """R4 within one run: rows = architectures the generators were trained to fool (from
    the run's target classifiers), columns = architecture of held-out classifiers of the
    previous iteration, value = their mean accuracy on held-out generators (k ≥ 1)."""
    targets = sorted({r["classifier_arch"] for r in records if r.get("classifier_role") == "target"})
    evaluators = sorted({r["classifier_arch"] for r in records if r.get("classifier_arch")})
    row_name = "+".join(targets) or "none"
    cells = []
    for arch in evaluators:
        vals = [r["value"] for r in records if r["metric"] == "accuracy"
                and r.get("classifier_arch") == arch and r["generator_split"] == "heldout"
                and r["generator_iteration"] >= 1
                and r["classifier_iteration"] == r["generator_iteration"] - 1]
        cells.append(_mean_std(vals)[0])
    return [row_name], evaluators, [cells]


def tradeoff_points(records: list[dict]) -> list[dict]:
    """R1: one point per held-out generator: its FID against the accuracy of the previous
    iteration's held-out classifiers on it (k ≥ 1; fooled = low). Iteration-0 generators give
    the unfooled reference: accuracy of their own iteration's held-out classifiers."""
    fid = fid_metric(records)
    if fid is None:
        return []
    fids = {(r["run"], r["generator_iteration"], r["generator_instance"]): r["value"]
            for r in records if r["metric"] == fid and r["generator_split"] == "heldout"}
    points = []
    for (run, k, n), f in sorted(fids.items()):
        clf_iter = k - 1 if k > 0 else 0
        accs = [r["value"] for r in records if r["metric"] == "accuracy" and r["run"] == run
                and r["generator_iteration"] == k and r["generator_instance"] == n
                and r["classifier_iteration"] == clf_iter and r["classifier_role"] == "heldout"]
        if not accs:
            continue
        any_rec = next(r for r in records if r["run"] == run)
        points.append({"run": run, "iteration": k, "instance": n, "fid": f,
                       "accuracy": sum(accs) / len(accs),
                       "fool_mode": any_rec["fool_mode"] if k > 0 else "none",
                       "fool_lambda": any_rec["fool_lambda"] if k > 0 else 0.0})
    return points


def mean_ci(values: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, 95 % low, 95 % high, n): percentile bootstrap of the mean over the values (one
    per instance); the interval is nan with fewer than two values."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, 0
    if len(v) < 2:
        return float(v[0]), math.nan, math.nan, 1
    boots = np.random.default_rng(seed).choice(v, (n_boot, len(v))).mean(1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return float(v.mean()), float(low), float(high), len(v)


def _per_instance(records: list[dict], **where) -> list[float]:
    """One value per generator instance: the mean over the classifiers matching `where`."""
    by: dict[int, list[float]] = {}
    for r in select(records, **where):
        by.setdefault(r["generator_instance"], []).append(r["value"])
    return [sum(v) / len(v) for _, v in sorted(by.items())]


def sweep_table(records: list[dict]) -> list[dict]:
    """R1 across runs: per run and iteration, quality and fooling with 95 % intervals over
    generator instances (accuracies: held-out instances, each the mean over its classifiers)."""
    fid = fid_metric(records)
    rows = []
    for run in sorted({r["run"] for r in records}):
        rr = select(records, run=run)
        first = rr[0]
        for k in sorted({r["generator_iteration"] for r in rr}):
            if k == 0 and rows and rows[0]["iteration"] == 0:
                continue  # the shared iteration 0: one row
            ref = k - 1 if k > 0 else 0
            row = {"run": run if k > 0 else "iteration 0 (shared)", "iteration": k,
                   "fool_mode": first["fool_mode"] if k > 0 else "none",
                   "fool_lambda": first["fool_lambda"] if k > 0 else 0.0,
                   "fid": mean_ci(values(rr, metric=fid, generator_iteration=k)) if fid else None,
                   "mode_coverage": mean_ci(values(rr, metric="mode_coverage", generator_iteration=k))}
            for role in ("target", "heldout"):
                row[f"clf_{role}"] = mean_ci(_per_instance(
                    rr, metric="accuracy", generator_iteration=k, generator_split="heldout",
                    classifier_iteration=ref, classifier_role=role))
            rows.append(row)
    rows.sort(key=lambda r: (r["iteration"] > 0, r["fool_mode"], r["fool_lambda"], r["iteration"]))
    return rows
