"""FID (LeNet): Fréchet distance in the feature space of a small MNIST classifier.

Like TF-GAN's Fréchet classifier distance for MNIST: a LeNet-style net is trained once per
machine on MNIST train (about a minute on 2 CPU cores, >= 99% test accuracy) and cached; its
penultimate (128-d) activations are the features. Values are only comparable between runs that
use the same cached network (its hash is recorded), and never with Inception FID.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gangaps.data.mnist import load_mnist, to_model_range
from gangaps.errors import UserError
from gangaps.io import atomic_write_json, load_state, save_state
from gangaps.metrics.frechet import FeatureStats, fid_from_stats

ENV_CACHE = "GANGAPS_CACHE"  # root of gangaps' per-machine cache; LeNet lives in <root>/lenet
MODEL_FILE = "lenet.safetensors"
INFO_FILE = "lenet.json"
FEATURE_DIM = 128
MIN_ACCURACY = 0.99


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "gangaps")) / "lenet"


class LeNet(nn.Module):
    """conv5(16)-pool-conv5(32)-pool-fc(128)-fc(10) on [-1, 1] images [N, 1, 28, 28].

    Narrower than the common 32/64 variant: 3-4x cheaper to train on CPU, still > 99%.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)  # 28 -> 28, pool -> 14
        self.conv2 = nn.Conv2d(16, 32, 5)  # 14 -> 10, pool -> 5
        self.fc1 = nn.Linear(32 * 5 * 5, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.drop = nn.Dropout(0.3)
        # filled by load_or_train_lenet: test accuracy, weights hash, whether it was just trained
        self.info: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.features(x)))


def _shift_batch(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2,
                 groups: int = 8) -> torch.Tensor:
    """Random translation by up to max_shift pixels (pad with background -1, crop back).

    One shift per group of the batch: plain slicing, much cheaper than per-image gathers.
    """
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    shifts = torch.randint(0, 2 * p + 1, (groups, 2), generator=gen).tolist()
    bounds = torch.linspace(0, n, groups + 1).long().tolist()
    parts = [padded[a:b, :, dy : dy + h, dx : dx + w]
             for (a, b), (dy, dx) in zip(zip(bounds[:-1], bounds[1:], strict=True), shifts,
                                         strict=True)]
    return torch.cat(parts)


