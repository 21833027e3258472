"""Small CLI tools: NVIDIA weight conversion, data preparation, help texts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gangaps.cli import main
from gangaps.models.stylegan2_import import load_converted
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]

FIXTURE = SHARED / "fixtures" / "stylegan2_reference"
FACES = SHARED / "data" / "faces_ffhq256_subset" / "real"


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="NVIDIA fixture absent")
def test_convert_nvidia_reproduces_the_reference_images(tmp_path):
    out = tmp_path / "converted.safetensors"
    assert main(["convert-nvidia", str(FIXTURE / "G_state_dict.pt"), str(FIXTURE / "D_state_dict.pt"),
                 str(FIXTURE / "config.json"), str(out)]) == 0
    G, D = load_converted(out)
    ref = torch.load(FIXTURE / "reference_io.pt", weights_only=True)
    with torch.no_grad():
        img = G.synthesis(G.mapping(ref["z"]), noise_mode="const")
    assert (img - ref["img"]).abs().max() / ref["img"].abs().max() < 1e-4


def test_convert_nvidia_bad_input_is_one_line(tmp_path, capsys):
    assert main(["convert-nvidia", str(tmp_path / "G.pt"), str(tmp_path / "D.pt"),
                 str(tmp_path / "c.json"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gangaps: error:")


@pytest.mark.skipif(not FACES.is_dir(), reason="faces absent")
def test_prepare_data_command(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(FACES.glob("*.jpg"))[:12]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    dst = tmp_path / "cache.safetensors"
    assert main(["prepare-data", str(src), str(dst), "--resolution", "32", "--quiet"]) == 0
    from gangaps.data.images import load_image_dataset
    images = load_image_dataset(dst, 32, 3)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8
    out = capsys.readouterr().out
    assert "12" in out and "1" in out


@pytest.mark.parametrize("command", ["run", "demo", "sweep", "status", "report", "prepare-data",
                                     "convert-nvidia", "train-classifier", "evaluate-classifier"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 200




def test_overrides_may_follow_options(capsys):
    assert main(["run", str(ROOT / "configs/mnist-dcgan.yaml"), "--dry-run", "gan.lr=3e-3"]) == 0
    assert "lr: 0.003" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["run", str(ROOT / "configs/mnist-dcgan.yaml"), "--dry-run", "--bogus"])
    assert e.value.code == 2
