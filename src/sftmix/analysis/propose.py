"""``sftmix study propose``: the mixture (or DMT replay k) the fitted laws recommend, with
intervals, the best configuration actually tried beside it, and a study file that runs both.

Mixture mode: choose each ability's amount D_a (examples, within what its source holds and a
total budget) minimising the weighted predicted held-out loss sum_a w_a·L_a(D) / sum_a w_a,
subject to L_a(D) <= max_loss_a. The search is exhaustive on a grid over the simplex of
proportions and totals up to the budget, refined by SLSQP from the best grid points, then
rounded to whole examples.

DMT mode (``--dmt-k EPS``): from a study over DMT's replay k, a law of each specialised
ability's final held-out loss in the replayed proportion of stage 2 (Ye et al.'s continual-
training use of the mixing law), and the smallest k whose predicted loss stays within EPS of
the ability's loss at the end of stage 1.

Both modes take the same input, ``Evidence``: the study's results store and the laws fitted to it
(``fit.json``); each mode reads what it needs and says so when that is missing.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sftmix.analysis.lawfit import Fit, targets
from sftmix.analysis.laws import (
    CANDIDATES,
    LAWS,
    Prediction,
    PredictionDraws,
    Target,
    TargetFit,
    fit_target,
    predict_with,
)
from sftmix.analysis.results import groups
from sftmix.analysis.stats import Interval, percentile_interval
from sftmix.config.run import upgrade
from sftmix.data.compose import round_half_up
from sftmix.errors import SftmixError
from sftmix.study.store import DataPart, Store


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Mixture(_Value):
    """The recommended mixture: examples per ability and per source (with the fraction of each
    source's pool), and the laws' predictions there, per held-out loss and weighted."""

    examples: dict[str, int]
    total: int
    sources: dict[str, int]
    fractions: dict[str, float]
    predicted: dict[str, Prediction]
    weighted: Prediction


class BestTried(_Value):
    """The configuration tried with the lowest observed weighted held-out loss."""

    label: str
    examples: dict[str, float]
    seeds: list[int]
    index: int
    observed: dict[str, Interval]
    weighted_observed: float
    weighted_predicted: float


class MixtureProposal(_Value):
    """``proposal.json`` of a mixture: what was asked (weights, limits, budget), the mixture, the
    best tried configuration, the held-out losses each ability's weight falls on, notes."""

    mode: Literal["mixture"] = "mixture"
    weights: dict[str, float]
    max_loss: dict[str, float]
    budget: float
    budget_given: float | None
    pools: dict[str, float]
    proposal: Mixture
    best_tried: BestTried
    targets: dict[str, list[str]]
    notes: list[str] = []
    study_file: str | None = None


class KTarget(_Value):
    """One held-out loss in a study over DMT's k: its law of the replayed proportion and, for a
    specialised (stage-1) ability, its stage-1 loss, the limit (stage-1 loss + EPS) and the
    critical k with its interval (``k_high`` None: some draws need more than k = 1)."""

    ability: str
    fit: TargetFit
    observed: list[float]
    stage1_loss: float | None = None
    limit: float | None = None
    k: float | None = None
    k_low: float | None = None
    k_high: float | None = None
    draws_without_k: int | None = None
    predicted_at_k: Prediction | None = None


class KBestTried(_Value):
    """The smallest tried k whose observed specialised losses all lie within EPS of stage 1 (else
    the largest tried, ``meets_eps`` False)."""

    label: str
    k: float
    index: int
    meets_eps: bool
    observed: dict[str, float]


class KProposal(_Value):
    """``proposal.json`` of DMT's k: the smallest k keeping every specialised ability within EPS of
    its stage-1 loss, its interval, each held-out loss's law, the best tried k."""

    mode: Literal["dmt_k"] = "dmt_k"
    eps: float
    k_tried: list[float]
    targets: dict[str, KTarget]
    k: float
    k_low: float | None
    k_high: float | None
    best_tried: KBestTried
    groups: list[str]
    notes: list[str] = []
    study_file: str | None = None


Proposal = Annotated[MixtureProposal | KProposal, Field(discriminator="mode")]
_PROPOSAL = TypeAdapter(Proposal)


def load_proposal(path: str | Path) -> MixtureProposal | KProposal:
    """A ``proposal.json`` written by ``sftmix study propose``; a damaged or foreign file is an
    error naming it and the field."""
    path = Path(path)
    try:
        return _PROPOSAL.validate_json(path.read_bytes())
    except OSError as e:
        raise SftmixError(f"{path}: cannot be read ({e.strerror})") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise SftmixError(f"{path}: not a proposal made by `sftmix study propose` ({'.'.join(map(str, first['loc'])) or 'top level'}: "
                          f"{first['msg']}); run `sftmix study propose` again") from None


def _ability_targets(fit: Fit, names: dict[str, float], flag: str) -> dict[str, list[str]]:
    """Each named ability's fitted held-out losses; unknown abilities, abilities without held-out
    loss and abilities no law fits are errors that say so."""
    out = {}
    for a in names:
        if a not in fit.abilities:
            raise SftmixError(f"{flag}: unknown ability {a!r}; the study's abilities: {', '.join(fit.abilities)}")
        ts = [n for n, r in fit.targets.items() if r.ability == a]
        if not ts:
            raise SftmixError(f"{flag}: ability {a!r} has no held-out loss in this study (add one of its sources, "
                              f"{', '.join(fit.sources.get(a, []))}, to heldout.sources and rerun), so nothing predicts it")
        bad = [n for n in ts if fit.targets[n].selected is None]
        if bad:
            raise SftmixError(f"{flag}: ability {a!r}: {bad[0]}: {fit.targets[bad[0]].why}; drop {a} from {flag} or run a "
                              "larger study")
        out[a] = ts
    return out


def weighted_prediction(fit: Fit, weights: dict[str, float], D: np.ndarray) -> np.ndarray:
    """The fitted laws' weighted held-out loss at each row of ``D`` (examples per ability, in the
    fit's ability order): sum_a w_a·mean(L_a) / sum_a w_a."""
    wt = _ability_targets(fit, weights, "--weights")
    wsum = sum(weights.values())
    return sum(w * np.mean([fit.predict(n, D) for n in wt[a]], axis=0) for a, w in weights.items()) / wsum


def simplex_grid(m: int, points: int = 1000, rng: np.random.Generator | None = None) -> np.ndarray:
    """Proportions covering the simplex: a regular grid (step 1/s, s as fine as ``points`` allows)
    for few abilities, Dirichlet draws plus the vertices beyond that."""
    s = 1
    while math.comb(s + 1 + m - 1, m - 1) <= points:
        s += 1
    if m <= 5:
        pts = [c for c in itertools.product(range(s + 1), repeat=m - 1) if sum(c) <= s]
        return np.array([[*c, s - sum(c)] for c in pts], float) / s
    rng = rng or np.random.default_rng(0)
    return np.r_[np.eye(m), rng.dirichlet(np.ones(m), points)]


@dataclass(frozen=True)
class Evidence:
    """What a proposal is made from: a study's results store and the laws fitted to its runs
    (``lawfit.run_fit``'s document). A mixture needs the fit; DMT's k fits its own law of the
    replayed proportion from the store."""

    store: Store | None = None
    fit: Fit | None = None


def propose_mixture(evidence: Evidence, weights: dict[str, float], budget: float | None = None,
                    max_loss: dict[str, float] | None = None) -> MixtureProposal:
    """The recommended mixture (see the module docstring) and the best tried configuration."""
    # imported here: scipy is heavy and only needed here
    from scipy.optimize import minimize

    doc = evidence.fit
    if doc is None:
        raise SftmixError("propose: a mixture is proposed from fitted laws; run `sftmix study fit` first")

    max_loss = max_loss or {}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise SftmixError(f"--weights: weights must be >= 0 with a positive sum, got {weights}")
    wt = _ability_targets(doc, weights, "--weights")
    ct = _ability_targets(doc, max_loss, "--max-loss")
    if doc.unit != "examples":
        raise SftmixError("propose: the fit was made in tokens; proposals are amounts of examples (fit with --unit examples)")
    abilities = doc.abilities
    if any(c.stages > 1 for c in doc.configurations):
        raise SftmixError("propose: the study's runs train in several stages; a mixture proposal is over one-stage mixtures "
                          "(multitask). For DMT's replay k use --dmt-k EPS on a study over k")
    multi = {a: s for a, s in doc.sources.items() if len(s) > 1}
    if multi:
        a, s = next(iter(multi.items()))
        raise SftmixError(f"propose: ability {a!r} is trained from several sources ({', '.join(s)}); a proposal needs one "
                          "source per ability")
    caps = np.array([doc.pools[doc.sources[a][0]] if doc.sources.get(a) else 0.0 for a in abilities])
    tried = doc.amounts()
    B = float(budget) if budget is not None else float(tried.sum(1).max())
    if B < 1:
        raise SftmixError(f"--budget {budget}: a mixture needs at least 1 example")
    capped = B > caps.sum()
    B = min(B, float(caps.sum()))

    def objective(D: np.ndarray) -> np.ndarray:
        return weighted_prediction(doc, weights, D)

    def slack(D: np.ndarray) -> np.ndarray:  # >= 0 where every --max-loss holds
        cols = [max_loss[a] - doc.predict(n, D) for a in ct for n in ct[a]]
        return np.min(cols, axis=0) if cols else np.zeros(len(np.atleast_2d(D)))

    props = simplex_grid(len(abilities), 1500)
    low_total = max(1.0, min(float(tried.sum(1).min()), B) / 2)
    totals = np.unique(np.r_[np.geomspace(low_total, B, 10), B])
    cand = (props[:, None, :] * totals[None, :, None]).reshape(-1, len(abilities))
    cand = cand[(cand <= caps + 1e-9).all(1)]
    J, S = objective(cand), slack(cand)
    feasible = S >= 0
    if not feasible.any():
        reach = []
        for a in ct:
            best = min(float(doc.predict(n, cand).min()) for n in ct[a])
            reach.append(f"the lowest predicted {a} loss within the budget is {best:.4g} (asked <= {max_loss[a]:g})")
        raise SftmixError(f"propose: no mixture of at most {B:g} examples meets every --max-loss: " + "; ".join(reach))
    order = np.argsort(np.where(feasible, J, np.inf))[:5]
    best_D, best_J = cand[order[0]], J[order[0]]
    cons = [{"type": "ineq", "fun": lambda D: B - D.sum()}]
    if ct:
        cons.append({"type": "ineq", "fun": lambda D: slack(D[None, :])})
    for i in order:
        r = minimize(lambda D: float(objective(D[None, :])[0]), cand[i], method="SLSQP",
                     bounds=list(zip(np.zeros(len(abilities)), caps)), constraints=cons, options={"maxiter": 200})
        if r.success and r.x.sum() <= B + 1e-6 and slack(r.x[None, :])[0] >= -1e-9 and r.fun < best_J:
            best_D, best_J = r.x, r.fun
    D = _whole(best_D, B, caps, objective, slack)
    if D is None:  # no whole-example neighbour of the optimum is feasible: the best feasible grid point's
        for i in np.argsort(np.where(feasible, J, np.inf)):
            if not feasible[i] or (D := _whole(cand[i], B, caps, objective, slack)) is not None:
                break
    if D is None:
        raise SftmixError("propose: no whole number of examples meets every --max-loss within the budget (only fractions of "
                          "an example do); loosen --max-loss slightly")
    prop = _mixture_doc(doc, weights, wt, max_loss, B, budget, D, tried, objective)
    if capped:
        prop.notes.append(f"the budget {budget:g} is more than the sources hold together; the proposal is within their "
                             f"{B:g} examples")
    return prop


def _whole(D: np.ndarray, B: float, caps: np.ndarray, objective, slack) -> np.ndarray | None:
    """The best whole-example neighbour of ``D`` (each amount rounded down or up) within the caps,
    the budget and the constraints; None when no neighbour is feasible."""
    D = np.clip(D, 0, caps)
    lo, hi = np.floor(D), np.minimum(np.ceil(D), caps)
    cands = np.array([np.where(bits, hi, lo) for bits in itertools.product([0, 1], repeat=len(D))])
    cands = cands[(cands.sum(1) <= B + 1e-9) & (cands.sum(1) >= 1)]
    if not len(cands):
        return None
    ok = slack(cands) >= 0
    if not ok.any():
        return None
    J = np.where(ok, objective(cands), np.inf)
    return cands[int(np.argmin(J))]


def _predict(fit: Fit, name: str, x: np.ndarray) -> PredictionDraws:
    r = fit.targets[name]
    return predict_with(r.selected, r.law, x, fit.abilities.index(r.ability))


def _weighted(fit: Fit, weights: dict, wt: dict, x: np.ndarray) -> Prediction:
    """The weighted predicted loss at ``x``: estimate, law band and prediction interval, combined
    draw by draw (bootstrap draws for the band; the same left-out configuration for the interval)."""
    wsum = sum(weights.values())
    est, band, values = 0.0, 0.0, 0.0
    for a, w in weights.items():
        for n in wt[a]:
            p = _predict(fit, n, x)
            share = w / wsum / len(wt[a])
            est += share * p.prediction.estimate
            band = band + share * p.band
            values = values + share * p.values
    lo, hi = percentile_interval(band)
    plo, phi = percentile_interval(values)
    return Prediction(estimate=float(est), law_low=float(lo), law_high=float(hi), low=float(plo), high=float(phi))


def _mixture_doc(doc: Fit, weights, wt, max_loss, B, budget, D, tried, objective) -> MixtureProposal:
    abilities = doc.abilities
    targets = sorted({n for ts in wt.values() for n in ts} | set(doc.targets))
    configs = doc.configurations
    wsum = sum(weights.values())
    observed_w = []
    for i, _ in enumerate(configs):
        observed_w.append(sum(w / wsum * np.mean([doc.targets[n].observed[i] for n in wt[a]]) for a, w in weights.items()))
    bi = int(np.argmin(observed_w))
    best = configs[bi]
    sources = {doc.sources[a][0]: int(D[j]) for j, a in enumerate(abilities) if D[j] > 0 and doc.sources.get(a)}
    notes = []
    top = tried.max(0)
    outside = [a for j, a in enumerate(abilities) if D[j] > top[j] + 1e-9]
    if outside or D.sum() > tried.sum(1).max() + 1e-9:
        notes.append("the proposal lies outside the tried range (" + (", ".join(f"{a} {int(D[abilities.index(a)])} > tried "
                     f"{int(top[abilities.index(a)])}" for a in outside) or f"total {int(D.sum())} > tried "
                     f"{int(tried.sum(1).max())}") + "): its intervals assume the law holds there; the extrapolation test in the "
                     "Laws section says how far that has held")
    ts = doc.targets
    return MixtureProposal(
        weights=weights, max_loss=max_loss, budget=B, budget_given=budget, pools=doc.pools,
        proposal=Mixture(examples={a: int(D[j]) for j, a in enumerate(abilities)}, total=int(D.sum()), sources=sources,
                         fractions={s: n / doc.pools[s] for s, n in sources.items()},
                         predicted={n: _predict(doc, n, D).prediction for n in targets if ts[n].selected},
                         weighted=_weighted(doc, weights, wt, D)),
        best_tried=BestTried(label=best.label, examples=best.examples, seeds=best.seeds, index=bi,
                             observed={n: Interval(estimate=ts[n].observed[bi], low=ts[n].observed_low[bi],
                                                   high=ts[n].observed_high[bi]) for n in targets},
                             weighted_observed=float(observed_w[bi]),
                             weighted_predicted=float(objective(np.array([[best.examples[a] for a in abilities]]))[0])),
        targets={a: wt[a] for a in wt}, notes=notes)


# ---------------------------------------------------------------- DMT's k


@dataclass(frozen=True)
class DmtDesign:
    """A study over DMT's k: per configuration (``groups``) its ``k`` and the (replayed, new)
    examples of stage 2 (``X``); stage 1's parts ((source, ability) -> examples), the median new
    examples, and each held-out source's loss at the end of stage 1 (from the forgetting curves)."""

    groups: list
    k: np.ndarray
    X: np.ndarray
    stage1_parts: dict[tuple[str, str], float]
    new: float
    stage1_loss: dict[str, float]


def dmt_design(store) -> DmtDesign:
    """The study's DMT configurations and what each replayed (``DmtDesign``)."""
    gs = [g for g in groups(store) if (g.config.get("strategy") or {}).get("name") in ("dmt", "mixed_sequential")]
    if not gs:
        raise SftmixError("--dmt-k: the study has no done DMT runs (strategy dmt over several k, e.g. configs/studies/dmt_k.yaml)")
    by_run: dict[str, list[DataPart]] = {}
    for d in store.data():
        by_run.setdefault(d.run_id, []).append(d)
    ks, X, stage1, new = [], [], {}, []
    for g in gs:
        rows = by_run.get(g.runs[0].id, [])
        if not rows:
            raise SftmixError(f"--dmt-k: the store does not say what {g.label!r} trained on")
        ks.append(float((g.config.get("strategy") or {}).get("k", 0.0)))
        replay = sum(d.examples for d in rows if d.stage_index == 2 and d.replay)
        fresh = sum(d.examples for d in rows if d.stage_index == 2 and not d.replay)
        X.append([replay, fresh])
        new.append(fresh)
        for d in rows:
            if d.stage_index == 1:
                stage1[(d.source, d.ability)] = d.examples
    if len(set(ks)) < 2:
        raise SftmixError(f"--dmt-k: the study's DMT runs all use k = {ks[0]:g}; a law over k needs a study that varies it")
    curves: dict[str, list[float]] = {}
    ends: dict[tuple, tuple] = {}
    for c in store.curves():
        if c.stage_index == 1:
            key = (c.run_id, c.source)
            if key not in ends or c.step > ends[key][0]:
                ends[key] = (c.step, c.loss)
    ids = {r.id for g in gs for r in g.runs}
    for (rid, source), (_, loss) in ends.items():
        if rid in ids:
            curves.setdefault(source, []).append(loss)
    return DmtDesign(gs, np.array(ks), np.array(X, float), stage1, float(np.median(new)),
                     {s: float(np.mean(v)) for s, v in curves.items()})


def replay_counts(k: float, parts: dict) -> float:
    """Examples replayed at ``k``: each stage-1 part contributes round_half_up(k·count) (the
    compose rule: a positive amount gives at least one row)."""
    return float(sum(round_half_up(k * n) for n in parts.values()))


def critical_k(law_name: str, theta: np.ndarray, limit: float, X: np.ndarray, grid: np.ndarray) -> float | None:
    """The smallest k on ``grid`` whose predicted loss is at most ``limit`` (None: none is);
    ``X`` holds the (replayed, new) examples at each k of the grid."""
    ok = CANDIDATES[law_name].predict(theta, X, 0) <= limit
    return float(grid[np.argmax(ok)]) if ok.any() else None


K_GRID = np.unique(np.r_[0.0, np.geomspace(1e-4, 1, 400), np.linspace(0, 1, 1001)])


def propose_k(evidence: Evidence, eps: float, n_boot: int = 200, seed: int = 0) -> KProposal:
    """The smallest replay k keeping every specialised ability within ``eps`` of its stage-1 loss."""
    store = evidence.store
    if store is None:
        raise SftmixError("--dmt-k: DMT's k is fitted from the study's results store")
    if eps < 0:
        raise SftmixError(f"--dmt-k {eps:g}: EPS is a loss margin, >= 0")
    des = dmt_design(store)
    abilities = sorted({d.ability for d in store.data()})
    doc_targets, _ = targets(store, des.groups, abilities, None, n_boot, seed)
    specialised = {ability for (_, ability) in des.stage1_parts}
    X = des.X
    X_grid = np.array([[replay_counts(k, des.stage1_parts), des.new] for k in K_GRID])  # once: every draw reuses it
    laws = {n: LAWS[n] for n in ("mixture", "amount")}
    entries: dict[str, KTarget] = {}
    binding: list[KTarget] = []
    for t in doc_targets:
        source = t.name.split("/", 1)[1]
        fitted = fit_target(X, ["replay", "new"], Target(t.name, "replay", 0, t.y, t.draws), seed, laws=laws)
        entry = entries[t.name] = KTarget(ability=t.ability, fit=fitted, observed=t.y.tolist())
        if t.ability not in specialised:
            continue
        if source not in des.stage1_loss:
            raise SftmixError(f"--dmt-k: {t.name}: no held-out loss at the end of stage 1 (the forgetting curves, curve.enabled: "
                              "true, measure it); the k criterion compares with it")
        if fitted.selected is None:
            raise SftmixError(f"--dmt-k: {t.name}: {fitted.why}")
        limit = des.stage1_loss[source] + eps
        d = fitted.law
        k = critical_k(fitted.selected, np.array(d.theta), limit, X_grid, K_GRID)
        if k is None:
            best = d.predict(fitted.selected, X_grid, 0)
            raise SftmixError(f"--dmt-k {eps:g}: no k in [0, 1] keeps {t.name} within {eps:g} of its stage-1 loss "
                              f"{des.stage1_loss[source]:.4g}: the lowest predicted is {best.min():.4g} (at k = "
                              f"{K_GRID[int(np.argmin(best))]:.3g}); raise EPS")
        draws = [critical_k(fitted.selected, th, limit, X_grid, K_GRID) for th in np.array(d.draws)]
        finite = np.array([x for x in draws if x is not None])
        k_low, k_high = percentile_interval(finite) if len(finite) else (None, None)
        entry.stage1_loss, entry.limit, entry.k = des.stage1_loss[source], limit, k
        entry.k_low = float(k_low) if len(finite) else None
        entry.k_high = float(k_high) if len(finite) == len(draws) else None
        entry.draws_without_k = len(draws) - len(finite)
        binding.append(entry)
    if not binding:
        raise SftmixError("--dmt-k: no held-out loss of a specialised (stage-1) ability was measured on every configuration")
    k_star = max(e.k for e in binding)
    # the k-interval of the binding ability: the largest lower and upper ends
    lows = [e.k_low for e in binding if e.k_low is not None]
    k_high = None if any(e.k_high is None for e in binding) else max(e.k_high for e in binding)
    x = np.array([replay_counts(k_star, des.stage1_parts), des.new])
    for e in entries.values():
        if e.fit.selected:
            e.predicted_at_k = predict_with(e.fit.selected, e.fit.law, x, 0).prediction
    # best tried: the smallest tried k whose observed specialised losses all lie within eps of stage 1
    order = np.argsort(des.k)
    ok = [i for i in order if all(e.observed[i] <= e.limit for e in binding)]
    bi = int(ok[0]) if ok else int(order[-1])
    best = KBestTried(label=des.groups[bi].label, k=float(des.k[bi]), index=bi, meets_eps=bool(ok),
                      observed={n: e.observed[bi] for n, e in entries.items()})
    return KProposal(eps=eps, k_tried=des.k.tolist(), targets=entries, k=k_star, k_low=max(lows) if lows else None,
                     k_high=k_high, best_tried=best, groups=[g.label for g in des.groups])


# ---------------------------------------------------------------- the proposal as a study


def proposal_study(prop: MixtureProposal | KProposal, study_name: str, store, out_dir: str) -> dict:
    """A study file running the proposal beside the best tried configuration (same seeds, so the
    comparison is paired), with the claim that the proposal is better and the predictions the
    report checks against what is observed."""
    best = next((g for g in groups(store) if g.label == prop.best_tried.label), None)
    if best is None:  # the fit's configurations are not the store's: never guess which one was meant
        raise SftmixError(f"propose: the best tried configuration {prop.best_tried.label!r} is not among the study's done "
                          "configurations now (the study was relabelled or changed); refit with `sftmix study fit`")
    # a run recorded by an earlier version keeps its flat eval section in the store: today's form
    base = {k: v for k, v in upgrade(best.config).items() if k not in ("name", "output_dir", "seed")}
    seeds = sorted(best.seeds)
    doc: dict = {"name": f"{study_name}_proposal", "base": base, "output_dir": out_dir,
                 "replicates": max(len(seeds), 1), "compare": [], "predictions": []}
    def sel() -> dict:  # a fresh mapping each time: YAML would otherwise write anchors and aliases
        return {"_config": "proposal"}

    if isinstance(prop, MixtureProposal):
        p = prop.proposal
        strategy = {"name": "multitask", "sources": list(p.sources),
                    "fraction": {s: f"{n}/{int(prop.pools[s])}" for s, n in p.sources.items()}}
        doc["description"] = (f"The mixture `sftmix study propose` recommends for {study_name} (weights {prop.weights}, "
                              f"budget {prop.budget:g} examples), beside the best configuration tried ({best.label}).")
        same = all(abs(p.examples[a] - prop.best_tried.examples.get(a, 0)) < 0.5 for a in p.examples)
        if same:  # nothing new to run beside it: the proposal is the best tried mixture
            doc["zip"] = {"_config": ["proposal"], "strategy": [strategy]}
            doc["description"] += " The proposal is the best tried mixture itself."
        else:
            doc["zip"] = {"_config": ["proposal", "best tried"], "strategy": [strategy, copy.deepcopy(best.config["strategy"])]}
        weights = {n: w / sum(prop.weights.values()) / len(prop.targets[a])
                   for a, w in prop.weights.items() for n in prop.targets[a]}
        if not same:
            doc["compare"].append({"a": sel(), "b": {"_config": "best tried"}, "metric": "weighted held-out loss",
                                   "weights": dict(weights), "expect": "better", "source": "own",
                                   "claim": "The proposed mixture is better than the best configuration tried"})
        for n, v in p.predicted.items():
            doc["predictions"].append({"a": sel(), "metric": n, **_pred(v)})
        doc["predictions"].append({"a": sel(), "metric": "weighted held-out loss", "weights": dict(weights), **_pred(p.weighted)})
        return doc
    k_best = prop.best_tried.k
    doc["description"] = (f"DMT with the replay k `sftmix study propose --dmt-k {prop.eps:g}` recommends for {study_name}, "
                          f"beside the best k tried ({k_best:g}).")
    if abs(prop.k - k_best) < 1e-12:
        doc["zip"] = {"_config": ["proposal"], "strategy.k": [prop.k]}
    else:
        doc["zip"] = {"_config": ["proposal", "best tried"], "strategy.k": [prop.k, k_best]}
        for n, e in prop.targets.items():
            if e.limit is None:  # a general ability: less replay should help it
                doc["compare"].append({"a": sel(), "b": {"_config": "best tried"}, "metric": n, "source": "own",
                                       "expect": "better" if prop.k < k_best else "worse",
                                       "claim": f"The proposed k ({prop.k:.3g}) keeps {e.ability} ability at least as "
                                                f"well as the best k tried ({k_best:g})"})
    for n, e in prop.targets.items():
        if e.predicted_at_k is not None:
            doc["predictions"].append({"a": sel(), "metric": n, **_pred(e.predicted_at_k)})
    return doc


def _pred(v: Prediction) -> dict:
    """A prediction as a study file's ``predictions`` entry."""
    return v.model_dump()
