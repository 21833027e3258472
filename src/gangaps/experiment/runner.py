"""Run an experiment: its job graph (`graph`), handed to an executor (`executors`).

Each job is skipped when its DONE marker exists and resumes from its checkpoint otherwise, so
re-running the same command continues where a killed run stopped. The local executor runs the
jobs one after another in this process, iteration by iteration; the ray executor runs each job
as soon as what it waits for is done, on any node of a Ray cluster. The report is built at the
end from the files the jobs wrote.

Under torchrun every process runs a Runner: each generator job is trained by all ranks together
(data-parallel, see `gangaps.train.gan`); everything else that writes the run directory
(config, lock, samples, DONE markers, classifier jobs, evaluation, report) runs on rank 0
while the other ranks wait (`distributed.on_rank0`), so they stay in step. The run directory
must be on a filesystem every rank sees (one machine, or a shared one across machines).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

from gangaps.config import Config, from_dict
from gangaps.data import RealData, load_real
from gangaps.errors import CorruptFile, UserError
from gangaps.experiment.executors import Progress, cluster_gpus, make_executor
from gangaps.experiment.graph import Job, build_graph
from gangaps.experiment.jobs import (
    JobContext,
    configure_device,
    is_done,
    job_summary_line,
    load_data,
    resolve_device,
    run_job,
)
from gangaps.experiment.store import RunStore, iteration0_view, redo_hint
from gangaps.io import append_jsonl
from gangaps.models.classifier_zoo import load_released_detector
from gangaps.models.classifiers import build_classifier
from gangaps.train import distributed as ddp
from gangaps.train.classifier import make_augment
from gangaps.train.family import get_family
from gangaps.train.gan import group_size

__all__ = ["Runner", "open_run", "resolve_device"]


def open_run(cfg: Config, out: str | Path, check_device: bool = True) -> tuple[RunStore, RealData]:
    """Validate everything a run needs (data included) before writing a single file."""
    store = RunStore(out, cfg.experiment.reuse_iteration0)
    if store.shared_iteration0 is not None:
        shared = RunStore(store.shared_iteration0).load_config()
        a, b = iteration0_view(shared), iteration0_view(cfg)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise UserError(f"experiment.reuse_iteration0: {store.shared_iteration0} was made "
                            f"with other settings ({', '.join(diff[:4])} differ)")
    real = load_real(cfg.data)
    if check_device:  # under ray the workers' devices count, not the driver's
        resolve_device(cfg.device)
    try:  # options valid?
        get_family(cfg.gan.family).build(cfg.gan, real.channels, real.resolution)
    except (RuntimeError, MemoryError) as e:  # each size valid, too big together
        raise UserError(f"gan: cannot build the networks ({str(e).splitlines()[0][:120]})") from None
    for spec in cfg.classifiers:
        build_classifier(spec.arch, real.channels, real.resolution, **spec.options)
        if spec.pretrained is not None:  # readable, safe (tensors only) and of that arch: now
            load_released_detector(spec.pretrained, spec.arch, real.channels, real.resolution,
                                   **spec.options)
    make_augment(cfg.classifier_training.augment)
    for i, path in enumerate(cfg.experiment.iteration0_from or []):
        if not Path(path).is_file():
            raise UserError(f"experiment.iteration0_from[{i}]: {path} not found")
    if cfg.evaluation.fid == "inception":  # fetch (or refuse) before hours of training, not after
        from gangaps.metrics.inception import resolve_weights
        resolve_weights(cfg.evaluation.inception_weights)
    store.check_config(cfg)  # refuse before touching anything (the lock file included)
    created = not store.root.exists()
    store.acquire()  # before the config is written or extended: one writer per run
    try:
        store.check_or_write_config(cfg)
    except BaseException:
        store.release()
        if created and not any(store.root.iterdir()):
            store.root.rmdir()  # a refused run leaves nothing behind
        raise
    return store, real


class Runner:
    def __init__(self, cfg: Config, out: str | Path, progress: bool = True,
                 executor: str = "local", address: str | None = None) -> None:
        self.cfg, self.executor_name, self.address = cfg, executor, address
        local = executor == "local"
        if ddp.launched_by_torchrun():  # join the job's process group: cuda:LOCAL_RANK or cpu
            if not local:
                raise UserError("--executor ray does not run under torchrun (Ray places the "
                                "jobs itself); use one or the other")
            self.device = ddp.init_from_env(cfg.device)
            if ddp.is_distributed():
                ddp.rank_job_settings(0, cfg.gan.batch_size)  # divisible? before any write
        # the written config holds the group size in effect: fused and one-by-one training
        # agree only to float tolerance, so a run resumes only with the same grouping
        cfg = _resolve_group_size(cfg, out, self.device if ddp.launched_by_torchrun() else
                                  _job_device(cfg, local, address))
        self.cfg = cfg
        self.main = ddp.rank() == 0
        if self.main:  # validates and writes the config; an error stops every rank
            self.store, real = ddp.on_rank0(lambda: open_run(cfg, out, check_device=local))
            real.eval_real = real.eval_real[:cfg.evaluation.n_real]
        else:
            ddp.on_rank0(lambda: None)  # wait for rank 0's checks and config.yaml
            self.store = RunStore(out, cfg.experiment.reuse_iteration0)
            real = load_data(cfg)
        if not ddp.launched_by_torchrun():
            self.device = resolve_device(cfg.device) if local else torch.device("cpu")
        configure_device(self.device, cfg.deterministic)
        self.progress = progress and self.main
        self.ctx = JobContext(cfg, self.store.root, self.device, real, self.progress)

    @property
    def name(self) -> str:
        return self.store.root.name

    def run(self) -> None:
        run_together([self], self.executor_name, self.address)

    def todo(self, jobs: list[Job]) -> list[Job]:
        todo = [j for j in jobs if not is_done(self.store, j)]
        if self.store.shared_iteration0 is not None:
            for job in todo:
                if job.iteration == 0 and job.kind != "evaluation":
                    raise UserError(f"shared iteration 0 is unfinished: {job.key} in "
                                    f"{self.store.shared_iteration0} (finish that run first)")
        return todo


def _job_device(cfg: Config, local: bool, address: str | None = None) -> torch.device:
    """The device generator jobs will train on: the local one, or on a Ray cluster (joined or
    started here) what `device` asks for, auto: CUDA when the cluster has GPUs."""
    if local:
        return resolve_device(cfg.device)
    if cfg.device == "auto":
        return torch.device("cuda" if cluster_gpus(address) else "cpu")
    return torch.device("cuda" if cfg.device.startswith("cuda") else "cpu")


def _resolve_group_size(cfg: Config, out: str | Path, device: torch.device) -> Config:
    """`gan.group_size: auto` made a number: an existing run's own (so it resumes anywhere as
    it was grouped), else by device."""
    size = cfg.gan.group_size
    if size == "auto":
        try:
            size = RunStore(out).load_config().gan.group_size
        except UserError:  # a new run (or one that open_run will refuse with its reason)
            size = group_size(cfg.gan, device, cfg.experiment.instances)
    else:
        size = group_size(cfg.gan, device, cfg.experiment.instances)  # checks the family
    cfg = cfg.model_copy(deep=True)
    cfg.gan.group_size = size
    return cfg


def run_together(runners: list[Runner], executor: str = "local",
                 address: str | None = None) -> None:
    """Runs whose jobs wait for nothing of each other's (a sweep's variants) as one graph,
    so a cluster works on all of them at once; then each run's report."""
    from gangaps.report import build_report
    several = len(runners) > 1
    by_run = {(r.name if several else ""): r for r in runners}
    locked: list[Runner] = []
    try:
        for r in runners:
            ddp.on_rank0(r.store.acquire)
            locked.append(r)
        graphs = {run: build_graph(r.cfg, run=run) for run, r in by_run.items()}
        todo = [j for run, r in by_run.items() for j in r.todo(graphs[run])]
        main = runners[0]
        progress = Progress(todo, main.progress, partial(_log_record, by_run, main.main),
                            partial(_detail, by_run))
        ex = make_executor(executor, main.cfg, address)  # resources: the same for every run
        if executor == "local":
            # under torchrun every rank walks every job, each skip agreed with rank 0
            jobs = [j for g in graphs.values() for j in g] if ddp.is_distributed() else todo
            ex.run(jobs, partial(_local_work, by_run), progress)
        else:
            ex.run(todo, partial(_ray_work, {run: (r.cfg.model_dump(mode="json"), str(r.store.root))
                                             for run, r in by_run.items()}), progress)
        for r in runners:
            ddp.on_rank0(lambda r=r: build_report(r.store.root))
    except CorruptFile as e:  # a finished job's artifact: say how to redo that job
        if RunStore.is_done(e.path.parent):
            raise UserError(f"{e}; {redo_hint(e.path.parent)}") from None
        raise
    finally:
        for r in locked:
            if r.main:
                r.store.release()


def _local_work(by_run: dict[str, Runner], job: Job, device: str | None) -> dict:
    return run_job(by_run[job.run].ctx, job)


def _log_record(by_run: dict[str, Runner], main: bool, job: Job, record: dict) -> None:
    if main:
        append_jsonl(by_run[job.run].store.jobs_log_path, record)


def _detail(by_run: dict[str, Runner], job: Job) -> str:
    return job_summary_line(job, by_run[job.run].store)


_CONTEXTS: dict[tuple[str, str], JobContext] = {}  # per worker process: data loaded once


def _ray_work(runs: dict[str, tuple[dict, str]], job: Job, device: str | None) -> dict:
    """A job in a Ray worker (module level: Ray ships it by reference); `runs` maps a run to
    its config and directory."""
    cfg_tree, root = runs[job.run]
    key = (root, json.dumps(cfg_tree, sort_keys=True) + str(device))
    if key not in _CONTEXTS:
        cfg = from_dict(cfg_tree)
        _CONTEXTS[key] = JobContext(cfg, root, torch.device(device or "cpu"))
        configure_device(_CONTEXTS[key].device, cfg.deterministic)
    return run_job(_CONTEXTS[key], job)
