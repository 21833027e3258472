"""Fused vs in-turn DCGAN steps, interleaved step by step in one process (robust on a shared CPU).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/fused_step_interleaved.py WIDTH BATCH N [N ...]

Per round: one D+G step of each of N ordinary instances in turn, then one step of the N fused;
medians over rounds 4-13. Network step only (no data loading, latents or checkpoints).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from gangaps.config import GANConfig
from gangaps.train.dcgan_family import DCGANFamily


def step(family, cfg, nets, x, z, opts) -> None:
    for phase in family.phases(cfg):
        out = family.phase_loss(phase, nets, x, z, 0)
        opts[phase.opt].zero_grad()
        out.loss.sum().backward()
        opts[phase.opt].step()


def main() -> None:
    width, batch, ns = float(sys.argv[1]), int(sys.argv[2]), [int(a) for a in sys.argv[3:]]
    family, cfg = DCGANFamily(), GANConfig(options={"width": width}, batch_size=batch)
    for n in ns:
        alone = [family.build(cfg, 1, 28) for _ in range(n)]
        group = family.fuse(cfg, 1, alone)
        alone_opts = [family.optimizers(cfg, nets) for nets in alone]
        group_opts = family.optimizers(cfg, group)
        x, z = torch.randn(n, batch, 1, 28, 28), torch.randn(n, batch, 100)
        in_turn, fused = [], []
        for r in range(13):
            t0 = time.perf_counter()
            for i in range(n):
                step(family, cfg, alone[i], x[i], z[i], alone_opts[i])
            t1 = time.perf_counter()
            step(family, cfg, group, x, z, group_opts)
            t2 = time.perf_counter()
            if r >= 3:
                in_turn.append(t1 - t0)
                fused.append(t2 - t1)
        a, b = statistics.median(in_turn), statistics.median(fused)
        print(f"n={n} width={width} B={batch} threads={torch.get_num_threads()}: in turn "
              f"{n * batch / a:.0f} img/s, fused {n * batch / b:.0f} img/s, ratio {a / b:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
