"""The demo's wall time with `--executor local` against `--executor ray`, side by side.

    python benchmarks/executor_speed.py --data-root ../shared/data [--out DIR] [--quick]

Both run `gangaps demo` as a user would (a fresh process each, Ray's start-up included) on
this machine; ray with `resources.cpus=1`, so a 2-CPU machine runs two single-threaded jobs
at a time, where local runs one job at a time on every core, except fused generator groups,
which ask for a thread per instance up to the machine's CPUs (`resources.generator_cpus`
null). --one-thread-generators adds a third run with `resources.generator_cpus=1` (every job
one thread, as before that default), for the difference side by side. LeNet is trained into the cache
first, so neither run pays for it. Prints the wall times, whether results.json agrees record
for record, and the dependency overlap seen in the ray run's jobs.jsonl: jobs of two
iterations running at once. --quick: the demo's graph (3 iterations × 4 generators × 3
classifiers) with 2 kimg per generator, 2000 + 2000 images for 2 epochs per classifier and
1000 evaluation samples, for a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _demo(out: Path, data_root: str, *extra: str) -> float:
    cmd = [sys.executable, "-m", "gangaps.cli", "demo", "--out", str(out), "--data-root",
           data_root, "--quiet", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def _records(run: Path) -> list[tuple]:
    recs = json.loads((run / "report" / "results.json").read_text())["records"]
    keys = ("metric", "generator_iteration", "generator_instance", "classifier_iteration",
            "classifier_id")
    return sorted((*(r[k] for k in keys), r["value"]) for r in recs)


def _overlap(run: Path) -> tuple[list[tuple[str, str, float]], float, float]:
    """Pairs of jobs of different iterations that ran at once (with seconds shared), the
    busy time with ≥2 jobs running, and the time from the first start to the last end."""
    log = [json.loads(line) for line in (run / "jobs.jsonl").read_text().splitlines()]
    pairs = []
    for a in log:
        for b in log:
            if a["iteration"] < b["iteration"]:
                shared = min(a["end"], b["end"]) - max(a["start"], b["start"])
                if shared > 0:
                    pairs.append((a["job"], b["job"], shared))
    edges = sorted([(r["start"], 1) for r in log] + [(r["end"], -1) for r in log])
    two, level, last = 0.0, 0, edges[0][0]
    for t, step in edges:
        if level >= 2:
            two += t - last
        level, last = level + step, t
    return sorted(pairs, key=lambda p: -p[2]), two, edges[-1][0] - edges[0][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", default="/tmp/gangaps-executor-bench")
    ap.add_argument("--quick", action="store_true", help="the demo's graph at small sizes")
    ap.add_argument("--one-thread-generators", action="store_true",
                    help="also ray with resources.generator_cpus=1")
    args = ap.parse_args()
    sizes = ["gan.kimg=2", "gan.checkpoint_kimg=1", "classifier_training.n_real=2000",
             "classifier_training.n_fake=2000", "classifier_training.epochs=2",
             "evaluation.n_fake=1000"] if args.quick else []
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; pass another --out")
    from gangaps.experiment.evaluate import cache_dir
    from gangaps.metrics.lenet import load_or_train_lenet
    os.environ.setdefault("GANGAPS_DATA_ROOT", args.data_root)
    load_or_train_lenet(cache_dir() / "lenet", args.data_root)  # warm: neither run trains it

    t_local = _demo(out / "local", args.data_root, *sizes)
    t_ray = _demo(out / "ray", args.data_root, *sizes, "--executor", "ray", "resources.cpus=1")
    t_one = _demo(out / "ray1", args.data_root, *sizes, "--executor", "ray", "resources.cpus=1",
                  "resources.generator_cpus=1") if args.one_thread_generators else None
    same = _records(out / "local") == _records(out / "ray")
    pairs, two, span = _overlap(out / "ray")

    print(f"gangaps demo {' '.join(sizes)} on {os.cpu_count()} CPUs")
    print(f"{'executor':<34} {'wall s':>8} {'speed-up':>9}")
    print(f"{'local (1 job at a time, all cores)':<34} {t_local:>8.1f} {1:>8.2f}x")
    print(f"{'ray (groups: a thread per instance)':<34} {t_ray:>8.1f} {t_local / t_ray:>8.2f}x")
    if t_one is not None:
        print(f"{'ray (every job 1 thread)':<34} {t_one:>8.1f} {t_local / t_one:>8.2f}x")
    print(f"results.json identical record for record: {same}"
          + ("" if same else " (thread counts differ: float sums in another order)"))
    print(f"ray: ≥2 jobs running {two:.0f}s of {span:.0f}s; {len(pairs)} pairs of jobs of "
          "different iterations ran at once, e.g.:")
    for a, b, s in pairs[:5]:
        print(f"  {a:<26} with {b:<26} {s:6.1f}s")


if __name__ == "__main__":
    main()
