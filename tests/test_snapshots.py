"""Snapshots during training (gan.snapshot_kimg): grids and kept networks at the interval,
the same training numbers with snapshots on or off, and a crash in between loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from gangaps.config import Config, from_dict
from gangaps.data.images import load_image_dataset
from gangaps.generators import generate, load_generator
from gangaps.io import load_state
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator, train_generators
from gangaps.train.snapshots import SNAPSHOTS
from tests.conftest import DATA

FACES = DATA / "faces_ffhq256_subset" / "real"
pytestmark = [pytest.mark.skipif(not FACES.is_dir(), reason="shared face images not available"),
              pytest.mark.usefixtures("one_thread")]

RES, BATCH = 16, 8
CPU = torch.device("cpu")
TINY = {"w_dim": 16, "channel_base": 128, "channel_max": 16, "mapping_layers": 1}


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return load_image_dataset(FACES, RES, 3)[:128]


def _cfg(steps: int, snap_steps: int, kept: int = 2, family: str = "stylegan2") -> Config:
    kimg = lambda s: s * BATCH / 1000  # noqa: E731
    options = TINY if family == "stylegan2" else {}
    return from_dict({"gan": {"family": family, "kimg": kimg(steps), "batch_size": BATCH,
                              "z_dim": 16, "options": options, "sample_grid": 4,
                              "log_kimg": kimg(4), "checkpoint_kimg": kimg(1000),
                              "snapshot_kimg": kimg(snap_steps), "snapshots_kept": kept}})


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / SNAPSHOTS).iterdir())


def test_stylegan2_snapshots_at_the_interval(faces: torch.Tensor, tmp_path: Path) -> None:
    train_generator(GeneratorJob(tmp_path / "on", seed=1), _cfg(12, 4), faces, CPU, progress=False)
    assert _files(tmp_path / "on") == ["network-000008.safetensors", "network-000012.safetensors",
                                       "snapshot-000004.png", "snapshot-000008.png",
                                       "snapshot-000012.png"]
    # the last snapshot network is the final generator; its grid is from the fixed latents
    final = load_generator(tmp_path / "on" / CHECKPOINT)
    snap = load_generator(tmp_path / "on" / SNAPSHOTS / "network-000012.safetensors")
    grid = generate(snap, 4, seed=0)
    assert torch.equal(grid, generate(final, 4, seed=0))
    with Image.open(tmp_path / "on" / SNAPSHOTS / "snapshot-000012.png") as im:
        assert im.size[0] > RES  # a 2×2 grid
    # snapshots change nothing in training: same weights as without them
    train_generator(GeneratorJob(tmp_path / "off", seed=1), _cfg(12, 0), faces, CPU, progress=False)
    on, off = load_state(tmp_path / "on" / CHECKPOINT), load_state(tmp_path / "off" / CHECKPOINT)
    assert all(torch.equal(on["nets"][k], off["nets"][k]) for k in off["nets"])
    assert not (tmp_path / "off" / SNAPSHOTS).exists()


def test_a_crash_between_checkpoint_and_snapshot_is_resumed(faces: torch.Tensor, tmp_path: Path,
                                                             monkeypatch) -> None:
    import gangaps.train.gan as gan
    cfg = _cfg(12, 4, kept=0)
    train_generator(GeneratorJob(tmp_path / "whole", seed=2), cfg, faces, CPU, progress=False)

    class Killed(Exception):
        pass

    real = gan.write_snapshot

    def dying(state, *args, **kw):
        if state.step == 8:  # the checkpoint of step 8 is written, its snapshot not
            raise Killed
        real(state, *args, **kw)

    monkeypatch.setattr(gan, "write_snapshot", dying)
    with pytest.raises(Killed):
        train_generator(GeneratorJob(tmp_path / "split", seed=2), cfg, faces, CPU, progress=False)
    assert _files(tmp_path / "split") == ["network-000004.safetensors", "snapshot-000004.png"]
    monkeypatch.setattr(gan, "write_snapshot", real)
    train_generator(GeneratorJob(tmp_path / "split", seed=2), cfg, faces, CPU, progress=False)
    assert _files(tmp_path / "split") == _files(tmp_path / "whole")
    for name in _files(tmp_path / "whole"):
        if name.endswith(".png"):
            assert (tmp_path / "split" / SNAPSHOTS / name).read_bytes() == \
                (tmp_path / "whole" / SNAPSHOTS / name).read_bytes(), name


def test_dcgan_single_instance_snapshots(tmp_path: Path) -> None:
    digits = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    train_generator(GeneratorJob(tmp_path, seed=0), _cfg(6, 3, family="dcgan"), digits, CPU,
                    progress=False)
    assert _files(tmp_path) == ["network-000003.safetensors", "network-000006.safetensors",
                                "snapshot-000003.png", "snapshot-000006.png"]


def test_fused_dcgan_group_writes_per_instance_snapshots(tmp_path: Path) -> None:
    digits = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    cfg = _cfg(6, 3, family="dcgan")
    jobs = [GeneratorJob(tmp_path / f"gen_{i:02}", seed=i) for i in range(2)]
    train_generators(jobs, cfg, digits, CPU, progress=False, group_dir=tmp_path / "group")
    for job in jobs:
        assert _files(job.out_dir) == ["network-000003.safetensors", "network-000006.safetensors",
                                       "snapshot-000003.png", "snapshot-000006.png"]
    # each instance's last snapshot is that instance's own final generator, not the group's
    grids = [generate(load_generator(job.out_dir / SNAPSHOTS / "network-000006.safetensors"), 4, 0)
             for job in jobs]
    for job, grid in zip(jobs, grids, strict=True):
        assert torch.equal(grid, generate(load_generator(job.out_dir / CHECKPOINT), 4, seed=0))
    assert not torch.equal(grids[0], grids[1])
