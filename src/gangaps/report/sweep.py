"""The report of a sweep: runs sharing iteration 0, compared (R1 λ trade-off, R3 per fool_mode,
R4 architecture transfer). Records of every run go into one results.json."""

from __future__ import annotations

import html
from pathlib import Path

import gangaps
from gangaps.experiment.store import RunStore
from gangaps.io import atomic_write_json, atomic_write_text, read_json
from gangaps.report import build_report, embed_figure, figures, tables


def build_sweep_report(out: Path, runs: list[Path]) -> Path:
    records: list[dict] = []
    arch_rows: list[str] = []
    arch_cols: set[str] = set()
    arch_cells: dict[str, dict[str, float]] = {}
    matrices: dict[str, list[list[float]]] = {}
    for run in runs:
        build_report(run)
        run_records = read_json(run / "report" / "results.json")["records"]
        cfg = RunStore(run).load_config()
        fooled = "+".join(sorted({c.arch for c in cfg.classifiers if c.role == "target"}))
        for r in run_records:
            r["fooled_arch"] = fooled
        records += run_records
        K = cfg.experiment.iterations
        e = cfg.experiment
        matrices[f"{e.fool_mode}, λ={e.fool_lambda:g}, fooled {fooled}"] = \
            tables.cross_iteration_matrix(run_records, K)
        rows, cols, cells = tables.architecture_matrix(run_records, K)
        if rows[0] not in arch_rows:
            arch_rows.append(rows[0])
        arch_cols.update(cols)
        arch_cells.setdefault(rows[0], {}).update(dict(zip(cols, cells[0])))
    cols = sorted(arch_cols)
    arch = [[arch_cells[r].get(c, float("nan")) for c in cols] for r in arch_rows]
    fig_dir = out / "report" / "figures"
    figs = [
        (figures.tradeoff(tables.tradeoff_points(records), fig_dir / "tradeoff.png"),
         "R1: fooling held-out classifiers vs FID, across λ and fool_mode"),
        (figures.cross_iteration(matrices, fig_dir / "cross_iteration.png"),
         "R3: cross-iteration accuracy A[i][j] per run"),
        (figures.architecture(arch_rows, cols, arch, fig_dir / "architecture.png"),
         "R4: architecture fooled (rows) × architecture evaluating (columns)"),
    ]
    table = tables.sweep_table(records)
    atomic_write_text(out / "report" / "sweep.md", sweep_markdown(table))
    atomic_write_json(out / "report" / "results.json", {
        "gangaps_version": gangaps.__version__, "runs": [str(r) for r in runs],
        "records": records})
    links = "".join(f'<li><a href="../{html.escape(r.name)}/report/index.html">'
                    f"{html.escape(r.name)}</a></li>" for r in runs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gangaps sweep</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}</style></head><body>
<h1>gangaps sweep: {len(runs)} runs sharing iteration 0</h1><ul>{links}</ul>
<h2>R1: quality and fooling per run and iteration</h2>
<p>Mean [95 % bootstrap interval over generator instances] (n). Accuracies: of the previous
iteration's classifiers (iteration 0: its own) on held-out generators, 0.5 = chance.</p>
{sweep_html(table)}
{"".join(embed_figure(p, c) for p, c in figs)}
<p style="font-size:0.8em;color:#777">gangaps {gangaps.__version__} · {len(records)} records in
<code>results.json</code> (field <code>run</code> tells them apart)</p></body></html>"""
    path = out / "report" / "index.html"
    atomic_write_text(path, page)
    return path


_COLUMNS = (("fid", "FID", 1), ("mode_coverage", "digit classes ≥ 5 %", 1),
            ("clf_target", "targeted C_{k-1}", 3), ("clf_heldout", "held-out C_{k-1}", 3))


def _cell(v: tuple[float, float, float, int] | None, digits: int) -> str:
    if v is None or v[3] == 0:
        return "–"
    m, lo, hi, n = v
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if n > 1 else ""
    return f"{m:.{digits}f}{ci} ({n})"


def _row_cells(r: dict) -> list[str]:
    return [r["run"], str(r["iteration"]), r["fool_mode"], f"{r['fool_lambda']:g}",
            *(_cell(r[key], d) for key, _, d in _COLUMNS)]


def sweep_markdown(table: list[dict]) -> str:
    head = ["run", "iteration", "fool_mode", "λ", *(name for _, name, _ in _COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in table]
    return "\n".join(lines) + "\n"


def sweep_html(table: list[dict]) -> str:
    head = ["run", "iteration", "fool_mode", "λ", *(name for _, name, _ in _COLUMNS)]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _row_cells(r)) + "</tr>"
                   for r in table)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>"
