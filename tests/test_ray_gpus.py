"""The ray executor on a real local Ray cluster that declares logical GPUs (this machine has
none): every GPU job runs in a fresh worker that sees exactly the GPU ids Ray gave it,
fractional shares pack as configured, workers are not niced below the driver, and the driver
resolves `gan.group_size: auto` from the cluster's GPUs. The jobs' work here only records
what it sees (it cannot use a GPU); the executor, Ray and its scheduling are real."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from gangaps.config import load_config
from gangaps.experiment.executors import Progress, RayExecutor, job_resources, start_ray
from gangaps.experiment.graph import GENERATOR, build_graph
from gangaps.experiment.runner import Runner
from tests.conftest import tiny_overrides

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mnist-dcgan.yaml"
GPUS, CPUS = 2, 4


@pytest.fixture(scope="module")
def gpu_cluster():
    start_ray(num_cpus=CPUS, num_gpus=GPUS)  # the executor's own start, with logical GPUs
    yield
    ray.shutdown()


def _config(*extra: str):
    return load_config(CONFIG, tiny_overrides(**{"experiment.instances": 8,
                                                 "gan.group_size": 1}) + list(extra))


def _generators(cfg, n: int):
    jobs = [j for j in build_graph(cfg) if j.kind == GENERATOR and j.iteration == 0]
    assert len(jobs) >= n and not any(j.deps for j in jobs[:n])
    return jobs[:n]


def _wave(cfg, jobs, barrier: Path) -> list[dict]:
    """Run `jobs` through the ray executor; each job records what its worker sees, then waits
    (up to 60 s) until all of them have started: they pass only if Ray ran them all at once."""
    barrier.mkdir()
    n = len(jobs)

    def work(job, device):  # shipped by value to the workers
        import time

        import ray
        start = time.time()
        (barrier / job.key.replace("/", "_")).touch()
        while len(list(barrier.iterdir())) < n and time.time() - start < 60:
            time.sleep(0.05)
        return {"job": job.key, "start": start, "end": time.time(), "device": device,
                "ray_gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "together": len(list(barrier.iterdir()))}

    records: list[dict] = []
    progress = Progress(jobs, False, lambda job, rec: records.append(rec))
    RayExecutor(cfg).run(jobs, work, progress)
    assert sorted(r["job"] for r in records) == sorted(j.key for j in jobs)
    return records


def test_gpu_jobs_get_fresh_workers_their_own_gpus_and_pack_by_share(gpu_cluster, tmp_path):
    # half a GPU each: 4 jobs fill the 2 GPUs exactly, 2 on each
    half = _config("resources.generator_gpus=0.5")
    first = _wave(half, _generators(half, 4), tmp_path / "half")
    # a whole GPU each: Ray would hand these to idle workers of the first wave, which keep
    # the CUDA of their first GPU, were GPU jobs not run in fresh workers
    whole = _config("resources.generator_gpus=1")
    second = _wave(whole, _generators(whole, 2), tmp_path / "whole")
    for wave, per_gpu in ((first, 2), (second, 1)):
        assert {r["together"] for r in wave} == {len(wave)}  # all ran at once
        for r in wave:  # exactly the one GPU Ray assigned, and only it is visible
            assert len(r["gpu_ids"]) == 1 and r["gpu_ids"] == r["ray_gpu_ids"]
            assert r["visible"] == r["gpu_ids"][0] and r["device"] == "cuda"
        assert Counter(r["gpu_ids"][0] for r in wave) == {str(g): per_gpu for g in range(GPUS)}
    pids = [r["pid"] for r in first + second]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids  # no worker held two GPUs
    assert {r["nice"] for r in first + second} == {os.nice(0)}  # not niced below the driver
    assert {r["threads"] for r in first + second} == {1}  # a GPU job: resources.cpus threads


def test_generator_cpus_by_group_and_device():
    cfg = _config()
    group = next(j for j in build_graph(_config("gan.group_size=4")) if j.kind == GENERATOR)
    single = _generators(cfg, 1)[0]
    # on CPUs a fused group asks for a thread per instance, up to a node's CPUs
    assert job_resources(cfg, group, gpus=False, node_cpus=16) == {"num_cpus": 4}
    assert job_resources(cfg, group, gpus=False, node_cpus=2) == {"num_cpus": 2}
    assert job_resources(cfg, single, gpus=False, node_cpus=16) == {"num_cpus": 1}
    # on a GPU one thread drives the group; an explicit generator_cpus wins everywhere
    assert job_resources(cfg, group, gpus=True, node_cpus=16) == {"num_cpus": 1, "num_gpus": 0.25}
    explicit = _config("resources.generator_cpus=3")
    assert job_resources(explicit, group, gpus=False, node_cpus=16)["num_cpus"] == 3
    assert job_resources(explicit, group, gpus=True, node_cpus=16)["num_cpus"] == 3
    clf = next(j for j in build_graph(cfg) if j.kind != GENERATOR)
    assert job_resources(cfg, clf, gpus=False, node_cpus=16) == {"num_cpus": 1}


@pytest.mark.parametrize(("device", "size"), [("auto", 6), ("cpu", 4)])
def test_group_size_auto_follows_the_clusters_gpus(gpu_cluster, data_root, tmp_path, device, size):
    """auto on a GPU cluster: the CUDA group size (every instance, up to 16), not the CPU one
    (4) that would time-slice one GPU among several groups at a quarter share each."""
    cfg = load_config(CONFIG, tiny_overrides(**{"experiment.instances": 6, "device": device,
                                                "data.path": str(data_root)}))
    runner = Runner(cfg, tmp_path / "run", progress=False, executor="ray")
    try:
        assert runner.cfg.gan.group_size == size
        assert runner.store.load_config().gan.group_size == size  # as written in the run
    finally:
        runner.store.release()
