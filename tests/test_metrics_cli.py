"""`gangaps metrics`: the same numbers as torch-fidelity for two folders, and a run's
generators measured with FID(LeNet) and precision/recall under a named protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from gangaps import cli
from tests.conftest import tiny_overrides
from tests.test_metrics_inception import _make_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest.one_thread)

ROOT = Path(__file__).resolve().parents[1]
N = 6  # images per folder: Inception costs ~6 GFLOP an image on this CPU


def _folders(tmp: Path) -> tuple[Path, Path]:
    """Smooth random RGB images and a noisy copy, as PNG files."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(N, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(24, 24), mode="bilinear", align_corners=False)
    real = (x * 255).round().to(torch.uint8)
    fake = (real.float() + torch.randn(N, 3, 24, 24, generator=g) * 80).clamp(0, 255)
    out = []
    for name, imgs in (("real", real), ("fake", fake.round().to(torch.uint8))):
        d = tmp / name
        d.mkdir()
        for i, img in enumerate(imgs):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
        out.append(d)
    return out[0], out[1]


def test_folders_agree_with_torch_fidelity_calculate_metrics(tmp_path: Path, capsys) -> None:
    real, fake = _folders(tmp_path)
    weights = tmp_path / "inception.pth"
    _make_weights(weights, seed=0)
    # layer 192: torch-fidelity's FID takes eigvals of a D x D product (D = 2048: a minute here)
    layer = "192"
    out = tmp_path / "m.json"
    rc = cli.main(["metrics", str(fake), "--reference", str(real), "--metrics", "fid,kid",
                   "--features", "inception", "--inception-weights", str(weights),
                   "--feature-layer", layer, "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())["records"][0]
    ref = torch_fidelity.calculate_metrics(
        input1=str(fake), input2=str(real), cuda=False, fid=True, kid=True,
        feature_extractor_weights_path=str(weights), feature_layer_fid=layer,
        feature_layer_kid=layer, kid_subset_size=N, cache=False, save_cpu_ram=True,
        verbose=False)
    m = rec["metrics"]
    assert m["fid_inception"] > 1.0  # a real difference, not 0 == 0
    assert m["fid_inception"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert m["kid_inception"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert (rec["n_fake"], rec["n_real"], rec["protocol"]) == (N, N, "heldout")
    assert rec["details"]["feature_layer"] == layer and rec["details"]["kid_subset_size"] == N
    printed = capsys.readouterr().out
    assert "fid_inception" in printed and "kid_inception" in printed  # the table


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, data_root: Path) -> Path:
    """A demo-size run (one iteration, 2 generators) with the in-run FID(LeNet); most of its
    time is LeNet's one training per test session (the real FID(LeNet) path)."""
    out = tmp_path_factory.mktemp("metrics-run") / "run"
    rc = cli.main(["run", str(ROOT / "configs" / "mnist-dcgan.yaml"),
                   *tiny_overrides(**{"evaluation.fid": "lenet", "experiment.iterations": 1,
                                      "experiment.instances": 2}),
                   "--out", str(out), "--data-root", str(data_root), "--quiet"])
    assert rc == 0
    return out


def test_run_generators_fid_lenet_and_precision_recall(mnist_run: Path, data_root: Path,
                                                       capsys) -> None:
    rc = cli.main(["metrics", str(mnist_run), "--data-root", str(data_root), "-q"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((mnist_run / "metrics" / "heldout-lenet.json").read_text())
    assert [(r["iteration"], r["instance"]) for r in doc["records"]] == [(0, 0), (0, 1)]
    for r in doc["records"]:
        assert r["protocol"] == "heldout" and r["features"] == "lenet"
        assert (r["n_fake"], r["n_real"]) == (200, 200)  # evaluation.n_fake / n_real of the run
        m = r["metrics"]
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and np.isfinite(m["kid_lenet"])
        assert "LeNet" in r["details"]["prc"]  # precision/recall on LeNet features
        # the heldout protocol repeats the run's own in-run FID(LeNet): same fakes, same reals
        quality = json.loads((mnist_run / "iter_00" / "quality" /
                              f"gen_{r['instance']:02d}.json").read_text())
        assert m["fid_lenet"] == pytest.approx(quality["fid_lenet"], rel=1e-9)


def test_checkpoint_against_mnist_full_with_other_n(mnist_run: Path, data_root: Path,
                                                    tmp_path: Path, capsys) -> None:
    ckpt = mnist_run / "iter_00" / "gen_00" / "checkpoint.safetensors"
    out = tmp_path / "full.json"
    rc = cli.main(["metrics", str(ckpt), "--reference", "mnist", "--protocol", "fid50k_full",
                   "--n-fake", "300", "--metrics", "fid,kid", "--data-root", str(data_root),
                   "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())["records"][0]
    assert r["protocol"] == "fid50k_full" and (r["n_fake"], r["n_real"]) == (300, 60_000)
    assert set(r["metrics"]) == {"fid_lenet", "kid_lenet", "kid_lenet_std"}
    assert r["metrics"]["fid_lenet"] > 0


def test_bad_inputs_are_one_line_errors(mnist_run: Path, tmp_path: Path, capsys) -> None:
    for argv in (["metrics", str(tmp_path / "nope")],
                 ["metrics", str(mnist_run), "--metrics", "fid,is"],
                 ["metrics", str(mnist_run), "--iteration", "0"],
                 ["metrics", str(mnist_run), "--iteration", "3", "--instance", "0"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gangaps: error:") and err.count("\n") == 1
