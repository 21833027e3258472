"""Image datasets (FFHQ-style faces): a folder or zip of images, or a prepared uint8 cache.

`prepare_data` decodes every image once (RGB forced, centre crop to square, resize with a
named PIL filter, as NVIDIA's dataset_tool does for FFHQ) and writes one checksummed
safetensors file of uint8 [N, C, R, R] plus a JSON summary; unreadable files (truncated,
corrupt, under MIN_SIDE or over MAX_PIXELS) are listed and skipped, never fatal. 16-bit images
keep their top 8 bits; transparent pixels are composited onto black. A zip whose member names
leave the archive (`../`, absolute paths) is refused whole.
`load_image_dataset` memory-maps such a cache (its checksum verified once per file version,
recorded in a sidecar) or, failing that, decodes a folder or zip on
the fly with the same pipeline (slow: every run pays the decoding).

Images are ordered by their relative path, so the same files give the same tensor (and the
same held-out split) on every machine.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import safe_open
from tqdm.auto import tqdm

from gangaps.errors import CorruptFile, UserError
from gangaps.io import atomic_write_json, save_tensors, verify_file

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}
_META_KEY = "gangaps_images"
_TENSOR_KEY = "images"
_CHUNK = 256  # images decoded per batch of worker tasks (bounds memory held as raw bytes)
MIN_SIDE = 8  # smaller images carry nothing to learn from (a 1×1 "face")
MAX_PIXELS = 8192 * 8192  # decompression-bomb guard, checked from the header before decoding
_MAX_MEMBER = 512 * 2**20  # zip members larger than this (uncompressed) are skipped
# PIL warns (and later raises) past its own limit while reading a header; MAX_PIXELS decides.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def cache_name(resolution: int) -> str:
    """File name of a prepared cache inside a destination folder."""
    return f"images-{resolution}.safetensors"


# ----------------------------------------------------------------------------- sources


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _list_source(src: Path) -> tuple[list[str], Callable[[str], bytes], Callable[[], None]]:
    """Image names (sorted relative paths), a reader of one name's bytes, and a closer."""
    if src.is_dir():
        names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                       if p.is_file() and _is_image(p.name))
        return names, lambda n: (src / n).read_bytes(), lambda: None
    if zipfile.is_zipfile(src):
        try:
            zf = zipfile.ZipFile(src)
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise UserError(f"{src}: damaged zip ({e})") from None
        for i in infos:
            parts = i.filename.replace("\\", "/").split("/")
            if i.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                zf.close()
                raise UserError(f"{src}: member {i.filename!r} points outside the archive; "
                                "refusing the zip")
        sizes = {i.filename: i.file_size for i in infos}
        names = sorted(i.filename for i in infos
                       if not i.is_dir() and _is_image(i.filename)
                       and not i.filename.startswith("__MACOSX/"))

        def read(name: str) -> bytes:
            if sizes[name] > _MAX_MEMBER:
                raise UserError(f"{sizes[name]} bytes uncompressed (> {_MAX_MEMBER})")
            return zf.read(name)

        return names, read, zf.close
    raise UserError(f"{src}: not a folder, zip or prepared .safetensors cache of images")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float gray scaled to 8 bits, alpha onto black."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16)
        im = Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8), "L")
    if im.mode == "P" or "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")  # gray, CMYK, YCbCr, LAB: one colour model for all


