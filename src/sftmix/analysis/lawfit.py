"""``sftmix study fit``: laws fitted to a study's results, validated, written as ``fit.json``.

From the results store alone: the configurations (replicates merged), the data each trained on
(``data`` table: examples and tokens per ability, all stages), and the held-out loss per source
with its per-item samples. Each held-out loss is a *target*; its ability is its source's
ability. Every law of ``sftmix.analysis.laws`` is fitted to every target the design can support,
validated and compared with the baselines; the selection and its reasons are part of the output.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from sftmix import layout
from sftmix.analysis import stats
from sftmix.analysis.laws import LAWS, Target, TargetFit, fit_target
from sftmix.analysis.results import Group, group_items, groups, metric_keys
from sftmix.data.sources import BUILTINS
from sftmix.errors import SftmixError
from sftmix.io import stable_hash, write_all, write_json
from sftmix.progress import track
from sftmix.study.store import DataPart, Store

FIT_VERSION = 1
DRAWS = 200


@dataclass
class Design:
    """The configurations a fit sees: ``X`` (configurations x abilities) is the amount of each
    ability's data trained on, in ``unit``; ``examples`` and ``tokens`` both kept; ``sources``
    names the training source(s) of each ability and ``pools`` their sizes."""

    abilities: list[str]
    groups: list[Group]
    examples: np.ndarray
    tokens: np.ndarray
    unit: str
    sources: dict[str, list[str]]
    pools: dict[str, float]
    stages: list[int]
    origins: dict[str, set]

    @property
    def X(self) -> np.ndarray:
        """Amounts per configuration and ability in the fit's unit (tokens rescaled to examples' size)."""
        if self.unit == "examples":
            return self.examples
        per = self.tokens.sum() / max(self.examples.sum(), 1.0)  # tokens scaled to examples: (1 + D) keeps its meaning
        return self.tokens / per

    def configurations(self) -> list[Configuration]:
        """Per configuration: label, seeds, stages, examples, tokens and proportions per ability."""
        out = []
        for i, g in enumerate(self.groups):
            n = self.examples[i].sum()
            out.append(Configuration(label=g.label, seeds=g.seeds, stages=self.stages[i],
                                     examples=dict(zip(self.abilities, self.examples[i].tolist())),
                                     tokens=dict(zip(self.abilities, self.tokens[i].tolist())),
                                     proportions=dict(zip(self.abilities, (self.examples[i] / n if n else self.examples[i]).tolist())),
                                     total=float(n)))
        return out


def design(store: Store, unit: str = "examples") -> Design:
    """The study's done configurations and what each trained on."""
    gs = groups(store)
    if not gs:
        raise SftmixError("fit: the study has no done runs yet (run `sftmix study run` first)")
    by_run: dict[str, list[DataPart]] = {}
    for d in store.data():
        by_run.setdefault(d.run_id, []).append(d)
    missing = [g.label for g in gs if not all(r.id in by_run for r in g.runs)]
    if missing:
        raise SftmixError(f"fit: the store does not say what {len(missing)} configuration(s) trained on (e.g. {missing[0]!r}): "
                          "rerun them")
    abilities = sorted({d.ability for rows in by_run.values() for d in rows})
    sources: dict[str, list[str]] = {}
    pools: dict[str, float] = {}
    origins: dict[str, set] = {}
    ex = np.zeros((len(gs), len(abilities)))
    tok = np.zeros_like(ex)
    stages = []
    for i, g in enumerate(gs):
        for r in g.runs:
            for d in by_run[r.id]:
                j = abilities.index(d.ability)
                ex[i, j] += d.examples / len(g.runs)
                tok[i, j] += d.tokens / len(g.runs)
                if not d.replay:
                    sources.setdefault(d.ability, [])
                    if d.source not in sources[d.ability]:
                        sources[d.ability].append(d.source)
                    pools[d.source] = max(pools.get(d.source, 0.0), d.pool_size)
                    origins.setdefault(d.source, set()).add(d.origin)
        stages.append(max(d.stage_index for r in g.runs for d in by_run[r.id]))
    return Design(abilities, gs, ex, tok, unit, sources, pools, stages, origins)


def source_ability(trained: dict[str, str], source: str, config: dict) -> str | None:
    """The ability of a held-out source: from the data the study trained on (``trained``: source
    -> ability), else the run config's source entry, else the built-in source's."""
    if source in trained:
        return trained[source]
    cfg = (config.get("sources") or {}).get(source) or {}
    if cfg.get("ability"):
        return cfg["ability"]
    spec = BUILTINS.get(cfg.get("builtin") or source)
    return spec.ability if spec else None


