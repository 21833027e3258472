"""Runs under stress: NaN losses, two writers at once, a full disk, extending a finished run."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gangaps.errors import NonFiniteLoss, UserError
from gangaps.experiment.store import RunStore
from gangaps.io import load_state, verify_file
from tests import robustness as rb


@pytest.fixture
def reference(tiny_reference: Path) -> Path:
    return tiny_reference


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr[-2000:])
    assert lines[0].startswith("gangaps: error:")
    return lines[0]


# -- non-finite losses ---------------------------------------------------------------------------


def test_a_poisoned_real_batch_stops_the_generator_and_keeps_the_last_good_checkpoint(tmp_path):
    from gangaps.config import load_config
    from gangaps.data.mnist import load_mnist
    from gangaps.data.sampler import EpochSampler
    from gangaps.train.gan import CHECKPOINT, GeneratorJob, train_generator
    if not (rb.DATA / "mnist").is_dir():
        pytest.skip("real MNIST absent")
    cfg = load_config(rb.ROOT / "configs" / "mnist-dcgan.yaml", rb.overrides())
    real = load_mnist("train", rb.DATA)[0][:512].unsqueeze(1).float()
    order = EpochSampler(len(real), cfg.gan.batch_size, seed=7)
    batches = [order.next() for _ in range(6)]
    real[batches[5][0]] = float("nan")  # one NaN image, first drawn in the 6th step
    job = GeneratorJob(tmp_path / "run" / "iter_00" / "gen_00", seed=7, label="iter 0 gen 00")
    with pytest.raises(NonFiniteLoss) as e:
        train_generator(job, cfg, real, torch.device("cpu"), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "iter 0 gen 00" in msg and "step 6" in msg and str(job.out_dir) in msg
    state = load_state(job.out_dir / CHECKPOINT)  # checkpoints every 4 steps: step 4 kept
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["nets"].values() if v.is_floating_point())


def test_nan_in_generator_or_classifier_training_stops_the_run_with_one_line(tmp_path):
    res = rb.run(tmp_path / "g", "gan.lr=1e20")
    line = _one_error_line(res)
    # the first update overflows the weights: the loss of step 2 is the first non-finite one
    assert "iter 0 gen 00" in line and "step 2" in line and "not finite" in line
    res = rb.run(tmp_path / "c", "classifier_training.lr=1e20")
    line = _one_error_line(res)
    assert "iter 0 clf_small_cnn_0" in line and "epoch 1" in line and str(tmp_path / "c") in line
    assert RunStore.is_done(tmp_path / "c" / "iter_00" / "gen_01")  # finished jobs stay
    assert not (tmp_path / "c" / ".lock").exists()  # stopped cleanly


# -- one writer per run --------------------------------------------------------------------------


def _try_lock(root: str, start: float, results, all_tried) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        RunStore(root).acquire()
        results.put("locked")
        all_tried.wait(60)  # hold it until every other writer has tried, however late it starts
    except UserError as e:
        results.put(str(e))


def test_of_eight_writers_started_at_once_exactly_one_gets_the_lock(tmp_path):
    ctx = mp.get_context("fork")
    results, all_tried = ctx.Queue(), ctx.Event()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_try_lock, args=(str(tmp_path / "run"), start, results, all_tried))
             for _ in range(8)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    all_tried.set()
    for p in procs:
        p.join()
    assert got.count("locked") == 1
    assert all("is being written by process" in g for g in got if g != "locked")


def test_two_runs_started_at_the_same_instant(tmp_path):
    out = tmp_path / "run"
    start = time.time() + 3
    wrapper = ("import sys, time; time.sleep(max(0, float(sys.argv[1]) - time.time())); "
               "from gangaps.cli import main; sys.exit(main(sys.argv[2:]))")
    cmd = [sys.executable, "-c", wrapper, str(start), *rb.run_cmd(out)[3:]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=rb.env()) for _ in range(2)]
    deadline = time.monotonic() + 300
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    loser = next(p for p in procs if p.poll() is not None)
    winner = procs[1 - procs.index(loser)]
    err = loser.communicate()[1].strip().splitlines()
    assert loser.returncode == 2 and len(err) == 1 and "is being written by process" in err[0]
    assert winner.poll() is None  # still training: it got the lock
    assert (out / ".lock").read_text() == str(winner.pid)
    winner.kill()
    winner.communicate()


# -- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_stops_with_one_line_keeps_the_checkpoint_and_resumes(reference, tmp_path):
    out = tmp_path / "run"
    assert rb.run(out, GANGAPS_CRASH_AT="iter_00/gen_00/checkpoint.safetensors:2").returncode == -9
    ckpt = out / "iter_00" / "gen_00" / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    limit = len(before) - 1  # every checkpoint has this size: the next one cannot be written
    limited = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               "from gangaps.cli import main; sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", limited, *rb.run_cmd(out)[3:]],
                         capture_output=True, text=True, timeout=600, env=rb.env())
    line = _one_error_line(res)
    assert str(ckpt) in line and "File too large" in line
    assert ckpt.read_bytes() == before and verify_file(ckpt) is None
    assert not list(ckpt.parent.glob(".*.tmp"))  # the failed write left nothing behind
    res = rb.run(out)  # space freed
    assert res.returncode == 0, res.stderr[-2000:]
    assert rb.records(out) == rb.records(reference)


# -- extending a run -----------------------------------------------------------------------------


def test_extending_a_finished_run(reference, tmp_path):
    out = tmp_path / "run"
    small = ["experiment.iterations=1", "classifiers.1.seeds=[1]"]
    assert rb.run(out, *small).returncode == 0
    first = rb.finished_jobs(out)
    # a new held-out classifier seed: only it and its evaluations are added
    assert rb.run(out, "experiment.iterations=1").returncode == 0
    now = rb.finished_jobs(out)
    assert all(now[p] == v for p, v in first.items())
    assert {p.relative_to(out).as_posix() for p in set(now) - set(first)} == {
        "iter_00/clf_small_cnn_2/DONE", "iter_00/eval/c00_clf_small_cnn_2__gen_00.json",
        "iter_00/eval/c00_clf_small_cnn_2__gen_01.json"}
    # every other change is refused, and leaves the run as it was
    config = (out / "config.yaml").read_text()
    assert "different config" in _one_error_line(rb.run(out, "experiment.iterations=1", "gan.lr=1e-3"))
    from gangaps.config import load_config
    store = RunStore(out)
    for change in (["gan.lr=1e-3"], ["classifiers.0.seeds=[0,5]"], ["classifiers.1.seeds=[2]"],
                   ["classifiers.0.options.width=8"], ["experiment.fool_mode=memoryless"],
                   ["classifiers=[{arch: small_cnn, seeds: [0], options: {width: 4}}, {arch: small_cnn, "
                    "seeds: [1, 2], "
                    "role: heldout, options: {width: 4}}, {arch: small_cnn, seeds: [9]}]"]):
        cfg = load_config(rb.ROOT / "configs" / "mnist-dcgan.yaml",
                          rb.overrides(**{"experiment.iterations": 1}) + change)
        with pytest.raises(UserError, match="different config"):
            store.check_config(cfg)
    assert (out / "config.yaml").read_text() == config and rb.finished_jobs(out) == now
    # one more iteration: the run ends exactly where one made with 2 iterations does
    assert rb.run(out).returncode == 0
    assert all(rb.finished_jobs(out)[p] == v for p, v in now.items())
    assert rb.records(out) == rb.records(reference)
    assert RunStore(out).load_config().experiment.iterations == 2  # the stored config follows
    from gangaps.experiment.status import status_text
    assert "10/10 training jobs done" in status_text(out)
    assert "different config" in _one_error_line(rb.run(out, "experiment.iterations=1"))
