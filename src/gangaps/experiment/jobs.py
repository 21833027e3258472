"""The bodies of the experiment's jobs: train a generator, train a classifier, evaluate.

Each runs in whatever process an executor puts it (the driver, a Ray worker on another node)
from the config, the run directory and the job alone, under the job's lock, and writes only the
job's own outputs. A job is done when its DONE marker (evaluations: their result files)
exists. Numbers do not depend on where a job ran: every seed comes from `plan.derive_seed`, and
the caches kept between jobs of one process (LeNet, real logits) hold exactly what a fresh
process computes again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from gangaps.config import Config
from gangaps.data import RealData, load_real
from gangaps.errors import UserError
from gangaps.experiment.evaluate import QualityMeter, cache_dir, detection_record
from gangaps.experiment.graph import CLASSIFIER, EVALUATION, GENERATOR, Job
from gangaps.experiment.joblock import job_lock
from gangaps.experiment.plan import ClassifierJobSpec, GeneratorSpec, derive_seed
from gangaps.experiment.store import RunStore
from gangaps.generators import generate, load_generator
from gangaps.io import atomic_write_json
from gangaps.train import distributed as ddp
from gangaps.train.classifier import FINAL, classify, load_classifier, train_classifier
from gangaps.train.events import add_scalars
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generators


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available")
    return torch.device(name)


def configure_device(device: torch.device, deterministic: bool = False) -> None:
    """CUDA: TF32, and cuDNN autotuning (fixed shapes: the fastest kernels), unless
    `deterministic`: then only deterministic kernels (an error names an op that has none) and
    a fixed cuBLAS workspace, so a run repeats bit for bit on the same GPU and software."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:  # before the first cuBLAS call of the process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


def load_data(cfg: Config) -> RealData:
    real = load_real(cfg.data)
    real.eval_real = real.eval_real[:cfg.evaluation.n_real]
    return real


class JobContext:
    """What jobs of one run share within one process: config, store, device, data, caches."""

    def __init__(self, cfg: Config, root: str | Path, device: torch.device,
                 real: RealData | None = None, progress: bool = False) -> None:
        self.cfg, self.device, self.progress = cfg, device, progress
        self.store = RunStore(root, cfg.experiment.reuse_iteration0)
        self._real = real
        self._quality: QualityMeter | None = None
        self._real_logits: dict[tuple, torch.Tensor] = {}

    @property
    def real(self) -> RealData:
        if self._real is None:
            self._real = load_data(self.cfg)
        return self._real


# -- where a job's outputs and lock are ----------------------------------------------------
def is_done(store: RunStore, job: Job) -> bool:
    if job.kind == GENERATOR:
        return all(store.is_done(store.generator_dir(s.iteration, s.instance))
                   for s in job.generators)
    if job.kind == CLASSIFIER:
        return store.is_done(store.classifier_dir(job.classifier.iteration, job.classifier.clf_id))
    quality, todo = _eval_todo(store, job)
    return not quality and not todo


LOCK = ".lock"  # in a generator's or classifier's directory


def lock_paths(store: RunStore, job: Job) -> list[Path]:
    """Beside the job's outputs: <gen or clf dir>/.lock, iter_KK/eval/.gen_NN_cII.lock."""
    if job.kind == GENERATOR:
        return [store.generator_dir(s.iteration, s.instance) / LOCK for s in job.generators]
    if job.kind == CLASSIFIER:
        return [store.classifier_dir(job.classifier.iteration, job.classifier.clf_id) / LOCK]
    g = job.generators[0]
    eval_dir = store.eval_path(g.iteration, g.instance, job.clf_iteration, "x").parent
    return [eval_dir / f".gen_{g.instance:02d}_c{job.clf_iteration:02d}{LOCK}"]


def _eval_todo(store: RunStore, job: Job) -> tuple[bool, list[ClassifierJobSpec]]:
    g, i = job.generators[0], job.clf_iteration
    quality = job.with_quality and not store.quality_path(g.iteration, g.instance).exists()
    todo = [c for c in job.classifiers
            if not store.eval_path(g.iteration, g.instance, i, c.clf_id).exists()]
    return quality, todo


