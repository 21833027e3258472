"""The full training state of one generator job, alone or a fused group, with save and load.

A job trains n ≥ 1 instances. Each is built exactly as it would be alone (global seed, the
family's `build`, its `init_from` weights); n > 1 fuses them (`GANFamily.fuse`). Per instance
it keeps its own streams: data order (EpochSampler), latents and module randomness (dropout
masks), each a seeded generator of its own, so a fused instance draws exactly what it would
draw alone. Adam is elementwise and our optimizers have no weight decay, gradient clipping or
other cross-parameter coupling, so one Adam over the stacked parameters is n Adams.

Checkpoints: n = 1 writes today's job checkpoint; under torchrun (data-parallel, n = 1) it
also holds every rank's own streams, RNG and buffers, gathered to rank 0. A group writes one
checkpoint with the fused state and every instance's streams, and at the end each instance's
ordinary checkpoint (`save_instance`), the same as a job alone would leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gangaps.config import GANConfig
from gangaps.data import to_model_range
from gangaps.data.sampler import EpochSampler
from gangaps.errors import UserError, warn
from gangaps.io import StateWriter, load_resumable, restore_generator, rng_state, save_state, set_rng_state
from gangaps.models.grouped import instance_state, instance_tensor
from gangaps.train import distributed as ddp
from gangaps.train.family import GANFamily
from gangaps.train.sync_batchnorm import convert_sync_batchnorm


@dataclass
class Streams:
    """One instance's own data order, latents and dropout masks."""

    sampler: EpochSampler
    z: torch.Generator
    masks: torch.Generator

    @classmethod
    def seeded(cls, n_real: int, batch_size: int, seed: int, device: torch.device) -> Streams:
        masks_seed = (seed * 2_654_435_761 + 97) % 2**62  # a stream apart from the latents'
        return cls(EpochSampler(n_real, batch_size, seed),
                   torch.Generator(device=device).manual_seed(seed),
                   torch.Generator(device=device).manual_seed(masks_seed))

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "z_gen": self.z.get_state(),
                "mask_gen": self.masks.get_state()}

    def load_state_dict(self, state: dict) -> bool:
        """True if both streams continue exactly (False: saved on another kind of device)."""
        self.sampler.load_state_dict(state["sampler"])
        exact = restore_generator(self.z, state["z_gen"])
        if "mask_gen" in state:  # checkpoints before per-instance masks lack it
            exact = restore_generator(self.masks, state["mask_gen"]) and exact
        return exact


