"""The report's Optimisation section (``sftmix study optimize``): every step with why it was
chosen and what was observed, the objective against the run number with the incumbent, the
chosen configurations on the simplex (and, in a DMT design, the objective against k), and the recommendation compared (paired, on the same
held-out rows) with the best configuration of any grid the store also holds."""

from __future__ import annotations

import numpy as np

from sftmix.analysis import stats
from sftmix.analysis.document import Figures, Section, Table, Text
from sftmix.analysis.figure import png
from sftmix.analysis.results import Group, groups
from sftmix.study.optimize import AXIS, OptimizeLog, k_feature, k_text, objective_parts
from sftmix.study.store import Store


def grid_best(log: OptimizeLog, store: Store) -> dict | None:
    """The best configuration of the store not chosen by the design (its weighted objective
    measured on every held-out source), and the recommendation minus it: paired difference and
    95% interval. None without a recommendation or another configuration."""
    rec = log.recommendation
    if rec is None:
        return None
    full = Store(store.path)  # the whole store: a report may be given only some of its runs
    rows = {r.id: r for r in full.runs()}
    if any(rid not in rows or rows[rid].status != "done" for rid in rec.run_ids):
        return None
    cache: dict = {}  # the store's samples, read once per held-out source for every configuration
    rec_parts, _ = objective_parts(full, Group(rec.label, {}, {}, [rows[rid] for rid in rec.run_ids]), log.space, log.settings,
                                   cache)
    best = None
    grid = [g for g in groups(full) if AXIS not in g.point]  # the design's own runs carry its label axis
    for g in grid:
        parts, by = objective_parts(full, g, log.space, log.settings, cache)
        if any(x is None or not x.items for _, x in parts):
            continue
        if not all(all(x is not None and x.items for x in by[a]) for a in log.settings.max_loss):
            continue
        feasible = all(np.mean([stats.estimate(x) for x in by[a]]) <= v for a, v in log.settings.max_loss.items())
        value = sum(w * stats.estimate(x) for w, x in parts)
        if feasible and (best is None or value < best[0]):
            best = (value, g, parts)
    if best is None:
        return None
    _, g, parts = best
    a, b, diff, lo, hi = stats.paired_weighted_difference([(w, x, y) for (w, x), (_, y) in zip(rec_parts, parts)],
                                                          seed=log.settings.seed)
    verdict = ("better than" if hi < 0 else "worse than" if lo > 0 else "not distinguishable from")
    return {"label": g.label, "runs": len(g.runs), "grid_runs": sum(len(x.runs) for x in grid),
            "recommended": a, "grid": b, "difference": diff, "low": lo, "high": hi, "verdict": verdict}


def figures(log: OptimizeLog) -> dict[str, bytes]:
    """The objective against the run number (with the incumbent), the chosen configurations'
    proportions on the simplex, and in a DMT design with several k the objective against k."""
    # imported here: matplotlib is heavy and only needed to draw figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = [c for c in log.choices() if c.observed is not None]
    if not seen:
        return {}
    runs = np.cumsum([len(c.run_ids) for c in seen])
    y = np.array([c.observed.estimate for c in seen])
    err = np.array([[c.observed.estimate - c.observed.low, c.observed.high - c.observed.estimate] for c in seen]).T
    feasible = [c.feasible(log.settings.max_loss) for c in seen]
    inc = np.minimum.accumulate(np.where(feasible, y, np.inf))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    initial = {id(c) for s in log.steps if s.kind == "initial" for c in s.choices}
    colors = ["#888" if id(c) in initial else "#1f5fbf" for c in seen]
    ax.errorbar(runs, y, yerr=err, fmt="none", ecolor="#bbb", zorder=1)
    ax.scatter(runs, y, c=colors, zorder=2, label="observed (grey: initial design)")
    ax.step(runs, np.where(np.isfinite(inc), inc, np.nan), where="post", color="#c03030", label="incumbent")
    ax.set_xlabel("runs")
    ax.set_ylabel("weighted held-out loss")
    ax.set_title("optimize: objective by run")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out = {"optimize__progress.png": png(fig)}

    src = log.space.sources
    P = np.array([[c.amounts[s] for s in src] for c in seen], float)
    tot = P.sum(1)
    P = P / np.maximum(tot, 1)[:, None]
    fig, ax = plt.subplots(figsize=(5, 4.4))
    if len(src) == 3:  # a ternary plot: each corner one source alone
        xy = np.c_[P[:, 1] + P[:, 2] / 2, P[:, 2] * np.sqrt(3) / 2]
        corners = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 0]])
        ax.plot(corners[:, 0], corners[:, 1], color="#999", lw=1)
        for (cx, cy), name in zip(corners[:3], src):
            ax.annotate(name, (cx, cy), textcoords="offset points", xytext=(0, -12 if cy == 0 else 6), ha="center", fontsize=8)
        ax.set_aspect("equal")
        ax.axis("off")
    else:
        xy = P[:, :2]
        ax.set_xlabel(f"proportion {src[0]}")
        ax.set_ylabel(f"proportion {src[1]}" if len(src) > 1 else "")
    size = 20 + 80 * tot / max(tot.max(), 1)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(len(seen)), cmap="viridis", s=size, zorder=2)
    rec = log.recommendation
    if rec is not None:
        i = next(k for k, c in enumerate(seen) if c.label == rec.label)
        ax.scatter([xy[i, 0]], [xy[i, 1]], marker="*", s=260, facecolor="none", edgecolor="#c03030", zorder=3,
                   label="recommended")
        ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(sc, ax=ax, label="order chosen", shrink=0.7)
    ax.set_title("configurations chosen (size: total examples)")
    out["optimize__simplex.png"] = png(fig)

    ks = log.space.k
    if len(ks) > 1:  # DMT: k is a dimension of the space
        x = k_feature(np.array([c.k for c in seen]), ks)
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="#888", elinewidth=1, zorder=1)
        sc = ax.scatter(x, y, c=tot, cmap="viridis", zorder=2)
        if rec is not None:
            i = next(k for k, c in enumerate(seen) if c.label == rec.label)
            ax.scatter([x[i]], [y[i]], marker="*", s=260, facecolor="none", edgecolor="#c03030", zorder=3, label="recommended")
            ax.legend(fontsize=7)
        ax.set_xticks(k_feature(np.array(ks), ks), [k_text(k) for k in ks], fontsize=7)
        ax.set_xlabel("k: fraction of each stage-1 part replayed in stage 2")
        ax.set_ylabel("weighted held-out loss")
        fig.colorbar(sc, ax=ax, label="total examples", shrink=0.7)
        ax.set_title("DMT: objective by k")
        ax.grid(alpha=0.3)
        out["optimize__k.png"] = png(fig)
    return out


