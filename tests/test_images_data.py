"""Image datasets: prepare_data on folders and zips with broken files, and loading back."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gangaps.data.images import load_image_dataset, prepare_data, read_cache_meta
from gangaps.errors import UserError
from tests.conftest import DATA

FACES = DATA / "faces_ffhq256_subset" / "real"

pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason="shared face images not available")

N_FACES = 5


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """5 real faces (one in a subfolder), a corrupt .jpg, a truncated .jpg, a gray non-square
    PNG (64×32, left half black, right half white) and a text file that must be ignored."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    faces = sorted(FACES.glob("*.jpg"))[:N_FACES]
    for f in faces[:-1]:
        shutil.copy(f, root / f.name)
    shutil.copy(faces[-1], root / "sub" / faces[-1].name)
    (root / "corrupt.jpg").write_bytes(b"this is not a jpeg at all")
    data = faces[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    arr = np.zeros((32, 64), dtype=np.uint8)
    arr[:, 32:] = 255
    Image.fromarray(arr).save(root / "wide.png")
    (root / "README.txt").write_text("not an image")
    return root


def _check(summary: dict, cache: Path, resolution: int) -> torch.Tensor:
    assert summary["found"] == N_FACES + 3
    assert summary["written"] == N_FACES + 1
    assert summary["skipped"] == 2
    assert sorted(Path(s["name"]).name for s in summary["skipped_files"]) == \
        ["corrupt.jpg", "truncated.jpg"]
    assert cache.is_file()
    on_disk = json.loads(cache.with_suffix(".json").read_text())
    assert on_disk["written"] == N_FACES + 1 and on_disk["skipped"] == 2
    images = load_image_dataset(cache, resolution, 3)
    assert images.dtype == torch.uint8 and images.shape == (N_FACES + 1, 3, resolution, resolution)
    return images


def test_prepare_folder(src: Path, tmp_path: Path) -> None:
    summary = prepare_data(src, tmp_path / "out", 16, progress=False)
    cache = tmp_path / "out" / "images-16.safetensors"
    assert summary["cache"] == str(cache)
    images = _check(summary, cache, 16)
    # Sorted relative paths: sub/<face> comes after the top-level files, wide.png last.
    wide = images[-1].float()
    assert torch.equal(wide[0], wide[1]) and torch.equal(wide[1], wide[2])  # gray forced to RGB
    # Centre crop of the 64×32 image keeps columns 16..47: left half black, right half white.
    assert wide[:, :, :6].max() < 30 and wide[:, :, -6:].min() > 225
    # Real faces are colour images: channels differ.
    assert (images[0, 0].float() - images[0, 2].float()).abs().mean() > 5
    # A folder holding images-R.safetensors loads from the cache.
    assert torch.equal(load_image_dataset(tmp_path / "out", 16, 3), images)
    assert read_cache_meta(cache)["resize_filter"] == "lanczos"


def test_prepare_zip_matches_folder(src: Path, tmp_path: Path) -> None:
    zpath = tmp_path / "faces.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
    zsum = prepare_data(zpath, tmp_path / "z.safetensors", 16, progress=False)
    fsum = prepare_data(src, tmp_path / "f.safetensors", 16, progress=False)
    zimg = _check(zsum, tmp_path / "z.safetensors", 16)
    fimg = _check(fsum, tmp_path / "f.safetensors", 16)
    assert torch.equal(zimg, fimg)


def test_no_center_crop_squashes(src: Path, tmp_path: Path) -> None:
    prepare_data(src, tmp_path / "s.safetensors", 16, center_crop=False, resize_filter="box",
                 progress=False)
    wide = load_image_dataset(tmp_path / "s.safetensors", 16, 3)[-1].float()
    # Whole 64-px width squashed into 16: the black/white edge moves to the middle.
    assert wide[:, :, :7].max() < 30 and wide[:, :, 9:].min() > 225


def test_raw_folder_matches_cache_and_gray(src: Path, tmp_path: Path) -> None:
    prepare_data(src, tmp_path / "c.safetensors", 16, progress=False)
    with pytest.warns(UserWarning, match="skipped 2"):
        raw = load_image_dataset(src, 16, 3)
    assert torch.equal(raw, load_image_dataset(tmp_path / "c.safetensors", 16, 3))
    with pytest.warns(UserWarning):
        gray = load_image_dataset(src, 16, 1)
    assert gray.shape == (N_FACES + 1, 1, 16, 16)


def test_errors(src: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_image_dataset(tmp_path / "missing", 32, 3)
    with pytest.raises(UserError, match="data.path is required"):
        load_image_dataset(None, 32, 3)
    with pytest.raises(UserError, match="source not found"):
        prepare_data(tmp_path / "missing", tmp_path / "x", 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        load_image_dataset(empty, 32, 3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could be decoded"):
        prepare_data(broken, tmp_path / "b", 32, progress=False)
    assert not (tmp_path / "b").exists()  # nothing half-written
    prepare_data(src, tmp_path / "c.safetensors", 16, progress=False)
    with pytest.raises(UserError, match="prepared at 16"):
        load_image_dataset(tmp_path / "c.safetensors", 32, 3)
    with pytest.raises(UserError, match="resize_filter"):
        prepare_data(src, tmp_path / "d", 16, resize_filter="nearest-ish", progress=False)
