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
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from gangaps.config import GANConfig

SNAPSHOTS = "snapshots"


def snapshot_dir(out_dir: Path) -> Path:
    return out_dir / SNAPSHOTS


def grid_path(out_dir: Path, step: int) -> Path:
    return snapshot_dir(out_dir) / f"snapshot-{step:06d}.png"


def network_path(out_dir: Path, step: int) -> Path:
    return snapshot_dir(out_dir) / f"network-{step:06d}.safetensors"


def snapshot_every(gcfg: GANConfig) -> int:
    """Steps between snapshots; 0 when snapshots are off."""
    if not gcfg.snapshot_kimg:
        return 0
    return max(1, round(gcfg.snapshot_kimg * 1000 / gcfg.batch_size))


def write_snapshot(state, jobs: Sequence, ckpt_path: Path, gcfg: GANConfig,
                   device: torch.device) -> None:
    """The snapshot of `state.step` for every instance that writes files (rank 0 only);
    `ckpt_path` must hold the state of this very step."""
    from torchvision.utils import save_image

    from gangaps.generators import generate, load_generator

    for i, job in enumerate(jobs):
        if not job.write_checkpoint:
            continue
        net, png = network_path(job.out_dir, state.step), grid_path(job.out_dir, state.step)
        if net.exists() and png.exists():
            continue
        net.parent.mkdir(parents=True, exist_ok=True)
        tmp = net.with_name(net.name + f".tmp{os.getpid()}")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if state.n == 1:
                shutil.copyfile(ckpt_path, tmp)
            else:
                state.save_instance(i, tmp)
            os.replace(tmp, net)
            G = load_generator(net, device)
            grid = generate(G, gcfg.sample_grid, seed=0, device=device)
        png_tmp = png.with_name(png.stem + f".tmp{os.getpid()}.png")
        save_image(grid.float() / 255, png_tmp, nrow=max(1, int(len(grid) ** 0.5)))
        os.replace(png_tmp, png)
        if gcfg.tensorboard:
            from gangaps.train.events import _writer
            with _writer(job.out_dir) as tb:
                tb.add_images("snapshot", grid, state.step)
        _prune(job.out_dir, gcfg.snapshots_kept)


def _prune(out_dir: Path, kept: int) -> None:
    """Keep the newest `kept` network snapshots (0: every one); grids are small and all kept."""
    nets = sorted(snapshot_dir(out_dir).glob("network-*.safetensors"))
    for old in nets[:-kept] if kept else []:
        old.unlink(missing_ok=True)