def _on(setting: bool | str, device: torch.device) -> bool:
    """A bool-or-auto setting resolved: auto is on for CUDA."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def grouped_rng(cfg: GANConfig, device: torch.device) -> bool:
    """gan.rng resolved: auto draws grouped on CUDA and per instance elsewhere (the CPU
    default's numbers stay those of the instances trained alone)."""
    return cfg.rng == "grouped" or (cfg.rng == "auto" and device.type == "cuda")


class TrainState:
    """Networks, optimizers, per-instance streams, step; `jobs` carry seed and init_from."""

    def __init__(self, family: GANFamily, cfg: GANConfig, jobs: Sequence, channels: int,
                 resolution: int, n_real: int, device: torch.device, split: bool) -> None:
        self.family, self.cfg, self.n, self.split = family, cfg, len(jobs), split
        self.seeds = [job.seed for job in jobs]
        self.channels, self.resolution, self.device = channels, resolution, device
        self.world, self.rank = (ddp.world_size(), ddp.rank()) if split else (1, 0)
        stream_seeds, self.batch_size = self.seeds, cfg.batch_size
        if split:
            rank_seed, self.batch_size = ddp.rank_job_settings(jobs[0].seed, cfg.batch_size)
            stream_seeds = [rank_seed]
        instances = []
        for job in jobs:
            torch.manual_seed(job.seed)  # network init (and global-RNG randomness) as alone
            nets = family.build(cfg, channels, resolution)
            if job.init_from is not None:
                weights = _sampler_weights(job.init_from)
                for k in ("G", "G_ema"):
                    if k in nets:
                        nets[k].load_state_dict(weights)
            instances.append(nets)
        self.nets = (instances[0] if self.n == 1 else family.fuse(cfg, channels, instances))
        if split and cfg.sync_batchnorm:  # normalise over the global batch, as one process
            self.nets = convert_sync_batchnorm(self.nets)
        self.nets = self.nets.to(device)
        if family.channels_last(cfg, device):  # before the optimizers: moments follow params
            self.nets.to(memory_format=torch.channels_last)
        self.opts = family.optimizers(cfg, self.nets)
        if ddp.is_distributed():  # every family: one gradient average a step, one start
            for opt in self.opts.values():
                ddp.average_gradients_before_step(opt)  # idempotent (StyleGAN2 registers it too)
            ddp.broadcast_module(self.nets)
        if split:
            torch.manual_seed(stream_seeds[0])  # per-rank noise and augmentation from here on
        self.streams = [Streams.seeded(n_real, self.batch_size, s, device) for s in stream_seeds]
        # grouped: latents and dropout masks drawn once per tensor for the whole group from the
        # global RNG (checkpointed); per-instance: from each instance's own streams
        self.grouped = grouped_rng(cfg, device)
        if not self.grouped:
            family.use_generators(self.nets, [s.masks for s in self.streams])
        self.step = 0
        # the loop's small stateful helpers (the fool term's controller): name -> an object
        # with state_dict_for_resume() / load_state_for_resume(), saved with the networks
        self.companions: dict[str, object] = {}
        self._buffers = {name for name, _ in self.nets.named_buffers()}
        self.writer = StateWriter(_on(cfg.checkpoint_background, device))

    def place(self, real: torch.Tensor) -> torch.Tensor:
        """The real images where batches are gathered from: on the device once
        (gan.data_on_device; auto: CUDA, if they fill at most a quarter of its memory), with
        each instance's data order there too, so a step is one gather on the device and no
        host copy; else on the host (each step's batch copied over)."""
        on = self.cfg.data_on_device
        if on == "auto":
            on = self.device.type == "cuda" and real.numel() * real.element_size() <= \
                torch.cuda.get_device_properties(self.device).total_memory // 4
        if not on:
            return real
        for s in self.streams:
            s.sampler.device = self.device
        return real.to(self.device)

    # -- one step's inputs: each instance's own ------------------------------------------
    def real_batch(self, real: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] alone, [n, B, C, H, W] for a group, in the model's range."""
        idx = [s.sampler.next() for s in self.streams]
        # one gather for the whole group (the same values as stacking per-instance gathers)
        x = real[idx[0]] if self.n == 1 else real[torch.cat(idx)].view(self.n, -1, *real.shape[1:])
        return to_model_range(x.to(self.device, non_blocking=True))

    def latents(self, batch: int) -> torch.Tensor:
        if self.grouped:
            shape = (batch, self.cfg.z_dim) if self.n == 1 else (self.n, batch, self.cfg.z_dim)
            return torch.randn(shape, device=self.device)
        z = [torch.randn(batch, self.cfg.z_dim, device=self.device, generator=s.z)
             for s in self.streams]
        return z[0] if self.n == 1 else torch.stack(z)

    # -- checkpoints ---------------------------------------------------------------------
    def _spec(self, seed: int | None = None) -> dict:
        spec = {"gan": self.cfg.model_dump(mode="json"), "channels": self.channels,
                "resolution": self.resolution}
        return {**spec, "seed": seed} if seed is not None else {**spec, "seeds": self.seeds}

    def save(self, path: Path) -> None:
        """Write the full state (under torchrun a collective: every rank calls it)."""
        ranks = None
        if self.split:
            ranks = ddp.gather_to_rank0({
                **self.streams[0].state_dict(), "rng": rng_state(self.device),
                "buffers": {k: v.detach().cpu() for k, v in self.nets.state_dict().items()
                            if k in self._buffers}})
        if self.rank != 0:
            return
        state = {"nets": self.nets.state_dict(), "rng": rng_state(self.device), "step": self.step,
                 "opts": {k: o.state_dict() for k, o in self.opts.items()},
                 "companions": {k: c.state_dict_for_resume() for k, c in self.companions.items()}}
        if self.n == 1:  # the format of one job's checkpoint (what load_generator reads)
            state.update(spec=self._spec(self.seeds[0]), **self.streams[0].state_dict())
        else:
            state.update(spec=self._spec(), streams=[s.state_dict() for s in self.streams])
        if self.split:
            state.update(world_size=self.world, ranks=ranks)
        self.writer.save(path, state, keep_previous=True)

    def load(self, path: Path) -> bool:
        """Resume from `path` if it exists (all ranks take the same branch); True if resumed."""
        state = load_resumable(path)  # a damaged newest checkpoint falls back to the previous
        resume = state is not None
        if self.split:
            resume = ddp.agree(resume)
        if not resume:
            return False
        if state.get("world_size", 1) != self.world:
            raise UserError(f"{path} was written by {state.get('world_size', 1)} "
                            f"process(es); resume it with the same number (now {self.world})")
        if state["spec"].get("seeds", [state["spec"].get("seed")]) != self.seeds:
            raise UserError(f"{path} holds instances of other seeds; it is not this job's")
        self.nets.load_state_dict(state["nets"])
        for k, opt in self.opts.items():
            opt.load_state_dict(state["opts"][k])
            _moments_like_parameters(opt)
        if self.n == 1:
            own = state["ranks"][self.rank] if self.split else state
            if self.split:  # this rank's own buffers (BatchNorm statistics, running means)
                self.nets.load_state_dict({**self.nets.state_dict(), **own["buffers"]})
            exact = self.streams[0].load_state_dict(own)
            exact = set_rng_state(own["rng"], self.device) and exact
        else:
            exact = all([s.load_state_dict(own)
                         for s, own in zip(self.streams, state["streams"], strict=True)])
            exact = set_rng_state(state["rng"], self.device) and exact
        if not exact:
            warn(f"{path}: random streams saved on another kind of device restart from seeds "
                 "derived from the checkpoint (the run goes on, not bit-identical to one that "
                 "never moved)")
        for k, companion in self.companions.items():
            if k in state.get("companions", {}):  # older checkpoints have none: from the start
                companion.load_state_for_resume(state["companions"][k])
        self.step = state["step"]
        return True

    def instance(self, i: int) -> nn.ModuleDict:
        """Instance i as the family's ordinary networks (a copy; CPU)."""
        if self.n == 1:
            return self.nets
        with torch.random.fork_rng(devices=[]):  # building draws init weights: keep the RNG
            nets = self.family.build(self.cfg, self.channels, self.resolution)
        fused = {k: v.detach().cpu() for k, v in self.nets.state_dict().items()}
        nets.load_state_dict(instance_state(fused, i, self.n, nets.state_dict()))
        return nets

    def save_instance(self, i: int, path: Path) -> None:
        """Instance i's ordinary job checkpoint, as if it had been trained alone."""
        nets = self.instance(i)
        opts = {}
        for k, opt in self.opts.items():
            sd, like = opt.state_dict(), list(nets[k].parameters())  # same order as fused
            opts[k] = {"param_groups": sd["param_groups"], "state": {
                idx: {name: instance_tensor(t.cpu(), i, self.n, like[idx].shape)
                      for name, t in moments.items()} for idx, moments in sd["state"].items()}}
        save_state(path, {"spec": self._spec(self.seeds[i]), "nets": nets.state_dict(),
                          "opts": opts, **self.streams[i].state_dict(), "rng": rng_state(self.device),
                          "step": self.step})


def _moments_like_parameters(opt: torch.optim.Optimizer) -> None:
    """Loaded optimizer moments take their parameter's memory layout (a checkpoint stores
    tensors contiguous; channels_last parameters would otherwise step NHWC against NCHW)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def _sampler_weights(checkpoint: Path) -> dict:
    from gangaps.generators import load_generator
    return load_generator(checkpoint).state_dict()