# -- running one job -----------------------------------------------------------------------
def run_job(ctx: JobContext, job: Job) -> dict:
    """Run `job` unless it is done; under torchrun generators on every rank, the rest on rank 0.
    Returns what the driver logs: where and when it ran, or skipped."""
    record = {"job": job.key, "kind": job.kind, "iteration": job.iteration, "start": time.time()}
    if ddp.agree(is_done(ctx.store, job)):  # rank 0's view: every rank skips together
        return {**record, "skipped": True}
    if job.kind == GENERATOR:
        with _locked(ctx, job):  # rank 0 holds the locks while all ranks train
            _generators(ctx, job.generators)
    else:
        body = _classifier if job.kind == CLASSIFIER else _evaluation
        ddp.on_rank0(lambda: _run_locked(ctx, job, body))
    return {**record, "end": time.time(), "skipped": False}


def _locked(ctx: JobContext, job: Job) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if ddp.rank() == 0:
        for path in lock_paths(ctx.store, job):
            stack.enter_context(job_lock(path, job.label))
    return stack


def _run_locked(ctx: JobContext, job: Job, body) -> None:
    with _locked(ctx, job):
        if not is_done(ctx.store, job):  # another driver may have finished it meanwhile
            body(ctx, job)


def _shared_unfinished(ctx: JobContext, out: Path) -> UserError:
    return UserError(f"shared iteration 0 is unfinished: {out} (finish that run first)")


def _generators(ctx: JobContext, specs: tuple[GeneratorSpec, ...]) -> None:
    """Train the job's instances: one alone, or several as one fused group (see
    `gangaps.train.gan`); each ends as its own gen_NN/ with checkpoint, samples and DONE."""
    store, cfg = ctx.store, ctx.cfg
    outs = [store.generator_dir(s.iteration, s.instance) for s in specs]
    done = [ddp.agree(store.is_done(out)) for out in outs]  # rank 0's view: all ranks alike
    if all(done):
        return
    k = specs[0].iteration
    if k == 0 and store.shared_iteration0 is not None:
        raise _shared_unfinished(ctx, outs[done.index(False)])
    if k == 0 and cfg.experiment.iteration0_from is not None:
        ddp.on_rank0(lambda: _generators_from_files(ctx, specs, outs, done))
        return
    fool = [load_classifier(store.classifier_dir(i, cid) / FINAL, ctx.device)
            for i, cid in specs[0].fool_targets]  # the same for every instance of iteration k
    jobs = [GeneratorJob(out, s.seed, fool,
                         store.generator_dir(*s.init_from) / CHECKPOINT if s.init_from else None,
                         f"iter {k} gen {s.instance:02d}", data_parallel=True,
                         write_checkpoint=not finished)  # a finished instance stays as it is
            for s, out, finished in zip(specs, outs, done, strict=True)]
    group_dir = store.group_dir(k, [s.instance for s in specs]) if len(specs) > 1 else None
    resumed = ddp.agree(((group_dir or outs[0]) / CHECKPOINT).exists())
    t0 = time.perf_counter()
    # lazy: the meter (LeNet, real statistics) is made at the first snapshot, not before
    metric = (lambda fake: _quality_meter(ctx).snapshot_record(fake)) \
        if cfg.gan.snapshot_metric != "none" else None
    summaries = train_generators(jobs, cfg, ctx.real.gan_train, ctx.device, ctx.progress,
                                 group_dir, snapshot_metric=metric)

    def finish() -> None:  # sample grids and DONE markers (rank 0 only under torchrun)
        for spec, out, summary, finished in zip(specs, outs, summaries, done, strict=True):
            if finished:
                continue
            G = load_generator(out / CHECKPOINT, ctx.device)
            grid = generate(G, cfg.gan.sample_grid, seed=0, device=ctx.device)
            save_image(grid.float() / 255, out / "samples.png",
                       nrow=max(1, int(len(grid) ** 0.5)))
            summary.update(seed=spec.seed, split=spec.split, seconds=time.perf_counter() - t0,
                           fool_targets=[list(t) for t in spec.fool_targets], resumed=resumed)
            store.mark_done(out, summary)
        if group_dir is not None:  # every member is its own finished job now
            shutil.rmtree(group_dir, ignore_errors=True)
    ddp.on_rank0(finish)


