"""`gangaps status DIR`: per iteration and job, done / running (where) / interrupted / pending."""

from __future__ import annotations

import time
from pathlib import Path

from gangaps.experiment.joblock import lock_holder
from gangaps.experiment.jobs import LOCK
from gangaps.experiment.plan import classifier_specs, generator_specs
from gangaps.experiment.store import RunStore
from gangaps.io import read_json


def _where(holder: dict) -> str:
    since = time.time() - holder.get("start", time.time())
    return f"running on {holder.get('host', '?')} (pid {holder.get('pid', '?')}, {since:.0f}s)"


def _job_state(store: RunStore, job_dir: Path, running: bool, group: Path | None = None) -> str:
    """`group`: the fused group directory training this generator, if there is one."""
    if store.is_done(job_dir):
        s = store.done_summary(job_dir)
        return f"done ({s.get('seconds', 0):.0f}s)"
    in_group = f" in {group.name}" if group is not None else ""
    holder = lock_holder(job_dir / LOCK)  # whoever trains it now, on any node
    if holder is not None:
        return _where(holder) + in_group
    if any((d / "checkpoint.safetensors").exists() for d in (job_dir, group) if d is not None):
        return ("running" if running else "interrupted (resumes from checkpoint)") + in_group
    return "pending"


def status_text(run_dir: Path) -> str:
    store = RunStore(run_dir)
    cfg = store.load_config()
    store = RunStore(run_dir, cfg.experiment.reuse_iteration0)
    pid = store.running_pid()
    lines = [f"run {run_dir} ({cfg.name}): " + (f"running, pid {pid}" if pid else "not running")]
    total = done = 0
    for k in range(cfg.experiment.iterations):
        lines.append(f"iteration {k}:")
        groups = store.group_dirs(k)
        jobs = [(f"gen_{g.instance:02d} [{g.split}]", store.generator_dir(k, g.instance),
                 next((d for d, members in groups.items() if g.instance in members), None))
                for g in generator_specs(cfg, k)]
        jobs += [(f"{c.clf_id} [{c.role}]", store.classifier_dir(k, c.clf_id), None)
                 for c in classifier_specs(cfg, k)]
        for name, job_dir, group in jobs:
            state = _job_state(store, job_dir, pid is not None, group)
            if state.startswith("done") and job_dir.name.startswith("clf_"):
                s = read_json(job_dir / "DONE")
                state += f", val accuracy {s.get('val_accuracy', float('nan')):.3f}"
            total += 1
            done += state.startswith("done")
            lines.append(f"  {name:<28} {state}")
        eval_dir = store.root / f"iter_{k:02d}" / "eval"
        n_eval = len(list(eval_dir.glob("*.json")))
        lines.append(f"  evaluations of its generators: {n_eval}")
        for lock in sorted(eval_dir.glob(f".*{LOCK}")):
            holder = lock_holder(lock)
            if holder is not None:
                lines.append(f"  eval {lock.name.removesuffix(LOCK)[1:]:<23} {_where(holder)}")
    report = store.report_dir / "index.html"
    lines.append(f"{done}/{total} training jobs done; report: "
                 + (str(report) if report.exists() else "not built yet"))
    return "\n".join(lines)
