"""The experiment's plan as a graph of jobs: what waits for what.

Pure, like `plan`: a function of the config only, knowing nothing of where jobs run or what is
finished. The edges are the experiment's data dependencies and nothing more:

- a generator job waits for the classifiers it must fool (and, with init: previous, the
  generator it starts from); under memoryless and none it never waits for held-out classifiers;
- a classifier job waits for its iteration's train generators (a pretrained one, loaded
  from a released detector's file, for nothing);
- an evaluation job (one generator judged by the classifiers of one iteration, plus the
  generator's quality in its own iteration's job) waits for that generator and those classifiers.

So held-out classifiers and evaluations of iteration k overlap with the generators of k+1.
The list comes out in a valid order (every job after its dependencies), iteration by
iteration as the sequential runner always ran it, so the local executor just walks it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gangaps.config import Config
from gangaps.experiment.plan import (
    ClassifierJobSpec,
    GeneratorSpec,
    classifier_specs,
    generator_specs,
)

GENERATOR, CLASSIFIER, EVALUATION = "generator", "classifier", "evaluation"


@dataclass(frozen=True)
class Job:
    kind: str  # GENERATOR | CLASSIFIER | EVALUATION
    iteration: int  # the iteration it belongs to (evaluations: the later of generator/classifiers)
    deps: tuple[str, ...]  # keys of the jobs it waits for
    # generator: the instances it trains, one per job (a fused group is several);
    # classifier: its one spec; evaluation: the generator, the classifiers (all of one
    # iteration) judging it, and whether it also measures the generator's quality
    generators: tuple[GeneratorSpec, ...] = ()
    classifiers: tuple[ClassifierJobSpec, ...] = ()
    with_quality: bool = False
    run: str = ""  # which run it belongs to, when several independent runs share one graph

    @property
    def classifier(self) -> ClassifierJobSpec:
        return self.classifiers[0]

    @property
    def clf_iteration(self) -> int:
        return self.classifiers[0].iteration

    @property
    def key(self) -> str:
        """Stable, unique, path-like: iter_00/gen_01, iter_00/clf_small_cnn_0, iter_01/eval/...
        (prefixed with `run:` when it has a run)."""
        g = self.generators
        if self.kind == CLASSIFIER:
            key = classifier_key(self.classifier.iteration, self.classifier.clf_id)
        elif self.kind == GENERATOR:
            key = generator_key(g[0].iteration, *(s.instance for s in g))
        else:
            key = f"iter_{g[0].iteration:02d}/eval/gen_{g[0].instance:02d}_c{self.clf_iteration:02d}"
        return f"{self.run}:{key}" if self.run else key

    @property
    def label(self) -> str:
        g = self.generators
        names = "+".join(f"{s.instance:02d}" for s in g)
        if self.kind == CLASSIFIER:
            label = f"iter {self.classifier.iteration} {self.classifier.clf_id}"
        elif self.kind == GENERATOR:
            label = f"iter {g[0].iteration} gen {names}"
        else:
            label = f"eval iter {g[0].iteration} gen {names} by iter {self.clf_iteration} classifiers"
        return f"{self.run}: {label}" if self.run else label


def generator_key(k: int, *instances: int) -> str:
    return f"iter_{k:02d}/gen_" + "+".join(f"{n:02d}" for n in instances)


def classifier_key(k: int, clf_id: str) -> str:
    return f"iter_{k:02d}/{clf_id}"


def build_graph(cfg: Config, group_size: int | None = None, run: str = "") -> list[Job]:
    """Every job of the experiment, dependencies first. `group_size` (default: the config's
    `gan.group_size`, resolved by the runner) consecutive instances per generator job, trained
    as one fused group; a group holding a held-out instance delays the classifiers of its
    train instances, so sizes that divide the train instances overlap best on a cluster.
    `run` names the run in every key (several runs in one graph)."""
    size = cfg.gan.group_size if group_size is None else group_size
    if size == "auto":
        raise ValueError("gan.group_size=auto: resolve it first (gangaps.train.gan.group_size)")
    jobs = _build(cfg, size)
    if not run:
        return jobs
    return [replace(j, run=run, deps=tuple(f"{run}:{d}" for d in j.deps)) for j in jobs]


def _build(cfg: Config, group_size: int) -> list[Job]:
    K = cfg.experiment.iterations
    owner: dict[tuple[int, int], str] = {}  # (iteration, instance) -> key of the job training it
    jobs: list[Job] = []
    for k in range(K):
        specs = generator_specs(cfg, k)
        groups = [specs[i:i + group_size] for i in range(0, len(specs), group_size)]
        for group in groups:
            key = generator_key(k, *(s.instance for s in group))
            deps = {classifier_key(i, c) for s in group for i, c in s.fool_targets}
            deps |= {owner[s.init_from] for s in group if s.init_from is not None}
            jobs.append(Job(GENERATOR, k, tuple(sorted(deps)), generators=tuple(group)))
            owner.update({(k, s.instance): key for s in group})
        for c in classifier_specs(cfg, k):
            # a pretrained classifier is loaded, not trained: it waits for no generator
            deps = set() if c.pretrained else {owner[(k, n)] for n in c.train_instances}
            jobs.append(Job(CLASSIFIER, k, tuple(sorted(deps)), classifiers=(c,)))
        # evaluations that become possible with iteration k: its generators by every classifier
        # iteration ≤ k, and earlier generators by iteration k's classifiers
        clfs = {i: tuple(classifier_specs(cfg, i)) for i in range(k + 1)}
        for j in range(k + 1):
            for g in generator_specs(cfg, j):
                for i in range(k + 1):
                    if max(i, j) != k:
                        continue
                    deps = {owner[(j, g.instance)], *(classifier_key(i, c.clf_id) for c in clfs[i])}
                    jobs.append(Job(EVALUATION, k, tuple(sorted(deps)), generators=(g,),
                                    classifiers=clfs[i], with_quality=i == j))
    return jobs
