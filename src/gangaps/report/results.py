"""results.json: every measurement of a run as one flat record (long format, pandas-ready).

Each record: metric, value, generator_iteration, generator_instance, generator_split, and for
classifier metrics classifier_iteration, classifier_id, classifier_arch, classifier_role (None
for quality metrics), plus the run's fool_mode and fool_lambda so several runs concatenate. `snapshot_curves`:
each generator's metric at its training snapshots (gan.snapshot_metric), one curve per
generator and metric.
"""

from __future__ import annotations

from pathlib import Path

import gangaps
from gangaps.errors import UserError
from gangaps.experiment.plan import generator_specs
from gangaps.experiment.store import RunStore
from gangaps.io import atomic_write_json, read_json
from gangaps.report.findings import findings
from gangaps.train.snapshots import metric_records

GEN_KEYS = ("generator_iteration", "generator_instance", "generator_split")
CLF_KEYS = ("classifier_iteration", "classifier_id", "classifier_arch", "classifier_role")


def collect_records(store: RunStore) -> list[dict]:
    cfg = store.load_config()
    run = {"run": cfg.name, "fool_mode": cfg.experiment.fool_mode,
           "fool_lambda": cfg.experiment.fool_lambda}
    records = []
    for path, records_of in [*((p, _quality_records) for p in store.quality_files()),
                             *((p, _eval_records) for p in store.eval_files())]:
        try:
            records += records_of(read_json(path), run)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
            raise UserError(f"{path}: damaged result ({reason}); delete it and run the same "
                            "command again to redo that evaluation") from None
    return records


def _quality_records(q: dict, run: dict) -> list[dict]:
    base = {k: q[k] for k in GEN_KEYS} | dict.fromkeys(CLF_KEYS)
    extra = {"protocol": q["protocol"]} if "protocol" in q else {}
    return [{"metric": metric, "value": float(value), **base, **run, "n_fake": q.get("n_fake"),
             **extra}
            for metric, value in q.items()
            if isinstance(value, (int, float)) and metric not in GEN_KEYS and metric != "n_fake"]


def _eval_records(e: dict, run: dict) -> list[dict]:
    base = {k: e[k] for k in GEN_KEYS + CLF_KEYS}
    out = []
    for metric, value in e["metrics"].items():
        if isinstance(value, list):
            continue  # confidence intervals ride along with their metric below
        ci = e["metrics"].get(f"{metric}_ci95")
        rec = {"metric": metric, "value": float(value), **base, **run,
               "n_real": e["n_real"], "n_fake": e["n_fake"]}
        if ci:
            rec["ci95"] = ci
        out.append(rec)
    return out


def snapshot_curves(store: RunStore) -> list[dict]:
    """One curve per generator and snapshot metric: its points in step order ([]: none)."""
    cfg = store.load_config()
    curves = []
    for k in range(cfg.experiment.iterations):
        for g in generator_specs(cfg, k):
            for lines in metric_records(store.generator_dir(k, g.instance)).values():
                if not lines:
                    continue
                curves.append({"metric": lines[0]["metric"], "features": lines[0]["features"],
                               "generator_iteration": k, "generator_instance": g.instance,
                               "generator_split": g.split,
                               "points": [{key: r[key] for key in ("step", "kimg", "value",
                                                                    "n_fake", "n_real")}
                                          for r in lines]})
    return curves


def write_results(store: RunStore, path: Path | None = None) -> dict:
    cfg = store.load_config()
    records = collect_records(store)
    results = {
        "gangaps_version": gangaps.__version__,
        "schema": "records: one per measurement; findings: the paper's claims tested on them; "
                  "see README 'results.json'",
        "config": cfg.model_dump(mode="json"),
        "findings": findings(records, cfg.experiment.iterations, cfg.experiment.fool_mode),
        "records": records,
        "snapshot_curves": snapshot_curves(store),
    }
    atomic_write_json(path or store.report_dir / "results.json", results)
    return results
