"""The face setting end to end: StyleGAN2 generators on real FFHQ faces at 32 px (toy sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]
FACES = DATA / "faces_ffhq256_subset" / "real"

TINY = [
    "data.resolution=32", "data.heldout_real=200",
    "experiment.iterations=2", "experiment.instances=2", "experiment.heldout_instances=1",
    "gan.kimg=0.25", "gan.batch_size=8", "gan.z_dim=32", "gan.checkpoint_kimg=0.1",
    "gan.log_kimg=0.05",
    "gan.options={w_dim: 32, mapping_layers: 2, channel_base: 256, channel_max: 32, "
    "r1_gamma: 0.1, r1_interval: 4, pl_interval: 2, ema_kimg: 0.1, conv_clamp: null}",
    "classifiers=[{arch: small_cnn, seeds: [0], role: target, options: {width: 8}}, "
    "{arch: patch, seeds: [0], role: heldout, options: {width: 8, depth: 2}}]",
    "classifier_training.n_real=300", "classifier_training.n_fake=300",
    "classifier_training.epochs=1", "classifier_training.batch_size=32",
    "evaluation.n_fake=100", "evaluation.n_real=100", "evaluation.fid=none",
]


@pytest.mark.skipif(not FACES.is_dir(), reason=f"faces not found under {FACES}")
def test_stylegan2_faces_experiment_end_to_end(tmp_path):
    out = tmp_path / "faces"
    cmd = [sys.executable, "-m", "gangaps.cli", "run",
           str(ROOT / "configs" / "ffhq-stylegan2-64.yaml"), f"data.path={FACES}", *TINY,
           "--out", str(out), "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    log = [json.loads(line) for line in (out / "iter_01/gen_00/log.jsonl").read_text().splitlines()]
    assert len(log) >= 4
    for key in ("loss_G", "loss_D"):  # losses move during training
        assert len({round(r[key], 4) for r in log if key in r}) > 1, key
    assert any("loss_fool" in r for r in log)  # iteration 1 is trained against C_0
    assert (out / "iter_00/gen_00/samples.png").stat().st_size > 500
    records = json.loads((out / "report/results.json").read_text())["records"]
    archs = {r["classifier_arch"] for r in records if r["metric"] == "ap"}
    assert archs == {"small_cnn", "patch"}
    assert (out / "report/index.html").read_text().count("data:image/png;base64") >= 4
