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

import numpy as np

from sftmix.analysis.lawfit import targets
from sftmix.analysis.laws import (
    CANDIDATES,
    LAWS,
    Target,
    fit_target,
    predict_with,
)
from sftmix.analysis.results import groups
from sftmix.analysis.stats import percentile_interval
from sftmix.config.run import upgrade
from sftmix.data.compose import round_half_up
from sftmix.errors import SftmixError
from sftmix.study.store import Store


def _ability_targets(doc: dict, names: dict[str, float], flag: str) -> dict[str, list[str]]:
    """Each named ability's fitted held-out losses; unknown abilities, abilities without held-out
    loss and abilities no law fits are errors that say so."""
    abilities = doc["abilities"]
    out = {}
    for a in names:
        if a not in abilities:
            raise SftmixError(f"{flag}: unknown ability {a!r}; the study's abilities: {', '.join(abilities)}")
        ts = [n for n, r in doc["targets"].items() if r["ability"] == a]
        if not ts:
            raise SftmixError(f"{flag}: ability {a!r} has no held-out loss in this study (add one of its sources, "
                              f"{', '.join(doc['sources'].get(a, []))}, to heldout.sources and rerun), so nothing predicts it")
        bad = [n for n in ts if doc["targets"][n]["selected"] is None]
        if bad:
            raise SftmixError(f"{flag}: ability {a!r}: {bad[0]}: {doc['targets'][bad[0]]['why']}; drop {a} from {flag} or run a "
                              "larger study")
        out[a] = ts
    return out


def _predict_matrix(doc: dict, name: str, D: np.ndarray) -> np.ndarray:
    r = doc["targets"][name]
    law = CANDIDATES[r["selected"]]
    return law.predict(np.array(r["laws"][r["selected"]]["theta"]), D, doc["abilities"].index(r["ability"]))


def weighted_prediction(doc: dict, weights: dict[str, float], D: np.ndarray) -> np.ndarray:
    """The fitted laws' weighted held-out loss at each row of ``D`` (examples per ability, in the
    fit's ability order): sum_a w_a·mean(L_a) / sum_a w_a."""
    wt = _ability_targets(doc, weights, "--weights")
    wsum = sum(weights.values())
    return sum(w * np.mean([_predict_matrix(doc, n, D) for n in wt[a]], axis=0) for a, w in weights.items()) / wsum


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
    fit: dict | None = None


