"""Report figures (matplotlib, Agg): each function writes one PNG and returns its path."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gangaps.report.tables import fid_metric, select  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def heatmap(ax, matrix: list[list[float]], rows: list[str], cols: list[str], title: str) -> None:
    ax.imshow([[v if not math.isnan(v) else 0.5 for v in row] for row in matrix],
              vmin=0.5, vmax=1.0, cmap="viridis")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if not math.isnan(v) and v < 0.8 else "black", fontsize=9)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=10)


def cross_iteration(matrices: dict[str, list[list[float]]], path: Path) -> Path:
    n = len(next(iter(matrices.values())))
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.2 * len(matrices) + 0.5, 3.2))
    axes = [axes] if len(matrices) == 1 else axes
    for ax, (title, m) in zip(axes, matrices.items(), strict=True):
        heatmap(ax, m, [f"C{i}" for i in range(n)], [f"G{j}" for j in range(n)], title)
        ax.set_xlabel("held-out generators of iteration")
    axes[0].set_ylabel("classifiers of iteration")
    return _save(fig, path)


def fid_by_iteration(records: list[dict], iterations: int, path: Path) -> Path | None:
    """FID per instance and, where measured (MNIST), its mode coverage beside it."""
    name = fid_metric(records)
    if name is None:
        return None
    panels = [(name, name.replace("_", " "), "Output quality per instance (lower is better)")]
    if select(records, metric="mode_coverage"):
        panels.append(("mode_coverage", "digit classes holding ≥ 5 % of samples",
                       "Mode coverage per instance (10 = every digit)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3), squeeze=False)
    for ax, (metric, ylabel, title) in zip(axes[0], panels, strict=True):
        for split, marker in (("train", "o"), ("heldout", "s")):
            pts = select(records, metric=metric, generator_split=split)
            ax.scatter([r["generator_iteration"] + (0.05 if split == "heldout" else -0.05)
                        for r in pts], [r["value"] for r in pts], marker=marker, alpha=0.7,
                       label=f"{split} instances")
        ax.set_xticks(range(iterations))
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if metric == "mode_coverage":
            ax.set_ylim(-0.5, 10.5)
        ax.legend(fontsize=8)
    return _save(fig, path)


def fooling(table: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = [r["iteration"] for r in table]
    for key, label in (("h1_target", "C_k (target seeds) on held-out G_k"),
                       ("h1_heldout", "C_k (held-out seeds) on held-out G_k"),
                       ("prev_target", "C_{k-1} targeted, on held-out G_k"),
                       ("prev_heldout", "C_{k-1} held out, on held-out G_k")):
        pts = [(k, r[key][0]) for k, r in zip(ks, table, strict=True)
               if key in r and not math.isnan(r[key][0])]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.02)
    ax.set_xticks(ks)
    ax.set_xlabel("generator iteration k")
    ax.set_ylabel("balanced accuracy")
    ax.legend(fontsize=7)
    ax.set_title("Detection of held-out generators (H1) and fooling (H2)", fontsize=10)
    return _save(fig, path)


def training_curves(logs: dict[int, list[list[dict]]], path: Path) -> Path:
    """logs[k] = list of per-instance JSONL records."""
    keys = ("loss_G", "loss_D", "loss_fool")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, key in zip(axes, keys, strict=True):
        for k, instances in sorted(logs.items()):
            for n, recs in enumerate(instances):
                pts = [(r["kimg"], r[key]) for r in recs if key in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=f"C{k}", alpha=0.6, lw=1,
                            label=f"iteration {k}" if n == 0 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("kimg")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def snapshot_metric(curves: list[dict], path: Path) -> Path | None:
    """A metric against kimg at the training snapshots: one panel per iteration, one line per
    instance (dashed: held out). None when no generator has snapshot metrics."""
    if not curves:
        return None
    name = curves[0]["metric"]
    curves = [c for c in curves if c["metric"] == name]  # one metric per run (evaluation.fid)
    ks = sorted({c["generator_iteration"] for c in curves})
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.2), squeeze=False,
                             sharey=True)
    for ax, k in zip(axes[0], ks, strict=True):
        for c in (c for c in curves if c["generator_iteration"] == k):
            pts = c["points"]
            ax.plot([p["kimg"] for p in pts], [p["value"] for p in pts], marker="o", ms=3,
                    lw=1, ls="-" if c["generator_split"] == "train" else "--",
                    label=f"G{k}.{c['generator_instance']} ({c['generator_split']})")
        ax.set_title(f"iteration {k}", fontsize=10)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel(f"{name.replace('_', ' ')} (lower is better)")
    return _save(fig, path)


def samples(grids: dict[int, list[Path]], path: Path) -> Path:
    """One row per iteration, one sample grid per instance."""
    rows, cols = len(grids), max(len(v) for v in grids.values())
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for r, (k, files) in enumerate(sorted(grids.items())):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(files) and files[c].exists():
                ax.imshow(plt.imread(files[c]), cmap="gray")
                ax.set_title(f"G{k}.{c}", fontsize=7)
    return _save(fig, path)


def architecture(rows: list[str], cols: list[str], matrix: list[list[float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 1.0 * len(rows) + 1.6))
    heatmap(ax, matrix, [f"fooled {r}" for r in rows], cols,
            "Accuracy of C_{k-1} held-out classifiers on G_k, by architecture")
    ax.set_xlabel("architecture evaluating")
    return _save(fig, path)


def tradeoff(points: list[dict], path: Path) -> Path | None:
    """R1: FID (x) against held-out-classifier accuracy (y), colour = λ, marker = fool_mode."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    lams = sorted({p["fool_lambda"] for p in points})
    markers = {"none": "o", "fool-all": "s", "memoryless": "^"}
    cmap = plt.get_cmap("plasma")
    for lam_i, lam in enumerate(lams):
        for mode, marker in markers.items():
            for later in (False, True):  # iteration 1 filled (R1 proper), later ones hollow
                pts = [p for p in points if p["fool_lambda"] == lam and p["fool_mode"] == mode
                       and (p["iteration"] >= 2) == later]
                if not pts:
                    continue
                color = cmap(lam_i / max(1, len(lams) - 1) * 0.85)
                label = ("not fooled (iteration 0, control)" if mode == "none"
                         else f"{mode}, λ={lam:g}" + (", iteration ≥ 2" if later else ""))
                ax.scatter([p["fid"] for p in pts], [p["accuracy"] for p in pts], marker=marker,
                           facecolors="none" if later else color, edgecolors=color, label=label,
                           alpha=0.8)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("FID of the held-out generator (lower is better)")
    ax.set_ylabel("accuracy of held-out C_{k-1}")
    ax.set_title("Trade-off: fooling held-out classifiers vs quality (R1)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)
