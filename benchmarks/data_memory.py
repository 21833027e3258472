"""Resident memory of a training process on a prepared 64 px image cache (issue 17, item 2).

    python benchmarks/data_memory.py make /tmp/mem/images-64.safetensors --n 50000
    python benchmarks/data_memory.py train /tmp/mem/images-64.safetensors
    python -m torch.distributed.run --nproc_per_node=2 --standalone \
        benchmarks/data_memory.py train /tmp/mem/images-64.safetensors

`make` writes random uint8 images straight into the cache format of `gangaps prepare-data`
(decoding 50k PNGs would only cost time). `train` loads the cache as a run does
(`load_image_dataset`), trains a tiny StyleGAN2 for a few steps (data-parallel under
torchrun: each rank its shard) and prints VmRSS / VmHWM (MiB) after import, after the load
and after training (--touch: and after reading the whole shard once, as a long
run does). Works on older sources too (PYTHONPATH=/work/main/src) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _mem() -> dict[str, float]:
    """MiB: VmRSS and its peak VmHWM; RssAnon (private to the process) and RssFile (mapped
    file pages: the page cache, shared by every process mapping the cache); Pss (shared
    pages divided among the processes sharing them)."""
    out = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/self/{name}").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Pss"):
                out[key] = round(int(val.split()[0]) / 1024, 1)
    return out


def make(path: Path, n: int, res: int) -> None:
    from gangaps.data.images import _write_cache
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_cache(path, images, {"source": "synthetic", "resolution": res, "channels": 3,
                                "center_crop": True, "resize_filter": "lanczos", "found": n,
                                "written": n, "skipped": 0})
    print(f"{path}: {n} images, {path.stat().st_size / 2**20:.0f} MiB")


def train(path: Path, res: int, steps: int, touch: bool) -> None:
    from gangaps.config import from_dict
    from gangaps.data.images import load_image_dataset
    from gangaps.train import distributed as ddp
    from gangaps.train.gan import GeneratorJob, train_generator
    torch.set_num_threads(1)
    device = ddp.init_from_env("cpu")
    report = {"rank": ddp.rank(), "world": ddp.world_size(), "imported": _mem()}
    t0 = time.perf_counter()
    images = load_image_dataset(path, res, 3)
    report["load_s"] = round(time.perf_counter() - t0, 2)
    report["loaded"] = _mem()
    batch = 8 * ddp.world_size()
    kimg = steps * batch / 1000
    cfg = from_dict({"gan": {"family": "stylegan2", "kimg": kimg, "batch_size": batch,
                             "z_dim": 32, "log_kimg": kimg, "checkpoint_kimg": kimg,
                             "options": {"w_dim": 32, "channel_base": 256, "channel_max": 32,
                                         "mapping_layers": 2}}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"rank{ddp.rank()}"
        train_generator(GeneratorJob(out, seed=0, data_parallel=True), cfg, images, device,
                        progress=False)
    report["trained"] = _mem()
    if touch:  # what a long run ends with: every image of this rank's shard read once
        shard = ddp.shard(images)
        for i in range(0, len(shard), 1024):
            shard[i:i + 1024].sum()
        report["shard_read"] = _mem()
    report["images"] = len(images)
    print(json.dumps(report), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["make", "train"])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--touch", action="store_true", help="then read the whole shard once")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.action == "make":
        make(a.cache, a.n, a.res)
    else:
        train(a.cache, a.res, a.steps, a.touch)


if __name__ == "__main__":
    main()
