"""The report's Laws section: per held-out loss, the laws fitted, the one selected and why, each
beside its validation (leave-one-out and extrapolation); figures of observed points with
intervals, the fitted curve with its band and predicted against observed; CSV tables.

A fitted curve is never shown without its held-out error: every figure's title carries the
leave-one-out error, and a target no law fits says so instead of showing a curve."""

from __future__ import annotations

import csv

import numpy as np

from sftmix.analysis.document import Bullets, Figures, Section, Table, Text
from sftmix.analysis.figure import png
from sftmix.analysis.lawfit import Fit
from sftmix.analysis.laws import CANDIDATES, ConstantFit, Extrapolation, LawFit
from sftmix.analysis.stats import percentile_interval
from sftmix.io import atomic_write


def _validation_words(d: LawFit) -> str:
    loo = d.loo
    words = f"LOO MAE {loo.mae:.3g} (rel. {100 * loo.mre:.1f}%), Spearman {loo.spearman:.2f}"
    if loo.coverage is not None:
        words += f", coverage {100 * loo.coverage:.0f}%"
    return words


def figures(fit: Fit) -> dict[str, bytes]:
    """One PNG per held-out loss: left, observed (95% CI) against the ability's own amount with the
    selected law's fit and band; right, leave-one-out predicted (95% predictive) against observed."""
    # imported here: matplotlib is heavy and only needed to draw figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    out = {}
    abilities = fit.abilities
    ex = fit.amounts()
    total = ex.sum(1)
    for name, r in fit.targets.items():
        a = abilities.index(r.ability)
        y, lo, hi = np.array(r.observed), np.array(r.observed_low), np.array(r.observed_high)
        sel = r.selected
        fitted = r.fitted_laws()
        shown = sel or (min(fitted, key=lambda n: fitted[n].loo.mae) if fitted else None)
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
        x = ex[:, a]
        sc = ax.scatter(x, y, c=total, cmap="viridis", zorder=3, label="observed (95% CI)")
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor="0.5", capsize=2, zorder=2)
        if shown and sel:
            d = fitted[sel]
            f, fl, fh = np.array(d.fitted), np.array(d.fitted_low), np.array(d.fitted_high)
            ax.errorbar(x + 0.0, f, yerr=[f - fl, fh - f], fmt="x", color="C3", capsize=2, label=f"{sel} law fit (95% band)")
            if sel == "amount" and d.draws:
                grid = np.r_[0.0, np.geomspace(0.5, max(x.max(), 1.0) * 1.05, 120)]
                X = np.zeros((len(grid), len(abilities)))
                X[:, a] = grid
                law = CANDIDATES["amount"]
                curve = law.predict(np.array(d.theta), X, a)
                band = percentile_interval(np.array([law.predict(th, X, a) for th in np.array(d.draws)]), axis=0)
                ax.plot(grid, curve, color="C3", lw=1)
                ax.fill_between(grid, band[0], band[1], color="C3", alpha=0.15)
            ax.set_title(f"{name}: {sel} law\n{_validation_words(d)}", fontsize=8)
        else:
            ax.set_title(f"{name}: no law fits at this scale (no curve shown)", fontsize=8)
        fig.colorbar(sc, ax=ax, label="total examples")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(f"{r.ability} examples trained on")
        ax.set_ylabel(f"{name} (held-out)")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        if shown:
            d = fitted[shown]
            loo = d.loo
            p = np.array(loo.predicted)
            plo, phi = np.array(loo.pred_low), np.array(loo.pred_high)
            has_iv = np.isfinite(plo).all()
            bx.errorbar(p, y, yerr=[y - lo, hi - y], xerr=[p - plo, phi - p] if has_iv else None, fmt="o", capsize=2, ms=4)
            span = [min(p.min(), y.min()), max(p.max(), y.max())]
            bx.plot(span, span, color="0.4", lw=1, ls="--")
            note = "" if sel else " (not selected: does not beat the constant)"
            bx.set_title(f"leave-one-out, {shown} law{note}\n{_validation_words(d)}", fontsize=8)
            bx.set_xlabel("predicted without this configuration" + (" (95% predictive)" if has_iv else ""))
            bx.set_ylabel("observed (95% CI)")
            bx.grid(alpha=0.3)
        else:
            bx.set_axis_off()
        out[f"law__{name.replace('/', '_')}.png"] = png(fig)
    return out


