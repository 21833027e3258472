"""The findings' verdict rules on synthetic records whose answer is known, both ways."""

from __future__ import annotations

import numpy as np
import pytest

from gangaps.report.findings import RULES, collapsed_generators, findings

CLASSIFIERS = [("clf_small_cnn_0", "small_cnn", "target"), ("clf_small_cnn_1", "small_cnn", "heldout"),
               ("clf_small_cnn_2", "small_cnn", "heldout"), ("clf_patch_0", "patch", "heldout")]


def synthetic(acc, fid=lambda k, n: 300.0 + 10 * n, coverage=lambda k, n: 9, iterations=3,
              instances=6, heldout=3, noise=0.01, seed=0) -> list[dict]:
    """Records of a run: acc(clf_iteration, clf_id, gen_iteration) is the true accuracy."""
    rng = np.random.default_rng(seed)
    records = []
    for j in range(iterations):
        for n in range(instances):
            split = "heldout" if n >= instances - heldout else "train"
            gen = {"generator_iteration": j, "generator_instance": n, "generator_split": split}
            none = dict.fromkeys(("classifier_iteration", "classifier_id", "classifier_arch",
                                  "classifier_role"))
            records.append({"metric": "fid_lenet", "value": fid(j, n), **gen, **none})
            records.append({"metric": "mode_coverage", "value": coverage(j, n), **gen, **none})
            for i in range(iterations):
                for cid, arch, role in CLASSIFIERS:
                    v = acc(i, cid, j) + rng.normal(0, noise)
                    records.append({"metric": "accuracy", "value": float(np.clip(v, 0, 1)), **gen,
                                    "classifier_iteration": i, "classifier_id": cid,
                                    "classifier_arch": arch, "classifier_role": role})
    return records


def verdicts(records, mode="memoryless", iterations=3) -> dict[str, str]:
    out = findings(records, iterations, mode, n_boot=300)
    return {c["claim"]: c["verdict"] for c in out["claims"]}


def gapped(i, cid, j):
    """The paper's picture: C_i detects G_i, is fooled by every later G_j (every architecture
    of the same kind, the patch CNN less), and C_i still catches older generators."""
    if j <= i:
        return 0.95
    return 0.8 if cid == "clf_patch_0" else 0.55


def no_gaps(i, cid, j):
    """Nothing transfers and nothing is fooled: chance on held-out generators at every j, so
    no accuracy drops either (the reference is chance too)."""
    return 0.5


def test_every_claim_supported_where_the_records_show_it():
    v = verdicts(synthetic(gapped, fid=lambda k, n: 300.0 + 10 * n + 40 * k))
    assert v == {"H1": "supported", "Fooling": "supported", "H2": "supported",
                 "Ordering": "supported", "Quality": "supported", "Architecture": "supported"}


def test_every_claim_contradicted_where_the_records_show_the_opposite():
    def unfooled_patch_fooled(i, cid, j):  # nothing fooled but the other architecture
        return 0.5 if (cid == "clf_patch_0" and j > i) else 0.95
    v = verdicts(synthetic(no_gaps, fid=lambda k, n: 300.0 + 10 * n - 80 * k))
    assert v["H1"] == "contradicted" and v["Quality"] == "contradicted"
    assert v["Fooling"] == v["H2"] == v["Ordering"] == "contradicted"
    v = verdicts(synthetic(unfooled_patch_fooled))
    assert v["Fooling"] == "contradicted" and v["Architecture"] == "contradicted"
    assert v["H1"] == "supported"


@pytest.mark.parametrize("claim,low,high,verdict", [
    ("Fooling", 0.01, 0.04, "contradicted"),     # above 0 but below the 5-point effect: negligible
    ("Fooling", 0.029, 0.059, "too few to tell"),  # contains the effect of interest
    ("Fooling", 0.05, 0.20, "too few to tell"),    # touching the boundary is not wholly beyond it
    ("Fooling", 0.051, 0.20, "supported"),
    ("Fooling", -0.10, 0.049, "contradicted"),
    ("H2", 0.01, 0.04, "contradicted"), ("Ordering", 0.01, 0.04, "contradicted"),
    ("Architecture", 0.01, 0.04, "contradicted"),
    ("H1", 0.51, 0.54, "contradicted"),            # above chance, by less than matters
    ("H1", 0.52, 0.60, "too few to tell"), ("H1", 0.56, 0.90, "supported"),
    ("Quality", 0.05, 0.40, "contradicted"),       # FID rose, by less than half a seed's spread
    ("Quality", 0.3, 0.9, "too few to tell"), ("Quality", 0.6, 3.0, "supported"),
])
def test_verdict_boundaries(claim, low, high, verdict):
    assert RULES[claim].verdict(low, high) == verdict


