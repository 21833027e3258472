"""Throughput of a training loop: img/s per instance and, on GPU, the fraction of peak FLOP/s.

FLOPs are counted once, on one step of one ordinary instance (`instance_step_flops`, with
`torch.utils.flop_counter.FlopCounterMode`: matmuls and convolutions, forward and backward),
then multiplied by the instances and the steps done (nanoGPT's MFU). A fused group does
exactly n times one instance's work; it is not counted directly because FlopCounterMode
overcounts the backward of grouped convolutions (torch 2.14: about 2× here).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from gangaps.config import GANConfig
from gangaps.train.family import GANFamily

# Dense peak FLOP/s by device name (vendor datasheets; bf16 tensor cores, and the TF32 the
# runner enables for fp32 matmuls and convolutions).
_PEAK = {"H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12),
         "L40S": (362e12, 183e12), "A10": (125e12, 62.5e12), "L4": (121e12, 60e12),
         "4090": (165e12, 82.6e12)}


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """The device's peak FLOP/s for the dtype in use; None off CUDA or for unknown devices."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (b, tf32) in _PEAK.items():
        if key in name:
            return b if bf16 else tf32
    return None


def instance_step_flops(family: GANFamily, cfg: GANConfig, channels: int, resolution: int,
                        batch: int, device: torch.device) -> int:
    """FLOPs of one step of one ordinary instance: the loss of every phase that runs every
    step, forward and backward, on random inputs. Not counted: lazy regularisation phases and
    the fool term (their double backward breaks FlopCounterMode's hooks). The RNG is left as
    it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        nets = family.build(cfg, channels, resolution).to(device)
        z = torch.randn(batch, cfg.z_dim, device=device)
        x = torch.randn(batch, channels, resolution, resolution, device=device)
        with FlopCounterMode(display=False) as mode:
            for phase in family.phases(cfg):
                if phase.interval == 1:
                    family.phase_loss(phase, nets, x, z, 0).loss.sum().backward()
    return mode.get_total_flops()
