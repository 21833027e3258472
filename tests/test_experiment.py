"""The whole experiment end to end on real MNIST (toy sizes): results, report, status, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _cmd(out: Path, data_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gangaps.cli", "run", str(ROOT / "configs" / "mnist-dcgan.yaml"),
            *tiny_overrides(**{"evaluation.fid": "lenet"}), *extra, "--out", str(out),
            "--data-root", str(data_root), "--quiet"]


def _values(run: Path) -> list[tuple]:
    records = json.loads((run / "report" / "results.json").read_text())["records"]
    keys = ("metric", "generator_iteration", "generator_instance", "classifier_iteration",
            "classifier_id")
    return sorted((*(r[k] for k in keys), round(r["value"], 9)) for r in records)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("exp") / "run"
    res = subprocess.run(_cmd(out, data_root), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_results_json_is_long_format_with_every_measurement(finished_run):
    results = json.loads((finished_run / "report" / "results.json").read_text())
    assert results["gangaps_version"] and results["config"]["experiment"]["iterations"] == 2
    records = results["records"]
    metrics = {r["metric"] for r in records}
    assert {"accuracy", "fake_recall", "real_recall", "ap", "auc", "fid_lenet"} <= metrics
    fids = [r for r in records if r["metric"] == "fid_lenet"]
    assert len(fids) == 2 * 3  # every generator instance of every iteration
    assert all(r["classifier_id"] is None and r["value"] > 0 for r in fids)
    acc = [r for r in records if r["metric"] == "accuracy"]
    # 3 classifiers per iteration (mnist-dcgan.yaml) × 2 iterations, each on all 6 generators:
    # the full cross-iteration matrix, both sides of the diagonal
    assert len(acc) == 6 * 6
    assert all("ci95" in r for r in acc)
    for r in acc:
        assert r["generator_split"] in ("train", "heldout")
        assert r["classifier_role"] in ("target", "heldout")
        assert r["classifier_arch"] == "small_cnn" and 0 <= r["value"] <= 1
    # iteration-0 classifiers detect held-out iteration-0 generators (toy GANs are crude)
    h1 = [r["value"] for r in acc if r["generator_iteration"] == 0 and r["classifier_iteration"] == 0
          and r["generator_split"] == "heldout"]
    assert len(h1) == 3 and sum(h1) / len(h1) > 0.75


def test_report_and_status(finished_run):
    html = (finished_run / "report" / "index.html").read_text()
    assert "Per iteration" in html and html.count("data:image/png;base64") >= 5
    for name in ("fid.png", "cross_iteration.png", "fooling.png", "samples.png", "curves.png"):
        assert (finished_run / "report" / "figures" / name).stat().st_size > 1000
    res = subprocess.run([sys.executable, "-m", "gangaps.cli", "status", str(finished_run)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "12/12 training jobs done" in res.stdout  # 3 generators + 3 classifiers, twice
    assert res.stdout.count("done (") == 12


def test_rerun_of_a_finished_run_redoes_nothing(finished_run, data_root):
    marks = {p: p.stat().st_mtime_ns for p in finished_run.rglob("DONE")}
    before = _values(finished_run)
    res = subprocess.run(_cmd(finished_run, data_root), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("DONE")} == marks
    assert _values(finished_run) == before


def test_changed_config_refuses_to_resume(finished_run, data_root):
    res = subprocess.run(_cmd(finished_run, data_root, "gan.lr=1e-3"), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "different config" in res.stderr


def _run_until(cmd: list[str], ready, timeout: float = 600) -> None:
    """Start the run, SIGKILL it as soon as `ready()` holds (or it ends)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while proc.poll() is None and not ready() and time.monotonic() - t0 < timeout:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_run_resumes_to_the_same_results(finished_run, data_root, tmp_path):
    out = tmp_path / "killed"
    cmd = _cmd(out, data_root)
    kill_points = [  # mid-generator, mid-classifier, mid fool-training of iteration 1
        lambda: (out / "iter_00/gen_01/checkpoint.safetensors").exists(),
        lambda: (out / "iter_00/clf_small_cnn_0/checkpoint.safetensors").exists(),
        lambda: (out / "iter_01/gen_00/checkpoint.safetensors").exists(),
    ]
    kept: dict[Path, int] = {}
    for ready in kill_points:
        _run_until(cmd, ready)
        for done, mtime in kept.items():  # jobs finished before a kill are never redone
            assert done.stat().st_mtime_ns == mtime
        kept = {p: p.stat().st_mtime_ns for p in out.rglob("DONE")}
    assert not (out / "report" / "results.json").exists(), "the kills came too late"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    for done, mtime in kept.items():
        assert done.stat().st_mtime_ns == mtime
    assert _values(out) == _values(finished_run)
