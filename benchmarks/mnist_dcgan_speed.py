"""Training throughput of the MNIST DCGAN: N instances fused in one job against one after another.

    python benchmarks/mnist_dcgan_speed.py --data-root ../shared/data [--device cuda] [--json F]
    python benchmarks/mnist_dcgan_speed.py --data-root ../shared/data --quick        # CPU
    python benchmarks/mnist_dcgan_speed.py --data-root ../shared/data --demo         # CPU checks

Default and --quick: one table from one run, the real training loop (`train_generators`) at
configs/mnist-dcgan.yaml's networks and batch (--quick: the demo's, width 0.25, batch 64):
aggregate img/s for N ∈ {1, 4, 8, 16} instances, `fused` (one job) and `in turn` (N jobs one
after another; the first log interval of every job is warm-up and not counted), and the
projected wall time of one full mnist-dcgan iteration (10 instances × its kimg, generator
training only) at that speed. Modes alternate within the run, so load drifts hit both.

--demo: the demo's generator phase (its 4 instances, its kimg) fused against one after
another, then `gangaps demo experiment.iterations=1` with gan.group_size=1 and =4 (wall time),
alternating, `--repeats` times each (`--demo-kimg`: shorter generator training for both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from gangaps.config import load_config
from gangaps.data import load_real
from gangaps.train.gan import GeneratorJob, train_generator, train_generators

ROOT = Path(__file__).resolve().parents[1]


def steady(out_dir: Path, key: str = "img_per_s") -> float | None:
    """Mean of `key` over a job's log lines after the first (warm-up); None if not logged."""
    log = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]
    values = [r[key] for r in log[1:] if key in r] or [r[key] for r in log[-1:] if key in r]
    return sum(values) / len(values) if values else None


def _steady_ips(out_dir: Path) -> float:
    return steady(out_dir)


