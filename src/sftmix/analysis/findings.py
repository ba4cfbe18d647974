"""From the results store to evidence: the study's claims tested pairwise (each with a verdict
computed from the data) and its predictions checked against what was observed. The
configurations and their per-item values come from ``sftmix.analysis.results``.

Everything here reads the database alone (``runs``, ``metrics``, ``samples``), so a report can be
rebuilt at any time from ``results.sqlite``. A tested claim is a ``Finding`` (the report's
``findings.json``: a list of them), a checked prediction a ``CheckedPrediction``
(``predictions.json``); every row has every field, None where it does not apply (a claim not
tested has no interval).
"""

from __future__ import annotations

from fractions import Fraction

from pydantic import BaseModel, ConfigDict

from sftmix.analysis import stats
from sftmix.analysis.results import Group, configuration, group_items, groups, lower_is_better, metric_keys, study_tasks
from sftmix.config import Claim, StudyConfig, get_path
from sftmix.eval import tasks
from sftmix.eval.contamination import benchmark_item
from sftmix.eval.runner import BENCHMARKS
from sftmix.study.grid import PlannedRun, short_value
from sftmix.study.store import Store

# ---------------------------------------------------------------- the checked rows


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class McNemar(_Row):
    """McNemar's exact test on a pass/fail metric: items only A passed, only B passed, p-value."""

    a_only: int
    b_only: int
    p: float


class Finding(_Row):
    """A claim tested on one pair of configurations and one metric (or a weighted mean of metrics):
    A - B with its paired 95% interval over the compared items and seeds, and the verdict."""

    claim: str
    expect: str
    a: str
    b: str
    metric: str
    verdict: str
    note: str | None = None  # why it was not tested
    weights: dict[str, float] | None = None  # a weighted claim's metrics and weights
    seeds_a: int | None = None
    seeds_b: int | None = None
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    items: int | None = None
    mcnemar: McNemar | None = None
    a_value: float | None = None
    b_value: float | None = None
    seeds_compared: list[int] | None = None
    # the same comparison without the benchmark items some training row of A's or B's runs holds
    # (sftmix.eval.contamination); all None where no compared item is held, clean_verdict alone
    # "not measured" where that is not known for every run compared
    held_items: int | None = None
    clean_diff: float | None = None
    clean_low: float | None = None
    clean_high: float | None = None
    clean_verdict: str | None = None

    @property
    def tested(self) -> bool:
        """Whether the claim could be tested (else ``note`` says why)."""
        return self.verdict != NOT_TESTED


class CheckedPrediction(_Row):
    """A fitted law's prediction for a configuration beside what the study observed there."""

    configuration: str
    metric: str
    predicted: float
    low: float
    high: float
    law_low: float | None = None
    law_high: float | None = None
    law: str = ""
    verdict: str
    note: str | None = None
    observed: float | None = None
    observed_low: float | None = None
    observed_high: float | None = None
    seeds: int | None = None

    @property
    def tested(self) -> bool:
        """Whether the configuration was observed (else ``note`` says why)."""
        return self.verdict != NOT_TESTED


NOT_TESTED = "not tested"
NOT_MEASURED = "not measured"  # a clean verdict where the items the training rows hold were not measured

# ---------------------------------------------------------------- claims


def _same(a, b) -> bool:
    if a is None:
        return False
    if a == b:
        return True
    try:
        return float(Fraction(str(a))) == float(Fraction(str(b)))
    except (ValueError, ZeroDivisionError):
        return short_value(a) == short_value(b)


def _axis_for(key: str, point: dict) -> str | None:
    """The grid axis a selector key refers to: itself, an axis it lies under (``strategy.name``
    under ``strategy``), or an axis whose last part it names."""
    for p in point:
        if p == key or key.startswith(p + ".") or p.endswith("." + key) or p.split(".")[-1] == key:
            return p
    return None