def write_csvs(fit: Fit, out) -> list[str]:
    """laws.csv (parameters with intervals), laws_validation.csv (every configuration left out in
    turn, per law) and laws_summary.csv (the selection and its validation)."""
    names = []
    with atomic_write(out / "laws.csv") as f:
        w = csv.writer(f)
        w.writerow(["held-out loss", "ability", "law", "status", "selected", "parameter", "estimate", "low", "high"])
        for t, r in fit.targets.items():
            for n, d in r.laws.items():
                for p, (v, lo, hi) in d.params.items():
                    w.writerow([t, r.ability, n, d.status, n == r.selected, p, v, lo, hi])
                if d.status != "fitted":
                    w.writerow([t, r.ability, n, f"{d.status}: {d.why}", False, "", "", "", ""])
    names.append("laws.csv")
    labels = [c.label for c in fit.configurations]
    with atomic_write(out / "laws_validation.csv") as f:
        w = csv.writer(f)
        w.writerow(["held-out loss", "law", "configuration", "observed", "observed low", "observed high", "LOO predicted",
                    "predictive low", "predictive high"])
        for t, r in fit.targets.items():
            models: dict[str, ConstantFit | LawFit] = {"constant": r.constant, **r.fitted_laws()}
            for n, d in models.items():
                loo = d.loo
                for i, lab in enumerate(labels):
                    w.writerow([t, n, lab, r.observed[i], r.observed_low[i], r.observed_high[i], loo.predicted[i],
                                loo.pred_low[i], loo.pred_high[i]])
    names.append("laws_validation.csv")
    with atomic_write(out / "laws_summary.csv") as f:
        w = csv.writer(f)
        w.writerow(["held-out loss", "ability", "law", "LOO MAE", "LOO mean relative error", "LOO Spearman", "LOO R2",
                    "interval coverage", "extrapolation MAE", "extrapolation relative error", "constant LOO MAE", "why"])
        for t, r in fit.targets.items():
            for n, d in r.fitted_laws().items():
                loo, ex = d.loo, d.extrapolation
                w.writerow([t, r.ability, n + (" (selected)" if n == r.selected else ""), loo.mae, loo.mre,
                            loo.spearman, loo.r2, "" if loo.coverage is None else loo.coverage, ex.mae if ex else "",
                            ex.mre if ex else "", r.constant.loo.mae, r.why])
    names.append("laws_summary.csv")
    return names


def _rows(fit: Fit) -> tuple[list[str], list[list[str]]]:
    header = ["held-out loss", "law", "status", "LOO MAE", "LOO rel. err.", "Spearman", "R²", "coverage", "extrapolation rel. err.",
              "parameters [95% CI]"]
    rows = []
    for t, r in fit.targets.items():
        const = r.constant.loo
        rows.append([t, "constant", "baseline", f"{const.mae:.4f}", f"{100 * const.mre:.2f}%", "-", "-", "-",
                     _ex(r.constant.extrapolation), f"mean {r.constant.params['mean']:.4f}"])
        for n, d in r.laws.items():
            if d.status != "fitted":
                rows.append([t, n, f"not fitted: {d.why}", "-", "-", "-", "-", "-", "-", "-"])
                continue
            loo = d.loo
            status = "selected" if n == r.selected else ("fits" if loo.mae < const.mae else "does not beat the constant")
            params = "; ".join(f"{p} {v:.3g} [{lo:.3g}, {hi:.3g}]" for p, (v, lo, hi) in d.params.items())
            rows.append([t, n, status, f"{loo.mae:.4f}", f"{100 * loo.mre:.2f}%", f"{loo.spearman:.2f}",
                         f"{loo.r2:.2f}", "-" if loo.coverage is None else f"{100 * loo.coverage:.0f}%",
                         _ex(d.extrapolation), params])
    return header, rows


def _ex(e: Extrapolation | None) -> str:
    return f"{100 * e.mre:.2f}% (amount {e.held_out_amount:g})" if e else "-"


def _summary_lines(fit: Fit) -> list[str]:
    return [f"{t} ({r.ability}): " + (f"the {r.selected} law, {r.why}." if r.selected else f"{r.why}.")
            for t, r in fit.targets.items()]


def section(fit: Fit, figs: dict[str, bytes], stale: str | None) -> Section:
    """The report's Laws section: what was fitted on what, each law's validation, the formulas."""
    header, rows = _rows(fit)
    runs = fit.runs
    fitted_on = (f"Fitted on {len(fit.configurations)} configurations ({runs.get('done', '?')} done runs"
                 + "".join(f", {v} {k}" for k, v in runs.items() if k in ("failed", "running", "pending") and v)
                 + f"), amounts in {fit.unit}, {fit.draws} bootstrap draws.")
    return Section("Laws", [*([Text(stale, "note")] if stale else []), Text(fitted_on),
                            Bullets(_summary_lines(fit) + fit.notes), Table(header, [[str(c) for c in r] for r in rows]),
                            Text(" ".join(_formulas(fit)) + " " + fit.method, "method", "Laws."), Figures(figs)])


def _formulas(fit: Fit) -> list[str]:
    seen = {n: d.formula for r in fit.targets.values() for n, d in r.laws.items()}
    return [f"{n}: {f}." for n, f in seen.items()] + ["D_a: examples of ability a trained on; r_j: proportions; N: total."]
