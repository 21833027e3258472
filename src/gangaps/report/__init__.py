"""The run report: results.json (long format) plus a self-contained index.html with figures."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import gangaps
from gangaps.experiment.plan import generator_specs
from gangaps.experiment.store import RunStore
from gangaps.io import atomic_write_text, read_jsonl
from gangaps.report import figures, tables
from gangaps.report.results import write_results


def _fmt(ms: tuple[float, float, int] | None, digits: int = 3) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    m, s, n = ms
    return f"{m:.{digits}f} ± {s:.{digits}f} ({n})" if n > 1 else f"{m:.{digits}f} (1)"


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def findings_section(f: dict, fid_name: str) -> str:
    """The claims table (verdicts first, the reader's first question) and collapsed generators."""
    def cells(c: dict) -> str:
        ci = c["ci95"]
        interval = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "–"
        n = f"{c['n_generators']} generators" + (
            f" × {c['n_classifiers']} classifiers" if c["n_classifiers"] else "")
        reading = f'<div class="rule">{html.escape(c["reading"])}</div>' if c.get("reading") else ""
        return (f"<td>{n}</td><td>{_num(c['value'])}{reading}</td><td>{interval}</td>"
                f'<td class="{c["verdict"].replace(" ", "-")}">{html.escape(c["verdict"])}</td>')
    rows = []
    for c in f["claims"]:
        rows.append(
            f'<tr><td class="claim"><b>{html.escape(c["claim"])}</b>: '
            f'{html.escape(c["statement"])}<div class="rule">{html.escape(c["statistic"])}; '
            f'{html.escape(c["rule"])}</div></td>{cells(c)}</tr>')
        if "without_collapsed" in c:
            rows.append(f'<tr><td class="claim rule">the same without the collapsed '
                        f'{html.escape(", ".join(c["collapsed_included"]))}</td>'
                        f'{cells(c["without_collapsed"])}</tr>')
    collapsed = "".join(
        f"<li>G{c['generator_iteration']}.{c['generator_instance']}: {html.escape(c['reason'])}</li>"
        for c in f["collapsed"])
    warn = (f'<div class="warn"><b>Collapsed generators</b> (mode coverage below half or FID '
            f"above twice iteration 0's mean; each claim they enter is also given without them):"
            f"<ul>{collapsed}</ul></div>"
            if collapsed else "<p>No generator left iteration 0's range of "
            f"{html.escape(fid_name)} and mode coverage.</p>")
    quality = "".join(f"<p>{html.escape(line)}</p>" for line in f.get("quality_lines", []))
    return (f"<h2>Findings</h2>{quality}{warn}<table><tr><th>claim</th><th>n</th>"
            f"<th>estimate</th><th>95 % interval</th><th>verdict</th></tr>{''.join(rows)}"
            f"</table><p class=\"rule\">{html.escape(f['method'])}.</p>")


def embed_figure(path: Path | None, caption: str) -> str:
    """A PNG inlined as base64 (the report opens from disk, alone), with its caption."""
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} (<code>figures/{path.name}</code>)</figcaption></figure>")


def snapshot_caption(curves: list[dict]) -> str:
    """What the snapshot curves measure, with their sample counts."""
    pts = [p for c in curves for p in c["points"]]
    if not pts:
        return ""
    count = lambda key: "/".join(str(v) for v in sorted({p[key] for p in pts}))  # noqa: E731
    return (f"{curves[0]['metric']} of each instance at its training snapshots "
            f"(gan.snapshot_metric; {count('n_fake')} generated against {count('n_real')} "
            "held-out real images per point)")


