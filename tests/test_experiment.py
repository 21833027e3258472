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
    # no gan.snapshot_metric: no snapshot curve and no figure of one
    assert json.loads((finished_run / "report" / "results.json").read_text())["snapshot_curves"] == []
    assert not (finished_run / "report" / "figures" / "snapshot_metric.png").exists()
    res = subprocess.run([sys.executable, "-m", "gangaps.cli", "status", str(finished_run)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "12/12 training jobs done" in res.stdout  # 3 generators + 3 classifiers, twice
    assert res.stdout.count("done (") == 12
    # into a pipe whose reader has gone (`gangaps status RUN | head -1`): quiet, exit 0
    proc = subprocess.Popen([sys.executable, "-m", "gangaps.cli", "status", str(finished_run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0 and proc.stderr.read() == b""


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


def test_mode_metrics_and_findings_are_in_results_and_at_the_top_of_the_report(finished_run):
    results = json.loads((finished_run / "report" / "results.json").read_text())
    records = results["records"]
    for metric, low, high in (("mode_coverage", 0, 10), ("class_kl", 0.0, 30.0)):
        rs = [r for r in records if r["metric"] == metric]
        assert len(rs) == 6 and all(low <= r["value"] <= high and r["n_fake"] == 200 for r in rs)
    claims = {c["claim"]: c for c in results["findings"]["claims"]}
    assert {"H1", "Fooling", "H2", "Quality"} <= set(claims)  # fool-all: no Ordering claim
    for c in claims.values():
        assert c["verdict"] in ("supported", "contradicted", "too few to tell")
        assert c["n_generators"] >= 1 and c["rule"]
    # recomputed from the records alone: the same verdicts
    from gangaps.report.findings import findings
    again = findings(records, 2, "fool-all")
    assert [c["verdict"] for c in again["claims"]] == [c["verdict"] for c in claims.values()]
    html = (finished_run / "report" / "index.html").read_text()
    assert html.index("<h2>Findings") < html.index("<h2>Per iteration")
    assert "digit classes" in html


def test_report_renders_in_a_real_browser(finished_run):
    from tests.browser import find_browser, open_page
    if find_browser() is None:
        pytest.skip("no Chromium (.ci/run installs Debian's chromium)")
    script = """(() => {
      const imgs = [...document.images];
      const heads = [...document.querySelectorAll('h2')].map(h => h.textContent);
      const tables = [...document.querySelectorAll('table')].map(t => t.rows.length);
      return {images: imgs.map(i => [i.complete, i.naturalWidth]), heads, tables,
              verdicts: [...document.querySelectorAll('td')].map(t => t.textContent)
                        .filter(t => ['supported', 'contradicted', 'too few to tell'].includes(t))};
    })()"""
    page, errors = open_page((finished_run / "report" / "index.html").as_uri(), script)
    assert errors == []
    assert len(page["images"]) >= 5 and all(ok and w > 0 for ok, w in page["images"])
    assert page["heads"][:2] == ["Findings", "Per iteration"]
    assert page["tables"][0] >= 4 and page["tables"][1] == 1 + 2  # header + one row per iteration
    assert len(page["verdicts"]) == page["tables"][0] - 1


def test_generate_writes_seeded_samples_as_pngs_or_npz(finished_run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from gangaps.cli import main
    from gangaps.generators import generate, load_generator
    ckpt = finished_run / "iter_01" / "gen_02" / "checkpoint.safetensors"
    base = ["generate", str(finished_run), "--iteration", "1", "--instance", "2", "-q"]
    assert main([*base, "--n", "7", "--out", str(tmp_path / "png"), "--seed", "3"]) == 0
    assert main([*base, "--n", "7", "--out", str(tmp_path / "a.npz"), "--seed", "3",
                 "--batch-size", "2"]) == 0
    assert main(["generate", str(ckpt), "--n", "7", "--out", str(tmp_path / "b.npz"),
                 "--seed", "3", "-q", "--batch-size", "2"]) == 0
    assert main([*base, "--n", "7", "--out", str(tmp_path / "c.npz"), "--seed", "4"]) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(7)]
    a, b = (np.load(tmp_path / f"{x}.npz")["arr_0"] for x in "ab")
    assert a.shape == (7, 28, 28, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # run + coordinates and the checkpoint file: same images

    def close(x, y) -> bool:  # other batch sizes: other conv kernels, so a rounding may flip
        d = np.abs(x.astype(int) - y.astype(int))
        return d.max() <= 1 and (d == 0).mean() > 0.99

    assert close(a[..., 0], np.stack([np.asarray(Image.open(p)) for p in pngs]))
    ref = generate(load_generator(ckpt), 7, seed=3)
    assert close(a, ref.permute(0, 2, 3, 1).numpy())
    assert not np.array_equal(a, np.load(tmp_path / "c.npz")["arr_0"])  # another seed
    capsys.readouterr()
    for bad in (["generate", str(finished_run), "--n", "3", "--out", str(tmp_path / "x")],
                [*base[:4], "--instance", "9", "--n", "3", "--out", str(tmp_path / "x")],
                ["generate", str(ckpt), "--iteration", "0", "--n", "3", "--out", str(tmp_path / "x")],
                ["generate", str(tmp_path), "--n", "3", "--out", str(tmp_path / "x")],
                [*base, "--n", "0", "--out", str(tmp_path / "x")],
                [*base, "--n", "3", "--batch-size", "0", "--out", str(tmp_path / "x")]):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gangaps: error:")
    assert not (tmp_path / "x").exists()
