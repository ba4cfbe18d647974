"""The study report: Table-1-style tables (markdown, CSV, LaTeX) with a 95% interval on every
value and the best two per column marked, the Findings (the study's claims tested pairwise, with
verdicts), forgetting curves (held-out loss per held-out source during training, stage boundaries
marked), figures (metric against each numeric grid axis with error bars, one line per other
setting), FLOPs, and an HTML page that embeds everything (no server needed), plus the configs
and versions behind it. Replicates (seeds) are one configuration throughout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

from sftmix import layout
from sftmix.analysis import lawreport, optreport
from sftmix.analysis.document import Bullets, Details, Figures, Section, Table, Text, markdown_table, to_html, to_markdown
from sftmix.analysis.figure import png
from sftmix.analysis.findings import METHOD, check_claims, check_predictions, finding_sentence, prediction_sentence
from sftmix.analysis.lawfit import Fit, fit_key, load_fit, other_version
from sftmix.analysis.results import eval_tokens, flops, groups, lower_is_better, study_tasks, summary
from sftmix.config import Claim, Prediction
from sftmix.errors import SftmixError
from sftmix.eval import tasks
from sftmix.io import atomic_write, pid_alive
from sftmix.provenance import provenance
from sftmix.study.grid import short_value
from sftmix.study.optimize import OptimizeLog, load_log
from sftmix.study.store import CurvePoint, Store


def table(store: Store) -> tuple[list[str], list[list]]:
    """Rows = configurations (replicates merged), columns = metrics as (estimate, low, high)."""
    return summary(store)


def _est(v):
    return v[0] if isinstance(v, tuple) else v


def _metric_columns(header: list[str]) -> range:
    first = 2 if len(header) > 1 and header[1] == "seeds" else 1
    return range(first, len(header) - 2)


def _marks(header: list[str], rows: list[list], known: dict) -> dict[tuple[int, int], str]:
    """Best and second-best per metric column by estimate (ties share the mark; a constant
    column gets none). ``known``: the tasks whose directions decide (``study_tasks``)."""
    marks = {}
    for j in _metric_columns(header):
        lower = lower_is_better(header[j], known)
        distinct = sorted({_est(r[j]) for r in rows if _est(r[j]) is not None}, reverse=not lower)
        if len(distinct) < 2:
            continue
        for i, r in enumerate(rows):
            if _est(r[j]) == distinct[0]:
                marks[(i, j)] = "best"
            elif _est(r[j]) == distinct[1]:
                marks[(i, j)] = "second"
    return marks


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def csv_rows(header: list[str], rows: list[list]) -> tuple[list[str], list[list]]:
    """Flat CSV: each metric column becomes estimate, low and high columns."""
    cols = set(_metric_columns(header))
    out_header = [x for j, h in enumerate(header) for x in ((h, f"{h} low", f"{h} high") if j in cols else (h,))]
    out = []
    for r in rows:
        out.append([x for j, v in enumerate(r) for x in ((v if isinstance(v, tuple) else (v, None, None)) if j in cols else (v,))])
    return out_header, out


def results_table(header, rows, known: dict = tasks.BUILTIN) -> Table:
    """The results as a report table: cells formatted, best and second per metric column marked."""
    return Table(list(header), [[_fmt(v) for v in r] for r in rows], _marks(header, rows, known))


def markdown(header, rows, known: dict = tasks.BUILTIN) -> str:
    """``table.md``: the results table in Markdown, with what its marks mean."""
    return markdown_table(results_table(header, rows, known)) + f"\n{TABLE_LEGEND}\n"


TABLE_LEGEND = ("Estimate [95% interval]; best per column in bold, second underlined (lower is better for loss). "
                "Intervals: see Method.")


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
                  "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}"}


def latex_text(s: str) -> str:
    """``s`` as LaTeX text: each of LaTeX's special characters as the character itself."""
    return "".join(LATEX_SPECIALS.get(c, c) for c in s)


