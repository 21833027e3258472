"""benchmarks/gpu_suite.py, the one prepared device script, in its CPU dry-run mode: every
section runs its real measuring loop at tiny sizes and lands in the JSON and the markdown;
a failing section and a time-boxed one are written down while the others go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["env", "dcgan", "dcgan_options", "dcgan_compiled", "iteration", "classifier_augment",
            "stylegan2", "ddp"]


def _suite(out: Path, *args: str) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("GANGAPS_PEAK_FLOPS", None)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run",
                          "--out", str(out), *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.json", "gpu_suite.md"]  # no .tmp
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, data_root) -> tuple[dict, str]:
    return _suite(tmp_path_factory.mktemp("suite"), "--data-root", str(data_root))


def test_dry_run_writes_every_section(dry_run):
    result, md = dry_run
    secs = result["sections"]
    assert list(secs) == SECTIONS and result["dry_run"] is True
    assert not [n for n, s in secs.items() if "error" in s], {n: s.get("error") for n, s in secs.items()}
    assert secs["env"]["peak_injected"] and secs["env"]["peak_tf32"] == 1e12
    rows = secs["dcgan"]["rows"]
    assert [(r["n"], r["precision"][:4]) for r in rows] == [(1, "fp32"), (2, "fp32")] * 2
    for r in rows:  # the real loop's figures: throughput and the MFU against the injected peak
        assert r["img_per_s"] > 0 and 0 < r["mfu"] < 1 and r["batch"] == 16
    opts = secs["dcgan_options"]["rows"]  # one GPU-path option changed at a time, fused N = 2
    assert [r["setting"] for r in opts] == ["grouped rng", "per-instance rng", "data on host", "bf16",
                                            "bf16 + channels_last", "compiled, per-instance rng"]
    assert [r["rng"] for r in opts] == ["grouped", "per-instance", "grouped", "grouped", "grouped",
                                        "per-instance"]
    assert [r["data_on_device"] for r in opts] == [True, True, False, True, True, True]
    assert [r["bf16"] for r in opts] == [False, False, False, True, True, False]
    assert [r["compiled"] for r in opts] == [None] * 5 + ["aot_eager"]  # the dry run's backend
    assert all(r["n"] == 2 and r["img_per_s"] > 0 and 0 < r["mfu"] < 1 for r in opts)
    assert opts[0]["vs_first"] == 1.0
    aug = secs["classifier_augment"]
    assert [(r["augment"], r["augment_workers"]) for r in aug["rows"]] == \
        [("none", 0), ("inline", 0), ("threads", 2)]
    assert aug["same_weights"] is True and all(r["img_per_s"] > 0 for r in aug["rows"])
    it = secs["iteration"]
    assert it["instances"] == 10 and it["group_size"] == 4  # the runner's CPU grouping
    assert it["projected_iteration_s"] == pytest.approx(it["generator_s"] + it["classifier_s"], abs=0.2)
    sg2 = secs["stylegan2"]["rows"]
    assert [r["res"] for r in sg2] == [8, 16] and all(r["sec_per_kimg"] > 0 for r in sg2)
    assert "skipped" in secs["dcgan_compiled"] and "skipped" in secs["ddp"]
    for name in SECTIONS:
        assert f"## {name} (" in md
    assert "| n | precision | compiled |" in md and "projected_iteration_s" in md
    assert "| setting | n | rng | data_on_device |" in md and "| augment | augment_workers |" in md


def test_a_failing_section_and_a_timed_out_one_are_written_and_the_rest_run(tmp_path):
    # no data: the DCGAN section fails; env needs none
    result, md = _suite(tmp_path / "a", "--data-root", str(tmp_path / "none"),
                        "--only", "dcgan", "env")
    assert "error" in result["sections"]["dcgan"] and "error" not in result["sections"]["env"]
    assert "**error**" in md and result["sections"]["env"]["threads"] >= 1
    # a budget the first section cannot finish in (its two dry-run rows take about 1 s on a quiet
    # 2-core machine; 1.5 s let it finish there): cut at its time box, the next gets nothing
    result, _ = _suite(tmp_path / "b", "--only", "stylegan2", "env", "--budget-s", "0.2")
    sg2, env = result["sections"]["stylegan2"], result["sections"]["env"]
    assert sg2["error"].startswith("SectionTimeout") and sg2["seconds"] < 10
    assert env["error"] == "SectionTimeout: no budget left"