def _flat(selector: dict, prefix: str = "") -> dict:
    """A selector's nested mappings as dotted paths: ``{strategy: {name: dmt}}`` selects as
    ``{strategy.name: dmt}`` does (the mapping's keys, not the whole of the config's value there)."""
    out = {}
    for k, v in selector.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(g: Group, selector: str | dict) -> bool:
    if isinstance(selector, str):
        return g.label == selector or get_path(g.config, "strategy.name") == selector
    for k, v in _flat(selector).items():
        axis = _axis_for(k, g.point)
        if not (_same(get_path(g.config, k), v) or (axis is not None and axis == k and _same(g.point[axis], v))):
            return False
    return True


def _selector_axes(selector: str | dict, point: dict) -> set[str]:
    if isinstance(selector, str):
        return {p for p in point if p == "strategy" or p.startswith("strategy.")}
    return {a for k in _flat(selector) if (a := _axis_for(k, point)) is not None}


def unmatched(study: StudyConfig, runs: list[PlannedRun], profile: str | None = None) -> list[str]:
    """Each claim that pairs no configurations of ``runs`` and each prediction that does not match
    exactly one (a typo in a label or a value, a profile without that configuration, a selector
    too loose to pair), in words: said before the runs start, by the rules the report applies
    once they have run (``pairs``), where it could only mark them not tested."""
    gs: dict[str, Group] = {}
    for r in runs:
        g = configuration(r.label, r.point, r.config.model_dump())
        gs.setdefault(g.label, g)
    where = f"profile {profile!r} of this study" if profile else "this study"
    zipped = tuple(study.zip_for(profile))  # as the report pairs them
    out = []
    for i, c in enumerate(study.compare):
        found, why = pairs(list(gs.values()), c, zipped)
        if not found:
            out.append(f"compare.{i}: {why} (of the {len(gs)} configurations of {where}); the claim "
                       f"{c.claim or c.metric!r} will be reported as not tested")
    for i, p in enumerate(study.predictions):
        n = sum(_matches(g, p.a) for g in gs.values())
        if n != 1:
            out.append(f"predictions.{i}.a: {short_value(p.a)} matches {n} of the {len(gs)} configurations of {where}, not "
                       f"one; the prediction of {p.metric!r} will be reported as not tested")
    return out


def pairs(gs: list[Group], claim: Claim, zipped: tuple[str, ...] = ()) -> tuple[list[tuple[Group, Group, str]], str]:
    """The (A, B, context) configuration pairs a claim compares, or [] and why none.

    The context is a configuration's values on the axes the selectors do not name; ``zipped``
    axes (a study's ``zip``) move together, so naming one of them takes them all out."""
    ga = [g for g in gs if _matches(g, claim.a)]
    gb = [g for g in gs if _matches(g, claim.b)]
    if not ga or not gb:
        return [], f"no configuration matches {claim.a if not ga else claim.b!r}"
    if len(ga) == 1 and len(gb) == 1:
        return [(ga[0], gb[0], "")], ""

    def context(g: Group) -> tuple:
        skip = _selector_axes(claim.a, g.point) | _selector_axes(claim.b, g.point)
        if skip & set(zipped):
            skip |= set(zipped)
        return tuple(sorted((k, short_value(v)) for k, v in g.point.items() if k not in skip))

    by_ctx = {}
    for g in gb:
        by_ctx.setdefault(context(g), []).append(g)
    out = []
    for a in ga:
        match = [b for b in by_ctx.get(context(a), []) if b is not a]
        if len(match) == 1:
            out.append((a, match[0], " ".join(f"{k.split('.')[-1]}={v}" for k, v in context(a))))
    if not out:
        return [], f"{len(ga)} and {len(gb)} configurations match, but none pair up on the other axes; be more specific"
    return out, ""


def check_claims(store: Store, claims: list[Claim], zipped: tuple[str, ...] = ()) -> list[Finding]:
    """Each claim (per pair of configurations and per measured metric): A - B with a paired 95%
    interval, McNemar for pass/fail metrics, and the verdict. Claims whose configurations or
    data are missing say so."""
    gs = groups(store)
    measured = set(metric_keys(store))
    known = study_tasks(store)
    held: dict[tuple[str, str], set[str]] = {}  # (run, benchmark) -> the items its training rows hold, read once
    for c in store.contamination():
        held[(c.run_id, c.task)] = set(c.held)
    out = []
    for c in claims:
        out += [Finding(**_own_words(row, c)) for row in _claim_rows(store, gs, c, zipped, measured, known, held)]
    return out


