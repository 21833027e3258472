"""Throughput of a training loop: img/s per instance and, on GPU, the fraction of peak FLOP/s.

FLOPs are counted once, on one real step (`torch.utils.flop_counter.FlopCounterMode`: matmuls
and convolutions, forward and backward), then multiplied by the steps done (nanoGPT's MFU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

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


class FlopCount:
    """`with counter.step():` around one step counts its FLOPs (the first time only)."""

    def __init__(self) -> None:
        self.per_step: int | None = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.per_step is not None:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as mode:
            yield
        self.per_step = mode.get_total_flops()
