"""MNIST from the four official idx files: a local folder first, the official mirrors otherwise.

Images come back as uint8 tensors [N, 28, 28]; `to_model_range` maps them to [-1, 1] floats
[N, 1, 28, 28], the range every generator and classifier in gangaps works in.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import torch

from gangaps.errors import UserError

FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
ENV_ROOT = "GANGAPS_DATA_ROOT"  # a folder holding mnist/ (or the idx files themselves)


def default_root() -> Path:
    return Path(os.environ.get(ENV_ROOT, Path.home() / ".cache" / "gangaps" / "data"))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def find_mnist(root: str | Path | None = None, download: bool = False) -> Path:
    """The folder holding the idx files: `root`, `root/mnist` or `root/MNIST/raw`."""
    root = Path(root) if root is not None else default_root()
    for cand in (root, root / "mnist", root / "MNIST" / "raw"):
        if all((cand / f).exists() for f in FILES):
            return cand
    if not download:
        raise UserError(f"MNIST idx files not found under {root} (looked in ., mnist/, MNIST/raw/); "
                        "pass --data-root or set data.download=true")
    return download_mnist(root / "mnist")


def download_mnist(folder: Path) -> Path:
    """Fetch the official files, verifying every MD5 before it is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in FILES.items():
        target = folder / name
        if target.exists() and _md5(target) == md5:
            continue
        for mirror in MIRRORS:
            tmp = target.with_suffix(".part")
            try:
                urllib.request.urlretrieve(mirror + name, tmp)
            except OSError:
                continue
            if _md5(tmp) == md5:
                tmp.replace(target)
                break
            tmp.unlink(missing_ok=True)
        else:
            raise UserError(f"could not download {name} with a matching MD5 from {', '.join(MIRRORS)}")
    return folder


_MAX_BYTES = 2**31  # far above MNIST's 47 MB; bounds what a forged header can make us read


def parse_idx(data: bytes, name: str = "idx data") -> torch.Tensor:
    """Decompressed idx bytes -> uint8 tensor; UserError for anything but a well-formed file."""
    if len(data) < 4:
        raise UserError(f"{name}: truncated idx file ({len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise UserError(f"{name}: not an idx file of uint8 (magic {data[:4].hex()}, "
                        "expected 000008 then the number of dimensions)")
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{name}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    n = 1
    for d in shape:
        n *= d
    body = len(data) - 4 - 4 * ndim
    if n == 0:
        raise UserError(f"{name}: header says {list(shape)}, an empty array")
    if n != body:
        raise UserError(f"{name}: header says {list(shape)} ({n} bytes) but the file holds "
                        f"{body}; {'truncated' if body < n else 'wrong size'}")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).view(*shape)


def _read_idx(path: Path) -> torch.Tensor:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable gzip file ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'truncated'})") from None
    if len(data) > _MAX_BYTES:
        raise UserError(f"{path}: decompresses to more than {_MAX_BYTES} bytes; not MNIST")
    return parse_idx(data, str(path))


def load_mnist(split: str, root: str | Path | None = None,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) for split 'train' (60k) or 'test' (10k)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = find_mnist(root, download)
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    images = _read_idx(images_path)
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").long()
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or len(images) == 0:
        raise UserError(f"{images_path}: expected N 28×28 images, got shape {list(images.shape)}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise UserError(f"{folder}: {len(images)} {split} images but labels of shape "
                        f"{list(labels.shape)}")
    return images, labels


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] (or [N, 1, 28, 28]) -> float [N, 1, 28, 28] in [-1, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.float().div(127.5).sub(1.0)
