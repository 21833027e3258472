"""The paper's claims tested on a run's own records: n, mean, a 95 % interval, a verdict.

Each claim is a statistic of the records (a mean of accuracies, or a difference of two means),
computed once on the records as they are and again on 2,000 bootstrap resamples. A resample
draws, with replacement and within each iteration, the generator instances and the classifiers
the statistic uses (a two-way bootstrap: both are random draws of the experiment), so the
interval reflects instance-to-instance and classifier-to-classifier variation, not only the
finite number of images behind each accuracy.

Verdicts follow one stated rule per claim (`RULES`), around one smallest effect of interest:
"supported" when the 95 % interval lies wholly above it, "contradicted" (the effect is
negligible) when it lies wholly below, "too few to tell" when it contains it or when fewer than
two generator instances of an iteration (or no classifier) enter the statistic.
A generator whose samples collapsed (mode coverage or FID far outside iteration 0's range,
`collapsed_generators`) is named; a claim it enters is also given without it, since a
collapsed generator that a classifier misses says little about gaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gangaps.report.tables import fid_metric

N_BOOT = 2000
ACCURACY = "accuracy"

GenKey = tuple[int, int]  # (iteration, instance)
ClfKey = tuple[int, str]  # (iteration, classifier id)


@dataclass(frozen=True)
class Rule:
    """A claim, its statistic, and the smallest effect of interest that decides it.

    One boundary, so the three verdicts cannot overlap: "supported" when the whole 95 %
    interval lies above `effect`, "contradicted" when it lies wholly below (the effect, if any,
    is negligible), "too few to tell" when the interval contains the boundary."""

    statement: str  # the claim, in the paper's words
    statistic: str  # what is measured
    effect: float  # the smallest effect of interest
    why: str  # why that effect
    words: str  # the estimate in words: a format string of {v} (value) and {pts} (value × 100)
    negligible: str = "negligible"  # the word for an estimate below the effect of interest

    def verdict(self, low: float, high: float) -> str:
        if low > self.effect:
            return "supported"
        return "contradicted" if high < self.effect else "too few to tell"

    def reading(self, value: float | None, verdict: str) -> str:
        """The estimate and its verdict in words, e.g. 'fooled by 4 points: negligible'."""
        if value is None:
            return "no estimate"
        word = {"supported": "beyond the effect of interest", "contradicted": self.negligible,
                }.get(verdict, verdict)
        return f"{self.words.format(v=value, pts=100 * value)}: {word}"

    def text(self) -> str:
        return (f"smallest effect of interest {self.effect:g} ({self.why}); supported if the "
                f"95 % interval lies wholly above {self.effect:g}, contradicted if wholly below, "
                f"otherwise too few to tell")


_POINTS = ("5 accuracy points, about five binomial standard errors (0.011) of one classifier's "
           "accuracy on 2,000 fakes")
RULES = {
    "H1": Rule("Held-out generators of an iteration are detected above chance: C_k transfers to "
               "independently trained instances (correlated knowledge gaps).",
               "the accuracy of C_k (every classifier of iteration k) on held-out G_k", 0.55,
               "chance plus " + _POINTS, "held-out generators detected at {v:.2f}",
               "no better than chance"),
    "Fooling": Rule("The targeted classifiers are fooled by the next iteration.",
                    "the accuracy drop of targeted C_{k-1} from held-out G_{k-1} to held-out G_k",
                    0.05, _POINTS, "fooled by {pts:.0f} points"),
    "H2": Rule("Held-out classifiers are fooled too (the artifact is removed, not only the one "
               "network's blind spot found).",
               "the accuracy drop of held-out C_{k-1} from held-out G_{k-1} to held-out G_k", 0.05,
               _POINTS, "fooled by {pts:.0f} points"),
    "Quality": Rule("Fooling costs output quality (the paper's DCGAN claim; its StyleGAN2 claim "
                    "is the opposite).",
                    "the FID change of iterations k ≥ 1 against iteration 0, in units of "
                    "iteration 0's standard deviation between instances", 0.5,
                    "half the spread between independently trained instances of iteration 0: "
                    "a smaller shift is what a new seed alone gives",
                    "FID {v:+.2f} iteration-0 sd"),
    "Ordering": Rule("Under memoryless training, classifiers from two iterations back stay "
                     "fooled (an ordering over optima, not a cycle).",
                     "the accuracy drop of targeted C_{k-2} from held-out G_{k-2} to held-out "
                     "G_k (memoryless)", 0.05, _POINTS, "still fooled by {pts:.0f} points"),
    "Architecture": Rule("Fooling one architecture does not fool another as much (R4: the "
                         "diagonal below the off-diagonal).",
                         "the accuracy drop (held-out G_{k-1} to G_k) of held-out C_{k-1} of "
                         "the fooled architecture minus that of other architectures", 0.05,
                         _POINTS,
                         "the fooled architecture's drop minus the others': {pts:+.0f} points"),
}


class _Data:
    """Records indexed for the statistics: accuracy[(gen, clf)], fid[gen], roles, archs."""

    def __init__(self, records: list[dict], exclude: set[GenKey]) -> None:
        self.acc: dict[tuple[GenKey, ClfKey], float] = {}
        self.split: dict[GenKey, str] = {}
        self.role: dict[ClfKey, str] = {}
        self.arch: dict[ClfKey, str] = {}
        fid = fid_metric(records)
        self.fid: dict[GenKey, float] = {}
        for r in records:
            g = (r["generator_iteration"], r["generator_instance"])
            self.split[g] = r["generator_split"]
            if r["metric"] == fid:
                self.fid[g] = r["value"]
            elif r["metric"] == ACCURACY and g not in exclude:
                c = (r["classifier_iteration"], r["classifier_id"])
                self.acc[(g, c)] = r["value"]
                self.role[c], self.arch[c] = r["classifier_role"], r["classifier_arch"]

    def heldout(self, k: int) -> list[GenKey]:
        return sorted({g for g, _ in self.acc if g[0] == k and self.split[g] == "heldout"})

    def classifiers(self, k: int, role: str | None = None) -> list[ClfKey]:
        return sorted(c for c in self.role if c[0] == k and role in (None, self.role[c]))


Weights = dict  # unit (GenKey or ClfKey) -> multiplicity in a resample


def _mean(data: _Data, gens: list[GenKey], clfs: list[ClfKey], w: Weights) -> float:
    num = den = 0.0
    for g in gens:
        for c in clfs:
            v = data.acc.get((g, c))
            if v is not None:
                wt = w.get(g, 1) * w.get(c, 1)
                num, den = num + wt * v, den + wt
    return num / den if den else math.nan


@dataclass
class _Claim:
    gens: list[GenKey]
    clfs: list[ClfKey]
    stat: Callable[[Weights], float]


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _drop_claim(data: _Data, iterations: int, back: int, role: str) -> _Claim:
    """Accuracy of C_{k-back} (role) on held-out G_{k-back} minus on held-out G_k, mean over k."""
    ks = [k for k in range(back, iterations) if data.heldout(k) and data.classifiers(k - back, role)]

    def stat(w: Weights) -> float:
        return _nanmean([_mean(data, data.heldout(k - back), data.classifiers(k - back, role), w)
                         - _mean(data, data.heldout(k), data.classifiers(k - back, role), w)
                         for k in ks])
    gens = sorted({g for k in ks for g in data.heldout(k) + data.heldout(k - back)})
    return _Claim(gens, sorted({c for k in ks for c in data.classifiers(k - back, role)}), stat)


def _claims(data: _Data, iterations: int, fool_mode: str) -> dict[str, _Claim]:
    claims: dict[str, _Claim] = {}
    ks = [k for k in range(iterations) if data.heldout(k) and data.classifiers(k)]
    claims["H1"] = _Claim(
        sorted({g for k in ks for g in data.heldout(k)}),
        sorted({c for k in ks for c in data.classifiers(k)}),
        lambda w: _nanmean([_mean(data, data.heldout(k), data.classifiers(k), w) for k in ks]))
    if fool_mode != "none":
        claims["Fooling"] = _drop_claim(data, iterations, 1, "target")
        claims["H2"] = _drop_claim(data, iterations, 1, "heldout")
    if fool_mode == "memoryless":
        claims["Ordering"] = _drop_claim(data, iterations, 2, "target")

    if fool_mode == "none":
        return claims  # the control: nothing was fooled, so no cost or transfer to test
    gens0 = sorted(g for g in data.fid if g[0] == 0)
    later = sorted(g for g in data.fid if g[0] >= 1)
    sd0 = float(np.std([data.fid[g] for g in gens0], ddof=1)) if len(gens0) > 1 else math.nan

    def quality(w: Weights) -> float:
        def wmean(gs: list[GenKey]) -> float:
            ws = [w.get(g, 1) for g in gs]
            return sum(wt * data.fid[g] for wt, g in zip(ws, gs)) / sum(ws) if sum(ws) else math.nan
        return (wmean(later) - wmean(gens0)) / sd0 if sd0 > 0 else math.nan
    if gens0 and later:
        claims["Quality"] = _Claim(gens0 + later, [], quality)

    target_archs = {data.arch[c] for c in data.role if data.role[c] == "target"}
    if target_archs:
        pairs = [(k, c) for k in range(1, iterations) for c in data.classifiers(k - 1, "heldout")]
        diag = [(k, c) for k, c in pairs if data.arch[c] in target_archs]
        off = [(k, c) for k, c in pairs if data.arch[c] not in target_archs]

        def arch_stat(w: Weights) -> float:
            def side(kc: list[tuple[int, ClfKey]]) -> float:
                """Mean accuracy drop of these classifiers from held-out G_{k-1} to G_k."""
                num = den = 0.0
                for k, c in kc:
                    m = (_mean(data, data.heldout(k - 1), [c], w)
                         - _mean(data, data.heldout(k), [c], w))
                    wc = w.get(c, 1)
                    if wc and not math.isnan(m):
                        num, den = num + wc * m, den + wc
                return num / den if den else math.nan
            return side(diag) - side(off)
        if diag and off:
            claims["Architecture"] = _Claim(
                sorted({g for k, _ in pairs for g in data.heldout(k) + data.heldout(k - 1)}),
                sorted({c for _, c in pairs}), arch_stat)
    return claims


def _resample(units: list, rng: np.random.Generator) -> Weights:
    """Multiplicities of a with-replacement draw within each iteration (unit[0])."""
    w: Weights = {}
    for k in sorted({u[0] for u in units}):
        group = [u for u in units if u[0] == k]
        for i in rng.integers(0, len(group), len(group)):
            w[group[i]] = w.get(group[i], 0) + 1
        for u in group:
            w.setdefault(u, 0)
    return w


def collapsed_generators(records: list[dict]) -> list[dict]:
    """Generators of iterations ≥ 1 far outside iteration 0's range: mode coverage below half
    of iteration 0's mean, or FID above twice iteration 0's mean. Iteration 0 is the
    reference, so it is never flagged."""
    fid = fid_metric(records)
    q: dict[GenKey, dict[str, float]] = {}
    for r in records:
        if r["metric"] in (fid, "mode_coverage"):
            q.setdefault((r["generator_iteration"], r["generator_instance"]), {})[r["metric"]] = r["value"]
    ref = [v for g, v in q.items() if g[0] == 0]
    fids0 = [v[fid] for v in ref if fid in v]
    cov0 = [v["mode_coverage"] for v in ref if "mode_coverage" in v]
    fid_max = 2 * float(np.mean(fids0)) if fids0 else math.inf
    cov_min = float(np.mean(cov0)) / 2 if cov0 else -math.inf
    out = []
    for g, v in sorted(q.items()):
        if g[0] == 0:
            continue
        why = []
        if v.get("mode_coverage", math.inf) < cov_min:
            why.append(f"mode coverage {v['mode_coverage']:.0f} < {cov_min:.1f}")
        if v.get(fid, -math.inf) > fid_max:
            why.append(f"{fid} {v[fid]:.1f} > {fid_max:.1f}")
        if why:
            out.append({"generator_iteration": g[0], "generator_instance": g[1],
                        "reason": "; ".join(why)})
    return out


def quality_lines(records: list[dict], iterations: int) -> list[str]:
    """One sentence per iteration: FID and mode coverage, and the change against iteration 0
    in its own units and in iteration 0's standard deviation between instances."""
    fid = fid_metric(records)
    if fid is None:
        return []

    def of(metric: str, k: int) -> list[float]:
        return [r["value"] for r in records if r["metric"] == metric and r["generator_iteration"] == k]
    f0 = of(fid, 0)
    sd0 = float(np.std(f0, ddof=1)) if len(f0) > 1 else math.nan
    lines = []
    for k in range(iterations):
        f, cov = of(fid, k), of("mode_coverage", k)
        if not f:
            continue
        sd = float(np.std(f, ddof=1)) if len(f) > 1 else 0.0
        text = f"Iteration {k}: {fid} {np.mean(f):.1f} ± {sd:.1f} (n = {len(f)})"
        if cov:
            text += f", {np.mean(cov):.1f} digit classes ≥ 5 % on average (min {min(cov):.0f})"
        if k > 0 and f0:
            delta = float(np.mean(f) - np.mean(f0))
            units = f", {delta / sd0:+.2f} iteration-0 sd" if sd0 > 0 else ""
            text += f"; change against iteration 0: {delta:+.1f}{units}"
        lines.append(text + ".")
    return lines