def _generators_from_files(ctx: JobContext, specs: tuple[GeneratorSpec, ...], outs: list[Path],
                           done: list[bool]) -> None:
    """experiment.iteration0_from: instance n of iteration 0 is the n-th file (a generator
    checkpoint, ours or converted from NVIDIA's), copied in as a finished job: no training."""
    from gangaps.generators import load_generator_state
    from gangaps.io import save_state
    cfg = ctx.cfg
    for spec, out, finished in zip(specs, outs, done, strict=True):
        if finished:
            continue
        src = Path(cfg.experiment.iteration0_from[spec.instance])
        if not src.is_file():
            raise UserError(f"experiment.iteration0_from[{spec.instance}]: {src} not found")
        state = load_generator_state(src)
        got = (state["spec"]["channels"], state["spec"]["resolution"])
        want = (ctx.real.channels, ctx.real.resolution)
        if got != want:
            raise UserError(f"experiment.iteration0_from[{spec.instance}]: {src} makes "
                            f"{got[0]}×{got[1]}² images, the data is {want[0]}×{want[1]}²")
        if cfg.experiment.init == "previous" and cfg.experiment.iterations > 1:
            _check_startable(cfg, src, want)
        out.mkdir(parents=True, exist_ok=True)
        save_state(out / CHECKPOINT, {"spec": state["spec"], "nets": state["nets"], "step": 0})
        G = load_generator(out / CHECKPOINT, ctx.device)
        grid = generate(G, cfg.gan.sample_grid, seed=0, device=ctx.device)
        save_image(grid.float() / 255, out / "samples.png", nrow=max(1, int(len(grid) ** 0.5)))
        ctx.store.mark_done(out, {"steps": 0, "kimg": 0.0, "seed": spec.seed, "split": spec.split,
                                  "seconds": 0.0, "fool_targets": [], "resumed": False,
                                  "source": str(src)})


def _check_startable(cfg: Config, src: Path, data: tuple[int, int]) -> None:
    """init: previous starts iteration 1 from these weights: the run's gan section must build
    the same network (family, z_dim, architecture options)."""
    from gangaps.train.family import get_family
    weights = load_generator(src).state_dict()
    with torch.random.fork_rng(devices=[]):
        nets = get_family(cfg.gan.family).build(cfg.gan, *data)
    ours = nets["G"].state_dict()
    bad = sorted(k for k in set(ours) | set(weights)
                 if k not in ours or k not in weights or ours[k].shape != weights[k].shape)
    if bad:
        raise UserError(f"experiment.init=previous: {src} is not the network gan.* builds "
                        f"({len(bad)} tensors differ, e.g. {bad[0]}); set gan.family, gan.z_dim "
                        "and gan.options as the file's (see `gangaps export-nvidia` config.json)")


def _classifier(ctx: JobContext, job: Job) -> None:
    store, spec = ctx.store, job.classifier
    out = store.classifier_dir(spec.iteration, spec.clf_id)
    if spec.iteration == 0 and store.shared_iteration0 is not None:
        raise _shared_unfinished(ctx, out)
    if spec.pretrained is not None:
        return _pretrained_classifier(ctx, spec, out)
    gens = [store.generator_dir(spec.iteration, n) / CHECKPOINT for n in spec.train_instances]
    t0 = time.perf_counter()
    summary = train_classifier(out, spec.arch, spec.options, spec.seed, gens,
                               ctx.real.classifier_train, ctx.cfg.classifier_training,
                               ctx.device, ctx.progress, job.label)
    summary.update(seed=spec.seed, role=spec.role, arch=spec.arch,
                   seconds=time.perf_counter() - t0)
    store.mark_done(out, summary)