def propose_mixture(evidence: Evidence, weights: dict[str, float], budget: float | None = None,
                    max_loss: dict[str, float] | None = None) -> dict:
    """The recommended mixture (see the module docstring) and the best tried configuration."""
    from scipy.optimize import minimize

    doc = evidence.fit
    if doc is None:
        raise SftmixError("propose: a mixture is proposed from fitted laws; run `sftmix study fit` first")

    max_loss = max_loss or {}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise SftmixError(f"--weights: weights must be >= 0 with a positive sum, got {weights}")
    wt = _ability_targets(doc, weights, "--weights")
    ct = _ability_targets(doc, max_loss, "--max-loss")
    if doc["unit"] != "examples":
        raise SftmixError("propose: the fit was made in tokens; proposals are amounts of examples (fit with --unit examples)")
    abilities = doc["abilities"]
    configs = doc["configurations"]
    if any(c["stages"] > 1 for c in configs):
        raise SftmixError("propose: the study's runs train in several stages; a mixture proposal is over one-stage mixtures "
                          "(multitask). For DMT's replay k use --dmt-k EPS on a study over k")
    multi = {a: s for a, s in doc["sources"].items() if len(s) > 1}
    if multi:
        a, s = next(iter(multi.items()))
        raise SftmixError(f"propose: ability {a!r} is trained from several sources ({', '.join(s)}); a proposal needs one "
                          "source per ability")
    caps = np.array([doc["pools"][doc["sources"][a][0]] if doc["sources"].get(a) else 0.0 for a in abilities])
    tried = np.array([[c["examples"][a] for a in abilities] for c in configs])
    B = float(budget) if budget is not None else float(tried.sum(1).max())
    if B < 1:
        raise SftmixError(f"--budget {budget}: a mixture needs at least 1 example")
    capped = B > caps.sum()
    B = min(B, float(caps.sum()))

    def objective(D: np.ndarray) -> np.ndarray:
        return weighted_prediction(doc, weights, D)

    def slack(D: np.ndarray) -> np.ndarray:  # >= 0 where every --max-loss holds
        cols = [max_loss[a] - _predict_matrix(doc, n, D) for a in ct for n in ct[a]]
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
            best = min(float(_predict_matrix(doc, n, cand).min()) for n in ct[a])
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
        prop["notes"].append(f"the budget {budget:g} is more than the sources hold together; the proposal is within their "
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


def _public(v: dict) -> dict:
    return {k: x for k, x in v.items() if k not in ("band_draws", "interval_values")}


def _predict(doc: dict, name: str, x: np.ndarray) -> dict:
    r = doc["targets"][name]
    return predict_with(r["selected"], r["laws"][r["selected"]], x, doc["abilities"].index(r["ability"]))


def _weighted(doc: dict, weights: dict, wt: dict, x: np.ndarray) -> dict:
    """The weighted predicted loss at ``x``: estimate, law band and prediction interval, combined
    draw by draw (bootstrap draws for the band; the same left-out configuration for the interval)."""
    wsum = sum(weights.values())
    est, band, values = 0.0, 0.0, 0.0
    for a, w in weights.items():
        for n in wt[a]:
            p = _predict(doc, n, x)
            share = w / wsum / len(wt[a])
            est += share * p["estimate"]
            band = band + share * p["band_draws"]
            values = values + share * p["interval_values"]
    lo, hi = percentile_interval(band)
    plo, phi = percentile_interval(values)
    return {"estimate": float(est), "law_low": float(lo), "law_high": float(hi), "low": float(plo), "high": float(phi)}


def _mixture_doc(doc, weights, wt, max_loss, B, budget, D, tried, objective) -> dict:
    abilities = doc["abilities"]
    targets = sorted({n for ts in wt.values() for n in ts} | set(doc["targets"]))
    configs = doc["configurations"]
    wsum = sum(weights.values())
    observed_w = []
    for i, _ in enumerate(configs):
        observed_w.append(sum(w / wsum * np.mean([doc["targets"][n]["observed"][i] for n in wt[a]]) for a, w in weights.items()))
    bi = int(np.argmin(observed_w))
    best = configs[bi]
    sources = {doc["sources"][a][0]: int(D[j]) for j, a in enumerate(abilities) if D[j] > 0 and doc["sources"].get(a)}
    notes = []
    top = tried.max(0)
    outside = [a for j, a in enumerate(abilities) if D[j] > top[j] + 1e-9]
    if outside or D.sum() > tried.sum(1).max() + 1e-9:
        notes.append("the proposal lies outside the tried range (" + (", ".join(f"{a} {int(D[abilities.index(a)])} > tried "
                     f"{int(top[abilities.index(a)])}" for a in outside) or f"total {int(D.sum())} > tried "
                     f"{int(tried.sum(1).max())}") + "): its intervals assume the law holds there; the extrapolation test in the "
                     "Laws section says how far that has held")
    fits = {n: doc["targets"][n]["selected"] for n in targets}
    return {
        "mode": "mixture", "weights": weights, "max_loss": max_loss, "budget": B, "budget_given": budget, "pools": doc["pools"],
        "proposal": {
            "examples": {a: int(D[j]) for j, a in enumerate(abilities)}, "total": int(D.sum()), "sources": sources,
            "fractions": {s: n / doc["pools"][s] for s, n in sources.items()},
            "predicted": {n: _public(_predict(doc, n, D)) for n in targets if fits[n]},
            "weighted": _weighted(doc, weights, wt, D),
        },
        "best_tried": {
            "label": best["label"], "examples": best["examples"], "seeds": best["seeds"], "index": bi,
            "observed": {n: {"estimate": doc["targets"][n]["observed"][bi], "low": doc["targets"][n]["observed_low"][bi],
                             "high": doc["targets"][n]["observed_high"][bi]} for n in targets},
            "weighted_observed": float(observed_w[bi]),
            "weighted_predicted": float(objective(np.array([[best["examples"][a] for a in abilities]]))[0]),
        },
        "targets": {a: wt[a] for a in wt},
        "notes": notes,
    }


# ---------------------------------------------------------------- DMT's k


def dmt_design(store) -> dict:
    """A study over DMT's k: per configuration its k, the replayed and new examples of stage 2,
    stage 1's parts, and each held-out loss at the end of stage 1 (from the forgetting curves)."""
    gs = [g for g in groups(store) if (g.config.get("strategy") or {}).get("name") in ("dmt", "mixed_sequential")]
    if not gs:
        raise SftmixError("--dmt-k: the study has no done DMT runs (strategy dmt over several k, e.g. configs/studies/dmt_k.yaml)")
    by_run: dict[str, list[dict]] = {}
    for d in store.data():
        by_run.setdefault(d["run_id"], []).append(d)
    ks, X, stage1, new = [], [], {}, []
    for g in gs:
        rows = by_run.get(g.runs[0]["id"], [])
        if not rows:
            raise SftmixError(f"--dmt-k: the store does not say what {g.label!r} trained on")
        ks.append(float((g.config.get("strategy") or {}).get("k", 0.0)))
        replay = sum(d["examples"] for d in rows if d["stage_index"] == 2 and d["replay"])
        fresh = sum(d["examples"] for d in rows if d["stage_index"] == 2 and not d["replay"])
        X.append([replay, fresh])
        new.append(fresh)
        for d in rows:
            if d["stage_index"] == 1:
                stage1[(d["source"], d["ability"])] = d["examples"]
    if len(set(ks)) < 2:
        raise SftmixError(f"--dmt-k: the study's DMT runs all use k = {ks[0]:g}; a law over k needs a study that varies it")
    curves: dict[str, list[float]] = {}
    ends: dict[tuple, tuple] = {}
    for c in store.curves():
        if c["stage_index"] == 1:
            key = (c["run_id"], c["ability"])
            if key not in ends or c["step"] > ends[key][0]:
                ends[key] = (c["step"], c["loss"])
    ids = {r["id"] for g in gs for r in g.runs}
    for (rid, source), (_, loss) in ends.items():
        if rid in ids:
            curves.setdefault(source, []).append(loss)
    return {"groups": gs, "k": np.array(ks), "X": np.array(X, float), "stage1_parts": stage1, "new": float(np.median(new)),
            "stage1_loss": {s: float(np.mean(v)) for s, v in curves.items()}}


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


def propose_k(evidence: Evidence, eps: float, n_boot: int = 200, seed: int = 0) -> dict:
    """The smallest replay k keeping every specialised ability within ``eps`` of its stage-1 loss."""
    store = evidence.store
    if store is None:
        raise SftmixError("--dmt-k: DMT's k is fitted from the study's results store")
    if eps < 0:
        raise SftmixError(f"--dmt-k {eps:g}: EPS is a loss margin, >= 0")
    des = dmt_design(store)
    abilities = sorted({d["ability"] for d in store.data()})
    doc_targets, _ = targets(store, des["groups"], abilities, None, n_boot, seed)
    specialised = {ability for (_, ability) in des["stage1_parts"]}
    X = des["X"]
    X_grid = np.array([[replay_counts(k, des["stage1_parts"]), des["new"]] for k in K_GRID])  # once: every draw reuses it
    laws = {n: LAWS[n] for n in ("mixture", "amount")}
    out = {"mode": "dmt_k", "eps": eps, "k_tried": des["k"].tolist(), "targets": {}, "notes": []}
    ks_all = []
    for t in doc_targets:
        source = t.name.split("/", 1)[1]
        fitted = fit_target(X, ["replay", "new"], Target(t.name, "replay", 0, t.y, t.draws), seed, laws=laws)
        entry = {"ability": t.ability, "fit": fitted, "observed": t.y.tolist()}
        out["targets"][t.name] = entry
        if t.ability not in specialised:
            continue
        if source not in des["stage1_loss"]:
            raise SftmixError(f"--dmt-k: {t.name}: no held-out loss at the end of stage 1 (the forgetting curves, curve.enabled: "
                              "true, measure it); the k criterion compares with it")
        if fitted["selected"] is None:
            raise SftmixError(f"--dmt-k: {t.name}: {fitted['why']}")
        limit = des["stage1_loss"][source] + eps
        d = fitted["laws"][fitted["selected"]]
        k = critical_k(fitted["selected"], np.array(d["theta"]), limit, X_grid, K_GRID)
        if k is None:
            best = CANDIDATES[fitted["selected"]].predict(np.array(d["theta"]), X_grid, 0)
            raise SftmixError(f"--dmt-k {eps:g}: no k in [0, 1] keeps {t.name} within {eps:g} of its stage-1 loss "
                              f"{des['stage1_loss'][source]:.4g}: the lowest predicted is {best.min():.4g} (at k = "
                              f"{K_GRID[int(np.argmin(best))]:.3g}); raise EPS")
        draws = [critical_k(fitted["selected"], th, limit, X_grid, K_GRID) for th in np.array(d["draws"])]
        finite = np.array([x for x in draws if x is not None])
        k_low, k_high = percentile_interval(finite) if len(finite) else (None, None)
        entry.update({"stage1_loss": des["stage1_loss"][source], "limit": limit, "k": k,
                      "k_low": float(k_low) if len(finite) else None,
                      "k_high": float(k_high) if len(finite) == len(draws) else None,
                      "draws_without_k": len(draws) - len(finite)})
        ks_all.append((k, entry))
    if not ks_all:
        raise SftmixError("--dmt-k: no held-out loss of a specialised (stage-1) ability was measured on every configuration")
    k_star = max(k for k, _ in ks_all)
    out["k"] = k_star
    # the k-interval of the binding ability: the largest lower and upper ends
    lows = [e["k_low"] for _, e in ks_all]
    highs = [e["k_high"] for _, e in ks_all]
    out["k_low"] = max(x for x in lows if x is not None) if any(x is not None for x in lows) else None
    out["k_high"] = None if any(x is None for x in highs) else max(highs)
    x = np.array([replay_counts(k_star, des["stage1_parts"]), des["new"]])
    for name, e in out["targets"].items():
        f = e["fit"]
        if f["selected"]:
            e["predicted_at_k"] = _public(predict_with(f["selected"], f["laws"][f["selected"]], x, 0))
    # best tried: the smallest tried k whose observed specialised losses all lie within eps of stage 1
    order = np.argsort(des["k"])
    ok = [i for i in order if all(e["observed"][i] <= e["limit"] for _, e in ks_all)]
    bi = int(ok[0]) if ok else int(order[-1])
    out["best_tried"] = {"label": des["groups"][bi].label, "k": float(des["k"][bi]), "index": bi,
                         "meets_eps": bool(ok), "observed": {n: e["observed"][bi] for n, e in out["targets"].items()}}
    out["groups"] = [g.label for g in des["groups"]]
    return out


# ---------------------------------------------------------------- the proposal as a study


def proposal_study(prop: dict, study_name: str, store, out_dir: str) -> dict:
    """A study file running the proposal beside the best tried configuration (same seeds, so the
    comparison is paired), with the claim that the proposal is better and the predictions the
    report checks against what is observed."""
    best = next((g for g in groups(store) if g.label == prop["best_tried"]["label"]), None)
    if best is None:  # the fit's configurations are not the store's: never guess which one was meant
        raise SftmixError(f"propose: the best tried configuration {prop['best_tried']['label']!r} is not among the study's done "
                          "configurations now (the study was relabelled or changed); refit with `sftmix study fit`")
    # a run recorded by an earlier version keeps its flat eval section in the store: today's form
    base = {k: v for k, v in upgrade(best.config).items() if k not in ("name", "output_dir", "seed")}
    seeds = sorted(best.seeds)
    doc: dict = {"name": f"{study_name}_proposal", "base": base, "output_dir": out_dir,
                 "replicates": max(len(seeds), 1), "compare": [], "predictions": []}
    def sel() -> dict:  # a fresh mapping each time: YAML would otherwise write anchors and aliases
        return {"_config": "proposal"}

    if prop["mode"] == "mixture":
        p = prop["proposal"]
        strategy = {"name": "multitask", "sources": list(p["sources"]),
                    "fraction": {s: f"{n}/{int(prop['pools'][s])}" for s, n in p["sources"].items()}}
        doc["description"] = (f"The mixture `sftmix study propose` recommends for {study_name} (weights {prop['weights']}, "
                              f"budget {prop['budget']:g} examples), beside the best configuration tried ({best.label}).")
        same = all(abs(p["examples"][a] - prop["best_tried"]["examples"].get(a, 0)) < 0.5 for a in p["examples"])
        if same:  # nothing new to run beside it: the proposal is the best tried mixture
            doc["zip"] = {"_config": ["proposal"], "strategy": [strategy]}
            doc["description"] += " The proposal is the best tried mixture itself."
        else:
            doc["zip"] = {"_config": ["proposal", "best tried"], "strategy": [strategy, copy.deepcopy(best.config["strategy"])]}
        weights = {n: w / sum(prop["weights"].values()) / len(prop["targets"][a])
                   for a, w in prop["weights"].items() for n in prop["targets"][a]}
        if not same:
            doc["compare"].append({"a": sel(), "b": {"_config": "best tried"}, "metric": "weighted held-out loss",
                                   "weights": dict(weights), "expect": "better", "source": "own",
                                   "claim": "The proposed mixture is better than the best configuration tried"})
        for n, v in p["predicted"].items():
            doc["predictions"].append({"a": sel(), "metric": n, **_pred(v)})
        doc["predictions"].append({"a": sel(), "metric": "weighted held-out loss", "weights": dict(weights), **_pred(p["weighted"])})
        return doc
    k_best = prop["best_tried"]["k"]
    doc["description"] = (f"DMT with the replay k `sftmix study propose --dmt-k {prop['eps']:g}` recommends for {study_name}, "
                          f"beside the best k tried ({k_best:g}).")
    if abs(prop["k"] - k_best) < 1e-12:
        doc["zip"] = {"_config": ["proposal"], "strategy.k": [prop["k"]]}
    else:
        doc["zip"] = {"_config": ["proposal", "best tried"], "strategy.k": [prop["k"], k_best]}
        for n, e in prop["targets"].items():
            if "limit" not in e:  # a general ability: less replay should help it
                doc["compare"].append({"a": sel(), "b": {"_config": "best tried"}, "metric": n, "source": "own",
                                       "expect": "better" if prop["k"] < k_best else "worse",
                                       "claim": f"The proposed k ({prop['k']:.3g}) keeps {e['ability']} ability at least as "
                                                f"well as the best k tried ({k_best:g})"})
    for n, e in prop["targets"].items():
        if "predicted_at_k" in e:
            doc["predictions"].append({"a": sel(), "metric": n, **_pred(e["predicted_at_k"])})
    return doc


def _pred(v: dict) -> dict:
    return {"estimate": float(v["estimate"]), "low": float(v["low"]), "high": float(v["high"]),
            "law_low": float(v["law_low"]), "law_high": float(v["law_high"]), "law": v.get("law", "")}
