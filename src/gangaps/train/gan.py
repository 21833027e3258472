"""The one GAN training loop: any family, with or without the fool term, resumable exactly.

Reads top to bottom: build (or resume), then per step run the family's phases, adding
λ·L_fool to the generator's main phase; log throughput; checkpoint the full state (networks,
optimizers, step, data order, RNG) every `checkpoint_kimg`; finish with a sample grid.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gangaps.config import Config
from gangaps.data import to_model_range
from gangaps.data.sampler import EpochSampler
from gangaps.io import (
    append_jsonl,
    atomic_write_text,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from gangaps.train.family import get_family
from gangaps.train.fool import FoolTerm

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class GeneratorJob:
    out_dir: Path
    seed: int
    fool_classifiers: list[torch.nn.Module] = field(default_factory=list)
    init_from: Path | None = None  # a finished generator checkpoint (init: previous)
    label: str = ""


def train_generator(job: GeneratorJob, cfg: Config, real: torch.Tensor, device: torch.device,
                    progress: bool = True) -> dict:
    """Train one generator instance against D (and the fool term); return a summary dict."""
    gcfg = cfg.gan
    family = get_family(gcfg.family)
    channels, resolution = real.shape[1], real.shape[-1]
    total_steps = math.ceil(gcfg.kimg * 1000 / gcfg.batch_size)
    ckpt_every = max(1, round(gcfg.checkpoint_kimg * 1000 / gcfg.batch_size))
    log_every = max(1, round(gcfg.log_kimg * 1000 / gcfg.batch_size))

    torch.manual_seed(job.seed)  # network init and any module randomness (dropout)
    nets = family.build(gcfg, channels, resolution).to(device)
    if job.init_from is not None:
        nets["G"].load_state_dict(_sampler_weights(job.init_from))
        if "G_ema" in nets:
            nets["G_ema"].load_state_dict(_sampler_weights(job.init_from))
    opts = family.optimizers(gcfg, nets)
    phases = family.phases(gcfg)
    fool = FoolTerm(job.fool_classifiers, cfg.experiment.fool_lambda,
                    round(cfg.experiment.fool_ramp * total_steps)).to(device)
    sampler = EpochSampler(len(real), gcfg.batch_size, job.seed)
    z_gen = torch.Generator(device=device).manual_seed(job.seed)
    step = 0

    ckpt_path = job.out_dir / CHECKPOINT
    if ckpt_path.exists():  # resume the full state
        state = load_state(ckpt_path)
        nets.load_state_dict(state["nets"])
        for k, opt in opts.items():
            opt.load_state_dict(state["opts"][k])
        sampler.load_state_dict(state["sampler"])
        z_gen.set_state(state["z_gen"])
        set_rng_state(state["rng"])
        step = state["step"]

    def save() -> None:
        save_state(ckpt_path, {
            "spec": {"gan": gcfg.model_dump(mode="json"), "channels": channels,
                     "resolution": resolution, "seed": job.seed},
            "nets": nets.state_dict(), "opts": {k: o.state_dict() for k, o in opts.items()},
            "sampler": sampler.state_dict(), "z_gen": z_gen.get_state(), "rng": rng_state(),
            "step": step,
        })

    log_path = job.out_dir / "log.jsonl"
    if step > 0:
        _truncate_log(log_path, step)  # lines written after the checkpoint are replayed
    # statistics stay tensors until a log line is written: no GPU sync per step
    stats_sum: dict[str, torch.Tensor | float] = {}
    stats_n: dict[str, int] = {}
    t0, imgs = time.perf_counter(), 0
    nets.train()
    bar = tqdm(total=total_steps, initial=step, desc=job.label or str(job.out_dir.name),
               unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    while step < total_steps:
        batch = to_model_range(real[sampler.next()].to(device, non_blocking=True))
        for phase in phases:
            if step % phase.interval:
                continue
            z = torch.randn(batch.shape[0], gcfg.z_dim, device=device, generator=z_gen)
            out = family.phase_loss(phase, nets, batch, z, step)
            loss = out.loss
            if phase.fool and fool.active and out.fake is not None:
                fool_loss = fool(out.fake)
                loss = loss + fool.weight(step) * fool_loss
                out.stats["loss_fool"] = fool_loss.detach()
            opts[phase.opt].zero_grad(set_to_none=True)
            loss.backward()
            opts[phase.opt].step()
            for k, v in out.stats.items():  # phases run at intervals: count per key
                stats_sum[k] = stats_sum.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)
                stats_n[k] = stats_n.get(k, 0) + 1
        family.end_step(nets, step, batch.shape[0])
        step += 1
        imgs += batch.shape[0]
        bar.update(1)
        if step % log_every == 0 or step == total_steps:
            dt = time.perf_counter() - t0
            record = {"step": step, "kimg": round(step * gcfg.batch_size / 1000, 3),
                      **{k: float(v) / stats_n[k] for k, v in stats_sum.items()},
                      "img_per_s": round(imgs / max(dt, 1e-9), 2),
                      "fool_lambda": fool.weight(step) if fool.active else 0.0}
            append_jsonl(log_path, record)
            bar.set_postfix(img_s=f"{record['img_per_s']:.0f}")
            stats_sum, stats_n, t0, imgs = {}, {}, time.perf_counter(), 0
        if step % ckpt_every == 0 or step == total_steps:
            save()
    bar.close()
    return {"steps": step, "kimg": step * gcfg.batch_size / 1000}


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
