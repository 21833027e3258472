"""A prepared image cache is memory-mapped, verified once per file version, and read lazily.

The cache is the same safetensors file `prepare-data` always wrote, so caches prepared before
this change load unchanged; what changed is that the images are a copy-on-write map of the
file (batches read only their pages, processes share the page cache) and the whole-file
checksum is checked on the first load only, recorded in `<cache>.verified.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gangaps.data.images import load_image_dataset, prepare_data
from gangaps.errors import CorruptFile, UserError
from gangaps.io import load_tensors

RES = 16


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(src / f"{i:02}.png")
    prepare_data(src, tmp_path / "prep", RES, progress=False)
    return tmp_path / "prep" / f"images-{RES}.safetensors"


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def test_cache_is_mapped_equal_and_copy_on_write(cache: Path) -> None:
    whole = load_tensors(cache)[0]["images"].clone()  # the old, fully read path
    images = load_image_dataset(cache.parent, RES, 3)  # a folder holding the cache
    assert _mapped(cache)
    assert images.dtype == torch.uint8 and torch.equal(images, whole)
    before = cache.read_bytes()
    images[0].zero_()  # a private page: the file is never written through the map
    assert cache.read_bytes() == before
    assert torch.equal(load_image_dataset(cache, RES, 3), whole)


def test_checksum_is_verified_once_per_file_version(cache: Path) -> None:
    sidecar = cache.with_name(cache.name + ".verified.json")
    assert not sidecar.exists()  # a cache as prepare-data writes it (and always wrote it)
    load_image_dataset(cache, RES, 3)
    st = cache.stat()
    assert json.loads(sidecar.read_text()) == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                               "inode": st.st_ino}
    # Flip one image byte in place and put the timestamp back: same key, so the next load
    # trusts the record and does not re-read the file (the point of verifying once).
    data = bytearray(cache.read_bytes())
    data[-1] ^= 0xFF
    with open(cache, "r+b") as f:
        f.write(data)
    os.utime(cache, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_image_dataset(cache, RES, 3)[-1, -1, -1, -1] == data[-1]
    # Any ordinary change of the file (a new mtime) is verified again and refused.
    os.utime(cache, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CorruptFile, match="checksum mismatch"):
        load_image_dataset(cache, RES, 3)


def test_a_truncated_cache_is_refused(cache: Path) -> None:
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError):  # one line, never a traceback
        load_image_dataset(cache, RES, 3)