def _pretrained_classifier(ctx: JobContext, spec: ClassifierJobSpec, out: Path) -> None:
    """A released detector in this iteration's slot: read (tensors only, never pickle code),
    mapped onto the zoo architecture and saved as this iteration's classifier, so fooling and
    evaluation load it like any other; no training, and the DONE record names the file."""
    import hashlib

    from gangaps.models.classifier_zoo import load_released_detector
    from gangaps.train.classifier import save_classifier
    src = Path(spec.pretrained).expanduser()
    res, ch = ctx.real.resolution, ctx.real.channels
    model = load_released_detector(src, spec.arch, ch, res, **spec.options)
    summary = {"pretrained": str(src.resolve()), "pretrained_sha256":
               hashlib.sha256(src.read_bytes()).hexdigest(), "epochs": 0, "best_epoch": None,
               "val_accuracy": None, "seed": spec.seed, "role": spec.role, "arch": spec.arch}
    out.mkdir(parents=True, exist_ok=True)
    save_classifier(out / FINAL, model, spec.arch, spec.options, ch, res, summary)
    ctx.store.mark_done(out, summary)


def _evaluation(ctx: JobContext, job: Job) -> None:
    """One generator: its quality (in its own iteration's job) and its detection by every
    classifier of one iteration. Files and numbers as the one-sweep evaluation always wrote."""
    store, ev, g, i = ctx.store, ctx.cfg.evaluation, job.generators[0], job.clf_iteration
    j, n = g.iteration, g.instance
    quality, todo = _eval_todo(store, job)
    G = load_generator(store.generator_dir(j, n) / CHECKPOINT, ctx.device)
    fake = generate(G, ev.n_fake, derive_seed(ctx.cfg.seed, "eval", j, n), device=ctx.device)
    common = {"generator_iteration": j, "generator_instance": n, "generator_split": g.split}
    if quality:
        scores = _quality(ctx, fake)
        atomic_write_json(store.quality_path(j, n), {**common, "n_fake": len(fake), **scores})
        if ctx.cfg.gan.tensorboard:  # FID beside the instance's training curves
            gen_dir = store.generator_dir(j, n)
            add_scalars(gen_dir, {f"quality/{key}": v for key, v in scores.items()
                                  if isinstance(v, int | float)},
                        store.done_summary(gen_dir)["steps"])
    real = ctx.real.eval_real
    for c in todo:
        path = store.classifier_dir(i, c.clf_id) / FINAL
        model = load_classifier(path, ctx.device)
        if ctx.cfg.classifier_training.channels_last:
            model.to(memory_format=torch.channels_last)
        key = (i, c.clf_id, path.stat().st_mtime_ns)  # a retrained classifier is a new key
        if key not in ctx._real_logits:
            ctx._real_logits[key] = classify(model, real, ctx.device)
        metrics = detection_record(ctx._real_logits[key], classify(model, fake, ctx.device),
                                   ev.bootstrap, seed=derive_seed(0, j, n))
        atomic_write_json(store.eval_path(j, n, i, c.clf_id), {
            **common, "classifier_iteration": i, "classifier_id": c.clf_id,
            "classifier_arch": c.arch, "classifier_role": c.role,
            **({"classifier_pretrained": c.pretrained} if c.pretrained else {}), "n_real": len(real),
            "n_fake": len(fake), "metrics": metrics})


def _quality(ctx: JobContext, fake: torch.Tensor) -> dict:
    return _quality_meter(ctx)(fake)


def _quality_meter(ctx: JobContext) -> QualityMeter:
    """The process's quality meter (final evaluations and snapshot metrics), set up once."""
    if ctx._quality is None:
        meter = QualityMeter(ctx.cfg, ctx.real, ctx.device)
        if ctx.cfg.evaluation.fid == "lenet":
            # the first use trains LeNet if this machine has none: one process trains, the
            # others wait and load it, so every job measures with the same network
            with job_lock(cache_dir() / "lenet.lock", "LeNet training", wait=True):
                meter.prepare()
        ctx._quality = meter
    return ctx._quality


def job_summary_line(job: Job, store: RunStore) -> str:
    """What a finished job reports in the driver's one line per job."""
    if job.kind == EVALUATION:
        return ""
    d = (store.classifier_dir(job.classifier.iteration, job.classifier.clf_id)
         if job.kind == CLASSIFIER else store.generator_dir(job.generators[0].iteration,
                                                            job.generators[0].instance))
    if not store.is_done(d):
        return ""
    s = store.done_summary(d)
    if job.kind == CLASSIFIER and s.get("pretrained"):
        return f"pretrained {Path(s['pretrained']).name}"
    return f"val accuracy {s['val_accuracy']:.3f}" if job.kind == CLASSIFIER else s.get("split", "")
