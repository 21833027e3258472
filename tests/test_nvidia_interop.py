"""NVIDIA stylegan2-ada-pytorch networks in and out: a converted network is a generator
checkpoint everywhere (generate, metrics, iteration 0 of a run, init of iteration 1), and
export-nvidia writes their state-dict layout back (round trip against the exact fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gangaps import cli
from gangaps.config import load_config
from gangaps.data import to_uint8
from gangaps.errors import UserError
from gangaps.generators import load_generator
from gangaps.io import load_state
from tests.conftest import DATA, SHARED

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = SHARED / "fixtures" / "stylegan2_reference"
FACES = DATA / "faces_ffhq256_subset" / "real"
pytestmark = pytest.mark.skipif(not (FIXTURE / "config.json").is_file(),
                                reason=f"NVIDIA reference fixture not found at {FIXTURE}")


def _ref(name: str):
    return torch.load(FIXTURE / name, weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nvidia") / "sg2.safetensors"
    assert cli.main(["convert-nvidia", str(FIXTURE / "G_state_dict.pt"),
                     str(FIXTURE / "D_state_dict.pt"), str(FIXTURE / "config.json"),
                     str(out)]) == 0
    return out


def test_generate_gives_nvidias_images(converted: Path, tmp_path: Path, capsys) -> None:
    ref = _ref("reference_io.pt")
    z = tmp_path / "z.pt"
    torch.save(ref["z"].repeat(4, 1), z)  # NVIDIA's 4 latents, 4 times: 16 images
    out = tmp_path / "g.npz"
    rc = cli.main(["generate", str(converted), "--n", "16", "--latents", str(z),
                   "--noise-mode", "const", "--out", str(out), "-q", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    got = torch.from_numpy(np.load(out)["arr_0"]).permute(0, 3, 1, 2)
    want = to_uint8(ref["img"]).repeat(4, 1, 1, 1)
    diff = (got.int() - want.int()).abs()
    # float agreement under 1e-4 relative (the fixture's tolerance) can only flip a rounding
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    with torch.no_grad():  # and the float images themselves, to the fixture's tolerance
        img = load_generator(converted)(ref["z"], noise_mode="const")
    assert ((img - ref["img"]).abs().max() / ref["img"].abs().max()) < 1e-4


def test_generate_refuses_latents_of_another_shape(converted: Path, tmp_path: Path,
                                                  capsys) -> None:
    bad = tmp_path / "z.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    assert cli.main(["generate", str(converted), "--n", "3", "--latents", str(bad),
                     "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "expected [N, 64] latents" in capsys.readouterr().err


def test_export_round_trip_is_exact(converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert cli.main(["export-nvidia", str(converted), str(out)]) == 0
    for name in ("G_state_dict.pt", "D_state_dict.pt"):
        mine, theirs = torch.load(out / name, weights_only=True), _ref(name)
        assert set(mine) == set(theirs)
        for k, v in theirs.items():
            assert mine[k].dtype == v.dtype and torch.equal(mine[k], v), k
    cfg = json.loads((out / "config.json").read_text())
    fixture_cfg = json.loads((FIXTURE / "config.json").read_text())
    assert {k: cfg[k] for k in fixture_cfg} == fixture_cfg
    again = tmp_path / "again.safetensors"  # and convert-nvidia reads the export back
    assert cli.main(["convert-nvidia", str(out / "G_state_dict.pt"), str(out / "D_state_dict.pt"),
                     str(out / "config.json"), str(again)]) == 0
    a, b = load_state(again), load_state(converted)
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in b["G"])


def test_export_refuses_a_dcgan() -> None:
    from gangaps.models.stylegan2_import import config_from_spec
    spec = {"gan": {"family": "dcgan"}, "channels": 1, "resolution": 28}
    with pytest.raises(UserError, match="only StyleGAN2"):
        config_from_spec(spec)


@pytest.mark.skipif(not FACES.is_dir(), reason=f"faces not found under {FACES}")
def test_metrics_of_a_converted_network(converted: Path, tmp_path: Path, capsys) -> None:
    from tests.test_metrics_inception import _make_weights
    reals = tmp_path / "reals"
    reals.mkdir()
    for p in sorted(FACES.iterdir())[:4]:
        shutil.copy(p, reals / p.name)
    weights = tmp_path / "inception.pth"
    _make_weights(weights, seed=0)
    out = tmp_path / "m.json"
    torch.set_num_threads(1)
    rc = cli.main(["metrics", str(converted), "--reference", str(reals), "--n-fake", "4",
                   "--metrics", "fid,kid,prc", "--inception-weights", str(weights),
                   "--feature-layer", "64", "--out", str(out), "-q", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())["records"][0]
    assert r["features"] == "inception" and (r["n_fake"], r["n_real"]) == (4, 4)
    assert r["metrics"]["fid_inception"] > 0 and 0 <= r["metrics"]["precision"] <= 1


FIXTURE_GAN = [  # the run's gan section builds the fixture's network (so init: previous works)
    "gan.z_dim=64", "gan.batch_size=4", "gan.kimg=0.008", "gan.checkpoint_kimg=0.004",
    "gan.log_kimg=0.004", "gan.sample_grid=4",
    "gan.options={w_dim: 64, mapping_layers: 2, channel_base: 2048, channel_max: 128, "
    "conv_clamp: null, r1_interval: 2, pl_interval: 2, ema_kimg: 0.01}",
]
TINY_RUN = [
    "data.resolution=32", "data.heldout_real=100",
    "experiment.iterations=2", "experiment.instances=2", "experiment.heldout_instances=1",
    "experiment.init=previous",
    "classifiers=[{arch: small_cnn, seeds: [0], role: target, options: {width: 8}}]",
    "classifier_training.n_real=64", "classifier_training.n_fake=64",
    "classifier_training.epochs=1", "classifier_training.batch_size=32",
    "evaluation.n_fake=32", "evaluation.n_real=32", "evaluation.fid=none",
    "evaluation.bootstrap=0",
]


@pytest.mark.skipif(not FACES.is_dir(), reason=f"faces not found under {FACES}")
def test_iteration0_from_nvidia_networks_then_init_previous(converted: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    files = f"experiment.iteration0_from=[{converted}, {converted}]"
    rc = cli.main(["run", str(ROOT / "configs" / "ffhq-stylegan2-64.yaml"), f"data.path={FACES}",
                   *TINY_RUN, *FIXTURE_GAN, files, "--out", str(out), "--quiet"])
    assert rc == 0
    fixture_g = _ref("G_state_dict.pt")
    for n in (0, 1):
        gen = out / "iter_00" / f"gen_{n:02d}"
        assert (gen / "DONE").exists()
        assert not (gen / "log.jsonl").exists()  # not trained
        G = load_generator(gen / "checkpoint.safetensors")
        assert all(torch.equal(G.state_dict()[k], v) for k, v in fixture_g.items())
        assert (gen / "samples.png").stat().st_size > 100
    # iteration 1 trained 2 steps from the NVIDIA weights (init: previous), not from scratch
    G1 = load_generator(out / "iter_01" / "gen_00" / "checkpoint.safetensors").state_dict()
    assert (out / "iter_01" / "gen_00" / "log.jsonl").is_file()
    key = "synthesis.b32.conv1.weight"
    moved = (G1[key] - fixture_g[key]).abs().mean()
    assert 0 < moved < 0.1 * fixture_g[key].abs().mean()
    assert (out / "report" / "results.json").is_file()


@pytest.mark.skipif(not FACES.is_dir(), reason=f"faces not found under {FACES}")
def test_iteration0_from_refuses_a_network_the_run_cannot_continue(converted: Path,
                                                                   tmp_path: Path,
                                                                   capsys) -> None:
    files = f"experiment.iteration0_from=[{converted}, {converted}]"
    other = [a.replace("channel_max: 128", "channel_max: 64") for a in FIXTURE_GAN]
    rc = cli.main(["run", str(ROOT / "configs" / "ffhq-stylegan2-64.yaml"), f"data.path={FACES}",
                   *TINY_RUN, *other, files, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "init=previous" in err and err.count("\n") == 1


def test_iteration0_from_config_checks() -> None:
    path = ROOT / "configs" / "mnist-dcgan.yaml"
    with pytest.raises(UserError, match="one per instance"):
        load_config(path, ["experiment.iteration0_from=[a.safetensors]"])
    with pytest.raises(UserError, match="set one"):
        load_config(path, ["experiment.instances=2", "experiment.heldout_instances=1",
                           "experiment.iteration0_from=[a, b]", "experiment.reuse_iteration0=r"])