def test_verdict_regions_never_overlap():
    """Over a grid of intervals around every rule's effect: supported only wholly above it,
    contradicted only wholly below it, so no interval is ever both."""
    grid = np.round(np.arange(-0.2, 1.2, 0.01), 2)
    for rule in RULES.values():
        for low in grid:
            for high in grid[grid >= low]:
                v = rule.verdict(float(low), float(high))
                assert (v == "supported") == (low > rule.effect)
                assert (v == "contradicted") == (high < rule.effect)


def test_a_small_drop_is_reported_as_negligible_not_supported():
    """A drop of 3 points, precisely measured: its interval lies above 0 (the old rule said
    'supported'), but wholly below the 5-point effect of interest."""
    def small(i, cid, j):
        return 0.90 if j <= i else 0.87
    out = findings(synthetic(small, noise=0.002), 3, "fool-all", n_boot=300)
    fooling = {c["claim"]: c for c in out["claims"]}["Fooling"]
    assert 0 < fooling["ci95"][0] and fooling["ci95"][1] < 0.05
    assert fooling["verdict"] == "contradicted"
    assert fooling["reading"] == "fooled by 3 points: negligible"


def test_noise_as_large_as_the_effect_is_too_few_to_tell():
    def weak(i, cid, j):
        return 0.53 if j > i else 0.55
    v = verdicts(synthetic(weak, noise=0.15, instances=4, heldout=2,
                           fid=lambda k, n: 300.0 + 40 * ((n + k) % 3)))
    assert v["Fooling"] == "too few to tell"
    assert v["Quality"] == "too few to tell"


def test_one_generator_is_too_few_whatever_its_value():
    v = verdicts(synthetic(gapped, instances=2, heldout=1))
    assert v["H1"] == "too few to tell" and v["Fooling"] == "too few to tell"


def test_claims_follow_fool_mode():
    records = synthetic(gapped)
    assert "Ordering" not in verdicts(records, "fool-all")
    assert set(verdicts(records, "none")) == {"H1"}


def test_a_collapsed_generator_is_named_and_each_claim_it_enters_is_also_given_without_it():
    def coverage(k, n):
        return 1 if (k, n) == (1, 5) else 9
    records = synthetic(gapped, coverage=coverage)
    bad = collapsed_generators(records)
    assert [(c["generator_iteration"], c["generator_instance"]) for c in bad] == [(1, 5)]
    assert "mode coverage" in bad[0]["reason"]
    clean = {c["claim"]: c for c in findings(records, 3, "memoryless", n_boot=50)["claims"]}
    # poison that generator's accuracies: the claim moves, its collapse-free twin does not
    for r in records:
        if (r["generator_iteration"], r["generator_instance"]) == (1, 5) and r["metric"] == "accuracy":
            r["value"] = 0.0
    poisoned = {c["claim"]: c for c in findings(records, 3, "memoryless", n_boot=50)["claims"]}
    fooling = poisoned["Fooling"]
    assert fooling["collapsed_included"] == ["G1.5"]
    assert abs(fooling["value"] - clean["Fooling"]["value"]) > 0.05
    assert fooling["without_collapsed"]["value"] == pytest.approx(
        clean["Fooling"]["without_collapsed"]["value"])
    assert fooling["without_collapsed"]["n_generators"] == fooling["n_generators"] - 1
    assert "without_collapsed" not in poisoned["Ordering"]  # G1.5 is not in C_{k-2}'s claim


def test_far_fid_alone_flags_a_generator():
    records = synthetic(gapped, fid=lambda k, n: 900.0 if (k, n) == (2, 0) else 300.0 + 10 * n)
    assert [(c["generator_iteration"], c["generator_instance"])
            for c in collapsed_generators(records)] == [(2, 0)]


def test_rules_are_stated_and_interval_contains_the_estimate():
    out = findings(synthetic(gapped), 3, "fool-all", n_boot=200)
    for c in out["claims"]:
        assert c["rule"] == RULES[c["claim"]].text() and "95 %" in c["rule"]
        lo, hi = c["ci95"]
        assert lo <= c["value"] <= hi
        assert c["n_generators"] >= 2
