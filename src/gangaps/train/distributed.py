"""Data-parallel training of one GAN job over several GPUs (torchrun), without a DDP wrapper.

StyleGAN2's phases call `G.mapping` / `G.synthesis` and take input gradients (R1, path
length), which `DistributedDataParallel`'s forward-hooked reducer handles poorly; instead the
family averages gradients itself just before each optimizer step (an optimizer step pre-hook,
one coalesced all-reduce per step and phase) and broadcasts rank 0's initial weights.
Every helper is a no-op when no process group is initialised, so single-process runs are
untouched.

What the training loop does per rank (`gangaps.train.gan`, see `rank_job_settings`): a
different seed per rank (different z, noise and augmentation), a disjoint shard of the real
images, and a per-rank batch of global_batch / world.

Everything else (classifier jobs, evaluation, report) runs on rank 0 while the other ranks
wait in `on_rank0`, over a CPU (gloo) "control" group with a long timeout: a NCCL barrier
would time out (and spin a GPU) during hours of rank-0-only work.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from gangaps.errors import UserError

T = TypeVar("T")
# How long the other ranks wait for rank-0-only work (classifiers, evaluation, report).
WAIT_TIMEOUT = timedelta(seconds=float(os.environ.get("GANGAPS_DDP_WAIT_S", 7 * 24 * 3600)))
_control: tuple[Any, Any] = (None, None)  # (default group, its gloo control group)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: str = "auto") -> torch.device:
    """Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set): join the process group (NCCL on
    CUDA, gloo on CPU) and return this rank's device; otherwise the default device.

    `device` is the config's: "cpu" forces gloo on CPU; "auto" or "cuda[:i]" give each rank
    cuda:LOCAL_RANK when CUDA is available (the index of "cuda:i" is ignored: one GPU a rank).
    """
    want_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but no CUDA device is available")
    if not launched_by_torchrun():
        return torch.device(device if device != "auto" else "cuda" if want_cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(shutdown)  # a clean exit, not a "group was not destroyed" warning
    return dev


def shutdown() -> None:
    """Destroy the process groups, the control group included."""
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    # A destroyed gloo group still referenced here is freed at interpreter exit, where its
    # threads' teardown can abort the process (SIGABRT, in about 1 run of 10): free it now.
    _control = (None, None)


def _control_group() -> Any:
    """A gloo group over all ranks with a long timeout, for CPU-side coordination; made
    again if the default group was replaced. Every rank reaches its first use together."""
    global _control
    world = dist.group.WORLD
    if _control[0] is not world:
        _control = (world, dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))
    return _control[1]


def on_rank0(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only while the other ranks wait; an error on rank 0 is raised on
    every rank (so none waits forever). Returns fn's result on rank 0, None elsewhere;
    just calls fn when not distributed."""
    if not is_distributed():
        return fn()
    result, error, message = None, None, [None]
    if rank() == 0:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the others
            error, message = e, [f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(message, src=0, group=_control_group())
    if error is not None:
        raise error
    if message[0] is not None:
        raise UserError(f"rank 0 failed, so rank {rank()} stops: {message[0]}")
    return result


def agree(value: T) -> T:
    """Rank 0's `value` on every rank (e.g. "is this job done?", so all ranks take the same
    branch even if a shared filesystem shows them different things)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def gather_to_rank0(obj: T) -> list[T] | None:
    """Every rank's `obj` (picklable, CPU tensors) as a list on rank 0; None elsewhere."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_control_group())
    return out


def mean_over_ranks(values: list[float]) -> list[float]:
    """Element-wise mean of a list of floats over ranks (log lines of the global job)."""
    if not is_distributed() or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_control_group())
    return (t / world_size()).tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_control_group())


def parameters_digest(module: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on all ranks iff the replicas are identical."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shard(items: torch.Tensor) -> torch.Tensor:
    """This rank's disjoint share of a dataset (strided, so every shard sees every part)."""
    return items[rank()::world_size()] if is_distributed() else items


def rank_job_settings(seed: int, global_batch: int) -> tuple[int, int]:
    """(seed, per-rank batch) for this rank: distinct randomness, global batch split evenly."""
    w = world_size()
    if global_batch % w:
        raise UserError(f"gan.batch_size={global_batch} is not divisible by the {w} processes "
                        "of this torchrun job (each takes an equal share of the global batch)")
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
    is the same on every rank, since every rank runs the same phases. Idempotent: a family
    and the loop may both call it, and gradients are still averaged once."""
    if not is_distributed() or getattr(optimizer, "_gangaps_grads_averaged", False):
        return
    optimizer._gangaps_grads_averaged = True  # type: ignore[attr-defined]

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