def section(log: OptimizeLog, store: Store, figs: dict[str, bytes]) -> Section:
    """The Optimisation section of a report."""
    s = log.settings
    def iv(v) -> str:
        return f"{v.estimate:.4f} [{v.low:.4f}, {v.high:.4f}]" if v is not None else "-"

    rows = []
    for st in log.steps:
        for c in st.choices:
            rows.append([str(st.index), c.label, "initial design" if c.acquisition is None else f"{c.acquisition:.3f}",
                         iv(c.predicted), iv(c.observed), st.incumbent or "-"])
    blocks = [Text(f"Objective: the weighted held-out loss ({', '.join(f'{a}={w:g}' for a, w in s.weights.items())})"
                   + (f", subject to {', '.join(f'{a} <= {v:g}' for a, v in s.max_loss.items())}" if s.max_loss else "")
                   + f"; budget {s.budget} examples; {log.runs_used()} of at most {s.runs} runs used "
                   f"({len(log.choices())} configurations x {s.replicates} seed(s)); search space: "
                   f"{len(log.space.candidates)} configurations of {', '.join(log.space.sources)} at totals "
                   f"{', '.join(map(str, log.space.totals))}"
                   + (f", as DMT ({', '.join(src for src in log.space.sources if src != log.space.general)} in stage 1, "
                      f"{log.space.general} in stage 2) with k in {{{', '.join(k_text(k) for k in log.space.k)}}}"
                      if log.space.dmt else "") + "."),
              Table(["step", "configuration", "acquisition (log NEI)", "predicted", "observed", "incumbent after"], rows),
              Text(f"Stopped: {log.stopped or 'not yet (resume with the same command)'}.")]
    rec = log.recommendation
    if rec is not None:
        blocks.append(Text(f"Recommendation: {rec.label}, weighted held-out loss {iv(rec.observed)}.", "top"))
        cmp = grid_best(log, store)
        if cmp is not None:
            blocks.append(Text(f"Against the best configuration of the grid in this store ({cmp['label']}, out of "
                               f"{cmp['grid_runs']} grid runs): {cmp['recommended']:.4f} vs {cmp['grid']:.4f}, difference "
                               f"{cmp['difference']:+.4f} [{cmp['low']:+.4f}, {cmp['high']:+.4f}] (paired bootstrap on the same "
                               f"held-out rows): the recommendation is {cmp['verdict']} the grid's best, with "
                               f"{log.runs_used()} runs against {cmp['grid_runs']}."))
    if figs:
        blocks.append(Figures(figs))
    blocks.append(Text("One Gaussian process per ability (BoTorch SingleTaskGP, Matern kernel, standardised outcomes) is "
                       "fitted to that ability's held-out loss at every configuration run so far, the objective being their "
                       "weighted sum (a composite objective; --max-loss abilities are modelled too); the next configuration is "
                       "the candidate with the largest noisy expected improvement of that sum (qLogNEI), constraints weighted "
                       "by their probability. The design stops when --runs are used or the largest expected "
                       "improvement left is below the noise (the half-width of the paired 95% interval between the incumbent and the "
                       "runner-up on the same held-out rows).",
                       "method", "Method."))
    return Section("Optimisation", blocks)
