"""Run an experiment: iteration by iteration, generators, then classifiers, then evaluations.

Each job is skipped when its DONE marker exists and resumes from its checkpoint otherwise, so
re-running the same command continues where a killed run stopped. Jobs run one after another.

Under torchrun every process runs a Runner: each generator job is trained by all ranks together
(data-parallel, see `gangaps.train.gan`); everything else that writes the run directory
(config, lock, samples, DONE markers, classifier jobs, evaluation, report) runs on rank 0
while the other ranks wait (`distributed.on_rank0`), so they stay in step. The run directory
must be on a filesystem every rank sees (one machine, or a shared one across machines).
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

from gangaps.config import Config
from gangaps.data import RealData, load_real
from gangaps.errors import UserError
from gangaps.experiment.evaluate import QualityMeter, detection_record
from gangaps.experiment.plan import (
    GeneratorSpec,
    classifier_specs,
    derive_seed,
    generator_groups,
    generator_specs,
)
from gangaps.experiment.store import RunStore, iteration0_view
from gangaps.generators import generate, load_generator
from gangaps.io import atomic_write_json
from gangaps.models.classifiers import build_classifier
from gangaps.train import distributed as ddp
from gangaps.train.classifier import (
    FINAL,
    classify,
    load_classifier,
    make_augment,
    train_classifier,
)
from gangaps.train.events import add_scalars
from gangaps.train.family import get_family
from gangaps.train.gan import CHECKPOINT, GeneratorJob, group_size, train_generators


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available")
    return torch.device(name)


def open_run(cfg: Config, out: str | Path) -> tuple[RunStore, RealData]:
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
    resolve_device(cfg.device)
    get_family(cfg.gan.family).build(cfg.gan, real.channels, real.resolution)  # options valid?
    for spec in cfg.classifiers:
        build_classifier(spec.arch, real.channels, real.resolution, **spec.options)
    make_augment(cfg.classifier_training.augment)
    store.check_or_write_config(cfg)
    return store, real


class Runner:
    def __init__(self, cfg: Config, out: str | Path, progress: bool = True) -> None:
        if ddp.launched_by_torchrun():  # join the job's process group: cuda:LOCAL_RANK or cpu
            self.device = ddp.init_from_env(cfg.device)
            if ddp.is_distributed():
                ddp.rank_job_settings(0, cfg.gan.batch_size)  # divisible? before any write
        else:
            self.device = resolve_device(cfg.device)
        # the written config holds the group size in effect: fused and one-by-one training
        # agree only to float tolerance, so a run resumes only with the same grouping
        cfg = cfg.model_copy(deep=True)
        cfg.gan.group_size = group_size(cfg.gan, self.device, cfg.experiment.instances)
        self.cfg = cfg
        self.main = ddp.rank() == 0
        if self.main:  # validates and writes the config; an error stops every rank
            self.store, self.real = ddp.on_rank0(lambda: open_run(cfg, out))
        else:
            ddp.on_rank0(lambda: None)  # wait for rank 0's checks and config.yaml
            self.store = RunStore(out, cfg.experiment.reuse_iteration0)
            self.real = load_real(cfg.data)
        self.real.eval_real = self.real.eval_real[:cfg.evaluation.n_real]
        if self.device.type == "cuda":  # fixed shapes: let cuDNN pick the fastest kernels
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.progress = progress and self.main
        self._quality: QualityMeter | None = None
        self._real_logits: dict[tuple[int, str], torch.Tensor] = {}

    def log(self, msg: str) -> None:
        if self.progress:
            tqdm.write(msg, file=sys.stderr)

    # -- the experiment -----------------------------------------------------------------
    def run(self) -> None:
        from gangaps.report import build_report
        ddp.on_rank0(self.store.acquire)
        try:
            for k in range(self.cfg.experiment.iterations):
                self.train_generators(k)  # every rank
                ddp.on_rank0(lambda k=k: self.train_classifiers(k))
                ddp.on_rank0(lambda k=k: self.evaluate(k))
            ddp.on_rank0(lambda: build_report(self.store.root))
        finally:
            if self.main:
                self.store.release()

    def _shared(self, k: int) -> bool:
        return k == 0 and self.store.shared_iteration0 is not None

    def train_generators(self, k: int) -> None:
        for group in generator_groups(self.cfg, k):  # each group: one (fused) job
            outs = [self.store.generator_dir(k, spec.instance) for spec in group]
            done = [ddp.agree(self.store.is_done(out)) for out in outs]  # rank 0's view
            if all(done):
                continue
            if self._shared(k):
                raise UserError(f"shared iteration 0 is unfinished: {outs[done.index(False)]} "
                                "(finish that run first)")
            labels = [f"iter {k} gen {spec.instance:02d}" for spec in group]
            fool = [load_classifier(self.store.classifier_dir(i, cid) / FINAL, self.device)
                    for i, cid in group[0].fool_targets]  # the same for every instance of k
            jobs = [GeneratorJob(out, spec.seed, fool,
                                 self.store.generator_dir(*spec.init_from) / CHECKPOINT
                                 if spec.init_from else None, label, data_parallel=True)
                    for spec, out, label in zip(group, outs, labels, strict=True)]
            t0 = time.perf_counter()
            # a group whose kill fell between its instances' DONE markers resumes at its end
            summaries = train_generators(
                jobs, self.cfg, self.real.gan_train, self.device, self.progress,
                self.store.group_dir(k, [s.instance for s in group]) if len(group) > 1 else None)
            for spec, out, label, summary, finished in zip(group, outs, labels, summaries, done,
                                                           strict=True):
                if not finished:
                    ddp.on_rank0(partial(self._finish_generator, out, summary, spec, label, t0))

    def _finish_generator(self, out: Path, summary: dict, spec: GeneratorSpec, label: str,
                          t0: float) -> None:
        """Sample grid and DONE marker of a trained generator (rank 0 only under torchrun)."""
        G = load_generator(out / CHECKPOINT, self.device)
        grid = generate(G, self.cfg.gan.sample_grid, seed=0, device=self.device)
        save_image(grid.float() / 255, out / "samples.png", nrow=max(1, int(len(grid) ** 0.5)))
        summary.update(seed=spec.seed, split=spec.split, seconds=time.perf_counter() - t0,
                       fool_targets=[list(t) for t in spec.fool_targets])
        self.store.mark_done(out, summary)
        self.log(f"{label}: done in {summary['seconds']:.0f}s ({spec.split})")

    def train_classifiers(self, k: int) -> None:
        for spec in classifier_specs(self.cfg, k):
            out = self.store.classifier_dir(k, spec.clf_id)
            if self.store.is_done(out):
                continue
            if self._shared(k):
                raise UserError(f"shared iteration 0 is unfinished: {out} (finish that run first)")
            label = f"iter {k} {spec.clf_id}"
            gens = [self.store.generator_dir(k, n) / CHECKPOINT for n in spec.train_instances]
            t0 = time.perf_counter()
            summary = train_classifier(out, spec.arch, spec.options, spec.seed, gens,
                                       self.real.classifier_train, self.cfg.classifier_training,
                                       self.device, self.progress, label)
            summary.update(seed=spec.seed, role=spec.role, arch=spec.arch,
                           seconds=time.perf_counter() - t0)
            self.store.mark_done(out, summary)
            self.log(f"{label}: done in {summary['seconds']:.0f}s, "
                     f"val accuracy {summary['val_accuracy']:.3f}")

    # -- evaluation ---------------------------------------------------------------------
    def _real_logits_of(self, i: int, clf_id: str, model: torch.nn.Module) -> torch.Tensor:
        if (i, clf_id) not in self._real_logits:
            self._real_logits[(i, clf_id)] = classify(model, self.real.eval_real, self.device)
        return self._real_logits[(i, clf_id)]

    def evaluate(self, upto: int) -> None:
        """Quality of every generator of iterations ≤ upto, and every classifier of those
        iterations on every one of those generators (the full cross-iteration matrix so far)."""
        ev = self.cfg.evaluation
        classifiers = [(i, c) for i in range(upto + 1) for c in classifier_specs(self.cfg, i)]
        for j in range(upto + 1):
            for g in generator_specs(self.cfg, j):
                gen_dir = self.store.generator_dir(j, g.instance)
                quality_path = self.store.quality_path(j, g.instance)
                todo = [(i, c) for i, c in classifiers
                        if not self.store.eval_path(j, g.instance, i, c.clf_id).exists()]
                if quality_path.exists() and not todo:
                    continue
                G = load_generator(gen_dir / CHECKPOINT, self.device)
                fake = generate(G, ev.n_fake, derive_seed(self.cfg.seed, "eval", j, g.instance),
                                device=self.device)
                if not quality_path.exists():
                    if self._quality is None:
                        self._quality = QualityMeter(self.cfg, self.real, self.device)
                    quality = self._quality(fake)
                    atomic_write_json(quality_path, {
                        "generator_iteration": j, "generator_instance": g.instance,
                        "generator_split": g.split, "n_fake": len(fake), **quality})
                    if self.cfg.gan.tensorboard:  # FID beside the instance's training curves
                        add_scalars(gen_dir, {f"quality/{k}": v for k, v in quality.items()
                                              if isinstance(v, int | float)},
                                    self.store.done_summary(gen_dir)["steps"])
                for i, c in todo:
                    model = load_classifier(self.store.classifier_dir(i, c.clf_id) / FINAL,
                                            self.device)
                    metrics = detection_record(self._real_logits_of(i, c.clf_id, model),
                                               classify(model, fake, self.device),
                                               ev.bootstrap, seed=derive_seed(0, j, g.instance))
                    atomic_write_json(self.store.eval_path(j, g.instance, i, c.clf_id), {
                        "generator_iteration": j, "generator_instance": g.instance,
                        "generator_split": g.split, "classifier_iteration": i,
                        "classifier_id": c.clf_id, "classifier_arch": c.arch,
                        "classifier_role": c.role, "n_real": len(self.real.eval_real),
                        "n_fake": len(fake), "metrics": metrics})
        self.log(f"evaluation up to iteration {upto}: done")