def build_report(run_dir: str | Path) -> Path:
    """Write report/results.json, report/figures/*.png and report/index.html; return the HTML."""
    store = RunStore(run_dir)
    cfg = store.load_config()
    store = RunStore(run_dir, cfg.experiment.reuse_iteration0)
    results = write_results(store)
    records = results["records"]
    K = cfg.experiment.iterations
    fig_dir = store.report_dir / "figures"

    table = tables.iteration_table(records, K)
    matrices = {"all classifiers": tables.cross_iteration_matrix(records, K),
                "target classifiers": tables.cross_iteration_matrix(records, K, "target"),
                "held-out classifiers": tables.cross_iteration_matrix(records, K, "heldout")}
    logs, grids = {}, {}
    for k in range(K):
        dirs = [store.generator_dir(k, g.instance) for g in generator_specs(cfg, k)]
        logs[k] = [read_jsonl(d / "log.jsonl") for d in dirs]
        grids[k] = [d / "samples.png" for d in dirs]
    figs = [
        (figures.fid_by_iteration(records, K, fig_dir / "fid.png"),
         "FID and mode coverage per generator instance"),
        (figures.fooling(table, fig_dir / "fooling.png"), "Held-out detection and fooling"),
        (figures.cross_iteration(matrices, fig_dir / "cross_iteration.png"),
         "Cross-iteration matrix A[i][j]: accuracy of C_i on held-out G_j"),
        (figures.tradeoff(tables.tradeoff_points(records), fig_dir / "tradeoff.png"),
         "Fooling vs quality per held-out generator (R1)"),
        (figures.architecture(*tables.architecture_matrix(records, K),
                              fig_dir / "architecture.png"), "Architecture transfer (R4)"),
        (figures.samples(grids, fig_dir / "samples.png"), "Samples, one grid per instance"),
        (figures.training_curves(logs, fig_dir / "curves.png"), "Generator training curves"),
        (figures.snapshot_metric(results["snapshot_curves"], fig_dir / "snapshot_metric.png"),
         snapshot_caption(results["snapshot_curves"])),
    ]

    fid_name = tables.fid_metric(records) or "FID"
    head = ["iteration", f"{fid_name}", "digit classes ≥ 5 %", "class KL (nats)",
            "C_k target on held-out G_k (H1)", "C_k held-out on held-out G_k (H1)",
            "C_{k-1} targeted on G_k (fooling)", "C_{k-1} held out on G_k (H2)"]
    rows = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            r["iteration"], _fmt(r.get("fid"), 1), _fmt(r.get("mode_coverage"), 1),
            _fmt(r.get("class_kl"), 2), _fmt(r["h1_target"]), _fmt(r["h1_heldout"]),
            _fmt(r.get("prev_target")), _fmt(r.get("prev_heldout")))) + "</tr>"
        for r in table)
    e = cfg.experiment
    weighting = (f"{e.fool_weighting} weight, start {e.fool_start:g}, ramp {e.fool_ramp:g} "
                 "of training")
    summary = (f"{K} iterations × {e.instances} generator instances ({e.heldout_instances} held "
               f"out) · gan {cfg.gan.family}, {cfg.gan.kimg:g} kimg · fool_mode {e.fool_mode}, "
               f"λ={e.fool_lambda:g} ({weighting}) · classifiers: "
               + ", ".join(f"{c.arch}×{len(c.seeds)} ({c.role})" for c in cfg.classifiers))
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>gangaps report: {html.escape(cfg.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right}}th{{background:#f4f4f4}}figure{{display:inline-block;margin:0.5em;
vertical-align:top}}img{{max-width:100%}}figcaption{{font-size:0.85em;color:#555}}
td.claim{{text-align:left}}.supported{{background:#d9f2d9}}.contradicted{{background:#f8d7d7}}
.too-few-to-tell{{background:#eee}}.rule{{font-size:0.8em;color:#555;text-align:left}}
.warn{{background:#fff3cd;padding:0.5em 1em;border-left:4px solid #e0a800}}</style>
</head><body>
<h1>gangaps report: {html.escape(cfg.name)}</h1>
<p>{html.escape(summary)}</p>
{findings_section(results["findings"], fid_name)}
<h2>Per iteration</h2>
<p>Mean ± standard deviation over the iteration's generator instances (n per cell in
brackets). Accuracy is balanced accuracy at logit 0 over {cfg.evaluation.n_real} held-out real
images and {cfg.evaluation.n_fake} samples per generator; 0.5 is chance. Digit classes and class
KL: the LeNet's predicted digits of the samples (real MNIST: 10 classes, KL ≈ 0). H1: do
classifiers trained on some instances detect independently trained held-out instances? H2:
after training against C_{{k-1}}, are held-out classifiers of that iteration fooled too?</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>{rows}</table>
<h2>Figures</h2>
{"".join(embed_figure(p, c) for p, c in figs)}
<p style="font-size:0.8em;color:#777">gangaps {gangaps.__version__} · every number is in
<code>results.json</code> ({len(records)} records, and <code>findings</code>) · config in
<code>../config.yaml</code></p>
</body></html>
"""
    out = store.report_dir / "index.html"
    atomic_write_text(out, page)
    return out
