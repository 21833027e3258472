"""Helpers shared by the robustness tests and benchmarks/crash_injection.py: a demo-size run
of the real code paths (seconds per job), its command line, and what makes two runs equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parents[0] / "shared" / "data"

TINY = {
    "experiment.iterations": 2, "experiment.instances": 2, "experiment.heldout_instances": 1,
    "gan.kimg": 0.512, "gan.batch_size": 32, "gan.lr": 2e-4, "gan.betas": "[0.5,0.999]",
    "gan.options.width": 0.125, "gan.checkpoint_kimg": 0.128, "gan.log_kimg": 0.064,
    "classifier_training.n_real": 256, "classifier_training.n_fake": 256,
    "classifier_training.epochs": 2, "classifier_training.batch_size": 64,
    "classifier_training.lr": 1e-3, "classifiers.0.options.width": 4,
    "classifiers.1.options.width": 4, "evaluation.n_fake": 100, "evaluation.n_real": 100,
    "evaluation.fid": "none", "evaluation.bootstrap": 10, "device": "cpu",
    "gan.group_size": 1,  # single generator jobs; fused groups: test_a_killed_group_resumes...
}


def overrides(**extra: object) -> list[str]:
    return [f"{k}={v}" for k, v in {**TINY, **extra}.items()]


def run_cmd(out: Path, data_root: Path = DATA, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gangaps.cli", "run", str(ROOT / "configs" / "mnist-dcgan.yaml"),
            *overrides(), *extra, "--out", str(out), "--data-root", str(data_root), "--quiet"]


def env(**extra: str) -> dict[str, str]:
    """The caller's environment (PYTHONPATH included), one thread, plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(out: Path, *extra: str, timeout: float = 600, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(run_cmd(out, DATA, *extra), capture_output=True, text=True,
                          timeout=timeout, env=env(**env_extra))


def records(run_dir: Path) -> list[str]:
    """results.json's records, timing-free, sorted: equal for runs with equal results."""
    recs = json.loads((run_dir / "report" / "results.json").read_text())["records"]
    return sorted(json.dumps({k: v for k, v in r.items() if "second" not in k}, sort_keys=True)
                  for r in recs)


def finished_jobs(run_dir: Path) -> dict[Path, tuple[int, str]]:
    """Every DONE marker and evaluation file: (mtime, content); unchanged if never redone."""
    files = [*run_dir.rglob("DONE"), *run_dir.glob("iter_*/eval/*.json"),
             *run_dir.glob("iter_*/quality/*.json")]
    return {p: (p.stat().st_mtime_ns, p.read_text()) for p in files}


# -- crash injection: moments of a run, in the order an uninterrupted run reaches them ----------
def moments(iterations: int = 2, instances: int = 2, clf_ids: tuple[str, ...] = (
        "clf_small_cnn_0", "clf_small_cnn_1", "clf_small_cnn_2")) -> list[tuple[str, str, bool]]:
    """(stage, GANGAPS_CRASH_AT value, fires only on a fresh job) for every kill point.

    Each value is SUBSTRING:K (see gangaps.io): SIGKILL inside the K-th write, in this
    process, to a path containing SUBSTRING. K=1 fires whenever its job is unfinished; K=2
    only if the job was not resumed past it, hence the flag.
    """
    out = []
    for k in range(iterations):
        for n in range(instances):
            job = f"iter_{k:02d}/gen_{n:02d}/"
            out += [("generator training", f"{job}log.jsonl:1", False),
                    ("checkpoint write", f"{job}checkpoint.safetensors:1", False),
                    ("generator training", f"{job}log.jsonl:4", True),
                    ("checkpoint write", f"{job}checkpoint.safetensors:3", True),
                    ("DONE write", f"{job}DONE:1", False)]
        for c in clf_ids:
            job = f"iter_{k:02d}/{c}/"
            out += [("classifier training", f"{job}log.jsonl:1", False),
                    ("checkpoint write", f"{job}checkpoint.safetensors:1", False),
                    ("classifier training", f"{job}classifier.safetensors:1", False)]
        out += [("evaluation", f"/eval/c{k:02d}_:1", False),
                ("evaluation", f"/eval/c{k:02d}_:3", True)]
    out += [("report", "report/results.json:1", False), ("report", "report/index.html:1", False)]
    return out


def schedule(n_kills: int, seed: int) -> list[tuple[str, str]]:
    """n_kills moments drawn with a fixed seed, kept in run order; a fresh-only moment is
    dropped (and another drawn) when an earlier kill already hit its job."""
    import random
    rng = random.Random(seed)
    all_m = moments()
    while True:
        picks = sorted(rng.sample(range(len(all_m)), n_kills))
        hit, ok = set(), True
        for i in picks:
            stage, spec, fresh_only = all_m[i]
            job = spec.rsplit("/", 1)[0]
            if fresh_only and job in hit:
                ok = False
            hit.add(job)
        if ok:
            return [all_m[i][:2] for i in picks]


def kill_and_resume(out: Path, plan: list[tuple[str, str]], log=None,
                    extra: tuple[str, ...] = ()) -> list[dict]:
    """Run `out` (with overrides `extra`) once per moment of `plan` with the crash hook set;
    returns one row per kill. Asserts every kill landed (the process died of SIGKILL) and no
    finished job was redone."""
    import time
    rows, kept = [], {}
    for i, (stage, spec) in enumerate(plan):
        t0 = time.perf_counter()
        res = run(out, *extra, GANGAPS_CRASH_AT=spec)
        row = {"kill": i + 1, "stage": stage, "at": spec, "rc": res.returncode,
               "seconds": round(time.perf_counter() - t0, 1)}
        assert res.returncode == -9, f"kill {i + 1} at {spec} did not land: {row} {res.stderr[-800:]}"
        now = finished_jobs(out)
        redone = [str(p) for p, v in kept.items() if now.get(p) != v]
        assert not redone, f"kill {i + 1}: finished jobs redone or lost: {redone}"
        row["finished"] = len(now)
        kept = now
        rows.append(row)
        if log:
            log(row)
    res = run(out, *extra)
    assert res.returncode == 0, res.stderr[-2000:]
    now = finished_jobs(out)
    assert all(now.get(p) == v for p, v in kept.items()), "the final rerun redid finished jobs"
    return rows
