"""What the fool controller's reading of G_ema costs, side by side in one run.

    python benchmarks/fool_controller_cost.py DATA_ROOT [--kimg 1.5] [--repeats 2]

A fused group of the demo's 4 instances (`configs/demo.yaml`) trains `--kimg` against one
patch CNN, three ways: the controller on G's own fakes (no G_ema), the controller on G_ema
(read every 4th step), and the fixed weight with G_ema. Prints the best of `--repeats` wall
times each; alternate repeats share the machine's noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gangaps.config import load_config
from gangaps.data import load_real
from gangaps.models.classifiers import build_classifier
from gangaps.train.gan import GeneratorJob, train_generators

DEMO = Path(__file__).resolve().parents[1] / "src" / "gangaps" / "configs" / "demo.yaml"
VARIANTS = {"controller on G (no G_ema)": ("{width: 0.25}", "controlled"),
            "controller on G_ema": ("{width: 0.25, ema_kimg: 0.25}", "controlled"),
            "fixed weight, G_ema": ("{width: 0.25, ema_kimg: 0.25}", "fixed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--kimg", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    clf = build_classifier("patch", 1, 28, width=16, depth=3).eval()
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, (options, weighting) in VARIANTS.items():
            cfg = load_config(DEMO, [f"data.path={args.data_root}", f"gan.kimg={args.kimg}",
                                     f"gan.options={options}", "gan.tensorboard=false",
                                     f"experiment.fool_weighting={weighting}"])
            real = load_real(cfg.data).gan_train[:8000]
            with tempfile.TemporaryDirectory() as d:
                jobs = [GeneratorJob(Path(d) / f"gen_{i}", i, [clf]) for i in range(4)]
                t = time.perf_counter()
                train_generators(jobs, cfg, real, torch.device("cpu"), progress=False,
                                 group_dir=Path(d) / "group")
                times.setdefault(name, []).append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name}: {min(ts):.2f} s for {args.kimg} kimg × 4 instances "
              f"(runs: {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
