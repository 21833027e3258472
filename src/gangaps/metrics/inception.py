"""Inception FID and KID with torch-fidelity's TF-exact feature extractor, offline.

Features come from torch-fidelity's `FeatureExtractorInceptionV3` ("inception-v3-compat", pool
layer "2048"): uint8 RGB in, TF1-exact bilinear resize to 299 inside the network, so values
match torch-fidelity / TTUR for the same images and weights. Statistics follow torch-fidelity
(`fid_features_to_statistics`: float32 features, np.cov) and KID is its own
`kid_features_to_metric` (polynomial kernel, subsets of min(1000, N), seed 2020), the Fréchet
distance its `fid_statistics_to_metric`, precision/recall its `prc_features_to_metric` (k = 3,
on these Inception features: torch-fidelity's own default for prc is VGG16). One exception, for
speed: with fewer images than feature dimensions the covariances are singular and the distance
is computed exactly from the N1 x N2 cross matrix (`frechet_distance_features`; the same value
to ~1e-7, tested), not by eigvals of a 2048 x 2048 product (a minute on 2 CPU cores).

Weights: a local file when given (`evaluation.inception_weights=FILE`, preferred); otherwise
torch-fidelity's standard file, fetched once from its release URL into the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`, where torch-fidelity's own download puts it, so either tool
finds the other's copy). Without network that is one line naming the URL and the FILE
alternative. Real-image statistics are cached per content hash, count, resolution and weights
MD5, so a stale cache cannot be hit.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gangaps.errors import UserError
from gangaps.io import load_state, save_state
from gangaps.metrics.frechet import frechet_distance_features

WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")
CONFIG_KEY = "evaluation.inception_weights"
EXTRACTOR = "inception-v3-compat"
FEATURE_LAYER = "2048"
OFFICIAL_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries it
IMAGE_EXTS = (".png", ".jpg", ".jpeg")  # torch-fidelity's default samples_find_ext

ImageSource = torch.Tensor | str | Path | Callable[[], Iterable[torch.Tensor]]

_extractor_memo: dict[tuple[str, str], torch.nn.Module] = {}
_digest_memo: dict[tuple[str, int, int], tuple[str, str]] = {}


# ----------------------------------------------------------------------------- inputs


def to_uint8_rgb(batch: torch.Tensor) -> torch.Tensor:
    """A batch in gangaps form -> uint8 [B, 3, H, W].

    uint8 is taken as is; float must be in [-1, 1] (mapped with round((x + 1) * 127.5)).
    Gray ([B, H, W] or [B, 1, H, W]) is replicated to three channels, as for MNIST FID.
    """
    if batch.dim() == 3:
        batch = batch.unsqueeze(1)
    if batch.dim() != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1|3, H, W], got {tuple(batch.shape)}")
    if batch.dtype != torch.uint8:
        if not batch.is_floating_point():
            raise ValueError(f"images must be uint8 or float in [-1, 1], got {batch.dtype}")
        lo, hi = float(batch.min()), float(batch.max())
        if lo < -1.01 or hi > 1.01:
            raise ValueError(f"float images must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")
        batch = ((batch.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return batch.contiguous()


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UserError(f"no {'/'.join(IMAGE_EXTS)} images in {folder}")
    return files


class _Source:
    """One image set: yields uint8 RGB batches and, for caching, a fingerprint of its content."""

    def __init__(self, src: ImageSource, batch_size: int, what: str) -> None:
        self.src, self.batch_size, self.what = src, batch_size, what
        if isinstance(src, (str, Path)):
            self.folder = Path(src)
            if not self.folder.is_dir():
                raise UserError(f"{what} images: {self.folder} is not a folder")
            self.files = _folder_files(self.folder)
        elif not (isinstance(src, torch.Tensor) or callable(src)):
            raise TypeError(f"{what}: expected a tensor, a folder path or a callable, "
                            f"got {type(src).__name__}")

    def describe(self) -> str:
        if isinstance(self.src, torch.Tensor):
            return f"tensor{list(self.src.shape)}"
        if isinstance(self.src, (str, Path)):
            return f"folder {self.folder} ({len(self.files)} files)"
        return f"callable {getattr(self.src, '__name__', type(self.src).__name__)}"

    def batches(self) -> Iterator[torch.Tensor]:
        if isinstance(self.src, torch.Tensor):
            for i in range(0, len(self.src), self.batch_size):
                # via CPU: fingerprints hash numpy bytes, and the extractor moves batches itself
                yield to_uint8_rgb(self.src[i : i + self.batch_size].detach().cpu())
        elif isinstance(self.src, (str, Path)):
            for i in range(0, len(self.files), self.batch_size):
                # as torch-fidelity's ImagesPathDataset: PIL -> RGB -> uint8 CHW
                imgs = []
                for p in self.files[i : i + self.batch_size]:
                    with Image.open(p) as im:
                        arr = np.asarray(im.convert("RGB"))
                    imgs.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
                if len({t.shape for t in imgs}) != 1:
                    raise UserError(f"images in {self.folder} differ in size; resize them first")
                yield torch.stack(imgs)
        else:
            for b in self.src():
                yield to_uint8_rgb(torch.as_tensor(b).detach().cpu())

    def fingerprint(self) -> tuple[str, int, tuple[int, int]]:
        """(content hash, count, (H, W)) without running Inception.

        Folders: file names, sizes and mtimes (cheap; rewriting a file changes its mtime).
        Tensors and callables: the uint8 pixels themselves, so a callable that yields other
        images next time (fresh noise) gets another key, never a stale hit.
        """
        h = hashlib.sha256()
        if isinstance(self.src, (str, Path)):
            for p in self.files:
                st = p.stat()
                h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            with Image.open(self.files[0]) as im:
                return "files-" + h.hexdigest(), len(self.files), (im.height, im.width)
        n, size = 0, (0, 0)
        for b in self.batches():
            # bytes only (count and size go into the cache name), so batching does not matter
            h.update(b.numpy().tobytes())
            n, size = n + len(b), (int(b.shape[-2]), int(b.shape[-1]))
        return "pixels-" + h.hexdigest(), n, size


# ----------------------------------------------------------------------------- weights


def _weights_digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of the weights file, memoised on (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_memo:
        md5, sha = hashlib.md5(), hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                md5.update(chunk)
                sha.update(chunk)
        _digest_memo[key] = (md5.hexdigest(), sha.hexdigest())
    return _digest_memo[key]


DOWNLOAD_TIMEOUT_S = 30  # per socket operation: no network fails in seconds, not minutes


def cached_weights_path() -> Path:
    """Where torch-fidelity's own download (torch.hub) keeps the standard weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_URL.rsplit("/", 1)[-1]


