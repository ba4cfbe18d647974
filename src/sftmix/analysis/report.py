"""The study report: Table-1-style tables (markdown, CSV, LaTeX) with the best two per column
marked, figures (metric against each numeric grid axis, one line per other setting), FLOPs, and an
HTML page that embeds everything (no server needed), plus the configs and versions behind it."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from sftmix.io import atomic_write
from sftmix.provenance import provenance
from sftmix.study.grid import short_value
from sftmix.study.store import Store

LOWER_IS_BETTER = ("loss",)


def table(store: Store) -> tuple[list[str], list[list]]:
    """Rows = done runs (label), columns = task/metric; values from the database only."""
    runs = {r["id"]: r for r in store.runs() if r["status"] == "done"}
    cols = sorted({(m["task"], m["metric"]) for m in store.metrics() if m["run_id"] in runs},
                  key=lambda c: (c[0] != "gsm8k", c[0] != "humaneval", c[0] != "mtbench", c))
    keep = [c for c in cols if c[1] in ("accuracy", "pass@1", "score") or c[0] == "loss"]
    vals = {(m["run_id"], m["task"], m["metric"]): m["value"] for m in store.metrics()}
    header = ["run"] + [f"{t}/{m}" for t, m in keep] + ["train PFLOPs", "eval PFLOPs"]
    rows = []
    for rid, r in runs.items():
        train, ev = flops(r, vals, rid)
        rows.append([r["label"]] + [vals.get((rid, t, m)) for t, m in keep] + [round(train / 1e15, 6), round(ev / 1e15, 6)])
    return header, rows


def flops(run: dict, vals: dict, rid: str) -> tuple[float, float]:
    """Training FLOPs 6·N·D over the real tokens trained on (all stages and epochs); evaluation
    FLOPs 2·N per prompt or generated token of the generation tasks (held-out loss excluded)."""
    n = run["params"] or 0
    eval_tokens = sum(v for (r, _t, m), v in vals.items() if r == rid and m == "tokens_processed")
    return 6 * n * (run["train_tokens"] or 0), 2 * n * eval_tokens


def _marks(header: list[str], rows: list[list]) -> dict[tuple[int, int], str]:
    """Best and second-best per metric column (ties share the mark; a constant column gets none)."""
    marks = {}
    for j, name in enumerate(header[1:-2], 1):
        lower = name.startswith(LOWER_IS_BETTER)
        distinct = sorted({r[j] for r in rows if r[j] is not None}, reverse=not lower)
        if len(distinct) < 2:
            continue
        for i, r in enumerate(rows):
            if r[j] == distinct[0]:
                marks[(i, j)] = "best"
            elif r[j] == distinct[1]:
                marks[(i, j)] = "second"
    return marks


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def markdown(header, rows) -> str:
    marks = _marks(header, rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            s = _fmt(v)
            m = marks.get((i, j))
            cells.append(f"**{s}**" if m == "best" else f"<u>{s}</u>" if m == "second" else s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nBest per column in bold, second underlined (lower is better for loss).\n"


def latex(header, rows) -> str:
    marks = _marks(header, rows)
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")  # noqa: E731
    out = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            s = esc(_fmt(v))
            m = marks.get((i, j))
            cells.append(rf"\textbf{{{s}}}" if m == "best" else rf"\underline{{{s}}}" if m == "second" else s)
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def figures(store: Store) -> dict[str, bytes]:
    """One PNG per (numeric axis, metric): metric against the axis (log2), a line per other setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fractions import Fraction

    runs = [r for r in store.runs() if r["status"] == "done"]
    vals = {}
    for m in store.metrics():
        vals.setdefault(m["run_id"], {})[f"{m['task']}/{m['metric']}"] = m["value"]
    points = {r["id"]: json.loads(r["point"]) for r in runs}

    def num(v):
        try:
            return float(Fraction(str(v)))
        except (ValueError, ZeroDivisionError):
            return None

    axes = sorted({k for p in points.values() for k, v in p.items() if num(v) is not None})
    metrics = sorted({k for v in vals.values() for k in v if k.split("/")[1] in ("accuracy", "pass@1", "score") or k.startswith("loss/")})
    out = {}
    for axis in axes:
        for metric in metrics:
            series: dict[str, list] = {}
            for r in runs:
                p = points[r["id"]]
                if axis not in p or metric not in vals.get(r["id"], {}):
                    continue
                # Lines: one per setting of the other axes; amount dicts (no "name") vary with the
                # plotted axis in zipped studies and would give a line per point.
                other = " ".join(f"{k.split('.')[-1]}={short_value(v)}" for k, v in p.items()
                                 if k != axis and not (isinstance(v, dict) and "name" not in v)) or "runs"
                series.setdefault(other, []).append((num(p[axis]), vals[r["id"]][metric]))
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for name, pts in sorted(series.items()):
                pts.sort()
                xs = [x if x > 0 else min(p for p, _ in pts if p > 0) / 2 if any(p > 0 for p, _ in pts) else 1e-3 for x, _ in pts]
                ax.plot(xs, [y for _, y in pts], marker="o", label=name[:40])
            ax.set_xscale("log", base=2)
            ax.set_xlabel(axis)
            ax.set_ylabel(metric)
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            plt.close(fig)
            out[f"{axis.replace('.', '_')}__{metric.replace('/', '_').replace('@', 'at')}.png"] = buf.getvalue()
    return out