def latex(header, rows, known: dict = tasks.BUILTIN) -> str:
    """``table.tex``: the results table as a booktabs LaTeX tabular, best in bold, second underlined."""
    marks = _marks(header, rows, known)
    out = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(latex_text(h) for h in header) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            s = latex_text(_fmt(v))
            m = marks.get((i, j))
            cells.append(rf"\textbf{{{s}}}" if m == "best" else rf"\underline{{{s}}}" if m == "second" else s)
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def figures(store: Store, header: list[str] | None = None, rows: list[list] | None = None) -> dict[str, bytes]:
    """One PNG per (numeric axis, metric): metric against the axis (log2) with 95% error bars,
    a line per setting of the other axes."""
    # imported here: matplotlib is heavy and only needed to draw figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    if header is None or rows is None:
        header, rows = table(store)
    cells = {r[0]: dict(zip(header, r)) for r in rows}
    gs = groups(store)

    def num(v):
        try:
            return float(Fraction(str(v)))
        except (ValueError, ZeroDivisionError):
            return None

    axes = sorted({k for g in gs for k, v in g.point.items() if num(v) is not None})
    metrics = [h for h in header[_metric_columns(header).start:_metric_columns(header).stop]]
    out = {}
    for axis in axes:
        for metric in metrics:
            series: dict[str, list] = {}
            for g in gs:
                v = cells.get(g.label, {}).get(metric)
                if axis not in g.point or v is None:
                    continue
                # Lines: one per setting of the other axes; amount dicts (no "name") vary with the
                # plotted axis in zipped studies and would give a line per point.
                other = " ".join(f"{k.split('.')[-1]}={short_value(x)}" for k, x in g.point.items()
                                 if k != axis and not (isinstance(x, dict) and "name" not in x)) or "runs"
                est, lo, hi = v if isinstance(v, tuple) else (v, v, v)
                series.setdefault(other, []).append((num(g.point[axis]), est, lo, hi))
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for name, pts in sorted(series.items()):
                pts.sort()
                positive = [x for x, *_ in pts if x > 0]
                xs = [x if x > 0 else (min(positive) / 2 if positive else 1e-3) for x, *_ in pts]
                ys = [e for _, e, _, _ in pts]
                err = [[e - lo for _, e, lo, _ in pts], [hi - e for _, e, _, hi in pts]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name[:40])
            ax.set_xscale("log", base=2)
            ax.set_xlabel(axis)
            ax.set_ylabel(metric + " (95% CI)")
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
            out[f"{axis.replace('.', '_')}__{metric.replace('/', '_').replace('@', 'at')}.png"] = png(fig)
    return out


def curve_figures(store: Store) -> dict[str, bytes]:
    """Forgetting curves: per held-out source, its loss against optimizer steps since the run began,
    one line per configuration (mean over seeds, band = min..max over seeds); dotted verticals in
    the line's colour mark where its next stage starts."""
    # imported here: matplotlib is heavy and only needed to draw figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    pts = store.curves()
    if not pts:
        return {}
    by_run: dict[str, list[CurvePoint]] = {}
    for c in pts:
        by_run.setdefault(c.run_id, []).append(c)
    out = {}
    for source in sorted({c.source for c in pts}):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for g in groups(store):
            per_step: dict[int, list[float]] = {}
            starts: set[int] = set()
            for r in g.runs:
                for c in by_run.get(r.id, []):
                    if c.source == source:
                        per_step.setdefault(c.run_step, []).append(c.loss)
                        if c.step == 0 and c.stage_index > 1:
                            starts.add(c.run_step)
            if not per_step:
                continue
            xs = sorted(per_step)
            ys = [sum(per_step[x]) / len(per_step[x]) for x in xs]
            (line,) = ax.plot(xs, ys, marker=".", label=g.label[:48])
            if len(g.runs) > 1:
                ax.fill_between(xs, [min(per_step[x]) for x in xs], [max(per_step[x]) for x in xs], color=line.get_color(), alpha=0.15)
            for s in sorted(starts):
                ax.axvline(s, color=line.get_color(), linestyle=":", alpha=0.7)
        ax.set_xlabel("optimizer steps since the run began (dotted: a stage starts)")
        ax.set_ylabel(f"held-out loss: {source}")
        ax.set_title(f"forgetting curve: {source}")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        out[f"curve__{source}.png"] = png(fig)
    return out