def fused_speed(cfg, real, device, n: int) -> dict:
    """n instances as one fused job (n = 1: one ordinary job): aggregate img/s and the mfu
    the loop logs (None where the device's peak is unknown), both after the warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [GeneratorJob(Path(tmp) / f"gen_{i:02d}", seed=i) for i in range(n)]
        train_generators(jobs, cfg, real, device, progress=False, group_dir=Path(tmp) / "g")
        # every instance logs the group's speed
        return {"img_per_s": n * steady(jobs[0].out_dir), "mfu": steady(jobs[0].out_dir, "mfu")}


def measure(cfg, real, device, n: int, mode: str, seq_jobs: int | None = None) -> float:
    """Aggregate img/s of n instances: fused, or in turn (n jobs, or `seq_jobs` of them; their
    speed does not depend on n)."""
    if mode == "fused":
        return fused_speed(cfg, real, device, n)["img_per_s"]
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [GeneratorJob(Path(tmp) / f"gen_{i:02d}", seed=i) for i in range(n)]
        jobs = jobs[:seq_jobs or n]
        for job in jobs:
            train_generator(job, cfg, real, device, progress=False)
        return len(jobs) / sum(1 / _steady_ips(job.out_dir) for job in jobs)


def _table(args, device) -> list[dict]:
    base = "configs/mnist-dcgan.yaml"
    full = load_config(ROOT / base, [f"data.path={args.data_root}"])
    over = [f"data.path={args.data_root}", "gan.tensorboard=false"]
    if args.quick:
        over += ["gan.options.width=0.25", "gan.batch_size=64"]
    cfg = load_config(ROOT / base, over)
    steps = args.steps or (30 if args.quick else 200)
    kimg = steps * cfg.gan.batch_size / 1000
    cfg.gan.kimg, cfg.gan.log_kimg, cfg.gan.checkpoint_kimg = kimg, kimg / 5, kimg
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    real = load_real(cfg.data).gan_train
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.gan.batch_size}, "
          f"width {cfg.gan.options.get('width', 1.0)}, {steps} steps a job")
    hours_of = full.experiment.instances * full.gan.kimg * 1000 / 3600
    print(f"{'N':>3} {'mode':<8}{'img/s':>10}{'×in turn':>10}  full mnist-dcgan iteration "
          f"({full.experiment.instances} × {full.gan.kimg:.0f} kimg)")
    rows = []
    for n in args.n:
        ips = {}
        for mode in ("in turn", "fused") if n > 1 else ("in turn",):
            ips[mode] = measure(cfg, real, device, n, mode, seq_jobs=min(n, args.seq_jobs))
            rows.append({"n": n, "mode": mode, "img_per_s": round(ips[mode], 1),
                         "device": str(device), "batch_size": cfg.gan.batch_size,
                         "projected_iteration_h": round(hours_of / ips[mode], 3)})
            gain = ips[mode] / ips["in turn"]
            print(f"{n:>3} {mode:<8}{ips[mode]:>10.0f}{gain:>10.2f}  {hours_of / ips[mode]:>8.2f} h")
    return rows


def _demo(args, device) -> list[dict]:
    demo = resources.files("gangaps") / "configs" / "demo.yaml"
    extra = [f"gan.kimg={args.demo_kimg}"] if args.demo_kimg else []
    with resources.as_file(demo) as path:
        cfg = load_config(path, [f"data.path={args.data_root}", *extra])
    real = load_real(cfg.data).gan_train
    n = cfg.experiment.instances
    print(f"demo generator phase: {n} instances × {cfg.gan.kimg} kimg, batch {cfg.gan.batch_size}, "
          f"width {cfg.gan.options.get('width')}, {torch.get_num_threads()} threads")
    rows, times = [], {"fused": [], "in turn": []}
    for _ in range(args.repeats):
        for mode in ("in turn", "fused"):
            with tempfile.TemporaryDirectory() as tmp:
                jobs = [GeneratorJob(Path(tmp) / f"gen_{i:02d}", seed=i) for i in range(n)]
                t0 = time.perf_counter()
                if mode == "fused":
                    train_generators(jobs, cfg, real, device, False, Path(tmp) / "group")
                else:
                    for job in jobs:
                        train_generator(job, cfg, real, device, progress=False)
                times[mode].append(time.perf_counter() - t0)
            print(f"  {mode:<8} {times[mode][-1]:7.1f} s")
    ratio = min(times["in turn"]) / min(times["fused"])
    print(f"generator phase: fused {ratio:.2f}× faster (best of {args.repeats} each)")
    rows.append({"n": n, "mode": "demo generators, in turn/fused", "seconds": times,
                 "speedup": round(ratio, 3), "device": str(device)})
    walls: dict[int, list[float]] = {4: [], 1: []}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for _ in range(args.repeats):
        for size in (1, 4):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "gangaps.cli", "demo", "--out", f"{tmp}/run",
                       "--data-root", str(args.data_root), "--quiet", "experiment.iterations=1",
                       f"gan.group_size={size}", f"device={device.type}", *extra]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                walls[size].append(time.perf_counter() - t0)
            print(f"  gangaps demo experiment.iterations=1 gan.group_size={size}: "
                  f"{walls[size][-1]:7.1f} s")
    ratio = min(walls[1]) / min(walls[4])
    print(f"demo (1 iteration): group_size=4 {ratio:.2f}× faster than 1 (best of {args.repeats})")
    rows.append({"n": n, "mode": "demo wall, group_size 1/4", "seconds": walls,
                 "speedup": round(ratio, 3), "device": str(device)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="CPU: the demo's network size and batch")
    p.add_argument("--demo", action="store_true", help="the demo's generator phase and wall time")
    p.add_argument("--n", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--steps", type=int, default=0, help="steps a job (default 200, quick 30)")
    p.add_argument("--seq-jobs", type=int, default=4, help="jobs timed for `in turn`")
    p.add_argument("--repeats", type=int, default=1, help="--demo: alternating repeats")
    p.add_argument("--demo-kimg", type=float, default=0.0,
                   help="--demo: shorter generator training than the demo's (a loaded CPU)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = _demo(args, device) if args.demo else _table(args, device)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
