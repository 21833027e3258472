"""The demo's promises (issue 10), checked on finished runs' results.json, one row per run.

    python benchmarks/demo_checks.py RUN [RUN ...]

For each run: iteration 0's mean FID(LeNet) and digit classes (mode coverage), each later
iteration's, the target C_0 on held-out G_0 and on G_1 (every instance of iteration 1 fools
it), and whether each bound holds. Exit status 1 when a bound fails in any run. Reads only
results.json: an independent recomputation of what the report shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

FID_0_MAX, CLASSES_0_MIN, CLASSES_LATER_MIN, FID_LATER_FACTOR = 320.0, 6.0, 5.0, 2.0
DETECT_MIN, FOOL_DROP_MIN = 0.80, 0.15


def _mean(records: list[dict], **match) -> tuple[float, int]:
    values = [r["value"] for r in records if all(r.get(k) == v for k, v in match.items())]
    return (statistics.fmean(values) if values else float("nan")), len(values)


def check(run: Path) -> list[tuple[str, float, int, bool]]:
    """(what, value, n, holds) for every bound the demo promises."""
    results = json.loads((run / "report" / "results.json").read_text())
    records, iterations = results["records"], results["config"]["experiment"]["iterations"]
    fid0, n0 = _mean(records, metric="fid_lenet", generator_iteration=0)
    cls0, _ = _mean(records, metric="mode_coverage", generator_iteration=0)
    rows = [("iteration 0 FID", fid0, n0, fid0 <= FID_0_MAX),
            ("iteration 0 classes", cls0, n0, cls0 >= CLASSES_0_MIN)]
    for k in range(1, iterations):
        fid, n = _mean(records, metric="fid_lenet", generator_iteration=k)
        cls, _ = _mean(records, metric="mode_coverage", generator_iteration=k)
        rows += [(f"iteration {k} FID", fid, n, fid <= FID_LATER_FACTOR * fid0),
                 (f"iteration {k} classes", cls, n, cls >= CLASSES_LATER_MIN)]
    target = dict(metric="accuracy", classifier_iteration=0, classifier_role="target")
    detect, n = _mean(records, generator_iteration=0, generator_split="heldout", **target)
    rows.append(("C_0 on held-out G_0", detect, n, detect >= DETECT_MIN))
    if iterations > 1:
        fooled, n = _mean(records, generator_iteration=1, **target)
        rows.append(("C_0 drop on G_1", detect - fooled, n, detect - fooled >= FOOL_DROP_MIN))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    args = parser.parse_args(argv)
    table = {}
    for run in args.runs:
        try:
            table[run] = check(run)
        except (OSError, ValueError, KeyError) as e:
            print(f"demo_checks: {run}: no readable report/results.json ({e})", file=sys.stderr)
            return 2
    names = list(dict.fromkeys(what for rows in table.values() for what, *_ in rows))
    print("| check | " + " | ".join(str(r) for r in table) + " |")
    print("|---|" + "---|" * len(table))
    for what in names:
        cells = []
        for rows in table.values():
            hit = [(v, n, ok) for w, v, n, ok in rows if w == what]
            cells.append(f"{hit[0][0]:.3f} (n={hit[0][1]}) {'ok' if hit[0][2] else 'FAIL'}"
                         if hit else "–")
        print(f"| {what} | " + " | ".join(cells) + " |")
    return 0 if all(ok for rows in table.values() for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
