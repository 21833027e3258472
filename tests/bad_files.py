"""Hostile and broken input files, made on the spot (tests/test_bad_inputs.py, fuzzing)."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.robustness import DATA

MNIST = DATA / "mnist"
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def face(seed: int = 0, side: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny file whose header claims width×height (a decompression bomb's header)."""
    data = bytearray(png(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = jpeg(face(1))
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    data = bytearray(jpeg(face(2)))
    data[200:400] = b"\xff" * 200  # markers where entropy-coded data should be
    return bytes(data[:2]) + b"garbage" + bytes(data[2:])


def folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def zip_with(path: Path, names: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in names.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def mnist_folder(root: Path, replace: dict[str, bytes]) -> Path:
    """The real MNIST files (links), some replaced by `replace` (name -> gzipped bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in IDX:
        if name in replace:
            (root / name).write_bytes(replace[name])
        else:
            (root / name).symlink_to(MNIST / name)
    return root


def idx_gz(magic: bytes, dims: tuple[int, ...], body: bytes) -> bytes:
    return gzip.compress(magic + b"".join(struct.pack(">I", d) for d in dims) + body)


BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["name: *i"]) + "\n"


def python_tag_yaml(marker: Path) -> str:
    return f"name: !!python/object/apply:os.system ['touch {marker}']\n"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def payload(t: Path) -> bytes:
    """A pickle that would create t/PWNED if anything unpickled it unsafely."""
    import pickle
    return pickle.dumps({"model": _Payload(t / "PWNED")})
