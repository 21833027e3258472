"""The ray executor on a real local Ray cluster (2 CPUs): the toy experiment gives the same
records as the local executor, survives a SIGKILLed worker mid-generator without redoing
finished jobs, and stops with one line naming a job that fails by its own error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gangaps.cli import main
from gangaps.errors import UserError
from gangaps.experiment.executors import start_ray
from gangaps.experiment.joblock import job_lock, lock_holder
from gangaps.experiment.status import status_text
from tests.conftest import tiny_overrides

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "mnist-dcgan.yaml")
# groups of two: the train instances 0+1 fused, the held-out 2 alone (classifiers need not
# wait for it); one thread per job, generators too, for the float sums of the local run
OVERRIDES = tiny_overrides(**{"evaluation.fid": "lenet", "gan.group_size": 2,
                              "resources.generator_cpus": 1})


@pytest.fixture(scope="module")
def cluster():
    start_ray(num_cpus=2)  # as the executor starts a cluster of this machine
    yield
    ray.shutdown()


def _run(out: Path, data_root: Path, *extra: str) -> int:
    return main(["run", CONFIG, *OVERRIDES, "--out", str(out), "--data-root", str(data_root),
                 "--quiet", *extra])


def _values(run: Path) -> list[tuple]:
    records = json.loads((run / "report" / "results.json").read_text())["records"]
    keys = ("metric", "generator_iteration", "generator_instance", "classifier_iteration",
            "classifier_id")
    return sorted((*(r[k] for k in keys), r["value"]) for r in records)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "jobs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each ray job (resources.cpus=1): same float reductions
    try:
        assert _run(out, data_root) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_workers_run_this_checkout(cluster):
    import gangaps
    where = ray.get(ray.remote(lambda: __import__("gangaps").__file__).options(
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}}).remote())
    assert where == gangaps.__file__


def test_ray_gives_the_records_of_local(cluster, local_run, data_root, tmp_path):
    out = tmp_path / "ray"
    assert _run(out, data_root, "--executor", "ray") == 0
    assert _values(out) == _values(local_run)  # exact, record for record
    log = _log(out)
    assert len(log) == 22 and {r["pid"] for r in log}.isdisjoint({os.getpid()})
    assert {r["threads"] for r in log} == {1}  # resources.cpus=1: one torch thread per job
    assert {r["nice"] for r in log} == {os.nice(0)}  # workers not niced below the driver
    # the overlap the graph allows: a job of iteration 1 starts before iteration 0's last ends
    end0 = max(r["end"] for r in log if r["iteration"] == 0)
    assert min(r["start"] for r in log if r["iteration"] == 1) < end0
    # neither executor nor resources are part of the run: local resumes it (nothing to do)
    marks = {p: p.stat().st_mtime_ns for p in out.rglob("DONE")}
    assert _run(out, data_root, "resources.cpus=2") == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("DONE")} == marks


def test_sigkilled_worker_is_retried_and_resumes(cluster, local_run, data_root, tmp_path):
    out = tmp_path / "killed"
    gen, group = out / "iter_00" / "gen_01", out / "iter_00" / "group_00-01"
    killed: dict = {}

    def killer() -> None:  # SIGKILL the worker training gen_00+01 once it has a checkpoint
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            holder = lock_holder(gen / ".lock")
            if holder and (group / "checkpoint.safetensors").exists():
                killed.update(holder, done_before={p: p.stat().st_mtime_ns
                                                   for p in out.rglob("DONE")})
                os.kill(holder["pid"], signal.SIGKILL)
                killed["gen_done_at_kill"] = (gen / "DONE").exists()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert _run(out, data_root, "--executor", "ray") == 0
    thread.join()
    assert killed and killed["pid"] != os.getpid() and not killed["gen_done_at_kill"]
    summary = json.loads((gen / "DONE").read_text())
    assert summary["resumed"] is True  # the retry continued from the checkpoint
    for path, mtime in killed["done_before"].items():  # finished jobs were not redone
        assert path.stat().st_mtime_ns == mtime
    assert [r["job"] for r in _log(out)].count("iter_00/gen_00+01") == 1
    assert not group.exists()  # removed once both members were done
    assert _values(out) == _values(local_run)


def test_a_jobs_own_error_stops_the_run_in_one_line(cluster, data_root, tmp_path, capsys):
    out = tmp_path / "bad"
    t0 = time.monotonic()  # a learning rate that makes the losses non-finite within steps
    assert _run(out, data_root, "--executor", "ray", "gan.lr=1e20") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gen 0" in err[0] and "not finite" in err[0], err
    assert time.monotonic() - t0 < 120  # not retried over and over
    assert not (out / "report").exists()


def test_job_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "gen_00" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from gangaps.experiment.joblock import job_lock
with job_lock(Path({str(lock)!r}), "iter 0 gen 00"):
    print("held", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(lock)["pid"] == holder.pid
        with pytest.raises(UserError, match=f"iter 0 gen 00 is being run by pid {holder.pid}"):
            with job_lock(lock, "iter 0 gen 00"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(lock) is None  # the kernel dropped it with its holder
    with job_lock(lock, "iter 0 gen 00"):
        assert lock_holder(lock)["pid"] == os.getpid()
    assert not lock.exists()  # gone with its job: job directories hold only their outputs


def test_status_shows_where_a_job_runs(local_run, tmp_path):
    gen = local_run / "iter_01" / "gen_02"
    done = gen / "DONE"
    saved = done.read_bytes()
    done.unlink()
    try:
        with job_lock(gen / ".lock", "iter 1 gen 02"):
            text = status_text(local_run)
    finally:
        done.write_bytes(saved)
    line = next(ln for ln in text.splitlines() if "gen_02" in ln and "running" in ln)
    assert f"pid {os.getpid()}" in line and "running on" in line