def _claim_rows(store: Store, gs: list[Group], c: Claim, zipped: tuple, measured: set, known: dict, held: dict) -> list[dict]:
    if c.weights:
        return _weighted_claim(store, gs, c, zipped, measured, known, held)
    metrics = [c.metric] if isinstance(c.metric, str) else list(c.metric)
    base = {"claim": c.claim or f"{short_value(c.a)} {c.expect} than {short_value(c.b)}", "expect": c.expect,
            "a": short_value(c.a), "b": short_value(c.b), "metric": metrics[0]}
    found, why = pairs(gs, c, zipped)
    usable = [m for m in metrics if m in measured]
    if not found or not usable:
        return [{**base, "verdict": NOT_TESTED, "note": why or f"the study measured none of {', '.join(metrics)}"}]
    return [_test(store, base, a, b, ctx, metric, known, held) for a, b, ctx in found for metric in usable]


OWN = {stats.AS_PAPER: "holds", stats.OPPOSITE: "the opposite holds"}


def _own_words(row: dict, claim: Claim) -> dict:
    """A study's own claim (not the paper's) says 'holds', not 'as in the paper'."""
    if claim.source == "own" and row.get("verdict") in OWN:
        row = {**row, "verdict": OWN[row["verdict"]]}
    return row


def _test(store: Store, base: dict, a: Group, b: Group, ctx: str, metric: str, known: dict, held: dict) -> dict:
    row = {**base, "claim": base["claim"] + (f" ({ctx})" if ctx else ""), "metric": metric, "a": a.label, "b": b.label,
           "seeds_a": len(a.runs), "seeds_b": len(b.runs)}
    ia, ib = group_items(store, a, metric), group_items(store, b, metric)
    if ia is None or ib is None or not ia.items or not ib.items:
        return {**row, "verdict": NOT_TESTED, "note": f"no per-item results for {metric}"}
    diff, lo, hi, n = stats.paired_difference(ia, ib)
    # a claim that A is better: A - B < 0 for loss, > 0 otherwise; "worse" flips it
    expect_positive = (not lower_is_better(metric, known)) == (base["expect"] == "better")
    test = None
    if tasks.is_binary(metric, known):
        only_a, only_b, p = stats.mcnemar(ia, ib)
        test = {"a_only": only_a, "b_only": only_b, "p": p}
    v = stats.verdict(lo, hi, expect_positive, test["p"] if test else None, diff)
    pa, pb = stats.align(ia, ib)  # the values compared: shared items, and shared seeds where there are any
    return {**row, "diff": diff, "low": lo, "high": hi, "items": n, "mcnemar": test, "verdict": v,
            "a_value": stats.estimate(pa), "b_value": stats.estimate(pb), "seeds_a": len(pa.seeds),
            "seeds_b": len(pb.seeds), "seeds_compared": sorted(set(pa.seeds) & set(pb.seeds)),
            **_clean(held, a, b, metric, pa, pb, expect_positive, known)}


def _held(held: dict, a: Group, b: Group, metric: str, items: list[str]) -> set[str] | None:
    """Those of ``items`` (a metric's, as the store names them) that some training row of A's or
    B's runs holds (``held``: the store's ``contamination``, by run and benchmark). None where a
    benchmark's holdings were not measured for one of the runs (the check failed, or the run was
    stored before they were kept): unknown, not "none held"."""
    task = metric.split("/", 1)[0]
    if task not in BENCHMARKS:
        return set()
    runs = [r.id for r in (*a.runs, *b.runs)]
    if any((r, task) not in held for r in runs):
        return None
    ids = set().union(*(held[(r, task)] for r in runs))
    return {i for i in items if benchmark_item(task, i) in ids}