@torch.no_grad()
def accuracy(model: LeNet, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy on [-1, 1] images [N, 1, 28, 28]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        pred = model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == labels[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def train_lenet(root: str | Path | None = None, epochs: int = 3, seed: int = 0,
                device: str | torch.device = "cpu", batch_size: int = 128, lr: float = 2e-3,
                n_train: int | None = None, n_test: int | None = None,
                num_threads: int | None = 1,
                log: Callable[[str], None] | None = None) -> tuple[LeNet, float]:
    """Train on MNIST train; returns (model in eval mode, MNIST test accuracy).

    Deterministic for a fixed seed on CPU: init, shuffling, augmentation and dropout draw from
    seeded generators. `n_train` / `n_test` use only the first n images (for quick checks).
    `num_threads` (restored afterwards; None = leave torch's setting): this net is too small to
    gain from intra-op threads, and on a busy 2-core box two spinning threads made each step
    ~12x slower than one (measured: 0.65 s vs 0.05 s per batch of 128).
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(root, epochs, seed, device, batch_size, lr, n_train, n_test, log)
    finally:
        torch.set_num_threads(old_threads)


def _train(root: str | Path | None, epochs: int, seed: int, device: str | torch.device,
           batch_size: int, lr: float, n_train: int | None, n_test: int | None,
           log: Callable[[str], None] | None) -> tuple[LeNet, float]:
    images, labels = load_mnist("train", root)
    if n_train is not None:
        images, labels = images[:n_train], labels[:n_train]
    x = to_model_range(images)
    test_images, test_labels = load_mnist("test", root)
    test_images, test_labels = test_images[:n_test], test_labels[:n_test]
    x_test = to_model_range(test_images)

    torch.manual_seed(seed)  # weight init and dropout (global RNG)
    gen = torch.Generator().manual_seed(seed)  # data order and augmentation
    model = LeNet().to(device)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # one-cycle: fast warm-up then anneal to ~0, which gets >99% in 2-3 epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = _shift_batch(x[idx], gen).to(device)
            loss = F.cross_entropy(model(xb), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if log is not None:
            log(f"lenet epoch {epoch + 1}/{epochs}: train loss {total / steps_per_epoch:.4f}")
    model.eval()
    return model, accuracy(model, x_test, test_labels)


def _weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_or_train_lenet(cache_dir: str | Path | None = None, root: str | Path | None = None,
                        device: str | torch.device = "cpu", epochs: int = 3,
                        seed: int = 0) -> LeNet:
    """The cached LeNet, training (and caching) it first if this machine has none.

    Cache: <cache_dir>/lenet.safetensors + lenet.json (test accuracy). Both are written by
    atomic rename, weights first, so concurrent callers at worst train twice and one result
    wins; the JSON is the completion marker. `model.info["trained"]` says which path ran.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model_path, info_path = cache / MODEL_FILE, cache / INFO_FILE
    if model_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text("utf-8"))
        state = load_state(model_path, device="cpu")
        model = LeNet()
        model.load_state_dict(state["model"])
        model.to(device).eval()
        h = _weights_hash(model)
        if info.get("hash") != h:
            # two writers raced and the JSON belongs to the other network: re-measure it
            x, y = load_mnist("test", root)
            info = {**info, "hash": h, "test_accuracy": accuracy(model, to_model_range(x), y)}
            atomic_write_json(info_path, info)
        model.info = {**info, "trained": False}
        return model
    t0 = time.perf_counter()
    model, acc = train_lenet(root, epochs=epochs, seed=seed, device=device)
    seconds = time.perf_counter() - t0
    if acc < MIN_ACCURACY:
        # not a user error in principle, but a bad extractor must never be cached silently
        raise UserError(f"LeNet reached only {acc:.4f} MNIST test accuracy (< {MIN_ACCURACY}); "
                        "not caching it; retry with more epochs")
    info = {"test_accuracy": acc, "train_seconds": round(seconds, 1), "epochs": epochs,
            "seed": seed, "feature_dim": FEATURE_DIM, "hash": _weights_hash(model)}
    save_state(model_path, {"model": model.state_dict()})
    atomic_write_json(info_path, info)
    model.info = {**info, "trained": True}
    return model


@torch.no_grad()
def lenet_features(model: LeNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate-layer features [N, 128] (float32, CPU) of [-1, 1] images [N, 1, 28, 28].
    Batches of 256 by default: twice as fast on a CPU as 1000, whose activations spill the caches."""
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images [N, 1, 28, 28], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        raise ValueError("expected float images in [-1, 1], got uint8 (use to_model_range)")
    model.eval()
    device = next(model.parameters()).device
    out = [model.features(images[i : i + batch_size].to(device, torch.float32)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


def lenet_stats(model: LeNet, images: torch.Tensor, batch_size: int = 256) -> FeatureStats:
    """FeatureStats of the LeNet features of [-1, 1] images."""
    stats = FeatureStats(FEATURE_DIM)
    for i in range(0, len(images), batch_size):
        stats.update(lenet_features(model, images[i : i + batch_size], batch_size))
    return stats


def stats_path(model: LeNet, cache_dir: str | Path | None = None) -> Path:
    """Where the MNIST-test feature stats of this network are cached (name holds its hash)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"mnist_test_stats-{model.info.get('hash') or _weights_hash(model)}.safetensors"


def mnist_test_stats(model: LeNet, root: str | Path | None = None,
                     cache_dir: str | Path | None = None) -> FeatureStats:
    """Feature stats of the 10k MNIST test images, cached beside the model.

    The file name holds the model's weights hash, so stats of an older network are never used.
    """
    path = stats_path(model, cache_dir)
    if path.exists():
        return FeatureStats.from_state(load_state(path))
    images, _ = load_mnist("test", root)
    stats = lenet_stats(model, to_model_range(images))
    save_state(path, stats.to_state())
    return stats


def fid_lenet(model: LeNet, fake_images: torch.Tensor, real_stats: FeatureStats,
              batch_size: int = 256) -> float:
    """FID (LeNet) of [-1, 1] images [N, 1, 28, 28] against precomputed real stats."""
    return fid_from_stats(lenet_stats(model, fake_images, batch_size), real_stats)


@torch.no_grad()
def class_histogram(model: LeNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Fraction of [-1, 1] images [N, 1, 28, 28] the LeNet assigns to each digit [10]."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(10)
    for i in range(0, len(images), batch_size):
        pred = model(images[i : i + batch_size].to(device, torch.float32)).argmax(1).cpu()
        counts += torch.bincount(pred, minlength=10).float()
    return counts / max(1, len(images))


MODE_THRESHOLD = 0.05  # a digit "covered" when it holds at least 5 % of the samples


def mode_metrics(hist: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mode coverage (digits holding ≥ 5 % of the samples) and KL(samples ‖ reference) of the
    class histograms, in nats: the mode-collapse measures of the GAN literature (e.g. Metz et
    al. 2017, Srivastava et al. 2017). Real MNIST: 10 classes, KL ≈ 0; one digit: KL ≈ 2.3."""
    p, q = hist.double(), reference.double().clamp_min(1e-12)
    kl = float((p[p > 0] * (p[p > 0] / q[p > 0]).log()).sum())
    return {"mode_coverage": int((hist >= MODE_THRESHOLD).sum()), "class_kl": max(0.0, kl)}
