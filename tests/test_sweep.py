"""Sweeps share iteration 0 and compare runs: λ trade-off, fool modes, fooled architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gangaps.cli import main
from gangaps.config import load_config
from gangaps.errors import UserError
from gangaps.experiment.runner import Runner
from gangaps.experiment.sweep import plan_sweep
from tests.conftest import tiny_overrides


def test_sweep_shares_iteration0_and_reports_every_run(tmp_path, data_root):
    out = tmp_path / "sweep"
    config = Path(__file__).resolve().parents[1] / "configs/mnist-dcgan.yaml"
    args = ["sweep", str(config), *tiny_overrides(**{"gan.kimg": 1, "evaluation.fid": "lenet"}),
            "classifiers=[{arch: small_cnn, seeds: [0], role: target, options: {width: 8}},"
            " {arch: small_cnn, seeds: [1], role: heldout, options: {width: 8}},"
            " {arch: patch, seeds: [0], role: target, options: {width: 8, depth: 2}},"
            " {arch: patch, seeds: [1], role: heldout, options: {width: 8, depth: 2}}]",
            "--fool-lambda", "0.5,5", "--target-arch", "small_cnn,patch",
            "--out", str(out), "--data-root", str(data_root), "--quiet"]
    assert main(args) == 0
    variants = sorted(p.name for p in out.iterdir() if p.name not in ("iteration0", "report"))
    assert variants == ["fool-all_lam0.5_fool-patch", "fool-all_lam0.5_fool-small_cnn",
                        "fool-all_lam5_fool-patch", "fool-all_lam5_fool-small_cnn"]
    for v in variants:  # iteration 0 trained once, in iteration0/
        assert not list((out / v).glob("iter_00/gen_*")) and not list((out / v).glob("iter_00/clf_*"))
        assert (out / v / "iter_01/gen_00/DONE").exists()
    records = json.loads((out / "report/results.json").read_text())["records"]
    assert {r["fool_lambda"] for r in records} == {0.5, 5.0}
    assert {r["fooled_arch"] for r in records} == {"small_cnn", "patch"}
    cfg = load_config(out / "fool-all_lam5_fool-patch" / "config.yaml")
    assert [c.role for c in cfg.classifiers] == ["heldout", "heldout", "target", "heldout"]
    for name in ("tradeoff.png", "cross_iteration.png", "architecture.png"):
        assert (out / "report/figures" / name).stat().st_size > 1000
    table = (out / "report/sweep.md").read_text().splitlines()
    assert len(table) == 2 + 1 + 4  # header, rule, the shared iteration 0, one row per variant
    assert table[2].startswith("| iteration 0 (shared) | 0 | none |")
    assert all(" [" in line and "(3)" in line for line in table[2:])  # FID: interval over 3 instances


def test_the_control_is_one_run_whatever_the_lambdas(tmp_path, data_root):
    base = load_config(None, tiny_overrides(**{"data.path": str(data_root)}))
    _, variants = plan_sweep(base, tmp_path, [0.1, 1.0], ["none", "fool-all"], [None])
    assert [p.name for p, _ in variants] == ["none_lam0", "fool-all_lam0.1", "fool-all_lam1"]


def test_a_run_cannot_share_an_iteration0_made_with_other_settings(tmp_path, data_root):
    base = load_config(None, tiny_overrides(**{"data.path": str(data_root)}))
    base0, _ = plan_sweep(base, tmp_path, [1.0], ["fool-all"], [None])
    Runner(base0, tmp_path / "iteration0", progress=False)  # writes its config
    other = load_config(None, tiny_overrides(**{"data.path": str(data_root), "gan.lr": 1e-3,
                                                "experiment.reuse_iteration0": str(tmp_path / "iteration0")}))
    with pytest.raises(UserError, match="gan.lr"):
        Runner(other, tmp_path / "other", progress=False)