def _clean(held: dict, a: Group, b: Group, metric: str, pa: stats.Items, pb: stats.Items, expect_positive: bool,
           known: dict) -> dict:
    """The comparison again without the items some training row of A's or B's runs holds: a
    verdict that changes there was decided by training on the test. Nothing where no compared
    item is held."""
    drop = _held(held, a, b, metric, pa.items)
    if drop is None:
        return {"clean_verdict": NOT_MEASURED}
    if not drop:
        return {}
    ca, cb = stats.without(pa, drop), stats.without(pb, drop)
    if not ca.items:
        return {"held_items": len(drop), "clean_verdict": NOT_TESTED}
    diff, lo, hi, _ = stats.paired_difference(ca, cb)
    p = stats.mcnemar(ca, cb)[2] if tasks.is_binary(metric, known) else None
    return {"held_items": len(drop), "clean_diff": diff, "clean_low": lo, "clean_high": hi,
            "clean_verdict": stats.verdict(lo, hi, expect_positive, p, diff)}


def _clean_weighted(held: dict, a: Group, b: Group, parts: list, metrics: list[str], expect_positive: bool) -> dict:
    """A weighted claim again without the held items of each of its benchmark metrics."""
    aligned = [(w, *stats.align(x, y)) for w, x, y in parts]
    drops = [_held(held, a, b, m, x.items) for m, (_, x, _) in zip(metrics, aligned)]
    if any(d is None for d in drops):
        return {"clean_verdict": NOT_MEASURED}
    if not any(drops):
        return {}
    clean = [(w, stats.without(x, d), stats.without(y, d)) for (w, x, y), d in zip(aligned, drops)]
    if any(not x.items for _, x, _ in clean):
        return {"held_items": sum(map(len, drops)), "clean_verdict": NOT_TESTED}
    _, _, diff, lo, hi = stats.paired_weighted_difference(clean)
    return {"held_items": sum(map(len, drops)), "clean_diff": diff, "clean_low": lo, "clean_high": hi,
            "clean_verdict": stats.verdict(lo, hi, expect_positive)}


def _weighted_claim(store: Store, gs: list[Group], c: Claim, zipped: tuple, measured: set, known: dict, held: dict) -> list[dict]:
    """A claim on the weighted mean of several metrics (each paired on its own items; seeds
    shared): one row per configuration pair."""
    name = c.metric if isinstance(c.metric, str) else "weighted mean"
    base = {"claim": c.claim or f"{short_value(c.a)} {c.expect} than {short_value(c.b)}", "expect": c.expect,
            "a": short_value(c.a), "b": short_value(c.b), "metric": name, "weights": c.weights}
    found, why = pairs(gs, c, zipped)
    missing = [m for m in c.weights if m not in measured]
    if not found or missing:
        return [{**base, "verdict": NOT_TESTED, "note": why or f"the study did not measure {', '.join(missing)}"}]
    out = []
    for a, b, ctx in found:
        row = {**base, "claim": base["claim"] + (f" ({ctx})" if ctx else ""), "a": a.label, "b": b.label,
               "seeds_a": len(a.runs), "seeds_b": len(b.runs)}
        parts = [(w, group_items(store, a, m), group_items(store, b, m)) for m, w in c.weights.items()]
        if any(x is None or y is None or not x.items or not y.items for _, x, y in parts):
            out.append({**row, "verdict": NOT_TESTED, "note": "no per-item results for every weighted metric"})
            continue
        va, vb, diff, lo, hi = stats.paired_weighted_difference(parts)
        lower = all(lower_is_better(m, known) for m in c.weights)
        expect_positive = (not lower) == (c.expect == "better")
        v = stats.verdict(lo, hi, expect_positive)
        pa, pb = stats.align(parts[0][1], parts[0][2])
        out.append({**row, "diff": diff, "low": lo, "high": hi, "items": sum(len(stats.align(x, y)[0].items) for _, x, y in parts),
                    "mcnemar": None, "verdict": v, "a_value": va, "b_value": vb, "seeds_a": len(pa.seeds), "seeds_b": len(pb.seeds),
                    "seeds_compared": sorted(set(pa.seeds) & set(pb.seeds)),
                    **_clean_weighted(held, a, b, parts, list(c.weights), expect_positive)})
    return out


INSIDE, OUTSIDE_LOW, OUTSIDE_HIGH = "inside the predicted interval", "below the predicted interval", "above the predicted interval"