def resolve_weights(weights_path: str | Path | None) -> Path:
    """The Inception weights file to use: `weights_path` if given (it must exist), otherwise
    torch-fidelity's standard file from the torch hub cache, downloaded there first if missing
    (SHA-256 prefix checked, as torch.hub does). Raises a one-line UserError on failure."""
    if weights_path is not None and str(weights_path) != "":
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights file {path} not found: set {CONFIG_KEY} to a "
                            f"local copy of {WEIGHTS_URL}, or to null to download it")
        return path
    path = cached_weights_path()
    if path.is_file():
        return path
    import socket
    import urllib.error
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(path), hash_prefix=OFFICIAL_SHA256_PREFIX,
                                       progress=False)
    except (OSError, urllib.error.URLError, RuntimeError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download torch-fidelity's Inception weights ({CONFIG_KEY}: "
                        f"null) from {WEIGHTS_URL}: {reason}; without network, fetch that file "
                        f"elsewhere and set {CONFIG_KEY}=FILE (or put it at {path})") from None
    finally:
        socket.setdefaulttimeout(old)
    return path



def load_inception(weights_path: str | Path, device: str | torch.device = "cpu",
                   feature_layer: str = FEATURE_LAYER) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 feature extractor (layer "2048" unless told) from a file.

    The file is first read with `torch.load(weights_only=True)`, which cannot run code;
    torch-fidelity then only sees a copy re-saved from those plain tensors (it loads with
    weights_only=False). Memoised per (weights MD5, device).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = resolve_weights(weights_path)
    md5, _ = _weights_digests(path)
    key = (md5, str(device), feature_layer)
    if key not in _extractor_memo:
        try:
            state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu",
                               weights_only=True)
        except Exception as e:  # pickle errors come in many types
            raise UserError(f"{path} is not a plain PyTorch state dict ({e.__class__.__name__}); "
                            f"expected torch-fidelity's file from {WEIGHTS_URL}") from e
        if not isinstance(state, dict):
            raise UserError(f"{path} does not hold a state dict")
        with tempfile.TemporaryDirectory(prefix="gangaps-inception-") as tmp:
            clean = Path(tmp) / "weights.pth"
            torch.save(state, clean)
            try:
                model = FeatureExtractorInceptionV3(EXTRACTOR, [feature_layer],
                                                    feature_extractor_weights_path=str(clean))
            except RuntimeError as e:  # missing / unexpected / mis-shaped keys
                raise UserError(f"{path} is not an InceptionV3 state dict for torch-fidelity: "
                                f"{str(e).splitlines()[0]}") from e
        _extractor_memo.clear()  # keep one network (~100 MB) in memory
        _extractor_memo[key] = model.to(device).eval()
    return _extractor_memo[key]


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def _extract(model: torch.nn.Module, source: _Source, batch_size: int,
             device: str | torch.device) -> tuple[torch.Tensor, tuple]:
    """Features [N, 2048] float32 (CPU) and the (H, W) of the images."""
    feats, size = [], None
    for batch in source.batches():
        if size is None:
            size = tuple(batch.shape[-2:])
        elif tuple(batch.shape[-2:]) != size:
            raise UserError(f"{source.what} images change size: {size} then "
                            f"{tuple(batch.shape[-2:])}")
        for i in range(0, len(batch), batch_size):
            out = model(batch[i : i + batch_size].to(device))
            feats.append(out[0].to("cpu", torch.float32))
    if not feats:
        raise UserError(f"no {source.what} images")
    return torch.cat(feats), size