def targets(store: Store, gs: list[Group], abilities: list[str], sources: dict | None = None, n_boot: int = DRAWS,
            seed: int = 0) -> tuple[list[Target], list[str]]:
    """One ``Target`` per held-out loss measured on every configuration of ``gs`` (in that order),
    and notes on those left out."""
    names = sorted({s.metric for s in store.samples("loss")})
    if not names:
        raise SftmixError("fit: the study measured no held-out loss per item (add `loss` to eval.tasks, with the abilities' "
                          "sources in heldout.sources); laws are fitted to held-out loss")
    out, notes = [], []
    cache: dict = {}
    trained = {d.source: d.ability for d in store.data()}
    for k, source in enumerate(names):
        metric = f"loss/{source}"
        items = [group_items(store, g, metric, cache) for g in gs]
        if any(x is None or not x.items for x in items):
            notes.append(f"{metric}: not measured on every configuration; left out")
            continue
        items = stats.align_items(items)
        if not items[0].items:
            notes.append(f"{metric}: the configurations share no held-out rows; left out")
            continue
        ability = source_ability(trained, source, gs[0].config)
        if ability not in abilities:
            notes.append(f"{metric}: its ability {ability!r} is not trained by any configuration; left out")
            continue
        y = np.array([stats.estimate(x) for x in items])
        draws = stats.shared_item_draws(items, n_boot, seed + k)
        out.append(Target(metric, ability, abilities.index(ability), y, draws))
    for a in abilities:
        if not any(t.ability == a for t in out):
            notes.append(f"ability {a!r}: no held-out loss of it was measured on every configuration, so no law predicts it "
                         f"(add one of its sources, {', '.join((sources or {}).get(a, []))}, to heldout.sources)")
    return out, notes


def fit_key(store: Store, unit: str, n_boot: int, seed: int) -> str:
    """What a fit depends on: the done runs with their labels and grid points (a relabelled or
    regrouped study is another fit), the unit, the draws and the seed."""
    # the point as the store writes it (JSON text), so that fits made before keep their key
    done = sorted((r.id, r.label, json.dumps(r.point)) for r in store.runs() if r.status == "done")
    return stable_hash([FIT_VERSION, done, unit, n_boot, seed])


def run_fit(store: Store, out: Path, unit: str = "examples", n_boot: int = DRAWS, seed: int = 0,
            counts: dict | None = None, progress: bool = True) -> Fit:
    """Fit every law to every target, validate, select; write ``out/fit.json`` and return it.
    Give a store restricted to the study file's runs (``Store.restricted``)."""
    des = design(store, unit)
    X = des.X
    if len({tuple(np.round(x, 6)) for x in X}) < 2:
        raise SftmixError(f"fit: the study's {len(des.groups)} done configuration(s) all trained on the same amounts of every "
                          f"ability ({', '.join(f'{a} {v:g}' for a, v in zip(des.abilities, X[0]))}); laws need a study that "
                          "varies the amounts or the proportions (e.g. configs/studies/mixture_law.yaml)")
    tgs, notes = targets(store, des.groups, des.abilities, des.sources, n_boot, seed)
    if not tgs:
        raise SftmixError("fit: no held-out loss can be modelled: " + "; ".join(notes))
    m = len(des.abilities)
    needs = {n: law.min_configs(m) for n, law in LAWS.items()}
    if len(des.groups) < min(needs.values()):
        raise SftmixError(f"fit: {len(des.groups)} configuration(s) are done, fewer than any law needs: "
                          + ", ".join(f"the {n} law needs {k}" for n, k in needs.items())
                          + f" (its parameters + 1, with {m} abilities); run more of the study or add configurations")
    results = {t.name: fit_target(X, des.abilities, t, seed) for t in track(tgs, "fitting laws", enabled=progress)}
    fit = Fit(version=FIT_VERSION, key=fit_key(store, unit, n_boot, seed), unit=unit, draws=n_boot, seed=seed,
              abilities=des.abilities, sources=des.sources, pools=des.pools,
              origins={k: sorted(v) for k, v in des.origins.items()}, configurations=des.configurations(),
              runs=counts or {}, notes=notes, targets=results, method=METHOD)
    write_json(layout.fit_file(out), fit.model_dump())
    return fit


METHOD = ("Laws are fitted per held-out loss to the configurations' estimates (replicates merged) by bounded least squares "
          "with a soft-L1 loss scaled to the measurement noise, from several starts. Parameter intervals and the law's band are 95% "
          "percentile intervals over bootstrap draws of the estimates (items and seeds resampled, one item draw shared by "
          "every configuration), the law refitted per draw. Validation: each configuration left out in turn, the law fitted on "
          "the others predicts it (mean absolute and relative error, Spearman rho, R^2 over configurations). A prediction "
          "interval for an observed estimate at a new configuration comes from those left-out fits (jackknife+: each fit's "
          "prediction plus its error on the configuration it left out; 2.5% and 97.5% quantiles), so it carries the law's "
          "misfit and one configuration's noise as the study saw them; its coverage is measured by leaving out each "
          "configuration and building its interval from the others alone; the extrapolation test fits without the configurations at the target ability's largest "
          "amount and predicts them. A law is said to fit only when its leave-one-out error beats the constant's (the mean of "
          "the other configurations).")


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Configuration(_Value):
    """One configuration a fit saw (replicates merged): what it trained on, per ability."""

    label: str
    seeds: list[int]
    stages: int
    examples: dict[str, float]
    tokens: dict[str, float]
    proportions: dict[str, float]
    total: float