def write_report(store: Store, out_dir: str | Path, title: str, study_doc: dict | None = None, notes: list[str] | None = None,
                 extra_figures: dict[str, bytes] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(store)
    md = markdown(header, rows)
    with atomic_write(out / "table.md") as f:
        f.write(md)
    with atomic_write(out / "table.tex") as f:
        f.write(latex(header, rows))
    with atomic_write(out / "table.csv") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    figs = {**figures(store), **(extra_figures or {})}
    for name, data in figs.items():
        with atomic_write(out / name, "wb") as f:
            f.write(data)
    runs = store.runs()
    status = {s: sum(r["status"] == s for r in runs) for s in ("done", "running", "failed")}
    vals = {(m["run_id"], m["task"], m["metric"]): m["value"] for m in store.metrics()}
    totals = [flops(r, vals, r["id"]) for r in runs if r["status"] == "done"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>runs: {status}; study compute: training (6·N·D over real tokens) {sum(t for t, _ in totals):.3e} FLOPs, "
             f"evaluation (2·N per generation token) {sum(e for _, e in totals):.3e} FLOPs</p>"]
    for n in notes or []:
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    parts.append("<h2>Results</h2>" + _html_table(header, rows))
    if figs:
        parts.append("<h2>Figures</h2>" + "".join(
            f"<figure><img alt='{html.escape(n)}' src='data:image/png;base64,{base64.b64encode(d).decode()}'>"
            f"<figcaption>{html.escape(n)}</figcaption></figure>" for n, d in figs.items()))
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        parts.append("<h2>Failed runs</h2><ul>" + "".join(f"<li>{html.escape(r['label'])}: <pre>{html.escape((r['error'] or '')[:500])}</pre></li>" for r in failed) + "</ul>")
    parts.append("<h2>Configs and provenance</h2><details><summary>study</summary><pre>" + html.escape(json.dumps(study_doc or {}, indent=1)) +
                 "</pre></details><details><summary>runs</summary><pre>" +
                 html.escape(json.dumps([{k: r[k] for k in ("id", "label", "status", "checkpoint", "config")} for r in runs], indent=1)[:200000]) +
                 "</pre></details><details><summary>versions</summary><pre>" + html.escape(json.dumps(provenance(), indent=1)) + "</pre></details>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;display:block;overflow-x:auto} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            " td:first-child{text-align:left} .best{font-weight:bold} .second{text-decoration:underline} figure{display:inline-block;margin:8px}"
            " .note{background:#fff8e0;padding:8px;border-left:4px solid #e0b000}</style></head><body>" + "".join(parts) + "</body></html>")
    with atomic_write(out / "report.html") as f:
        f.write(page)
    with atomic_write(out / "report.md") as f:
        f.write(f"# {title}\n\n" + "".join(f"> {n}\n\n" for n in notes or []) + md + "\n" + "".join(f"![{n}]({n})\n" for n in figs))
    return out / "report.html"


def _html_table(header, rows) -> str:
    marks = _marks(header, rows)
    h = "<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in header) + "</tr>"
    for i, r in enumerate(rows):
        h += "<tr>" + "".join(f"<td class='{marks.get((i, j), '')}'>{html.escape(_fmt(v))}</td>" for j, v in enumerate(r)) + "</tr>"
    return h + "</table>"