def _evaluate(name: str, claim: _Claim, rng: np.random.Generator, n_boot: int) -> dict:
    rule = RULES[name]
    value = claim.stat({})
    entry: dict = {"n_generators": len(claim.gens), "n_classifiers": len(claim.clfs),
                   "value": None if math.isnan(value) else value, "ci95": None}
    per_iteration = [sum(g[0] == k for g in claim.gens) for k in {g[0] for g in claim.gens}]
    if (min(per_iteration, default=0) >= 2 and (claim.clfs or name == "Quality")
            and not math.isnan(value)):
        boots = np.array([claim.stat({**_resample(claim.gens, rng), **_resample(claim.clfs, rng)})
                          for _ in range(n_boot)])
        boots = boots[~np.isnan(boots)]
        if len(boots) >= n_boot // 2:
            low, high = np.percentile(boots, [2.5, 97.5])
            entry["ci95"] = [float(low), float(high)]
            entry["verdict"] = rule.verdict(float(low), float(high))
    entry.setdefault("verdict", "too few to tell")
    entry["reading"] = rule.reading(entry["value"], entry["verdict"])
    return entry


def findings(records: list[dict], iterations: int, fool_mode: str, n_boot: int = N_BOOT,
             seed: int = 0) -> dict:
    """{'claims': [...], 'collapsed': [...], ...} for one run's records (module docstring).

    Every claim is judged on all generators; where collapsed ones enter it, the claim also
    carries `without_collapsed`: the same statistic and verdict with them left out."""
    collapsed = collapsed_generators(records)
    bad = {(c["generator_iteration"], c["generator_instance"]) for c in collapsed}
    rng = np.random.default_rng(seed)
    clean = _claims(_Data(records, bad), iterations, fool_mode)
    out = []
    for name, claim in _claims(_Data(records, set()), iterations, fool_mode).items():
        rule = RULES[name]
        entry = {"claim": name, "statement": rule.statement, "statistic": rule.statistic,
                 "rule": rule.text(), **_evaluate(name, claim, rng, n_boot)}
        involved = sorted(bad & set(claim.gens))
        if involved and name in clean and name != "Quality":  # a collapse IS a quality cost
            entry["collapsed_included"] = [f"G{k}.{n}" for k, n in involved]
            entry["without_collapsed"] = _evaluate(name, clean[name], rng, n_boot)
        out.append(entry)
    return {"claims": out, "collapsed": collapsed, "quality_lines": quality_lines(records, iterations),
            "method": f"two-way bootstrap over generator instances and classifiers within "
                      f"iterations, {n_boot} resamples, percentile 95 % interval; claims with "
                      f"collapsed generators are also given without them"}
