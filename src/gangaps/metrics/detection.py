"""Detection metrics for a real-vs-fake classifier, from its logits.

Conventions (shared with the rest of gangaps): a classifier outputs one logit per image and
logit > 0 means "real". An image is *called* real iff its logit > 0, so a logit of exactly 0 is
called fake; `real_recall` and `fake_recall` therefore partition every image into one call.

AP and ROC-AUC follow CNNDetection (Wang et al. 2020): the positive class is *fake* and the score
is -logit. Both are computed here (numpy) with exactly the tie handling of scikit-learn's
`average_precision_score` (one operating point per distinct score) and `roc_auc_score` (ties
count one half), so the numbers match sklearn without depending on it at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

METRICS = ("accuracy", "real_recall", "fake_recall", "ap", "auc")
# Best-threshold ("oracle") balanced accuracy (UnivFD, Ojha et al. 2023, reports it beside the
# accuracy at 0): not in `detection_metrics`, whose records the experiment keeps, but
# bootstrappable like every metric there.
ORACLE = "oracle_accuracy"

# Bootstrap works on [chunk, n_images] count matrices; this bounds their size (~40 MB float64).
_BOOT_CELLS = 5_000_000


def _as_numpy(x: torch.Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: detection metrics need real and fake images")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _blocks(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort all images by descending fake-score (-logit) and group equal scores into blocks.

    Returns (order, block_of_sorted_position, n_blocks); `order` indexes the concatenation
    [real, fake]. One block = one distinct threshold, as in sklearn's precision_recall_curve.
    """
    score = -np.concatenate([real, fake])
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    new_block = np.empty(s.size, dtype=bool)
    new_block[0] = True
    new_block[1:] = s[1:] != s[:-1]
    block = np.cumsum(new_block) - 1
    return order, block, int(block[-1]) + 1