def _stats(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """torch-fidelity's fid_features_to_statistics (float32 mean, float64 np.cov), as tensors."""
    from torch_fidelity.metric_fid import fid_features_to_statistics
    st = fid_features_to_statistics(features)
    return {"mu": torch.from_numpy(st["mu"]), "sigma": torch.from_numpy(np.atleast_2d(st["sigma"]))}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "real"




# ----------------------------------------------------------------------------- metrics


def inception_metrics(fake: ImageSource, real: ImageSource, weights_path: str | Path | None,
                      cache_dir: str | Path | None = None, real_cache_key: str | None = None,
                      kid: bool = True, batch_size: int = 64,
                      device: str | torch.device = "cpu", kid_subset_size: int = 1000,
                      kid_subsets: int = 100, prc: bool = False,
                      feature_layer: str = FEATURE_LAYER) -> dict[str, Any]:
    """FID (and KID, precision/recall) of `fake` against `real` on torch-fidelity's InceptionV3.

    fake / real: a uint8 or [-1, 1] float tensor [N, C, H, W] (C = 1 or 3), a folder of
    png/jpg images, or a callable returning an iterable of such batches. With `cache_dir`, the
    real features/statistics are cached under a name holding `real_cache_key`, a hash of the
    real images (folder: names + sizes + mtimes), their count, resolution, the weights MD5 (and
    the layer if not "2048"). Returns fid_inception, kid_inception, kid_inception_std,
    precision / recall / f_score (prc=True) and a `protocol` record.
    `feature_layer`: torch-fidelity's feature_layer_fid ("2048" is the standard; "64", "192",
    "768" only for quick checks).
    """
    from torch_fidelity import __version__ as tf_version
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    path = resolve_weights(weights_path)
    md5, sha = _weights_digests(path)
    model = load_inception(path, device, feature_layer)
    fake_src = _Source(fake, batch_size, "fake")
    real_src = _Source(real, batch_size, "real")
    need_feats = kid or prc

    real_feats: torch.Tensor | None = None
    cache_file: Path | None = None
    cached = False
    if cache_dir is not None:
        content, n, size = real_src.fingerprint()
        layer = "" if feature_layer == FEATURE_LAYER else f"-l{_slug(feature_layer)}"
        name = f"inception-{_slug(real_cache_key or 'real')}-n{n}-{size[0]}x{size[1]}-" \
               f"{content[:24]}-w{md5[:12]}{layer}.safetensors"
        cache_file = Path(cache_dir) / name
        if cache_file.exists():
            state = load_state(cache_file)
            if not need_feats or "features" in state:  # stats-only entries cannot give KID
                cached = True
                real_stats = {"mu": state["mu"], "sigma": state["sigma"]}
                real_feats = state.get("features")
                n_real = int(state["n"])
    if not cached:
        real_feats, size = _extract(model, real_src, batch_size, device)
        real_stats = _stats(real_feats)
        n_real = len(real_feats)
        if cache_file is not None:
            save_state(cache_file, {**real_stats, "n": n_real, "size": list(size),
                                    **({"features": real_feats} if need_feats else {})})

    fake_feats, fake_size = _extract(model, fake_src, batch_size, device)
    n_fake = len(fake_feats)
    if min(n_fake, n_real) < 2:
        raise UserError(f"Inception FID needs >= 2 images per side, got {n_fake} fake, "
                        f"{n_real} real")
    if real_feats is not None and max(n_fake, len(real_feats)) < fake_feats.shape[1]:
        # singular covariances: the exact low-rank route (see the module docstring)
        fid, frechet = frechet_distance_features(fake_feats, real_feats), \
            "gangaps.metrics.frechet.frechet_distance_features (exact, N < D)"
    else:
        fake_stats = _stats(fake_feats)
        as_np = lambda st: {k: v.numpy() for k, v in st.items()}  # noqa: E731
        fid = fid_statistics_to_metric(as_np(fake_stats), as_np(real_stats),
                                       verbose=False)["frechet_inception_distance"]
        frechet = "torch_fidelity.metric_fid.fid_statistics_to_metric"
    out: dict[str, Any] = {"fid_inception": fid}
    subset = min(kid_subset_size, n_fake, n_real)
    if kid:
        # torch-fidelity's order: input1 = generated, input2 = reference
        k = kid_features_to_metric(fake_feats, real_feats, kid_subsets=kid_subsets,
                                   kid_subset_size=subset, verbose=False)
        out["kid_inception"] = k["kernel_inception_distance_mean"]
        out["kid_inception_std"] = k["kernel_inception_distance_std"]
    if prc:
        p = prc_features_to_metric(fake_feats, real_feats, save_cpu_ram=True, verbose=False)
        out.update(precision=p["precision"], recall=p["recall"], f_score=p["f_score"])
    out["protocol"] = {
        "library": "torch-fidelity",
        "version": tf_version,
        "feature_extractor": EXTRACTOR,
        "feature_layer": feature_layer,
        "weights_md5": md5,
        "weights_official": sha.startswith(OFFICIAL_SHA256_PREFIX),
        "n_fake": n_fake,
        "n_real": n_real,
        "input": "uint8 RGB (gray replicated; float [-1,1] -> round((x+1)*127.5))",
        "resize": f"fake {fake_size[0]}x{fake_size[1]}, real {size[0]}x{size[1]} -> 299x299, "
                  "TF1-exact bilinear inside torch-fidelity's InceptionV3",
        "frechet": frechet,
        "reference": real_cache_key or real_src.describe(),
        "real_stats_cached": cached,
        **({"kid_subset_size": subset, "kid_subsets": kid_subsets} if kid else {}),
        **({"prc": "torch_fidelity.metric_prc.prc_features_to_metric, neighborhood 3, "
                   f"on Inception {feature_layer} features"} if prc else {}),
    }
    return out
