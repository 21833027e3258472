"""Snapshots during training, as stylegan2-ada-pytorch writes them (`gan.snapshot_kimg`).

Every `snapshot_kimg` the job checkpoints, then for each instance writes into
`<instance dir>/snapshots/`:
- `snapshot-SSSSSS.png`: a grid of `gan.sample_grid` samples from fixed latents (seed 0, the
  latents of samples.png), so grids of one instance are comparable over training;
- `network-SSSSSS.safetensors`: that instance's ordinary generator checkpoint (what
  `gangaps generate` and load_generator read); only the last `gan.snapshots_kept` are kept.
SSSSSS is the training step (kimg = step × batch_size / 1000; a step number stays distinct
at the small sizes where whole kimg would collide). With TensorBoard on, the grid is also an
image event. Snapshots read the written checkpoint back (load_generator), under a forked RNG, so
the training networks and random streams are untouched: a run's numbers are the same with
snapshots on or off. A resume writes a snapshot its crash may have cut off (the checkpoint
of that step exists, its snapshot files not yet) and overwrites nothing that exists.

With `gan.snapshot_metric: fid` each snapshot is also measured: `gan.snapshot_metric_n` images
from fixed latents (seed 0: every snapshot of an instance sees the same latents, so the curve
moves with the network, not the sample) go to a metric the experiment passes in (the run's
evaluation.fid features against its held-out reals; this layer knows no FID), and one JSON line
per step goes to `metric-fid.jsonl` (step, kimg, value, n_fake, n_real, features, snapshot).
The file is rewritten atomically with the new line, so a crash leaves the old file or the new
one; a resume measures a step whose line is missing and never writes one twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from gangaps.config import GANConfig
from gangaps.io import atomic_write_text, read_jsonl

SNAPSHOTS = "snapshots"
METRIC_SEED = 0
# uint8 fakes [N, C, H, W] -> {"metric", "value", "n_fake", "n_real", "features", ...}
SnapshotMetric = Callable[[torch.Tensor], dict[str, Any]]


def snapshot_dir(out_dir: Path) -> Path:
    return out_dir / SNAPSHOTS


def grid_path(out_dir: Path, step: int) -> Path:
    return snapshot_dir(out_dir) / f"snapshot-{step:06d}.png"


def network_path(out_dir: Path, step: int) -> Path:
    return snapshot_dir(out_dir) / f"network-{step:06d}.safetensors"


def metric_path(out_dir: Path, name: str) -> Path:
    return snapshot_dir(out_dir) / f"metric-{name}.jsonl"


def metric_records(out_dir: Path) -> dict[str, list[dict]]:
    """Every snapshot metric of an instance: name -> its lines in step order ({}: none)."""
    folder = snapshot_dir(out_dir)
    files = sorted(folder.glob("metric-*.jsonl")) if folder.is_dir() else []
    return {f.stem.removeprefix("metric-"): sorted(read_jsonl(f), key=lambda r: r["step"])
            for f in files}


def snapshot_every(gcfg: GANConfig) -> int:
    """Steps between snapshots; 0 when snapshots are off."""
    if not gcfg.snapshot_kimg:
        return 0
    return max(1, round(gcfg.snapshot_kimg * 1000 / gcfg.batch_size))


def write_snapshot(state, jobs: Sequence, ckpt_path: Path, gcfg: GANConfig,
                   device: torch.device, metric: SnapshotMetric | None = None,
                   boards: Sequence | None = None) -> None:
    """The snapshot of `state.step` for every instance that writes files (rank 0 only), what
    of it is missing; `ckpt_path` must hold the state of this very step. `boards`: each
    instance's TensorBoard writer (None: no events)."""
    from torchvision.utils import make_grid, save_image

    from gangaps.generators import generate, load_generator

    step = state.step
    for i, job in enumerate(jobs):
        if not job.write_checkpoint:
            continue
        out, board = job.out_dir, boards[i] if boards else None
        net, png = network_path(out, step), grid_path(out, step)
        measure = metric is not None and step not in _recorded(out, gcfg.snapshot_metric)
        if net.exists() and png.exists() and not measure:
            continue
        net.parent.mkdir(parents=True, exist_ok=True)
        # forked: sampling and measuring must not move the training streams
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if not net.exists():
                tmp = net.with_name(net.name + f".tmp{os.getpid()}")
                if state.n == 1:
                    shutil.copyfile(ckpt_path, tmp)
                else:
                    state.save_instance(i, tmp)
                os.replace(tmp, net)
            G = load_generator(net, device)
            if not png.exists():
                grid = generate(G, gcfg.sample_grid, seed=0, device=device)
                png_tmp = png.with_name(png.stem + f".tmp{os.getpid()}.png")
                image = make_grid(grid, nrow=max(1, int(len(grid) ** 0.5)))
                save_image(image.float() / 255, png_tmp)
                os.replace(png_tmp, png)
                if board is not None:
                    board.add_image("snapshot", image, step)
            if measure:
                fakes = generate(G, gcfg.snapshot_metric_n, seed=METRIC_SEED, device=device)
                record = {"step": step, "kimg": round(step * gcfg.batch_size / 1000, 3),
                          **metric(fakes), "snapshot": net.name}
                _append(metric_path(out, gcfg.snapshot_metric), record)
                if board is not None:
                    board.add_scalar(f"snapshot/{record['metric']}", record["value"], step)
        _prune(out, gcfg.snapshots_kept)


def replay_events(out_dir: Path, board) -> None:
    """Every snapshot grid and metric line on file as TensorBoard events: a resume rewrites
    the instance's events from its files (gangaps.train.events)."""
    import numpy as np
    from PIL import Image

    for png in sorted(snapshot_dir(out_dir).glob("snapshot-*.png")):
        with Image.open(png) as im:  # the grid as written: RGB, what make_grid gave
            image = np.asarray(im.convert("RGB"))
        board.add_image("snapshot", image, int(png.stem.split("-")[1]), dataformats="HWC")
    for records in metric_records(out_dir).values():
        for r in records:
            board.add_scalar(f"snapshot/{r['metric']}", r["value"], r["step"])


def _recorded(out_dir: Path, name: str) -> set[int]:
    return {r["step"] for r in read_jsonl(metric_path(out_dir, name))}


def _append(path: Path, record: dict) -> None:
    """Add the line of a new step, rewriting the small file atomically (old or new, never a
    cut line)."""
    lines = [r for r in read_jsonl(path) if r["step"] != record["step"]] + [record]
    atomic_write_text(path, "".join(json.dumps(r) + "\n"
                                    for r in sorted(lines, key=lambda r: r["step"])))


def _prune(out_dir: Path, kept: int) -> None:
    """Keep the newest `kept` network snapshots (0: every one); grids are small and all kept."""
    nets = sorted(snapshot_dir(out_dir).glob("network-*.safetensors"))
    for old in nets[:-kept] if kept else []:
        old.unlink(missing_ok=True)
