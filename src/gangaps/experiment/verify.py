"""`gangaps verify RUN`: check every artifact of a run and say what is wrong and what to do.

Safetensors files (checkpoints, classifiers, their previous versions) are checked against the
SHA-256 in their header; DONE markers, evaluation and report JSON must parse; sample grids must
decode. A damaged file of a finished job needs that job redone; one of an unfinished job only
costs the resume a step back (the previous checkpoint) or a restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from gangaps.experiment.plan import classifier_specs, generator_specs
from gangaps.experiment.store import DONE, RunStore, redo_hint
from gangaps.io import previous_path, verify_file
from gangaps.train.classifier import FINAL
from gangaps.train.gan import CHECKPOINT


def _json_problem(path: Path) -> str | None:
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"not valid JSON ({e.__class__.__name__})"
    return None if isinstance(obj, dict) else "not a JSON object"  # every file of a run is one


def _png_problem(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types
        return f"not a readable image ({e.__class__.__name__})"
    return None


def _job(job: Path, finished_files: list[str]) -> tuple[int, list[str]]:
    """(files checked, problems) of one generator or classifier job directory."""
    checked, problems = 0, []
    if RunStore.is_done(job):
        for name, check in [(DONE, _json_problem), *[(f, verify_file) for f in finished_files],
                            *([("samples.png", _png_problem)] if job.name.startswith("gen_")
                              else [])]:
            path = job / name
            checked += 1
            problem = "missing" if not path.exists() else check(path)
            if problem:
                problems.append(f"{path}: {problem}; {redo_hint(job)}")
        return checked, problems
    ckpt = job / CHECKPOINT
    versions = [p for p in (ckpt, previous_path(ckpt)) if p.exists()]
    bad = [(p, verify_file(p)) for p in versions]
    checked += len(versions)
    bad = [(p, r) for p, r in bad if r]
    if bad:
        then = ("resumes from the previous checkpoint" if len(bad) < len(versions)
                else "restarts from scratch")
        problems += [f"{p}: {r}; unfinished job, it {then}" for p, r in bad]
    return checked, problems


def verify_run(run_dir: Path) -> tuple[int, list[str]]:
    """(files checked, one line per problem) for every artifact of the run in `run_dir`."""
    store = RunStore(run_dir)
    cfg = store.load_config()
    store = RunStore(run_dir, cfg.experiment.reuse_iteration0)
    checked, problems = 1, []
    for k in range(cfg.experiment.iterations):
        jobs = [(store.generator_dir(k, g.instance), [CHECKPOINT]) for g in generator_specs(cfg, k)]
        jobs += [(store.classifier_dir(k, c.clf_id), [FINAL]) for c in classifier_specs(cfg, k)]
        # a fused group's checkpoint, while one of its members is unfinished
        jobs += [(d, []) for d, members in store.group_dirs(k).items()
                 if not all(RunStore.is_done(store.generator_dir(k, n)) for n in members)]
        for job, files in jobs:
            n, p = _job(job, files)
            checked, problems = checked + n, problems + p
    results = store.report_dir / "results.json"
    for path in [*store.eval_files(), *store.quality_files(), *([results] if results.exists()
                                                                 else [])]:
        checked += 1
        problem = _json_problem(path)
        if problem:
            fix = ("run `gangaps report` again" if path == results
                   else "delete it and run the same command again to redo that evaluation")
            problems.append(f"{path}: {problem}; {fix}")
    return checked, problems


def verify_text(run_dir: Path) -> tuple[str, bool]:
    """The report `gangaps verify` prints, and whether everything is intact."""
    checked, problems = verify_run(run_dir)
    summary = (f"{run_dir}: {checked} files checked, all intact" if not problems else
               f"{run_dir}: {checked} files checked, {len(problems)} problem(s)")
    return "\n".join([*problems, summary]), not problems
