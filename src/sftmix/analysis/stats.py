"""Uncertainty from data: bootstrap intervals, paired differences, exact McNemar, verdicts.

Every metric is a ratio over items: sum(value) / sum(weight). Held-out loss: value = a sample's
summed token loss, weight = its token count (the token-weighted mean of ``sftmix.supervised.mean_loss``);
accuracy and pass@1: value 0 or 100 per problem, weight 1; MT-Bench: a judgment's score.

A *group* is one configuration: its runs are replicates over seeds, all measured on the same
items (held-out rows are chosen with a fixed seed; benchmarks have fixed problems). Intervals:

- one run: percentile bootstrap over items (resampling items with replacement);
- replicates: the items and the seeds are crossed, so each bootstrap draw resamples both (one
  draw of items, applied to every run, and one draw of runs); the estimate is the mean over
  seeds of each run's ratio. This covers item and seed (training) variance together.

Paired comparison of groups A and B on the same items: the difference of their estimates, with
the same item draw (and, for seeds both have, the same seed draw) applied to both sides, so the
shared difficulty of items cancels; a group against itself gives exactly 0 in every draw. For
pass/fail metrics the exact McNemar test on the discordant pairs (pooled over shared seeds) is
reported too, and decides the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict


class Interval(BaseModel):
    """An estimate with its 95% interval (as the files that record one write it)."""

    model_config = ConfigDict(extra="forbid")

    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width: the noise of the estimate."""
        return (self.high - self.low) / 2

LEVEL = 0.95
N_BOOT = 2000


@dataclass
class Items:
    """One group's per-item results: ``values`` and ``weights`` of shape (runs, items), with
    the seeds of the runs and the item ids (same order for every run)."""

    values: np.ndarray
    weights: np.ndarray
    seeds: list[int]
    items: list[str]


def items_of(runs: list[tuple[int, dict[str, tuple[float, float]]]], only: list[str] | None = None) -> Items:
    """Build ``Items`` from ``[(seed, {item: (value, weight)})]``, keeping the items every run has
    (and that are in ``only`` when given)."""
    common = set.intersection(*(set(r) for _, r in runs)) if runs else set()
    if only is not None:
        common &= set(only)
    ids = sorted(common)
    v = np.array([[r[i][0] for i in ids] for _, r in runs], dtype=float).reshape(len(runs), len(ids))
    w = np.array([[r[i][1] for i in ids] for _, r in runs], dtype=float).reshape(len(runs), len(ids))
    return Items(v, w, [s for s, _ in runs], ids)


def without(x: Items, drop: set[str]) -> Items:
    """``x`` without the items ``drop`` names (every run's values and weights alike)."""
    keep = [j for j, i in enumerate(x.items) if i not in drop]
    return Items(x.values[:, keep], x.weights[:, keep], list(x.seeds), [x.items[j] for j in keep])


def estimate(x: Items) -> float:
    """Mean over runs of each run's ratio sum(value) / sum(weight)."""
    return float(np.mean(x.values.sum(1) / x.weights.sum(1)))


