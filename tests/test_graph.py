"""The job graph: what waits for what, by fool_mode; pure, in a valid order."""

from __future__ import annotations

import pytest

from gangaps.config import load_config
from gangaps.experiment.graph import CLASSIFIER, EVALUATION, GENERATOR, build_graph
from gangaps.experiment.plan import classifier_specs


def _graph(mode: str, **extra: object):
    overrides = {"experiment.iterations": 3, "experiment.instances": 4,
                 "experiment.heldout_instances": 2, "experiment.fool_mode": mode, **extra}
    return build_graph(load_config(None, [f"{k}={v}" for k, v in overrides.items()]), group_size=1)


def _by_key(jobs):
    return {j.key: j for j in jobs}


@pytest.mark.parametrize("mode", ["fool-all", "memoryless", "none"])
def test_order_is_valid_and_keys_unique(mode):
    jobs = _graph(mode)
    seen: set[str] = set()
    for job in jobs:
        assert set(job.deps) <= seen, job.key
        seen.add(job.key)
    assert len(seen) == len(jobs)
    # 3 iterations × (4 generators + 2 classifiers) + every generator × every clf iteration
    assert len(jobs) == 3 * 6 + 12 * 3
    assert sum(j.with_quality for j in jobs) == 12


def test_generators_wait_only_for_the_classifiers_they_fool():
    fool_all, memoryless, none = (_by_key(_graph(m)) for m in ("fool-all", "memoryless", "none"))
    # default classifiers: clf_small_cnn_0 is the target, clf_small_cnn_1 is held out
    assert fool_all["iter_02/gen_03"].deps == ("iter_00/clf_small_cnn_0",
                                               "iter_01/clf_small_cnn_0")
    assert memoryless["iter_02/gen_03"].deps == ("iter_01/clf_small_cnn_0",)
    assert none["iter_02/gen_03"].deps == () and none["iter_00/gen_00"].deps == ()
    for jobs in (fool_all, memoryless, none):
        assert not any("clf_small_cnn_1" in d for j in jobs.values() if j.kind == GENERATOR
                       for d in j.deps)  # never a held-out classifier


def test_classifiers_wait_for_train_generators_and_evaluations_for_what_they_measure():
    jobs = _by_key(_graph("fool-all", **{"experiment.init": "previous"}))
    assert jobs["iter_01/clf_small_cnn_1"].deps == ("iter_01/gen_00", "iter_01/gen_01")
    assert "iter_00/gen_02" in jobs["iter_01/gen_02"].deps  # init: previous
    ev = jobs["iter_00/eval/gen_03_c02"]
    assert ev.kind == EVALUATION and not ev.with_quality and ev.iteration == 2
    assert ev.deps == ("iter_00/gen_03", "iter_02/clf_small_cnn_0", "iter_02/clf_small_cnn_1")
    assert jobs["iter_01/eval/gen_00_c01"].with_quality


def test_a_group_is_one_job_of_consecutive_instances():
    cfg = load_config(None, ["experiment.iterations=2", "experiment.instances=5",
                             "experiment.heldout_instances=2", "gan.group_size=2"])
    jobs = build_graph(cfg)  # the size from the config
    gens = [j for j in jobs if j.kind == GENERATOR and j.iteration == 0]
    assert [[s.instance for s in j.generators] for j in gens] == [[0, 1], [2, 3], [4]]
    clf = next(j for j in jobs if j.kind == CLASSIFIER and j.iteration == 0)
    assert clf.deps == ("iter_00/gen_00+01", "iter_00/gen_02+03")  # 3 is held out: waits
    targets = tuple(sorted(f"iter_00/{c.clf_id}" for c in classifier_specs(cfg, 0)
                           if c.role == "target"))
    assert targets and next(j for j in jobs if j.key == "iter_01/gen_02+03").deps == targets
    with pytest.raises(ValueError, match="resolve"):
        build_graph(load_config(None, []))  # auto is the runner's to resolve
