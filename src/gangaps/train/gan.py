"""The one GAN training loop: any family, one instance or a fused group, resumable exactly.

Reads top to bottom: build (or resume) the training state (`gangaps.train.state`), then per
step run the family's phases, adding w·L_fool to the generator's main phase
(`gangaps.train.fool`: λ, its schedule and balance); log throughput; checkpoint the full state
every `checkpoint_kimg`; finish with each instance's own checkpoint.

A group (`train_generators` with n > 1 jobs; a fusable family) trains n independent instances
of one iteration as one fused model: every loss, stat and fool weight is per instance ([n]),
the backward pass takes their sum (instances share no parameter, so each gets exactly its own
gradient), each instance has its own log.jsonl, and the group's checkpoint lives in
`group_dir`; at the end every instance's ordinary checkpoint is written to its own out_dir.

Under torchrun (`GeneratorJob.data_parallel` and a process group) one job (n = 1) is split
over the ranks: the same initial weights everywhere (same seed, then rank 0's broadcast), per
rank a disjoint shard of the real images, its own latents and randomness, and
gan.batch_size / world images a step; gradients are averaged before every optimizer step, so
every rank holds the same weights. Steps, logging and checkpoint intervals count global
images. Rank 0 alone writes the log and the checkpoint, which also holds every rank's own
state, so a killed multi-process job resumes exactly, with the same number of processes.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gangaps.config import Config, GANConfig
from gangaps.errors import NonFiniteLoss, UserError
from gangaps.train import distributed as ddp
from gangaps.train.events import InstanceLog
from gangaps.train.family import get_family
from gangaps.train.fool import FoolSchedule, FoolTerm
from gangaps.train.snapshots import SnapshotMetric, snapshot_every, write_snapshot
from gangaps.train.speed import computes_in_bf16, instance_step_flops, peak_flops
from gangaps.train.state import TrainState

CHECKPOINT = "checkpoint.safetensors"
_NEVER = 2**62  # "no non-finite loss yet" in the per-phase first-bad-step tensors


@dataclass
class GeneratorJob:
    out_dir: Path
    seed: int
    fool_classifiers: list[torch.nn.Module] = field(default_factory=list)
    init_from: Path | None = None  # a finished generator checkpoint (init: previous)
    label: str = ""
    # Under a process group: split this one job over all ranks (see the module docstring).
    # False: every rank trains and writes its own job (gradients are still averaged).
    data_parallel: bool = False
    # a group member already finished (its DONE exists): trained along, its files untouched
    write_checkpoint: bool = True


def group_size(cfg: GANConfig, device: torch.device, instances: int) -> int:
    """gan.group_size resolved. auto: 1 for a family that cannot fuse or under torchrun; on
    CUDA every instance of the iteration (up to 16: a 28×28 DCGAN leaves a GPU idle); on CPU 4
    (measured on 2 cores at the demo's size: `benchmarks/mnist_dcgan_speed.py --demo`)."""
    fusable = get_family(cfg.family).fusable and not ddp.launched_by_torchrun()
    if cfg.group_size != "auto":
        if cfg.group_size > 1 and not fusable:
            raise UserError(f"gan.group_size={cfg.group_size}: gan.family={cfg.family} "
                            "under this launcher trains one instance at a time; use 1 or auto")
        return min(cfg.group_size, instances)
    if not fusable:
        return 1
    return min(instances, 16 if device.type == "cuda" else 4)


def train_generator(job: GeneratorJob, cfg: Config, real: torch.Tensor, device: torch.device,
                    progress: bool = True, snapshot_metric: SnapshotMetric | None = None) -> dict:
    """Train one generator instance against D (and the fool term); return a summary dict."""
    return train_generators([job], cfg, real, device, progress,
                            snapshot_metric=snapshot_metric)[0]


def train_generators(jobs: Sequence[GeneratorJob], cfg: Config, real: torch.Tensor,
                     device: torch.device, progress: bool = True,
                     group_dir: Path | None = None,
                     snapshot_metric: SnapshotMetric | None = None) -> list[dict]:
    """Train n instances (n > 1: fused, checkpointing to `group_dir`); one summary each.

    The instances of a group must fool the same classifiers (those of `jobs[0]`): the jobs
    of one iteration do. `snapshot_metric` measures snapshot samples when gan.snapshot_metric
    asks for it (the experiment passes its quality meter: see gangaps.train.snapshots)."""
    gcfg, n = cfg.gan, len(jobs)
    if gcfg.snapshot_metric != "none" and snapshot_metric is None:
        raise ValueError(f"gan.snapshot_metric={gcfg.snapshot_metric} needs a snapshot_metric "
                         "callable (the experiment passes its quality meter's)")
    metric = snapshot_metric if gcfg.snapshot_metric != "none" else None
    family = get_family(gcfg.family)
    channels, resolution = real.shape[1], real.shape[-1]
    total_steps = math.ceil(gcfg.kimg * 1000 / gcfg.batch_size)
    ckpt_every = max(1, round(gcfg.checkpoint_kimg * 1000 / gcfg.batch_size))
    log_every = max(1, round(gcfg.log_kimg * 1000 / gcfg.batch_size))
    split = n == 1 and jobs[0].data_parallel and ddp.is_distributed()
    if n > 1 and group_dir is None:
        raise ValueError("a group of jobs needs a group_dir for its checkpoint")
    if split:
        real = ddp.shard(real)
    state = TrainState(family, gcfg, jobs, channels, resolution, len(real), device, split)
    real = state.place(real)  # on the device once (gan.data_on_device)
    world, writer = state.world, state.rank == 0  # rank 0 alone writes and shows progress
    nets, opts, phases = state.nets, state.opts, family.phases(gcfg)
    fool = FoolTerm(jobs[0].fool_classifiers,
                    FoolSchedule.from_config(cfg.experiment, total_steps, gcfg.batch_size),
                    instances=n).to(device)
    state.companions["fool"] = fool  # its controller's multiplier resumes with the job
    # channels_last is applied by the state (parameters and optimizer moments); bf16 and
    # channels_last run on any device, so the CUDA path is tested on CPU (CPU autocast)
    if gcfg.compile:
        if gcfg.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise UserError(f"gan.compile_backend={gcfg.compile_backend!r}: not a torch.compile "
                            "backend; e.g. inductor, aot_eager")
        # the adaptive fool weight differentiates twice through one graph (retain_graph), which
        # compiled backwards with donated buffers refuse
        import torch._functorch.config as functorch_config
        functorch_config.donated_buffer = False
        family.compile(nets, gcfg.compile_backend)
    autocast = (lambda: torch.autocast(device.type, torch.bfloat16)) if gcfg.bf16 \
        else contextlib.nullcontext

    ckpt_path = (jobs[0].out_dir if n == 1 else group_dir) / CHECKPOINT
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    state.load(ckpt_path)
    logs = [InstanceLog(job.out_dir, state.step, gcfg.tensorboard, writer and job.write_checkpoint)
            for job in jobs]
    boards = [log.tb for log in logs]
    snap_every = snapshot_every(gcfg)
    if snap_every and writer and state.step and state.step % snap_every == 0:
        # what a crash may have cut off (after the logs: their events are rebuilt first)
        write_snapshot(state, jobs, ckpt_path, gcfg, device, metric, boards)
    # first step of a non-finite loss per phase and instance, kept on the device (no sync per
    # step) and checked before every log line and checkpoint, so garbage is never written
    first_bad: dict[str, torch.Tensor] = {}

    def check_finite() -> None:
        names = list(first_bad)
        worst = [first_bad[k].min().item() for k in names]
        if split:  # any rank's NaN stops every rank at the same check
            worst = ddp.mean_over_ranks(worst)
        for name, s in zip(names, worst, strict=True):
            if s < _NEVER:
                i = int(first_bad[name].argmin())
                at = int(first_bad[name][i]) if int(first_bad[name][i]) < _NEVER else "?"
                job = jobs[i]
                raise NonFiniteLoss(f"{job.label or 'generator'} ({job.out_dir}): loss of phase "
                                    f"{name} is not finite at step {at}; the job stopped and "
                                    f"its last good checkpoint is kept (try a lower gan.lr)")

    # statistics stay [n] tensors until a log line is written: no GPU sync per step
    stats_sum: dict[str, torch.Tensor] = {}
    stats_n: dict[str, int] = {}
    peak = peak_flops(device, computes_in_bf16(family, gcfg), world)  # all ranks' devices
    step_flops = peak and n * instance_step_flops(family, gcfg, channels, resolution,
                                                  state.batch_size, device)
    t0, steps = time.perf_counter(), 0
    last_ckpt = time.monotonic()  # gan.checkpoint_minutes counts from here
    nets.train()
    bar = tqdm(total=total_steps, initial=state.step, unit="step", leave=False,
               desc=jobs[0].label or jobs[0].out_dir.name if n == 1 else f"{n} instances",
               disable=not (progress and writer), dynamic_ncols=True)
    while state.step < total_steps:
        step = state.step
        batch = state.real_batch(real)
        per_instance = batch.shape[-4]  # images each instance sees this step
        for phase in phases:
            if step % phase.interval:
                continue
            z = state.latents(per_instance)
            with autocast():
                out = family.phase_loss(phase, nets, batch, z, step)
                loss = out.loss.reshape(n)  # each instance's own loss
                if phase.fool and out.fake is not None:
                    fakes = out.fake.reshape(n, -1, *out.fake.shape[-3:])
                    term = fool.weighted(fakes, loss, family.last_layer(nets), step)
                    if term is not None:
                        loss = loss + term[0]
                        out.stats.update(term[1])
                        if fool.controlled:
                            _control(fool, family, nets, z, out.stats, step)
            bad = torch.where(torch.isfinite(loss.detach()), _NEVER, step + 1)  # as logged
            first_bad[phase.name] = torch.minimum(first_bad.get(phase.name, bad), bad)
            opts[phase.opt].zero_grad(set_to_none=True)
            loss.sum().backward()  # instances share nothing: each gets its own gradient
            opts[phase.opt].step()
            for k, v in out.stats.items():  # phases run at intervals: count per key
                v = torch.as_tensor(v).detach().float().reshape(-1).expand(n)
                stats_sum[k] = stats_sum.get(k, 0.0) + v
                stats_n[k] = stats_n.get(k, 0) + 1
        family.end_step(nets, step, per_instance)
        state.step += 1
        steps += 1
        bar.update(1)
        if state.step % log_every == 0 or state.step % ckpt_every == 0 or state.step == total_steps:
            check_finite()
        ckpt_due = state.step % ckpt_every == 0 or state.step == total_steps
        if state.step % log_every == 0 and gcfg.checkpoint_minutes and not ckpt_due:
            # time-based, at log lines only (checked for finite losses above); rank 0's clock
            ckpt_due = ddp.agree(time.monotonic() - last_ckpt >= 60 * gcfg.checkpoint_minutes)
        if state.step % log_every == 0 or state.step == total_steps:
            dt = max(time.perf_counter() - t0, 1e-9)
            means = {k: (v / stats_n[k]).tolist() for k, v in stats_sum.items()}
            if split:  # losses of the global batch: the mean of the ranks' means
                means = dict(zip(means, ([m] for m in ddp.mean_over_ranks(
                    [m[0] for m in means.values()])), strict=True))
            speed = {"img_per_s": round(steps * per_instance * world / dt, 2)}
            if step_flops:  # every rank's FLOPs against every rank's device's peak
                speed["mfu"] = round(step_flops * steps * world / dt / peak, 4)
            lam = fool.schedule.scale(state.step) if fool.active else 0.0
            for i, log in enumerate(logs):
                log.write({"step": state.step, "kimg": round(state.step * gcfg.batch_size / 1000, 3),
                           **{k: m[i] for k, m in means.items()}, **speed, "fool_lambda": lam})
            bar.set_postfix(img_s=f"{speed['img_per_s'] * n:.0f}")
            stats_sum, stats_n, t0, steps = {}, {}, time.perf_counter(), 0
        snap = snap_every and state.step % snap_every == 0
        if ckpt_due or snap:
            state.save(ckpt_path)  # on a background thread with gan.checkpoint_background
            last_ckpt = time.monotonic()
        if snap and writer:
            state.writer.wait()  # a snapshot is drawn from the written checkpoint
            write_snapshot(state, jobs, ckpt_path, gcfg, device, metric, boards)
    bar.close()
    state.writer.wait()
    for log in logs:
        log.close()
    if n > 1:  # every instance ends as an ordinary job checkpoint in its own directory
        for i, job in enumerate(jobs):
            if job.write_checkpoint:
                state.save_instance(i, job.out_dir / CHECKPOINT)
    summary = {"steps": state.step, "kimg": state.step * gcfg.batch_size / 1000}
    if n > 1:
        summary["group"] = [job.out_dir.name for job in jobs]
    if split:  # proof that the replicas stayed identical (a divergence would be a bug)
        digests = ddp.gather_to_rank0(ddp.parameters_digest(nets))
        summary.update(world_size=world, replica_digests=digests)
        if digests is not None and len(set(digests)) > 1:
            warnings.warn(f"{jobs[0].out_dir}: the {world} ranks ended with different weights; "
                          "rank 0's are kept", RuntimeWarning, stacklevel=2)
    return [dict(summary) for _ in jobs]



_SAMPLER_READ_EVERY = 4  # steps between the controller's readings of G_ema (+5 % a step, not +20 %)


def _control(fool: FoolTerm, family, nets: torch.nn.ModuleDict, z: torch.Tensor, stats: dict,
             step: int) -> None:
    """Move the fool controller by the fooled fraction of the network that is evaluated.

    Without G_ema, the step's own fakes, every step (no extra work). With it, G_ema's images
    of the step's latents in eval mode, as they are sampled for evaluation, every
    `_SAMPLER_READ_EVERY` steps (each reading moves the multiplier as far as that many steps
    would): G_ema, an average of G, fools far less than G (docs/findings-mnist.md §10), and
    the controller must push until the evaluated generator fools, not the training one.
    Logged as `fooled_sampled`.
    """
    sampler = family.sampler(nets)
    if sampler is nets["G"]:
        fool.control(stats["fooled"])
        return
    if step % _SAMPLER_READ_EVERY:
        return
    was_training = sampler.training
    sampler.eval()  # BatchNorm's running statistics, not the batch's; nothing updated
    with torch.no_grad():
        images = sampler(z)
    sampler.train(was_training)
    fooled = fool.fooled(images.reshape(*stats["fooled"].shape, -1, *images.shape[-3:]))
    stats["fooled_sampled"] = fooled
    fool.control(fooled, _SAMPLER_READ_EVERY)
