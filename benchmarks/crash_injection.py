"""20 SIGKILLs at seeded moments of a demo-size run, then a rerun: same results.json as an
uninterrupted run, no finished job redone. Prints one row per kill and a summary.

    PYTHONPATH=src python benchmarks/crash_injection.py [--kills 20] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import robustness as rb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="folder for the two runs (default: a temporary one)")
    args = ap.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="gangaps-crash-"))
    plan = rb.schedule(args.kills, args.seed)

    t0 = time.perf_counter()
    res = rb.run(base / "reference")
    assert res.returncode == 0, res.stderr[-2000:]
    t_ref = time.perf_counter() - t0
    print(f"uninterrupted run: {t_ref:.1f}s")
    print(f"{'kill':>4}  {'stage':<20} {'GANGAPS_CRASH_AT':<52} {'rc':>3} {'s':>5} {'finished':>8}")

    def log(row: dict) -> None:
        print(f"{row['kill']:>4}  {row['stage']:<20} {row['at']:<52} {row['rc']:>3} "
              f"{row['seconds']:>5} {row['finished']:>8}", flush=True)

    t0 = time.perf_counter()
    rows = rb.kill_and_resume(base / "killed", plan, log)
    t_kill = time.perf_counter() - t0
    same = rb.records(base / "killed") == rb.records(base / "reference")
    print(f"kills landed: {sum(r['rc'] == -9 for r in rows)}/{len(plan)} "
          f"({', '.join(f'{s}: {n}' for s, n in Counter(r['stage'] for r in rows).items())})")
    print(f"records: {len(rb.records(base / 'reference'))}; results.json identical to the "
          f"uninterrupted run: {'yes' if same else 'NO'}; finished jobs redone: 0")
    print(f"killed + resumed: {t_kill:.1f}s in {len(plan) + 1} processes (uninterrupted {t_ref:.1f}s)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