class Fit(_Value):
    """``fit.json``: the laws fitted to a study's done runs, one ``TargetFit`` per held-out loss,
    with what they were fitted on (``key``: the runs and settings, to tell a stale fit)."""

    version: int
    key: str
    unit: Literal["examples", "tokens"]
    draws: int
    seed: int
    abilities: list[str]
    sources: dict[str, list[str]]
    pools: dict[str, float]
    origins: dict[str, list[str]] = {}
    configurations: list[Configuration]
    runs: dict[str, int] = {}
    notes: list[str]
    targets: dict[str, TargetFit]
    method: str = ""

    def amounts(self) -> np.ndarray:
        """Examples per configuration and ability (the fit's ability order)."""
        return np.array([[c.examples[a] for a in self.abilities] for c in self.configurations], float)

    def predict(self, name: str, D: np.ndarray) -> np.ndarray:
        """The selected law of held-out loss ``name`` at the rows of ``D`` (amounts per ability)."""
        t = self.targets[name]
        return t.law.predict(t.selected, D, self.abilities.index(t.ability))


def load_fit(out: Path) -> Fit | None:
    """``out/fit.json``, checked: None when there is none or it was made by another version of
    the fitting (it is then refitted); a damaged or foreign file is an error naming it."""
    path = layout.fit_file(out)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SftmixError(f"{path}: not a readable fit ({e}); move it aside or run `sftmix study fit` to refit") from None
    if isinstance(doc, dict) and isinstance(doc.get("version"), int) and doc["version"] != FIT_VERSION:
        return None
    try:
        fit = Fit.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        raise SftmixError(f"{path}: not a fit made by `sftmix study fit` ({'.'.join(map(str, first['loc'])) or 'top level'}: "
                          f"{first['msg']}); move it aside or run `sftmix study fit` to refit") from None
    for name, t in fit.targets.items():
        if t.selected is not None and t.selected not in t.laws:
            raise SftmixError(f"{path}: not a fit made by `sftmix study fit` (targets.{name}.selected: {t.selected!r} is not "
                              f"among its laws); move it aside or run `sftmix study fit` to refit")
    return fit


def other_version(out: Path) -> str | None:
    """What to say of ``out/fit.json`` when another version of the fitting made it (``load_fit``
    then ignores it); None when there is none or it is this version's."""
    path = layout.fit_file(out)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("version"), int) and doc["version"] != FIT_VERSION:
        return (f"{path} was made by another version of the fitting (version {doc['version']}; this sftmix writes "
                f"version {FIT_VERSION}), so its laws are not shown: run `sftmix study fit` to refit.")
    return None


def summary_rows(fit: Fit) -> list[list]:
    """Per target: the selected law (or none) and its validation, beside the constant's."""
    rows = []
    for name, t in fit.targets.items():
        d = t.law
        loo, ex = (d.loo, d.extrapolation) if d else (None, None)
        rows.append([name, t.ability, t.selected or "none fits", _f(loo and loo.mae), _pct(loo and loo.mre),
                     _f(loo and loo.spearman, 2), _pct(loo and loo.coverage), _pct(ex.mre) if ex else "-", _f(t.constant.loo.mae)])
    return rows


SUMMARY_COLUMNS = ["held-out loss", "ability", "law", "LOO MAE", "LOO rel. err.", "LOO Spearman", "interval coverage",
                   "extrapolation rel. err.", "constant LOO MAE"]


def _f(v, nd: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}%"


def export_olmix(store: Store, folder: str | Path) -> tuple[Path, Path]:
    """The done runs in olmix's layout: ``ratios.csv`` (a run column, then each ability's
    proportion of the examples trained on) and ``metrics.csv`` (the run column, then every
    metric), joined on the run id."""
    folder = Path(folder)
    runs = [r for r in store.runs() if r.status == "done"]
    if not runs:
        raise SftmixError("export: the study has no done runs yet")
    data: dict[str, dict[str, float]] = {}
    for d in store.data():
        amounts = data.setdefault(d.run_id, {})
        amounts[d.ability] = amounts.get(d.ability, 0.0) + d.examples
    unknown = [r.label for r in runs if not data.get(r.id)]
    if unknown:  # a row of zeros would be a mixture of nothing
        raise SftmixError(f"export: the store does not say what {len(unknown)} run(s) trained on (e.g. {unknown[0]!r}): "
                          "rerun them")
    abilities = sorted({a for v in data.values() for a in v})
    keys = metric_keys(store)
    vals = {(m.run_id, m.key): m.value for m in store.metrics()}
    ratios, metrics = io.StringIO(), io.StringIO()
    w = csv.writer(ratios)
    w.writerow(["run", *abilities])
    for r in runs:
        amounts = data[r.id]
        total = sum(amounts.values())
        w.writerow([r.id, *[amounts.get(a, 0.0) / total for a in abilities]])
    w = csv.writer(metrics)
    w.writerow(["run", *keys])
    for r in runs:
        w.writerow([r.id, *[vals.get((r.id, k), "") for k in keys]])
    write_all({folder / "ratios.csv": ratios.getvalue(), folder / "metrics.csv": metrics.getvalue()})  # both or neither
    return folder / "ratios.csv", folder / "metrics.csv"