def check_predictions(store: Store, predictions: list) -> list[CheckedPrediction]:
    """Each prediction beside what was observed (estimate and 95% interval over items and seeds)
    and whether the observed estimate lies in the predictive interval."""
    gs = groups(store)
    out = []
    for p in predictions:
        row = {"configuration": short_value(p.a), "metric": p.metric, "predicted": p.estimate, "low": p.low, "high": p.high,
               "law_low": p.law_low, "law_high": p.law_high, "law": p.law}
        match = [g for g in gs if _matches(g, p.a)]
        if len(match) != 1:
            out.append(CheckedPrediction(**row, verdict=NOT_TESTED, note=f"{len(match)} configurations match {short_value(p.a)}"))
            continue
        g = match[0]
        weights = p.weights or {p.metric: 1.0}
        parts = [(w, group_items(store, g, m)) for m, w in weights.items()]
        if any(x is None or not x.items for _, x in parts):
            out.append(CheckedPrediction(**row, verdict=NOT_TESTED, note=f"{g.label}: no per-item results for {p.metric}"))
            continue
        est, lo, hi = stats.weighted_interval(parts)
        v = INSIDE if p.low <= est <= p.high else OUTSIDE_LOW if est < p.low else OUTSIDE_HIGH
        out.append(CheckedPrediction(**{**row, "configuration": g.label}, observed=est, observed_low=lo, observed_high=hi,
                                     seeds=len(g.runs), verdict=v))
    return out


def prediction_sentence(p: CheckedPrediction) -> str:
    """One sentence for a checked prediction: predicted interval, observed value and verdict."""
    if not p.tested:
        return f"Prediction for {p.configuration}, {p.metric}: not tested ({p.note})."
    return (f"Prediction for {p.configuration}, {p.metric} ({p.law} law): predicted {p.predicted:.4g} [95% predictive "
            f"{p.low:.4g}, {p.high:.4g}], observed {p.observed:.4g} [95% CI {p.observed_low:.4g}, "
            f"{p.observed_high:.4g}] over {p.seeds} seed(s): {p.verdict}.")


def finding_sentence(f: Finding) -> str:
    """One line per claim, for the report and the demo's notes."""
    if not f.tested:
        return f"{f.claim}: not tested ({f.note})."
    m = f.mcnemar
    test = f"; McNemar {m.a_only} vs {m.b_only} discordant, p = {m.p:.3g}" if m else ""
    clean = ""
    if f.clean_verdict == NOT_MEASURED:
        clean = " Which of these items their training rows hold was not measured."
    elif f.held_items:
        clean = (f" Without the {f.held_items} items their training rows hold: " + (
            "none is left" if f.clean_diff is None else
            f"{f.clean_diff:+.4g} [95% CI {f.clean_low:+.4g}, {f.clean_high:+.4g}], {f.clean_verdict}") + ".")
    return (f"{f.claim} — {f.metric}: {f.a} {f.a_value:.4g} vs {f.b} {f.b_value:.4g}, "
            f"difference {f.diff:+.4g} [95% CI {f.low:+.4g}, {f.high:+.4g}] over {f.items} items and "
            f"{_seed_words(f)}{test}: {f.verdict}.{clean}")


def _seed_words(f: Finding) -> str:
    shared = f.seeds_compared or []
    if shared:
        return f"seed{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))} (paired)"
    return f"{f.seeds_a} vs {f.seeds_b} seed(s), unpaired"


METHOD = ("Intervals are 95% percentile bootstrap intervals (2,000 draws) over the evaluation items (held-out samples, "
          "problems, judgments); with replicates, seeds are resampled too, crossed with the items. A metric is the ratio "
          "sum(value)/sum(weight) over items (held-out loss: summed token loss over tokens, so token-weighted). "
          "Comparisons are paired on the same items (and seeds where both configurations have them): the difference A - B "
          "with a paired bootstrap interval; for pass/fail benchmarks also the exact McNemar test, which then decides. "
          "A claim holds 'as in the paper' when the interval excludes 0 (or p < 0.05) in the paper's direction, 'the "
          "opposite of the paper' when it does so the other way, and is 'not distinguishable at this scale' otherwise. "
          "With a single seed an interval reflects the choice of evaluation items only, not the randomness of training: "
          "a verdict then says the difference holds for these trained models, not that it would replicate; use "
          "replicates (seeds) for that.")