def write_report(store: Store, out_dir: str | Path, title: str, study_doc: dict | None = None, notes: list[str] | None = None,
                 extra_figures: dict[str, bytes] | None = None, top: list[str] | None = None, laws: Fit | None = None,
                 optimization: OptimizeLog | None = None) -> Path:
    """Write the tables, figures, Findings and the HTML and markdown pages; return the HTML path.

    ``top``: lines shown first (e.g. where the data came from); ``notes``: extra remarks;
    ``laws``: a fit (``fit.json``; by default the one beside the store, if any) for the Laws
    section; ``optimization``: a sequential design (``optimize.json``; by default the one beside
    the store) for the Optimisation section. The study's predictions (a proposal's) are checked against what was observed.

    All or nothing: the report is built in a fresh folder beside ``out_dir`` and put in its place
    only when every file is written, so a failure leaves the previous report whole (and a new
    report never keeps a stale file of an older one)."""
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in final.parent.glob(f".{final.name}.*.tmp"):
        pid = old.name[len(final.name) + 2:].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    if final.exists() and not final.is_dir():
        raise SftmixError(f"{final}: is a file; the report is a folder")
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        _write_report(store, work, title, study_doc, notes, extra_figures, top, laws, optimization)
        if final.exists():
            old = final.with_name(f".{final.name}.{os.getpid()}.old.tmp")
            os.rename(final, old)
            os.rename(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "report.html"


def _write_report(store: Store, out: Path, title: str, study_doc: dict | None, notes: list[str] | None,
                  extra_figures: dict[str, bytes] | None, top: list[str] | None, laws: Fit | None,
                  optimization: OptimizeLog | None) -> None:
    header, rows = table(store)
    known = study_tasks(store)
    md = markdown(header, rows, known)
    with atomic_write(out / "table.md") as f:
        f.write(md)
    with atomic_write(out / "table.tex") as f:
        f.write(latex(header, rows, known))
    flat_header, flat_rows = csv_rows(header, rows)
    with atomic_write(out / "table.csv") as f:
        w = csv.writer(f)
        w.writerow(flat_header)
        w.writerows(flat_rows)
    claims = [Claim(**c) for c in (study_doc or {}).get("compare", [])]
    found = check_claims(store, claims, tuple((study_doc or {}).get("zip", {})))
    with atomic_write(out / "findings.json") as f:
        json.dump([x.model_dump() for x in found], f, indent=1)
    sentences = [finding_sentence(x) for x in found]
    predicted = check_predictions(store, [Prediction(**p) for p in (study_doc or {}).get("predictions", [])])
    if predicted:
        with atomic_write(out / "predictions.json") as f:
            json.dump([p.model_dump() for p in predicted], f, indent=1)
    pred_sentences = [prediction_sentence(p) for p in predicted]
    laws = laws if laws is not None else load_fit(store.path.parent)
    if laws is None and (ignored := other_version(store.path.parent)):
        top = [*(top or []), ignored]  # a fit.json is there but not used: say so rather than leave it out silently
    law_figs, stale = {}, None
    if laws:
        if laws.key != fit_key(store, laws.unit, laws.draws, laws.seed):
            stale = ("These laws were fitted before the latest runs finished (or on other runs): run `sftmix study fit` "
                     "again to refit them on every done run.")
        law_figs = lawreport.figures(laws)
        lawreport.write_csvs(laws, out)
    optimization = optimization if optimization is not None else load_log(layout.optimize_file(store.path.parent))
    opt_figs = optreport.figures(optimization) if optimization else {}
    curves = curve_figures(store)
    figs = {**curves, **figures(store, header, rows), **(extra_figures or {}), **law_figs, **opt_figs}
    for name, data in figs.items():
        with atomic_write(out / name, "wb") as f:
            f.write(data)
    runs = store.runs()
    sections = _sections(store, runs, header, rows, known, found, sentences, predicted, pred_sentences, notes, top,
                         curves, figs, laws, law_figs, stale, study_doc, optimization, opt_figs)
    with atomic_write(out / "report.html") as f:
        f.write(to_html(title, sections))
    with atomic_write(out / "report.md") as f:
        f.write(to_markdown(title, sections))


PREDICTIONS_INTRO = ("What the fitted laws predicted for these configurations, beside what was observed; the predictive "
                     "interval adds one configuration's measurement noise to the law's own uncertainty.")


CONTAMINATION_INTRO = ("Each done run's benchmark scores over all items and over the items none of its training rows holds "
                       "(an item is held where a row has n consecutive words of it in common, n the run's clean.ngram; "
                       "sftmix.eval.contamination). A score that drops without the held items was helped by training on the test.")


def contamination_rows(store, runs) -> list[list[str]]:
    """A row per done run and benchmark it was evaluated on: the items its training rows hold, and
    the headline metric over all items and over the others (the store's ``contamination``)."""
    labels = {r.id: r.label for r in runs}
    return [[labels[c.run_id], c.task, f"{len(c.held)} of {c.items}", str(c.rows), str(c.ngram), c.metric, f"{c.value:.2f}",
             "none left" if c.clean_value is None else f"{c.clean_value:.2f}"]
            for c in store.contamination() if c.run_id in labels]


def _sections(store, runs, header, rows, known, found, sentences, predicted, pred_sentences, notes, top, curves, figs,
              laws, law_figs, stale, study_doc, optimization=None, opt_figs=None) -> list[Section]:
    """The report's sections, once, for both renderings."""
    status = {s: sum(r.status == s for r in runs) for s in ("done", "running", "failed")}
    tokens = eval_tokens(store.metrics())
    totals = [flops(r, tokens) for r in runs if r.status == "done"]
    out = [Section(None, [*(Text(t, "top") for t in top or []), Text(
        f"runs: {status}; study compute: training (6·N·D over real tokens) {sum(t for t, _ in totals):.3e} FLOPs, "
        f"evaluation (2·N per prompt and answer token of the generation tasks) {sum(e for _, e in totals):.3e} FLOPs")])]
    if found:
        out.append(Section("Findings", [Bullets(sentences, [x.verdict.split()[0] for x in found])]))
    if predicted:
        classes = ["as" if p.verdict.startswith("inside") else "the" if p.tested else "not" for p in predicted]
        out.append(Section("Predictions", [Text(PREDICTIONS_INTRO), Bullets(pred_sentences, classes)]))
    out.append(Section("Results", [*(Text(n, "note") for n in notes or []), results_table(header, rows, known),
                                   Text(TABLE_LEGEND), Text(METHOD, "method", "Method.")]))
    if curves:
        out.append(Section("Forgetting curves", [Figures(curves)]))
    if laws:
        out.append(lawreport.section(laws, law_figs, stale))
    if optimization:
        out.append(optreport.section(optimization, store, opt_figs or {}))
    held = contamination_rows(store, runs)
    if held:
        out.append(Section("Benchmark contamination", [Text(CONTAMINATION_INTRO), Table(
            ["label", "task", "items the training rows hold", "training rows", "n", "metric", "on all items", "on the others"],
            held)]))
    rest = {n: d for n, d in figs.items() if n not in curves and n not in law_figs and n not in (opt_figs or {})}
    if rest:
        out.append(Section("Figures", [Figures(rest)]))
    out.append(Section("Runs", [Text("Each run, and which engine answered its generation tasks (backend: engine and "
                                     "version, dtype); a run with no generation task shows none."),
                                Table(["label", "run", "status", "engine"],
                                      [[r.label, r.id, r.status, r.engine or "none"] for r in runs])]))
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        out.append(Section("Failed runs", [Details(r.label, (r.error or "")[:500]) for r in failed]))
    configs = [{k: getattr(r, k) for k in ("id", "label", "status", "checkpoint", "engine", "config")} for r in runs]
    out.append(Section("Configs and provenance", [Details("study", json.dumps(study_doc or {}, indent=1)),
                                                  Details("runs", json.dumps(configs, indent=1)[:200000]),
                                                  Details("versions", json.dumps(provenance(), indent=1))]))
    return out