def decode_image(data: bytes, resolution: int | None, center_crop: bool = True,
                 resample: Image.Resampling = Image.Resampling.LANCZOS,
                 channels: int = 3) -> np.ndarray:
    """bytes -> uint8 [R, R, C] (resolution None: the native pixels, no resampling). UserError
    (one line) for anything that is not a usable image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{w}×{h} px is over the {MAX_PIXELS} pixel limit")
            if min(w, h) < MIN_SIDE:
                raise UserError(f"{w}×{h} px is under {MIN_SIDE} px")
            im.load()  # decode fully now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)  # phone photos: respect the stored orientation
            im = _to_rgb(im)
    except UserError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"not a readable image ({msg})") from None
    return _fit(im, resolution, center_crop, resample, channels)


def _fit(im: Image.Image, resolution: int | None, center_crop: bool, resample: Image.Resampling,
         channels: int) -> np.ndarray:
    """An RGB PIL image -> uint8 [R, R, C]: centre crop, resize (unless None), channels."""
    if center_crop and im.width != im.height:
        s = min(im.width, im.height)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if resolution is not None and im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), resample)
    if channels == 1:
        im = im.convert("L")
    arr = np.array(im, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return arr[:, :, None] if arr.ndim == 2 else arr


def resize_images(images: list[torch.Tensor] | torch.Tensor, resolution: int,
                  channels: int) -> torch.Tensor:
    """uint8 [C, S, S] images (C = 1 or 3, any S) -> uint8 [N, channels, R, R], with exactly
    the steps `decode_image` takes for an image file of those pixels (RGB, Lanczos resize,
    gray last), so resizing decoded or generated pixels gives what the file would."""
    out = torch.empty(len(images), channels, resolution, resolution, dtype=torch.uint8)
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
        out[i] = torch.from_numpy(_fit(im, resolution, True, Image.Resampling.LANCZOS,
                                       channels)).permute(2, 0, 1)
    return out


def _decode_all(src: Path, resolution: int, channels: int, center_crop: bool,
                resize_filter: str, progress: bool
                ) -> tuple[torch.Tensor, int, list[dict[str, str]]]:
    """Decode every image of a folder/zip: (uint8 [N, C, R, R], images found, skipped)."""
    if resize_filter not in FILTERS:
        raise UserError(f"resize_filter={resize_filter!r}; known: {', '.join(FILTERS)}")
    names, read, close = _list_source(src)
    if not names:
        close()
        raise UserError(f"{src}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    resample = FILTERS[resize_filter]
    out = torch.empty(len(names), channels, resolution, resolution, dtype=torch.uint8)
    skipped: list[dict[str, str]] = []
    n_ok = 0

    def work(item: tuple[str, bytes | Exception]) -> np.ndarray | Exception:
        name, data = item
        if isinstance(data, Exception):
            return data
        try:
            return decode_image(data, resolution, center_crop, resample, channels)
        except Exception as e:  # any decoder failure means "skip this file", never a crash
            return e

    def chunks() -> Iterator[list[tuple[str, bytes | Exception]]]:
        for i in range(0, len(names), _CHUNK):
            batch: list[tuple[str, bytes | Exception]] = []
            for name in names[i:i + _CHUNK]:
                try:
                    batch.append((name, read(name)))
                except Exception as e:  # unreadable file or damaged zip member
                    batch.append((name, e))
            yield batch

    # PIL releases the GIL while decoding and resizing, so threads use every core.
    workers = max(1, min(8, os.cpu_count() or 1))
    bar = tqdm(total=len(names), desc=f"images {src.name}", unit="img", disable=not progress,
               leave=False, dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for batch in chunks():
                for (name, _), res in zip(batch, pool.map(work, batch), strict=True):
                    if isinstance(res, Exception):
                        msg = str(res).splitlines()[0] if str(res) else type(res).__name__
                        skipped.append({"name": name, "error": msg})
                    else:
                        out[n_ok] = torch.from_numpy(res).permute(2, 0, 1)
                        n_ok += 1
                bar.update(len(batch))
    finally:
        bar.close()
        close()
    return out[:n_ok].clone() if n_ok < len(names) else out, len(names), skipped


# ----------------------------------------------------------------------------- cache


def _write_cache(path: Path, images: torch.Tensor, meta: dict[str, Any]) -> None:
    """Checksummed safetensors, written to a temporary name in the same folder, then renamed."""
    save_tensors(path, {_TENSOR_KEY: images.contiguous()}, {_META_KEY: json.dumps(meta)})


def read_cache_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a prepared cache (raises UserError if `path` is not one)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        raise UserError(f"{path}: not a readable safetensors file") from None
    if _META_KEY not in meta:
        raise UserError(f"{path}: not an image cache written by gangaps prepare-data")
    try:
        out = json.loads(meta[_META_KEY])
        int(out["resolution"]), int(out["channels"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: damaged image cache metadata") from None
    return out


def _verified_once(path: Path) -> None:
    """Check the cache's checksum once per file version, not on every start.

    A full read of a 14 GB cache on every start of every rank is what this avoids: the first
    load verifies the whole file and records (size, mtime, inode, stored checksum) in a sidecar
    `<cache>.verified.json`; later loads of the same file version trust that record. A rewrite
    or copy of the cache changes the key, so it is verified again.
    """
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    sidecar = path.with_name(path.name + ".verified.json")
    try:
        if json.loads(sidecar.read_text()) == key:
            return
    except (OSError, ValueError):
        pass
    problem = verify_file(path)
    if problem is not None:
        raise CorruptFile(path, problem)
    try:
        atomic_write_json(sidecar, key)
    except OSError:  # a read-only data folder: verify again next time, still correct
        pass


def _load_cache(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """The cache's uint8 [N, C, R, R] tensor, memory-mapped (not read into RAM).

    Batches gather only the pages they touch; processes on one node share the page cache.
    The map is copy-on-write, so nothing can write through to the file.
    """
    meta = read_cache_meta(path)
    if meta["resolution"] != resolution or meta["channels"] != channels:
        raise UserError(f"{path}: prepared at {meta['resolution']} px × {meta['channels']} "
                        f"channels, but data.resolution={resolution} data.channels={channels}; "
                        "prepare it again or change the config")
    _verified_once(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        entry = header[_TENSOR_KEY]
        start, end = entry["data_offsets"]
        shape = tuple(int(d) for d in entry["shape"])
        ok = entry["dtype"] == "U8" and len(shape) == 4 and end - start == math.prod(shape)
    except (OSError, ValueError, KeyError, TypeError):
        raise CorruptFile(path, "not a readable image cache (re-run gangaps prepare-data)") from None
    if not ok or shape[1:] != (channels, resolution, resolution):
        raise UserError(f"{path}: image tensor has unexpected shape {list(shape)} / "
                        f"dtype {entry['dtype']}; re-run gangaps prepare-data")
    if not shape[0]:
        return torch.empty(shape, dtype=torch.uint8)
    arr = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + n + start, shape=shape)
    return torch.from_numpy(arr)


# ----------------------------------------------------------------------------- public API


def load_image_dataset(path: str | Path | None, resolution: int, channels: int) -> torch.Tensor:
    """uint8 [N, C, R, R] from a prepared cache (a .safetensors file, or a folder holding
    `images-R.safetensors`) or else from a folder (recursive) or zip of images."""
    if path is None:
        raise UserError("data.path is required for data.dataset=images "
                        "(e.g. data.path=/data/ffhq: a folder, zip or prepared cache)")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data.path not found: {p}")
    if p.is_file() and p.suffix == ".safetensors":
        return _load_cache(p, resolution, channels)
    if p.is_dir() and (p / cache_name(resolution)).is_file():
        return _load_cache(p / cache_name(resolution), resolution, channels)
    images, found, skipped = _decode_all(p, resolution, channels, center_crop=True,
                                         resize_filter="lanczos", progress=False)
    if not len(images):
        raise UserError(f"{p}: none of the {found} image files could be decoded")
    if skipped:
        warnings.warn(f"{p}: skipped {len(skipped)} unreadable image(s) of {found}, e.g. "
                      f"{skipped[0]['name']} ({skipped[0]['error']})", stacklevel=2)
    return images


def prepare_data(src: str | Path, dst: str | Path, resolution: int, center_crop: bool = True,
                 resize_filter: str = "lanczos", channels: int = 3,
                 progress: bool = True) -> dict[str, Any]:
    """Decode a folder (recursive) or zip of images of any size into a uint8 cache.

    dst: a `.safetensors` file, or a folder (the cache is then `dst/images-R.safetensors`).
    Writes the cache and a JSON summary beside it (same name, `.json`), both atomically, and
    returns the summary: counts found/written/skipped and the skipped files with reasons.
    """
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    if resolution < 1:
        raise UserError(f"resolution must be positive, got {resolution}")
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    if not src_p.exists():
        raise UserError(f"source not found: {src_p}")
    cache = dst_p if dst_p.suffix == ".safetensors" else dst_p / cache_name(resolution)
    t0 = time.perf_counter()
    images, found, skipped = _decode_all(src_p, resolution, channels, center_crop,
                                         resize_filter, progress)
    if not len(images):
        raise UserError(f"{src_p}: none of the {found} image files could be decoded "
                        f"(first error: {skipped[0]['name']}: {skipped[0]['error']})")
    summary: dict[str, Any] = {
        "source": str(src_p), "cache": str(cache), "resolution": resolution,
        "channels": channels, "center_crop": center_crop, "resize_filter": resize_filter,
        "found": found, "written": len(images), "skipped": len(skipped),
        "skipped_files": skipped, "seconds": round(time.perf_counter() - t0, 2),
    }
    meta = {k: summary[k] for k in ("source", "resolution", "channels", "center_crop",
                                     "resize_filter", "found", "written", "skipped")}
    _write_cache(cache, images, meta)
    atomic_write_json(cache.with_suffix(".json"), summary)
    return summary


def load_native_images(path: str | Path, channels: int) -> list[torch.Tensor]:
    """Every image of a folder (recursive) or zip at its own pixels: uint8 [C, S, S] each,
    centre-cropped to square but never resampled (sides may differ between files), in name
    order. A prepared cache (a .safetensors file, or a folder holding only caches) has no
    other pixels than its own: its images at its resolution (the largest cache of a folder)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"not found: {p}")
    caches = sorted(p.glob("images-*.safetensors")) if p.is_dir() else []
    if p.is_dir() and caches and not any(f.is_file() and _is_image(f.name) for f in p.rglob("*")):
        p = max(caches, key=lambda c: read_cache_meta(c)["resolution"])
    if p.is_file() and p.suffix == ".safetensors":
        meta = read_cache_meta(p)
        return list(_load_cache(p, int(meta["resolution"]), channels))
    names, read, close = _list_source(p)
    if not names:
        close()
        raise UserError(f"{p}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")

    def work(data: bytes | None) -> torch.Tensor | None:
        try:
            return torch.from_numpy(decode_image(data, None, True, channels=channels)).permute(2, 0, 1)
        except Exception:  # as in prepare_data: an unreadable file is skipped, never fatal
            return None

    def read_or_none(name: str) -> bytes | None:
        try:
            return read(name)
        except Exception:
            return None

    out: list[torch.Tensor] = []
    try:  # bytes read here, in chunks (a zip is read by one thread), decoded by the pool
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for i in range(0, len(names), _CHUNK):
                datas = [read_or_none(n) for n in names[i:i + _CHUNK]]
                out += [x for x in pool.map(work, datas) if x is not None]
    finally:
        close()
    if not out:
        raise UserError(f"{p}: none of the {len(names)} image files could be decoded")
    if len(out) < len(names):
        warnings.warn(f"{p}: skipped {len(names) - len(out)} unreadable image(s) of {len(names)}",
                      stacklevel=2)
    return out
