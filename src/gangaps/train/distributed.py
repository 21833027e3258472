"""Data-parallel training of one GAN job over several GPUs (torchrun), without a DDP wrapper.

StyleGAN2's phases call `G.mapping` / `G.synthesis` and take input gradients (R1, path
length), which `DistributedDataParallel`'s forward-hooked reducer handles poorly; instead the
family averages gradients itself just before each optimizer step (an optimizer step pre-hook,
one coalesced all-reduce per step and phase) and broadcasts rank 0's initial weights.
Every helper is a no-op when no process group is initialised, so single-process runs are
untouched.

What a caller (the runner) does per rank, see `rank_job_settings`: a different seed per
rank (different z, noise and augmentation), a disjoint shard of the real images, and a
per-rank batch of global_batch / world.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env() -> torch.device:
    """Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set): join the process group (NCCL on
    CUDA, gloo on CPU) and return this rank's device; otherwise the default device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(items: torch.Tensor) -> torch.Tensor:
    """This rank's disjoint share of a dataset (strided, so every shard sees every part)."""
    return items[rank()::world_size()] if is_distributed() else items


def rank_job_settings(seed: int, global_batch: int) -> tuple[int, int]:
    """(seed, per-rank batch) for this rank: distinct randomness, global batch split evenly."""
    w = world_size()
    if global_batch % w:
        raise ValueError(f"global batch {global_batch} is not divisible by {w} ranks")
    return seed + 1_000_003 * rank(), global_batch // w


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (identical start)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def average_gradients_before_step(optimizer: torch.optim.Optimizer) -> None:
    """Make `optimizer.step()` use the mean of every rank's gradients (no-op if not
    distributed). Parameters without a gradient this phase are skipped; which ones have one
    is the same on every rank, since every rank runs the same phases."""
    if not is_distributed():
        return

    def hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    optimizer.register_step_pre_hook(hook)


@torch.no_grad()
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity if not distributed)."""
    if is_distributed():
        dist.all_reduce(t)
    return t
