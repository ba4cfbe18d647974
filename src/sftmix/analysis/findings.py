"""From the results store to evidence: configurations (replicates merged), intervals per metric,
and the study's claims tested pairwise, each with a verdict computed from the data.

Everything here reads the database alone (``runs``, ``metrics``, ``samples``), so a report can be
rebuilt at any time from ``results.sqlite``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from sftmix.analysis import stats
from sftmix.study.grid import REPLICATE_AXIS, Claim, group_label, short_value
from sftmix.study.store import Store

HEADLINE = ("accuracy", "pass@1", "score")
BINARY_TASKS = ("gsm8k", "humaneval")


def lower_is_better(metric: str) -> bool:
    return metric.startswith("loss/")


@dataclass
class Group:
    """One configuration: its label, grid point (seed removed), config and runs (one per seed)."""

    label: str
    point: dict
    config: dict
    runs: list[dict] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [json.loads(r["config"]).get("seed", 0) for r in self.runs]


def groups(store: Store) -> list[Group]:
    """Done runs grouped by configuration, in the order the runs were first recorded."""
    out: dict[str, Group] = {}
    for r in store.runs():
        if r["status"] != "done":
            continue
        point = json.loads(r["point"] or "{}")
        label = group_label(point) if REPLICATE_AXIS in point else r["label"]
        g = out.setdefault(label, Group(label, {k: v for k, v in point.items() if k != REPLICATE_AXIS}, json.loads(r["config"])))
        g.runs.append(r)
    return list(out.values())


def metric_keys(store: Store) -> list[str]:
    """The headline metrics present: benchmarks first, then held-out loss per source."""
    keys = {f"{m['task']}/{m['metric']}" for m in store.metrics()
            if m["task"] == "loss" or m["metric"] in HEADLINE}
    order = {"gsm8k": 0, "humaneval": 1, "mtbench": 2, "loss": 3}
    return sorted(keys, key=lambda k: (order.get(k.split("/")[0], 9), k))


def group_items(store: Store, g: Group, metric: str, cache: dict | None = None) -> stats.Items | None:
    """The per-item results of a group on a metric, or None when the store has none (then only
    the runs' aggregate values exist, and no interval can be given)."""
    task, name = metric.split("/", 1)
    key = (task, name)
    if cache is not None and key in cache:
        rows = cache[key]
    else:
        rows = store.samples(task, name)
        if cache is not None:
            cache[key] = rows
    ids = {r["id"] for r in g.runs}
    per_run: dict[str, dict] = {}
    for s in rows:
        if s["run_id"] in ids:
            per_run.setdefault(s["run_id"], {})[s["item"]] = (s["value"], s["weight"])
    if len(per_run) != len(g.runs):
        return None
    seeds = {r["id"]: json.loads(r["config"]).get("seed", 0) for r in g.runs}
    return stats.items_of([(seeds[rid], per_run[rid]) for rid in sorted(per_run, key=lambda x: seeds[x])])


def summary(store: Store) -> tuple[list[str], list[list]]:
    """Table rows: one per configuration, a cell per metric: (estimate, low, high) or a plain
    value when no per-item results exist; plus the number of seeds and FLOPs."""
    from sftmix.analysis.report import flops

    keys = metric_keys(store)
    vals = {(m["run_id"], f"{m['task']}/{m['metric']}"): m["value"] for m in store.metrics()}
    flat = {(m["run_id"], m["task"], m["metric"]): m["value"] for m in store.metrics()}
    header = ["run", "seeds"] + keys + ["train PFLOPs", "eval PFLOPs"]
    rows, cache = [], {}
    for g in groups(store):
        cells: list[Any] = [g.label, len(g.runs)]
        for k in keys:
            items = group_items(store, g, k, cache)
            if items is not None and items.values.size:
                cells.append(stats.interval(items))
            else:
                present = [vals[(r["id"], k)] for r in g.runs if (r["id"], k) in vals]
                cells.append(sum(present) / len(present) if present else None)
        fl = [flops(r, flat, r["id"]) for r in g.runs]
        cells += [round(sum(t for t, _ in fl) / len(fl) / 1e15, 6), round(sum(e for _, e in fl) / len(fl) / 1e15, 6)]
        rows.append(cells)
    return header, rows


# ---------------------------------------------------------------- claims


def _get(config: dict, path: str):
    node: Any = config
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _same(a, b) -> bool:
    if a is None:
        return False
    try:
        return float(Fraction(str(a))) == float(Fraction(str(b)))
    except (ValueError, ZeroDivisionError):
        return short_value(a) == str(b) or a == b


def select(gs: list[Group], selector: str | dict) -> tuple[Group | None, str]:
    """The one group a claim's selector names, or None and why not."""
    if isinstance(selector, str):
        exact = [g for g in gs if g.label == selector]
        found = exact or [g for g in gs if _get(g.config, "strategy.name") == selector]
    else:
        def matches(g: Group) -> bool:
            for k, v in selector.items():
                axis = next((p for p in g.point if p == k or p.endswith("." + k) or p.split(".")[-1] == k), None)
                if not (_same(_get(g.config, k), v) or (axis is not None and _same(g.point[axis], v))):
                    return False
            return True
        found = [g for g in gs if matches(g)]
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"no configuration matches {selector!r}"
    return None, f"{len(found)} configurations match {selector!r} ({'; '.join(g.label for g in found[:4])}); be more specific"


def test_claims(store: Store, claims: list[Claim]) -> list[dict]:
    """Each claim: the groups compared, A - B with a paired 95% interval, McNemar for pass/fail
    metrics, and the verdict. Claims whose groups or data are missing say so."""
    gs = groups(store)
    out = []
    for c in claims:
        row = {"claim": c.claim or f"{short_value(c.a)} {c.expect} than {short_value(c.b)} on {c.metric}",
               "metric": c.metric, "expect": c.expect, "a": short_value(c.a), "b": short_value(c.b)}
        a, why_a = select(gs, c.a)
        b, why_b = select(gs, c.b)
        if a is None or b is None:
            out.append({**row, "verdict": "not tested", "note": why_a or why_b})
            continue
        row.update(a=a.label, b=b.label, seeds_a=len(a.runs), seeds_b=len(b.runs))
        ia, ib = group_items(store, a, c.metric), group_items(store, b, c.metric)
        if ia is None or ib is None or not ia.items or not ib.items:
            out.append({**row, "verdict": "not tested", "note": f"no per-item results for {c.metric}"})
            continue
        diff, lo, hi, n = stats.paired_difference(ia, ib)
        # a claim that A is better: A - B < 0 for loss, > 0 otherwise; "worse" flips it
        expect_positive = (not lower_is_better(c.metric)) == (c.expect == "better")
        test = None
        if c.metric.split("/")[0] in BINARY_TASKS:
            only_a, only_b, p = stats.mcnemar(ia, ib)
            test = {"a_only": only_a, "b_only": only_b, "p": p}
        v = stats.verdict(lo, hi, expect_positive, test["p"] if test else None, diff)
        out.append({**row, "diff": diff, "low": lo, "high": hi, "items": n, "mcnemar": test, "verdict": v,
                    "a_value": stats.estimate(ia), "b_value": stats.estimate(ib)})
    return out


def finding_sentence(f: dict) -> str:
    """One line per claim, for the report and the demo's notes."""
    if f["verdict"] == "not tested":
        return f"{f['claim']}: not tested ({f['note']})."
    test = f"; McNemar {f['mcnemar']['a_only']} vs {f['mcnemar']['b_only']} discordant, p = {f['mcnemar']['p']:.3g}" \
        if f.get("mcnemar") else ""
    return (f"{f['claim']} — {f['metric']}: {f['a']} {f['a_value']:.4g} vs {f['b']} {f['b_value']:.4g}, "
            f"difference {f['diff']:+.4g} [95% CI {f['low']:+.4g}, {f['high']:+.4g}] over {f['items']} items, "
            f"{f['seeds_a']}/{f['seeds_b']} seed(s){test}: {f['verdict']}.")


METHOD = ("Intervals are 95% percentile bootstrap intervals (2,000 draws) over the evaluation items (held-out samples, "
          "problems, judgments); with replicates, seeds are resampled too, crossed with the items. A metric is the ratio "
          "sum(value)/sum(weight) over items (held-out loss: summed token loss over tokens, so token-weighted). "
          "Comparisons are paired on the same items (and seeds where both configurations have them): the difference A - B "
          "with a paired bootstrap interval; for pass/fail benchmarks also the exact McNemar test, which then decides. "
          "A claim holds 'as in the paper' when the interval excludes 0 (or p < 0.05) in the paper's direction, 'the "
          "opposite of the paper' when it does so the other way, and is 'not distinguishable at this scale' otherwise.")
