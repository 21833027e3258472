"""Throughput of a training loop: img/s per instance and, on GPU, the fraction of peak FLOP/s.

FLOPs are counted once, on one step of one ordinary instance (`instance_step_flops`, with
`torch.utils.flop_counter.FlopCounterMode`: matmuls and convolutions, forward and backward),
then multiplied by the instances and the steps done (nanoGPT's MFU). A fused group does
exactly n times one instance's work; it is not counted directly because FlopCounterMode
overcounts the backward of grouped convolutions (torch 2.14: about 2× here).
"""

from __future__ import annotations

import os
import re

import torch
from torch.utils.flop_counter import FlopCounterMode

from gangaps.config import GANConfig
from gangaps.errors import UserError
from gangaps.train.family import GANFamily

# Dense peak FLOP/s of one device (vendor datasheets, without sparsity): (bf16 tensor cores,
# the TF32 the runner enables for fp32 matmuls and convolutions). Tried in order, as whole
# words of torch.cuda.get_device_name: a variant before its family ("H100 PCIe" before
# "H100"), and "L4" never matches "L40" nor "A10" "A100"/"A10G" (unknown: no MFU, not a wrong one).
_PEAK: list[tuple[str, float, float]] = [
    (r"\bH100\b.*\bPCIe\b", 756e12, 378e12), (r"\bH100\b.*\bNVL\b", 835e12, 418e12),
    (r"\bH100\b", 989e12, 495e12), (r"\bH200\b.*\bNVL\b", 835e12, 418e12),
    (r"\b(GH200|H200)\b", 989e12, 495e12), (r"\bA100\b", 312e12, 156e12),
    (r"\bL40S\b", 362e12, 183e12), (r"\bL40\b", 181e12, 90.5e12), (r"\bL4\b", 121e12, 60e12),
    (r"\bA10\b", 125e12, 62.5e12), (r"\b4090\b", 165e12, 82.6e12),
]
PEAK_ENV = "GANGAPS_PEAK_FLOPS"  # one device's peak FLOP/s, for devices not in the table (any type)


def device_peak(name: str, bf16: bool) -> float | None:
    """The peak FLOP/s of the device called `name`, for bf16 or TF32; None if unknown."""
    for pattern, b, tf32 in _PEAK:
        if re.search(pattern, name, re.IGNORECASE):
            return b if bf16 else tf32
    return None


def computes_in_bf16(family: GANFamily, cfg: GANConfig) -> bool:
    """Whether the networks run in bf16: gan.bf16, or a family's own mixed precision
    (StyleGAN2's options.mixed_precision, bf16 by default)."""
    return cfg.bf16 or family.resolve_options(cfg).get("mixed_precision") == "bf16"


def peak_flops(device: torch.device, bf16: bool, world: int = 1) -> float | None:
    """Peak FLOP/s of the `world` devices a job trains on (one per rank), for the dtype in use:
    $GANGAPS_PEAK_FLOPS per device if set, else the table's for a CUDA device; None otherwise."""
    if os.environ.get(PEAK_ENV):
        try:
            return float(os.environ[PEAK_ENV]) * world
        except ValueError:
            raise UserError(f"{PEAK_ENV}={os.environ[PEAK_ENV]!r}: expected FLOP/s, e.g. 989e12") from None
    if device.type != "cuda":
        return None
    one = device_peak(torch.cuda.get_device_name(device), bf16)
    return one and one * world


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
