"""The numbers the report shows, computed from results records (no file access here)."""

from __future__ import annotations

import math
from collections.abc import Iterable


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
