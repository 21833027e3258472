"""One experiment on two processes through the real CLI: `torchrun --nproc_per_node=2` over gloo.

Generator jobs are data-parallel over both ranks; everything else is written once, by rank 0.
A killed two-process run resumes to the very weights and results of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gangaps.config import load_config
from gangaps.errors import UserError
from gangaps.io import load_state, read_json
from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# 2 iterations (the second fools the first's classifiers) x 2 instances; global batch 32.
OVERRIDES = tiny_overrides(**{"experiment.instances": 2, "gan.checkpoint_kimg": 0.25,
                              "classifier_training.n_real": 400, "classifier_training.n_fake": 400,
                              "classifier_training.epochs": 1, "evaluation.bootstrap": 0})
PEAK = 1e6  # injected FLOP/s of one device (GANGAPS_PEAK_FLOPS): no GPU here, yet an MFU
GEN_FILES = {"checkpoint.safetensors", "checkpoint.prev.safetensors", "log.jsonl", "samples.png", "DONE"}


def _cmd(out: Path, data_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
            "-m", "gangaps.cli", "run", str(ROOT / "configs" / "mnist-dcgan.yaml"), *OVERRIDES,
            *extra, "--out", str(out), "--data-root", str(data_root), "--quiet"]


def _env() -> dict[str, str]:
    # one intra-op thread a rank: two ranks on a 2-core box
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
            "GANGAPS_PEAK_FLOPS": str(PEAK)}


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, data_root) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = _run(_cmd(out, data_root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _gen_dirs(run: Path) -> list[Path]:
    return sorted(run.glob("iter_*/gen_*"))


def test_two_processes_train_one_job_and_write_once(ddp_run):
    run, proc = ddp_run
    assert (run / "report" / "results.json").exists()
    assert proc.stdout.count("report:") >= 1 and "Traceback" not in proc.stderr
    files = [p.relative_to(run) for p in run.rglob("*") if p.is_file()]
    assert not [f for f in files if "rank" in f.name or f.name.endswith(".tmp")]
    assert not (run / ".lock").exists()
    gens = _gen_dirs(run)
    assert len(gens) == 4  # 2 iterations x 2 instances, each trained by both ranks together
    for gen in gens:
        assert {p.name for p in gen.iterdir()} == GEN_FILES
        done = read_json(gen / "DONE")
        # every rank ended the job with the same weights: gradients were averaged
        assert done["world_size"] == 2 and len(done["replica_digests"]) == 2
        assert len(set(done["replica_digests"])) == 1
        # steps count the global batch (gan.batch_size=32): 2 kimg -> 63 steps
        assert done["steps"] == 63 and done["kimg"] == pytest.approx(63 * 32 / 1000)
        steps = [json.loads(line)["step"] for line in (gen / "log.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 63  # one writer: no duplicate lines
        state = load_state(gen / CHECKPOINT)
        assert state["world_size"] == 2 and len(state["ranks"]) == 2
        r0, r1 = state["ranks"]
        assert not torch.equal(r0["z_gen"], r1["z_gen"])  # each rank drew its own latents
        assert r0["sampler"] == r1["sampler"]  # same position in equal-sized shards
        # gan.sync_batchnorm: the global batch's BatchNorm statistics, the same on both ranks
        assert r0["buffers"].keys() == r1["buffers"].keys() and r0["buffers"]
        assert all(torch.equal(v, r1["buffers"][k]) for k, v in r0["buffers"].items())
    # one config and one set of classifier jobs, both written by rank 0 only
    assert len(list(run.glob("config*"))) == 1
    assert len(list(run.glob("iter_00/clf_*/DONE"))) == 3


def test_mfu_is_every_ranks_flops_over_every_ranks_peak(ddp_run, data_root):
    """The hand count: FLOPs per image × img/s (global) ÷ (one device's peak × world size)."""
    from gangaps.train.family import get_family
    from gangaps.train.speed import instance_step_flops
    run, _ = ddp_run
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml", [*OVERRIDES, f"data.path={data_root}"])
    family, cpu, per_rank = get_family("dcgan"), torch.device("cpu"), cfg.gan.batch_size // 2
    flops = instance_step_flops(family, cfg.gan, 1, 28, per_rank, cpu)
    assert instance_step_flops(family, cfg.gan, 1, 28, 2 * per_rank, cpu) == 2 * flops
    per_image = flops / per_rank  # a step's FLOPs grow with the batch: a count per image
    lines = [json.loads(line) for gen in _gen_dirs(run)
             for line in (gen / "log.jsonl").read_text().splitlines()]
    assert len(lines) > 8
    for line in lines:
        assert line["mfu"] == pytest.approx(per_image * line["img_per_s"] / (PEAK * 2), rel=1e-3)


def _run_until(cmd: list[str], ready, timeout: float = 300) -> None:
    """Start the two-process run and stop it once `ready()` holds, as a scheduler would: SIGTERM
    to torchrun, which passes it on to the ranks (they die at once, mid-step) and reaps them."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: torchrun and its workers
            proc.wait()


def test_killed_two_process_run_resumes_to_the_same_weights(ddp_run, data_root, tmp_path):
    full, _ = ddp_run
    out = tmp_path / "killed"
    gen0 = out / "iter_00" / "gen_00"
    # killed mid-way through the first data-parallel job, after a checkpoint
    _run_until(_cmd(out, data_root), lambda: (gen0 / CHECKPOINT).exists())
    assert not (gen0 / "DONE").exists(), "the kill came too late"
    assert 0 < load_state(gen0 / CHECKPOINT)["step"] < 63
    proc = _run(_cmd(out, data_root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(_gen_dirs(full), _gen_dirs(out), strict=True):
        na, nb = load_state(a / CHECKPOINT)["nets"], load_state(b / CHECKPOINT)["nets"]
        for k in na:
            assert torch.equal(na[k], nb[k]), f"{b.name}: {k}"
    # ...and so the same classifiers and measurements
    ra = read_json(full / "report" / "results.json")["records"]
    rb = read_json(out / "report" / "results.json")["records"]
    assert [r["value"] for r in ra] == [r["value"] for r in rb]


def test_resume_needs_the_same_number_of_processes(ddp_run, data_root, tmp_path):
    run, _ = ddp_run
    state = load_state(run / "iter_00" / "gen_00" / CHECKPOINT)
    from gangaps.io import save_state
    save_state(tmp_path / CHECKPOINT, state)
    cfg = load_config(ROOT / "configs" / "mnist-dcgan.yaml",
                      [*OVERRIDES, f"data.path={data_root}"])
    real = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(UserError, match="2 process"):
        train_generator(GeneratorJob(tmp_path, seed=0), cfg, real, torch.device("cpu"),
                        progress=False)


def test_batch_not_divisible_by_processes_stops_before_writing(data_root, tmp_path):
    out = tmp_path / "odd"
    proc = _run(_cmd(out, data_root, "gan.batch_size=33"))
    assert proc.returncode != 0
    assert "gan.batch_size=33 is not divisible by the 2 processes" in proc.stderr
    assert not out.exists()


def _helpers_worker(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    from gangaps.train import distributed as ddp
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        lin = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(lin.parameters(), lr=1.0)
        ddp.average_gradients_before_step(opt)
        ddp.average_gradients_before_step(opt)  # family and loop both register: still one mean
        ddp.broadcast_module(lin)
        before = lin.weight.detach().clone()
        for p in lin.parameters():
            p.grad = torch.full_like(p, rank + 1.0)  # mean over ranks: 1.5
        opt.step()
        assert torch.allclose(lin.weight, before - 1.5), "gradients not averaged exactly once"
        assert ddp.agree(rank == 0) is True  # rank 0's answer everywhere
        assert ddp.on_rank0(lambda: "ran") == ("ran" if rank == 0 else None)
        # an error on rank 0 stops the waiting rank too, instead of leaving it at a barrier
        try:
            ddp.on_rank0(lambda: 1 / 0)
        except (ZeroDivisionError, UserError) as e:
            assert (rank == 0) == isinstance(e, ZeroDivisionError), e
        else:
            raise AssertionError("no error raised")
    finally:
        ddp.shutdown()


def test_distributed_helpers_average_once_and_propagate_rank0_errors(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_helpers_worker, args=(str(tmp_path / "init"),), nprocs=2)