def _ap_auc_from_block_counts(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and AUC from per-block counts of positives (fake) and negatives (real), shape [..., K].

    Blocks with zero count only add repeated operating points, which change neither AP (zero
    recall step) nor the trapezoid area (zero width), so weighted/bootstrapped counts work too.
    """
    tps = np.cumsum(tp, axis=-1)
    fps = np.cumsum(fp, axis=-1)
    p = tps[..., -1:]
    n = fps[..., -1:]
    recall = tps / p
    called = tps + fps
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(called > 0, tps / np.where(called > 0, called, 1), 0.0)
    d_recall = np.diff(recall, axis=-1, prepend=0.0)
    ap = np.sum(d_recall * precision, axis=-1)
    # ROC: trapezoids between consecutive (fpr, tpr) points starting from (0, 0).
    fpr = np.concatenate([np.zeros_like(n), fps / n], axis=-1)
    tpr = np.concatenate([np.zeros_like(p), tps / p], axis=-1)
    auc = np.sum(np.diff(fpr, axis=-1) * (tpr[..., 1:] + tpr[..., :-1]) / 2.0, axis=-1)
    return ap, auc


def _oracle_from_block_counts(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Best balanced accuracy over thresholds from per-block counts (shape [..., K]).

    Calling "fake" every image in the first j blocks (j = 0..K) gives fake recall tps/P and real
    recall 1 - fps/N; j = 0 (nothing called fake) is the 0.5 of a constant answer.
    """
    tpr = np.cumsum(tp, axis=-1) / np.sum(tp, axis=-1, keepdims=True)
    fpr = np.cumsum(fp, axis=-1) / np.sum(fp, axis=-1, keepdims=True)
    return np.maximum(0.5, np.max((1.0 + tpr - fpr) / 2.0, axis=-1))


def oracle_accuracy(real_logits: torch.Tensor | np.ndarray | Sequence[float],
                    fake_logits: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """Balanced accuracy at the best threshold on the logit (UnivFD's "best-threshold accuracy",
    made class-balanced like `accuracy`): how separable the two sides are, whatever the bias."""
    real = _as_numpy(real_logits, "real_logits")
    fake = _as_numpy(fake_logits, "fake_logits")
    order, block, k = _blocks(real, fake)
    is_fake = (order >= real.size).astype(np.float64)
    tp = np.bincount(block, weights=is_fake, minlength=k)
    fp = np.bincount(block, weights=1.0 - is_fake, minlength=k)
    return float(_oracle_from_block_counts(tp, fp))


def detection_metrics(real_logits: torch.Tensor | np.ndarray | Sequence[float],
                      fake_logits: torch.Tensor | np.ndarray | Sequence[float]) -> dict[str, float]:
    """accuracy (balanced, threshold 0), real_recall, fake_recall, ap and auc (fake = positive).

    real_recall = frac(real logit > 0); fake_recall = frac(fake logit <= 0);
    accuracy = (real_recall + fake_recall) / 2, so it does not depend on the real:fake ratio.
    """
    real = _as_numpy(real_logits, "real_logits")
    fake = _as_numpy(fake_logits, "fake_logits")
    real_recall = float(np.mean(real > 0))
    fake_recall = float(np.mean(fake <= 0))
    order, block, k = _blocks(real, fake)
    is_fake = (order >= real.size).astype(np.float64)
    tp = np.bincount(block, weights=is_fake, minlength=k)
    fp = np.bincount(block, weights=1.0 - is_fake, minlength=k)
    ap, auc = _ap_auc_from_block_counts(tp, fp)
    return {
        "accuracy": (real_recall + fake_recall) / 2.0,
        "real_recall": real_recall,
        "fake_recall": fake_recall,
        "ap": float(ap),
        "auc": float(auc),
    }


def _resample_counts(n: int, b: int, gen: torch.Generator) -> torch.Tensor:
    """[b, n] multiplicities of each item in b bootstrap resamples of size n."""
    idx = torch.randint(n, (b, n), generator=gen)
    counts = torch.zeros(b, n, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones(b, n, dtype=torch.float64))


def bootstrap_values(real_logits: torch.Tensor | np.ndarray | Sequence[float],
                     fake_logits: torch.Tensor | np.ndarray | Sequence[float],
                     metric: str = "accuracy", n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The metric on n_boot resamples (real and fake resampled separately), shape [n_boot].

    Real indices come from `torch.randint` on a generator seeded `seed`, fake indices from one
    seeded `seed + 1`, row by row; two streams keep the draws (and so the values) independent
    of the chunking. All resamples of a chunk are evaluated at once as count matrices.
    """
    if metric not in (*METRICS, ORACLE):
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join((*METRICS, ORACLE))}")
    if n_boot < 1:
        raise ValueError(f"need n_boot >= 1, got {n_boot}")
    real = _as_numpy(real_logits, "real_logits")
    fake = _as_numpy(fake_logits, "fake_logits")
    nr, nf = real.size, fake.size
    gen_real = torch.Generator().manual_seed(seed)
    gen_fake = torch.Generator().manual_seed(seed + 1)
    chunk = max(1, _BOOT_CELLS // (nr + nf))
    ranked = metric in ("ap", "auc", ORACLE)  # metrics of the ranking, from tie-block counts
    if ranked:
        order, block, k = _blocks(real, fake)
        # the tie block of every original item (real first, then fake)
        block_of_item = torch.empty(nr + nf, dtype=torch.int64)
        block_of_item[torch.from_numpy(order)] = torch.from_numpy(block)
    values = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        wr = _resample_counts(nr, b, gen_real)
        wf = _resample_counts(nf, b, gen_fake)
        if ranked:
            # total multiplicity of the real (fp) and fake (tp) items in each tie block
            fp = torch.zeros(b, k, dtype=torch.float64).index_add_(1, block_of_item[:nr], wr)
            tp = torch.zeros(b, k, dtype=torch.float64).index_add_(1, block_of_item[nr:], wf)
            if metric == ORACLE:
                values.append(_oracle_from_block_counts(tp.numpy(), fp.numpy()))
                continue
            ap, auc = _ap_auc_from_block_counts(tp.numpy(), fp.numpy())
            values.append(ap if metric == "ap" else auc)
            continue
        rr = wr.numpy() @ (real > 0).astype(np.float64) / nr
        fr = wf.numpy() @ (fake <= 0).astype(np.float64) / nf
        values.append({"accuracy": (rr + fr) / 2.0, "real_recall": rr, "fake_recall": fr}[metric])
    return np.concatenate(values)


def bootstrap_ci(real_logits: torch.Tensor | np.ndarray | Sequence[float],
                 fake_logits: torch.Tensor | np.ndarray | Sequence[float],
                 metric: str = "accuracy", n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI (low, high) of one detection metric over images.

    Real and fake are resampled separately, so each resample keeps the evaluated set sizes.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"need 0 < level < 1, got {level}")
    v = bootstrap_values(real_logits, fake_logits, metric, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(v, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mean_std(values: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); std is 0.0 for a single value."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_std of no values")
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return float(np.mean(v)), std
