"""The one GAN training loop: any family, with or without the fool term, resumable exactly.

Reads top to bottom: build (or resume), then per step run the family's phases, adding
w·L_fool to the generator's main phase (`gangaps.train.fool`: λ, its schedule and balance); log
throughput; checkpoint the full state (networks, optimizers, step, data order, RNG) every
`checkpoint_kimg`; finish with a sample grid.

Under torchrun (`GeneratorJob.data_parallel` and a process group) one job is split over the
ranks: the same initial weights everywhere (same seed, then rank 0's broadcast), per rank a
disjoint shard of the real images, its own latents and randomness, and gan.batch_size / world
images a step; gradients are averaged before every optimizer step, so every rank holds the
same weights. Steps, logging and checkpoint intervals count global images. Rank 0 alone writes
the log and the checkpoint; the checkpoint also holds every rank's own state (data order,
latent generator, RNG, per-rank buffers such as BatchNorm statistics), gathered to rank 0, so
a killed multi-process job resumes exactly, with the same number of processes.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gangaps.config import Config
from gangaps.data import to_model_range
from gangaps.data.sampler import EpochSampler
from gangaps.errors import UserError
from gangaps.io import (
    append_jsonl,
    atomic_write_text,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from gangaps.train import distributed as ddp
from gangaps.train.family import get_family
from gangaps.train.fool import FoolSchedule, FoolTerm

CHECKPOINT = "checkpoint.safetensors"


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


def train_generator(job: GeneratorJob, cfg: Config, real: torch.Tensor, device: torch.device,
                    progress: bool = True) -> dict:
    """Train one generator instance against D (and the fool term); return a summary dict."""
    gcfg = cfg.gan
    family = get_family(gcfg.family)
    channels, resolution = real.shape[1], real.shape[-1]
    total_steps = math.ceil(gcfg.kimg * 1000 / gcfg.batch_size)
    ckpt_every = max(1, round(gcfg.checkpoint_kimg * 1000 / gcfg.batch_size))
    log_every = max(1, round(gcfg.log_kimg * 1000 / gcfg.batch_size))
    split = job.data_parallel and ddp.is_distributed()
    world, rank = (ddp.world_size(), ddp.rank()) if split else (1, 0)
    writer = rank == 0  # the one process that writes log and checkpoint, and shows progress
    rank_seed, batch_size = job.seed, gcfg.batch_size
    if split:
        rank_seed, batch_size = ddp.rank_job_settings(job.seed, gcfg.batch_size)
        real = ddp.shard(real)

    torch.manual_seed(job.seed)  # network init and any module randomness (dropout)
    nets = family.build(gcfg, channels, resolution).to(device)
    if job.init_from is not None:
        nets["G"].load_state_dict(_sampler_weights(job.init_from))
        if "G_ema" in nets:
            nets["G_ema"].load_state_dict(_sampler_weights(job.init_from))
    opts = family.optimizers(gcfg, nets)
    if ddp.is_distributed():  # every family: one gradient average a step, one start
        for opt in opts.values():
            ddp.average_gradients_before_step(opt)  # idempotent (StyleGAN2 registers it too)
        ddp.broadcast_module(nets)
    if split:
        torch.manual_seed(rank_seed)  # per-rank dropout, noise and augmentation from here on
    phases = family.phases(gcfg)
    fool = FoolTerm(job.fool_classifiers,
                    FoolSchedule.from_config(cfg.experiment, total_steps)).to(device)
    sampler = EpochSampler(len(real), batch_size, rank_seed)
    z_gen = torch.Generator(device=device).manual_seed(rank_seed)
    step = 0
    buffer_names = {name for name, _ in nets.named_buffers()}

    ckpt_path = job.out_dir / CHECKPOINT
    resume = ckpt_path.exists()
    if split:
        resume = ddp.agree(resume)  # all ranks take the same branch
    if resume:  # resume the full state
        state = load_state(ckpt_path)
        if state.get("world_size", 1) != world:
            raise UserError(f"{ckpt_path} was written by {state.get('world_size', 1)} "
                            f"process(es); resume it with the same number (now {world})")
        nets.load_state_dict(state["nets"])
        for k, opt in opts.items():
            opt.load_state_dict(state["opts"][k])
        own = state["ranks"][rank] if split else state
        if split:  # this rank's own buffers (BatchNorm statistics, running means)
            nets.load_state_dict({**nets.state_dict(), **own["buffers"]})
        sampler.load_state_dict(own["sampler"])
        z_gen.set_state(own["z_gen"])
        set_rng_state(own["rng"])
        step = state["step"]

    def save() -> None:
        ranks = None
        if split:  # a collective: every rank reaches it at the same step
            ranks = ddp.gather_to_rank0({
                "sampler": sampler.state_dict(), "z_gen": z_gen.get_state(), "rng": rng_state(),
                "buffers": {k: v.detach().cpu() for k, v in nets.state_dict().items()
                            if k in buffer_names}})
        if not writer:
            return
        state = {
            "spec": {"gan": gcfg.model_dump(mode="json"), "channels": channels,
                     "resolution": resolution, "seed": job.seed},
            "nets": nets.state_dict(), "opts": {k: o.state_dict() for k, o in opts.items()},
            "sampler": sampler.state_dict(), "z_gen": z_gen.get_state(), "rng": rng_state(),
            "step": step,
        }
        if split:
            state.update(world_size=world, ranks=ranks)
        save_state(ckpt_path, state)

    log_path = job.out_dir / "log.jsonl"
    if step > 0 and writer:
        _truncate_log(log_path, step)  # lines written after the checkpoint are replayed
    # statistics stay tensors until a log line is written: no GPU sync per step
    stats_sum: dict[str, torch.Tensor | float] = {}
    stats_n: dict[str, int] = {}
    t0, imgs = time.perf_counter(), 0
    nets.train()
    bar = tqdm(total=total_steps, initial=step, desc=job.label or str(job.out_dir.name),
               unit="step", disable=not (progress and writer), leave=False, dynamic_ncols=True)
    while step < total_steps:
        batch = to_model_range(real[sampler.next()].to(device, non_blocking=True))
        for phase in phases:
            if step % phase.interval:
                continue
            z = torch.randn(batch.shape[0], gcfg.z_dim, device=device, generator=z_gen)
            out = family.phase_loss(phase, nets, batch, z, step)
            loss = out.loss
            if phase.fool and out.fake is not None:
                term = fool.weighted(out.fake, out.loss, family.last_layer(nets), step)
                if term is not None:
                    loss = loss + term[0]
                    out.stats.update(term[1])
            opts[phase.opt].zero_grad(set_to_none=True)
            loss.backward()
            opts[phase.opt].step()
            for k, v in out.stats.items():  # phases run at intervals: count per key
                stats_sum[k] = stats_sum.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)
                stats_n[k] = stats_n.get(k, 0) + 1
        family.end_step(nets, step, batch.shape[0])
        step += 1
        imgs += batch.shape[0] * world  # global images
        bar.update(1)
        if step % log_every == 0 or step == total_steps:
            dt = time.perf_counter() - t0
            means = [float(v) / stats_n[k] for k, v in stats_sum.items()]
            if split:  # losses of the global batch: the mean of the ranks' means
                means = ddp.mean_over_ranks(means)
            record = {"step": step, "kimg": round(step * gcfg.batch_size / 1000, 3),
                      **dict(zip(stats_sum, means, strict=True)),
                      "img_per_s": round(imgs / max(dt, 1e-9), 2),
                      "fool_lambda": fool.schedule.scale(step) if fool.active else 0.0}
            if writer:
                append_jsonl(log_path, record)
            bar.set_postfix(img_s=f"{record['img_per_s']:.0f}")
            stats_sum, stats_n, t0, imgs = {}, {}, time.perf_counter(), 0
        if step % ckpt_every == 0 or step == total_steps:
            save()
    bar.close()
    summary = {"steps": step, "kimg": step * gcfg.batch_size / 1000}
    if split:  # proof that the replicas stayed identical (a divergence would be a bug)
        digests = ddp.gather_to_rank0(ddp.parameters_digest(nets))
        summary.update(world_size=world, replica_digests=digests)
        if digests is not None and len(set(digests)) > 1:
            warnings.warn(f"{job.out_dir}: the {world} ranks ended with different weights; "
                          "rank 0's are kept", RuntimeWarning, stacklevel=2)
    return summary


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def _sampler_weights(checkpoint: Path) -> dict:
    from gangaps.generators import load_generator
    return load_generator(checkpoint).state_dict()