def _draws(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws as counts: (n_boot, n), each row a multinomial resample of n things."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def _seed_draws(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of ``n`` runs (seeds); a single run is kept as it is in every draw (nothing to resample)."""
    return _draws(n, n_boot, rng) if n > 1 else np.ones((n_boot, 1))


def percentile_interval(draws, level: float = LEVEL, axis: int | None = None) -> tuple:
    """The central ``level`` percentile interval of bootstrap (or jackknife) draws: (low, high),
    arrays along ``axis`` when given. Every interval sftmix reports is cut here."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=axis)
    return lo, hi


def _boot(x: Items, item_counts: np.ndarray, run_counts: np.ndarray) -> np.ndarray:
    ratios = (item_counts @ x.values.T) / (item_counts @ x.weights.T)  # (n_boot, runs)
    return (run_counts * ratios).sum(1) / x.values.shape[0]


def interval(x: Items, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(estimate, low, high): the percentile bootstrap interval described in the module docstring."""
    if x.values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    runs, n = x.values.shape
    boots = _boot(x, _draws(n, n_boot, rng), _seed_draws(runs, n_boot, rng))
    lo, hi = percentile_interval(boots, level)
    return estimate(x), float(lo), float(hi)


def shared_item_draws(groups: list[Items], n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Bootstrap draws of several groups' estimates measured on the same items: (n_boot, groups).

    One item draw per bootstrap draw is applied to every group (they share the items' difficulty,
    as a law fitted across configurations does), and each group's runs are resampled on their own.
    Every group must hold the same items in the same order (``align_items``)."""
    if not groups:
        return np.zeros((n_boot, 0))
    rng = np.random.default_rng(seed)
    items = _draws(len(groups[0].items), n_boot, rng)
    out = np.empty((n_boot, len(groups)))
    for j, x in enumerate(groups):
        runs = _seed_draws(len(x.seeds), n_boot, rng)
        out[:, j] = _boot(x, items, runs)
    return out


def align_items(groups: list[Items]) -> list[Items]:
    """The groups restricted to the items every one of them has (same order)."""
    shared = sorted(set.intersection(*(set(x.items) for x in groups))) if groups else []
    return [_subset(x, shared) for x in groups]


def weighted_interval(parts: list[tuple[float, Items]], n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float]:
    """(estimate, low, high) of a weighted mean of several metrics of one group: each metric's
    items drawn on their own, one seed draw shared by all (the same runs measured them)."""
    rng = np.random.default_rng(seed)
    total = sum(w for w, _ in parts)
    n_runs = len(parts[0][1].seeds)
    runs = _seed_draws(n_runs, n_boot, rng)
    boots = sum(w / total * _boot(x, _draws(len(x.items), n_boot, rng), runs) for w, x in parts)
    lo, hi = percentile_interval(boots, level)
    return sum(w / total * estimate(x) for w, x in parts), float(lo), float(hi)


def paired_weighted_difference(pairs: list[tuple[float, Items, Items]], n_boot: int = N_BOOT, seed: int = 0,
                               level: float = LEVEL) -> tuple[float, float, float, float, float]:
    """A weighted mean of several metrics, A against B: ``pairs`` holds (weight, A's items, B's
    items) per metric. Each metric is paired as in ``paired_difference`` (its own item draws);
    the seed draw is shared by all metrics, since they are measured on the same runs. Returns
    (A's weighted value, B's, A - B, low, high)."""
    rng = np.random.default_rng(seed)
    total = sum(w for w, _, _ in pairs)
    aligned = [(w, *align(a, b)) for w, a, b in pairs]
    seeds_a = len(aligned[0][1].seeds)
    shared_seeds = bool(set(aligned[0][1].seeds) & set(aligned[0][2].seeds))
    ra = _seed_draws(seeds_a, n_boot, rng)
    seeds_b = len(aligned[0][2].seeds)
    rb = ra if shared_seeds else _seed_draws(seeds_b, n_boot, rng)
    diffs = np.zeros(n_boot)
    va = vb = 0.0
    for w, a, b in aligned:
        items = _draws(len(a.items), n_boot, rng)
        diffs += w * (_boot(a, items, ra) - _boot(b, items, rb)) / total
        va += w * estimate(a) / total
        vb += w * estimate(b) / total
    lo, hi = percentile_interval(diffs, level)
    return va, vb, va - vb, float(lo), float(hi)


def paired_difference(a: Items, b: Items, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float, int]:
    """(A - B, low, high, items): paired bootstrap over the items both have (and the seeds both
    have, when any are shared; otherwise each side's runs are resampled on their own)."""
    a, b = align(a, b)
    shared, common = a.items, sorted(set(a.seeds) & set(b.seeds))
    if not shared:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    items = _draws(len(shared), n_boot, rng)

    ra = _seed_draws(len(a.seeds), n_boot, rng)
    rb = ra if common else _seed_draws(len(b.seeds), n_boot, rng)
    diffs = _boot(a, items, ra) - _boot(b, items, rb)
    lo, hi = percentile_interval(diffs, level)
    return estimate(a) - estimate(b), float(lo), float(hi), len(shared)


def align(a: Items, b: Items) -> tuple[Items, Items]:
    """The parts of A and B that a paired comparison uses: the items both have, and the seeds
    both have when they share any (otherwise all runs of each)."""
    shared = sorted(set(a.items) & set(b.items))
    a, b = _subset(a, shared), _subset(b, shared)
    common = sorted(set(a.seeds) & set(b.seeds))
    if common:
        a, b = _seeds(a, common), _seeds(b, common)
    return a, b


def _subset(x: Items, ids: list[str]) -> Items:
    idx = [x.items.index(i) for i in ids]
    return Items(x.values[:, idx], x.weights[:, idx], x.seeds, ids)


def _seeds(x: Items, seeds: list[int]) -> Items:
    idx = [x.seeds.index(s) for s in seeds]
    return Items(x.values[idx], x.weights[idx], seeds, x.items)


def mcnemar(a: Items, b: Items) -> tuple[int, int, float]:
    """Exact McNemar test on pass/fail items (value > 0 = pass) paired by item and shared seed:
    (A passes and B fails, A fails and B passes, two-sided p-value)."""
    # imported here: scipy is heavy and only needed here
    from scipy.stats import binomtest

    shared = sorted(set(a.items) & set(b.items))
    a, b = _subset(a, shared), _subset(b, shared)
    common = sorted(set(a.seeds) & set(b.seeds)) or None
    if common:
        a, b = _seeds(a, common), _seeds(b, common)
    else:  # no shared seeds: compare the first run of each
        a, b = _seeds(a, a.seeds[:1]), _seeds(b, b.seeds[:1])
    pa, pb = a.values > 0, b.values > 0
    only_a, only_b = int((pa & ~pb).sum()), int((~pa & pb).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return only_a, only_b, p


AS_PAPER, OPPOSITE, UNCLEAR = "as in the paper", "the opposite of the paper", "not distinguishable at this scale"


def verdict(low: float, high: float, expect_positive: bool, p: float | None = None, diff: float | None = None,
            alpha: float = 1 - LEVEL) -> str:
    """The verdict on a claim that A - B is positive (``expect_positive``) or negative.

    Continuous metrics: the interval must exclude 0. Pass/fail metrics (``p`` given): McNemar's
    p must be below ``alpha`` and the difference must have a sign."""
    if p is not None:
        if p >= alpha or not diff:
            return UNCLEAR
        return AS_PAPER if (diff > 0) == expect_positive else OPPOSITE
    if np.isnan(low) or np.isnan(high) or low <= 0 <= high:
        return UNCLEAR
    return AS_PAPER if (low > 0) == expect_positive else OPPOSITE
