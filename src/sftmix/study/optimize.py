"""``sftmix study optimize``: the best mixture of a study's sources in few runs, by a sequential
design (Bayesian optimisation with BoTorch, the ``optimize`` extra).

The search space is the study's training sources' amounts: whole examples of each source, its
proportions on a grid over the simplex times a few totals up to the budget (the grid's smallest
and largest totals, or ``--budget``), each within its source's training pool. Every
configuration is one multitask run of the study's base config with those amounts. In a DMT study
(paper §3.4) a configuration is a DMT run: its specialised sources' amounts in stage 1, its general
source's in stage 2 with the replayed fraction ``k``, and ``k`` is a dimension of the space too,
over the values the study's runs use (``strategy.k`` in its grid); each stage gets one optimizer
batch (``train.batch_size``) of examples at least (a stage 2 of one ShareGPT conversation, say,
may have no row left to train on once truncated). Its
objective is the weighted held-out loss ``sum_a w_a·L_a / sum_a w_a`` (``L_a``: the mean of the
ability's held-out sources), with optional ``--max-loss`` limits on single abilities.

The loop, one *step* at a time:

1. an initial space-filling design (farthest-point on the candidates, from a seeded start);
2. then, repeatedly: fit a Gaussian process to the objective of every configuration run so far
   (and one per constrained ability), choose the next ``--batch`` configurations among those not
   yet run by noisy expected improvement (``qLogNoisyExpectedImprovement``, constraints weighted
   by their probability), run them through the study machinery (store, locks, executors);
3. until ``--runs`` runs are done, or the largest expected improvement left is below the noise
   the study measures between configurations: the half-width of the paired 95% interval of the
   incumbent minus the runner-up on the same held-out rows (and seeds: with ``--replicates`` the
   seed noise counts too; ``stats.paired_weighted_difference``), or ``--stop-below``.

Each step is written to ``optimize.json`` (``OptimizeLog``) when it is chosen, before its runs
start, and again when they are observed, so a killed optimize resumes the step it was in (its
runs resume as any study run does) and then makes the choices it would have made: every choice
is a function of the seed and the observations alone.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from sftmix import layout
from sftmix.analysis import stats
from sftmix.analysis.lawfit import source_ability
from sftmix.analysis.propose import simplex_grid
from sftmix.analysis.results import Group, group_items
from sftmix.analysis.stats import Interval
from sftmix.config import RunConfig, StudyConfig, validate
from sftmix.data.compose import round_half_up
from sftmix.errors import SftmixError
from sftmix.io import write_json
from sftmix.study.grid import PlannedRun, expand
from sftmix.study.runner import run_study, study_dir
from sftmix.study.store import Store

VERSION = 1
AXIS = "_opt"  # the label axis of an optimize run: its amounts
ONE_STAGE = ("multitask", "individual")
N_BOOT = 1000
MC_SAMPLES = 512


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choice(_Value):
    """One configuration the design chose: its amounts (examples per source), its runs, why it
    was chosen (acquisition value and the surrogate's predicted objective; none for the initial
    design) and, once its runs are done, what was observed (the objective and each ability's loss)."""

    amounts: dict[str, int]
    k: float | None = None  # DMT's replayed fraction (a DMT space only)
    label: str
    run_ids: list[str]
    acquisition: float | None = None
    predicted: Interval | None = None
    observed: Interval | None = None
    by_ability: dict[str, Interval] = {}

    def feasible(self, max_loss: dict[str, float]) -> bool:
        """Every ``--max-loss`` limit met by what was observed."""
        return all(self.by_ability[a].estimate <= v for a, v in max_loss.items())


class Step(_Value):
    """The configurations chosen together, with the stop rule's numbers at that moment and the
    incumbent (the best feasible configuration observed) once they were observed."""

    index: int
    kind: Literal["initial", "acquired"]
    choices: list[Choice]
    expected_improvement: float | None = None
    noise: float | None = None
    incumbent: str | None = None
    incumbent_observed: Interval | None = None


class Settings(_Value):
    """What the user asked for (the command line)."""

    weights: dict[str, float]
    max_loss: dict[str, float] = {}
    budget: int
    runs: int
    batch: int = 1
    initial: int
    replicates: int = 1
    seed: int = 0
    stop_below: float | None = None

    def same_search(self, other: Settings) -> bool:
        """Equal but for ``runs`` (a finished design may be given more runs)."""
        return self.model_dump(exclude={"runs"}) == other.model_dump(exclude={"runs"})


class Space(_Value):
    """The search space: training sources (each with its ability and training pool), the totals,
    which held-out sources measure each ability, and every candidate: its amounts per source and,
    in a DMT space (``general`` set), the index of its ``k`` in ``k`` as the row's last number."""

    sources: list[str]
    abilities: dict[str, str]
    pools: dict[str, int]
    totals: list[int]
    heldout: dict[str, list[str]]
    candidates: list[list[int]]
    general: str | None = None  # DMT: the stage-2 source (the others are stage 1's specialised ones)
    k: list[float] = []  # DMT: the replayed fractions searched

    @property
    def dmt(self) -> bool:
        """Whether a configuration is a DMT run (its last dimension k)."""
        return self.general is not None

    def amounts(self, row: list[int]) -> list[int]:
        """A candidate's amounts, in the order of ``sources``."""
        return list(row[:len(self.sources)])

    def k_of(self, row: list[int]) -> float | None:
        """A candidate's k (DMT), else None."""
        return self.k[row[-1]] if self.dmt else None

    def row(self, c: Choice) -> tuple[int, ...]:
        """The candidate a choice is."""
        amounts = tuple(c.amounts[s] for s in self.sources)
        return (*amounts, self.k.index(c.k)) if self.dmt else amounts

    def features(self, budget: int, rows: list | None = None) -> np.ndarray:
        """Candidates (all, or ``rows``) as the surrogate sees them: ``features`` of the amounts,
        and, where the space has several k, ``k_feature`` of k."""
        R = np.array(self.candidates if rows is None else rows, dtype=float).reshape(-1, len(self.candidates[0]))
        X = features(R[:, :len(self.sources)], budget)
        if len(self.k) > 1:
            X = np.c_[X, k_feature(np.array(self.k)[R[:, -1].astype(int)], self.k)]
        return X


class OptimizeLog(_Value):
    """``optimize.json``: the settings, the space, every step, why the design stopped, and the
    recommendation (the incumbent when it stopped)."""

    version: int = VERSION
    settings: Settings
    space: Space
    steps: list[Step] = []
    stopped: str | None = None
    stop_kind: Literal["runs", "converged", "exhausted"] | None = None
    recommendation: Choice | None = None

    def choices(self) -> list[Choice]:
        """Every configuration chosen so far, in order."""
        return [c for s in self.steps for c in s.choices]

    def runs_used(self) -> int:
        """Runs the chosen configurations take."""
        return sum(len(c.run_ids) for c in self.choices())


def load_log(path: Path) -> OptimizeLog | None:
    """``optimize.json`` as its value; None when there is none; an error naming the file when it is
    not one."""
    if not path.exists():
        return None
    try:
        return OptimizeLog.model_validate_json(path.read_text())
    except (ValidationError, ValueError, OSError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        what = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(e)
        raise SftmixError(f"{path}: not an optimize log ({what}); delete it to start the design afresh") from None


def save_log(path: Path, log: OptimizeLog) -> None:
    """Write the log atomically."""
    write_json(path, log.model_dump(mode="json"))


# ---------------------------------------------------------------- the search space


def _amounts(strategy, pools: dict[str, int]) -> dict[str, int]:
    frac = strategy.fraction
    return {s: round_half_up((frac.get(s, 1.0) if isinstance(frac, dict) else frac) * pools[s]) for s in strategy.used_sources()}


def _dmt_parts(runs: list[PlannedRun], where: str) -> tuple[list[str], str]:
    """A DMT study's specialised sources and general source (every run's the same)."""
    parts = {(tuple(r.config.strategy.specialised), r.config.strategy.general) for r in runs}
    if len(parts) > 1:
        raise SftmixError(f"{where}: optimize searches one DMT design's amounts and k; the study's runs split their sources "
                          f"into stages in {len(parts)} ways ({'; '.join(f'{list(s)} then {g}' for s, g in sorted(parts))})")
    specialised, general = parts.pop()
    return list(specialised), general


def search_space(runs: list[PlannedRun], budget: int | None, where: str) -> tuple[Space, int]:
    """The space of the study's runs (their sources, pools and totals) and the budget (the
    largest total of the study's runs unless given)."""
    from sftmix.train.strategies import training_pools  # loads data pools; a cycle through study.runner otherwise

    names = {"custom stages" if r.config.stages is not None else r.config.strategy.name for r in runs}
    dmt = "dmt" in names
    other = sorted(names - {"dmt"} if dmt else names - set(ONE_STAGE))
    if other:
        raise SftmixError(f"{where}: optimize searches the amounts of a one-stage mixture (multitask), or a DMT design's "
                          f"amounts and k; the study's runs use strategy {', '.join(sorted(names))}")
    general = None
    if dmt:
        specialised, general = _dmt_parts(runs, where)
        sources = [*specialised, general]
    else:
        sources = list(dict.fromkeys(s for r in runs for s in r.config.strategy.used_sources()))
    cfg = runs[0].config
    if "loss" not in cfg.eval.tasks or not cfg.heldout.sources:
        raise SftmixError(f"{where}: optimize minimises held-out loss: the study's runs need `loss` in eval.tasks and their "
                          "sources in heldout.sources")
    multi = validate(RunConfig, {**cfg.model_dump(), "strategy": {"name": "multitask", "sources": sources}}, where)
    loaded = training_pools(multi, sources)
    pools = {s: len(p) for s, p in loaded.items()}
    abilities = {s: p.ability for s, p in loaded.items()}
    totals_tried = [sum(_amounts(r.config.strategy, pools).values()) for r in runs]
    hi = int(budget) if budget is not None else max(totals_tried)
    hi = min(hi, sum(pools.values()))
    lo = min(min(totals_tried), hi)
    totals = sorted({int(round(t)) for t in (np.geomspace(lo, hi, 3) if lo < hi else [hi])})
    heldout: dict[str, list[str]] = {}
    for s in cfg.heldout.sources:
        a = source_ability(abilities, s, cfg.model_dump())
        if a is not None:
            heldout.setdefault(a, []).append(s)
    caps = np.array([pools[s] for s in sources])
    props = simplex_grid(len(sources), 1000) if len(sources) > 1 else np.ones((1, 1))  # one source: one proportion
    cands = np.floor(props[:, None, :] * np.array(totals)[None, :, None] + 0.5).reshape(-1, len(sources))
    cands = cands[(cands <= caps).all(1) & (cands.sum(1) >= 1)]
    ks: list[float] = []
    if dmt:  # both stages train, each on one optimizer batch of examples at least
        least = cfg.train.batch_size
        cands = cands[(cands[:, -1] >= least) & (cands[:, :-1].sum(1) >= least)]
        ks = sorted({float(r.config.strategy.k) for r in runs})
        cands = np.array([[*row, i] for row in cands for i in range(len(ks))]).reshape(-1, len(sources) + 1)
    cands = np.unique(cands, axis=0).astype(int)
    space = Space(sources=sources, abilities=abilities, pools=pools, totals=totals, heldout=heldout,
                  candidates=cands.tolist(), general=general, k=ks)
    if len(space.candidates) < 2:
        raise SftmixError(f"{where}: the search space has {len(space.candidates)} point(s) ({len(sources)} source(s), totals "
                          f"{totals}{f', k {ks}' if dmt else ''}): nothing to choose between; optimize needs several sources "
                          "or totals" + (f" (the study's runs train on whole pools, {hi} examples: give --budget N to search "
                                         "mixtures of N examples)" if totals == [sum(pools.values())] else ""))
    return space, hi


def check_settings(s: Settings, space: Space) -> None:
    """Refuse what cannot work, before anything is written."""
    known = sorted(space.heldout)
    for flag, names in (("--weights", s.weights), ("--max-loss", s.max_loss)):
        for a in names:
            if a not in space.heldout:
                raise SftmixError(f"{flag}: unknown ability {a!r}; abilities with held-out loss in this study: {', '.join(known)}")
    if any(w < 0 or not math.isfinite(w) for w in s.weights.values()) or sum(s.weights.values()) <= 0:
        raise SftmixError(f"--weights: weights must be finite and >= 0 with a positive sum, got {s.weights}")
    for a, v in s.max_loss.items():
        if not math.isfinite(v) or v <= 0:
            raise SftmixError(f"--max-loss {a}={v}: a held-out loss limit is a positive number")
    if s.initial < 1:
        raise SftmixError(f"--initial {s.initial}: the initial design needs at least 1 configuration")
    if s.initial > len(space.candidates):
        raise SftmixError(f"--initial {s.initial}: the search space has only {len(space.candidates)} configurations")
    if s.runs < s.initial * s.replicates:
        raise SftmixError(f"--runs {s.runs}: fewer than the initial design's {s.initial} configuration(s) x {s.replicates} "
                          f"replicate(s) = {s.initial * s.replicates} runs")
    if s.batch < 1:
        raise SftmixError(f"--batch {s.batch}: choose at least 1 configuration at a time")


# ---------------------------------------------------------------- choosing


def initial_design(X: np.ndarray, k: int, seed: int) -> list[int]:
    """``k`` candidates spread over the space: a seeded first one, then each the farthest from
    those chosen (maximin)."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(X)))]
    dist = np.linalg.norm(X - X[chosen[0]], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
    return chosen


@dataclass(frozen=True)
class Pick:
    """A candidate chosen by the acquisition: its index, the acquisition's value (log noisy
    expected improvement) and the surrogate's predictive interval of its objective."""

    index: int
    acquisition: float
    predicted: tuple[float, float, float]


def _gp(X: np.ndarray, y: np.ndarray, seed: int, prior=None):
    """A GP of one ability's loss; ``prior`` (features -> loss, a callable on numpy rows) is its
    prior mean, else a constant."""
    import torch  # heavy: only the design's steps need it
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.manual_seed(seed)
    Y = torch.tensor(y, dtype=torch.float64)[:, None]
    mean = None
    if prior is not None:
        # imported here: BoTorch is an optional extra (optimize) and heavy
        from gpytorch.means import Mean

        mu, sd = float(Y.mean()), float(Y.std().clamp_min(1e-8)) if len(y) > 1 else 1.0

        class PriorMean(Mean):
            """``prior`` in the units the GP models (Standardize's), without parameters of its own."""

            def forward(self, Z):
                flat = prior(Z.detach().reshape(-1, Z.shape[-1]).numpy())
                return (torch.as_tensor(flat, dtype=torch.float64).reshape(Z.shape[:-1]) - mu) / sd

        mean = PriorMean()
    model = SingleTaskGP(torch.tensor(X, dtype=torch.float64), Y, outcome_transform=Standardize(m=1),
                         **({"mean_module": mean} if mean is not None else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch warns about optimiser retries; a failed fit still raises
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


@dataclass(frozen=True)
class Surrogate:
    """One Gaussian process per ability's held-out loss (the objective is their weighted sum: a
    composite objective, each part simpler to model than the sum), with the weights and limits.
    ``weights[j]``: ability j's share of the objective (0 for an ability only constrained);
    ``limits[j]``: its ``--max-loss`` (inf: none)."""

    model: object
    weights: np.ndarray
    limits: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, L: np.ndarray, weights: np.ndarray, limits: np.ndarray, seed: int,
            priors: list | None = None) -> Surrogate:
        """Fit to the observed losses ``L`` (configurations x abilities) at features ``X``;
        ``priors[j]`` (or None): ability j's prior mean as a function of the features."""
        # imported here: BoTorch is an optional extra (optimize) and heavy
        from botorch.models import ModelListGP

        priors = priors or [None] * L.shape[1]
        return cls(ModelListGP(*[_gp(X, L[:, j], seed + j, priors[j]) for j in range(L.shape[1])]), np.asarray(weights, float),
                   np.asarray(limits, float))

    def predict(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The predictive mean and standard deviation of the objective (observation noise included)."""
        # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
        import torch

        with torch.no_grad():
            post = self.model.posterior(torch.tensor(C, dtype=torch.float64), observation_noise=True)
            mu, var = post.mean.numpy(), post.variance.clamp_min(0).numpy()
        return mu @ self.weights, np.sqrt(var @ self.weights ** 2)

    def feasibility(self, C: np.ndarray) -> np.ndarray:
        """The probability that every limit holds at each row of ``C`` (1 without limits)."""
        # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
        import torch
        from scipy.stats import norm

        p = np.ones(len(C))
        constrained = np.isfinite(self.limits)
        if constrained.any():
            with torch.no_grad():
                post = self.model.posterior(torch.tensor(C, dtype=torch.float64))
                mu, sd = post.mean.numpy(), post.variance.clamp_min(1e-18).sqrt().numpy()
            for j in np.nonzero(constrained)[0]:
                p *= norm.cdf((self.limits[j] - mu[:, j]) / sd[:, j])
        return p

    def expected_improvement(self, C: np.ndarray, best: float) -> np.ndarray:
        """The expected improvement of the objective over ``best`` (in its units) at each row of
        ``C``, times the probability that every limit holds there."""
        # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
        import torch
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.acquisition.objective import ScalarizedPosteriorTransform

        ei = LogExpectedImprovement(self.model, best_f=best, maximize=False,
                                    posterior_transform=ScalarizedPosteriorTransform(torch.tensor(self.weights)))
        with torch.no_grad():
            out = ei(torch.tensor(C, dtype=torch.float64)[:, None, :]).exp().numpy()
        return out * self.feasibility(C)

    def acquire(self, X: np.ndarray, C: np.ndarray, taken: set[int], q: int, seed: int) -> list[Pick]:
        """The next ``q`` rows of ``C`` not in ``taken`` by noisy expected improvement of the
        minimised objective over the observed ``X`` (BoTorch's qLogNEI, sequentially greedy within
        the batch, limits through their probability)."""
        # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
        import torch
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.acquisition.objective import GenericMCObjective
        from botorch.optim import optimize_acqf_discrete
        from botorch.sampling import SobolQMCNormalSampler

        free = np.array([i for i in range(len(C)) if i not in taken])
        w = torch.tensor(self.weights)
        constraints = [lambda Z, j=j, v=v: Z[..., j] - v for j, v in enumerate(self.limits) if np.isfinite(v)] or None
        acq = qLogNoisyExpectedImprovement(self.model, torch.tensor(X, dtype=torch.float64),
                                           sampler=SobolQMCNormalSampler(torch.Size([MC_SAMPLES]), seed=seed),
                                           objective=GenericMCObjective(lambda Z, X=None: -(Z @ w)),
                                           constraints=constraints, prune_baseline=False)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picked, values = optimize_acqf_discrete(acq, q=min(q, len(free)), choices=torch.tensor(C[free], dtype=torch.float64))
        out = []
        for row, v in zip(picked.numpy(), values.detach().numpy().reshape(-1)):
            i = int(free[np.argmin(np.abs(C[free] - row).sum(1))])
            mu, sd = self.predict(C[i:i + 1])
            out.append(Pick(i, float(v), (float(mu[0]), float(mu[0] - 1.96 * sd[0]), float(mu[0] + 1.96 * sd[0]))))
        return out


def features(amounts: np.ndarray, budget: int) -> np.ndarray:
    """Amounts as the surrogate sees them: log(1 + D) / log(1 + budget) per source, since held-out
    loss falls about linearly in the log of the data (measured in the replay benchmark: fewer
    runs to the best than amounts over the budget)."""
    return np.log1p(np.asarray(amounts, float)) / np.log1p(budget)


def k_feature(k: np.ndarray, ks: list[float]) -> np.ndarray:
    """DMT's k as the surrogate sees it: log(1 + k/k0) / log(1 + 1/k0), k0 the smallest positive k
    searched, so 0 -> 0, 1 -> 1 and the paper's geometric grid (1/256 ... 1) spreads evenly, while
    a linear grid stays about linear."""
    k0 = min([x for x in ks if x > 0] or [1.0])
    return np.log1p(np.asarray(k, float) / k0) / np.log1p(1 / k0)


def k_text(k: float) -> str:
    """k as the paper writes it (1/256) where it is such a fraction."""
    f = Fraction(k).limit_denominator(1 << 16)
    return str(f) if float(f) == k else f"{k:g}"


# ---------------------------------------------------------------- observing


def objective_parts(store: Store, g: Group, space: Space, s: Settings,
                    cache: dict | None = None) -> tuple[list[tuple[float, stats.Items]], dict]:
    """A configuration's weighted objective as (weight, items) per held-out source, and each
    weighted or constrained ability's held-out sources' items; None for a source not measured
    per item on every run of ``g``. ``cache``: the store's samples per metric, shared by calls
    over many configurations (``results.group_items``)."""
    items = {src: group_items(store, g, f"loss/{src}", cache) for a in {*s.weights, *s.max_loss} for src in space.heldout[a]}
    wsum = sum(s.weights.values())
    parts = [(w / wsum / len(space.heldout[a]), items[src]) for a, w in s.weights.items() if w > 0 for src in space.heldout[a]]
    return parts, {a: [items[src] for src in space.heldout[a]] for a in {*s.weights, *s.max_loss}}


def _interval(parts: list[tuple[float, stats.Items]], seed: int) -> Interval:
    est, lo, hi = stats.weighted_interval(parts, N_BOOT, seed)
    return Interval(estimate=est, low=lo, high=hi)


def observe(store: Store, run_ids: list[str], space: Space, s: Settings) -> tuple[Interval, dict[str, Interval]]:
    """A configuration's weighted held-out loss and each weighted or constrained ability's loss,
    with 95% intervals (items and seeds bootstrapped)."""
    rows = {r.id: r for r in store.runs()}
    missing = [rid for rid in run_ids if rid not in rows or rows[rid].status != "done"]
    if missing:
        r = rows.get(missing[0])
        raise SftmixError(f"optimize: run {missing[0]} is {r.status if r else 'not recorded'}"
                          + (f": {r.first_error_line[:300]}" if r and r.error else "")
                          + "; run `sftmix study optimize` again to retry it")
    g = Group(rows[run_ids[0]].label, {}, {}, [rows[rid] for rid in run_ids])
    parts, by = objective_parts(store, g, space, s)
    for a, xs in by.items():
        if any(x is None or not x.items for x in xs):
            raise SftmixError(f"optimize: run {run_ids[0]} has no per-item held-out loss of ability {a} "
                              f"({', '.join(space.heldout[a])})")
    return _interval(parts, s.seed), {a: _interval([(1.0, x) for x in xs], s.seed) for a, xs in sorted(by.items())}


NOISE = "the half-width of the paired 95% interval between the incumbent and the runner-up on the same held-out rows"


def resolution(store: Store, log: OptimizeLog) -> float | None:
    """The noise the study measures between configurations: the half-width of the paired 95%
    interval of the incumbent's weighted loss minus the runner-up's, on the same held-out rows
    (and seeds, where they share them: replicates then count too). None before two feasible
    configurations are observed."""
    seen = sorted((c for c in log.choices() if c.observed is not None and c.feasible(log.settings.max_loss)),
                  key=lambda c: c.observed.estimate)
    if len(seen) < 2:
        return None
    rows = {r.id: r for r in store.runs()}
    cache: dict = {}
    a, b = (objective_parts(store, Group(c.label, {}, {}, [rows[rid] for rid in c.run_ids]), log.space, log.settings, cache)[0]
            for c in seen[:2])
    _, _, _, lo, hi = stats.paired_weighted_difference([(w, x, y) for (w, x), (_, y) in zip(a, b)], N_BOOT, log.settings.seed)
    return (hi - lo) / 2


def incumbent(choices: list[Choice], max_loss: dict[str, float]) -> Choice | None:
    """The best feasible observed configuration (the first of equals)."""
    seen = [c for c in choices if c.observed is not None and c.feasible(max_loss)]
    return min(seen, key=lambda c: c.observed.estimate) if seen else None


# ---------------------------------------------------------------- the loop


def label(space: Space, row: list[int]) -> str:
    """A configuration's label: its amounts per source, and its k in a DMT space."""
    text = ",".join(f"{s}:{n}" for s, n in zip(space.sources, space.amounts(row)))
    return f"{text},k:{k_text(space.k_of(row))}" if space.dmt else text


def _strategy(space: Space, c: Choice) -> dict:
    """The strategy a choice runs: multitask over its sources at their amounts, or DMT with its k."""
    # in the space's order of sources, never the log's (its keys come back sorted): the order is part of the run id
    used = [s for s in space.sources if c.amounts[s] > 0]
    fraction = {s: f"{c.amounts[s]}/{space.pools[s]}" for s in used}
    if space.dmt:
        return {"name": "dmt", "specialised": [s for s in used if s != space.general], "general": space.general, "k": c.k,
                "fraction": fraction}
    return {"name": "multitask", "sources": used, "fraction": fraction}


def fixed_axes(study: StudyConfig, profile: str | None, where: str) -> dict[str, list]:
    """The study's grid and zip axes other than the mixture, the seed and labels, each of which
    must hold one value (kept, as a one-value axis, in every run optimize makes); an axis with
    several values is an error: optimize searches one setting's mixture."""
    prof = study.profiles.get(profile or "", {})
    grid = {**study.grid, **prof.get("grid", {})}
    zips = prof.get("zip") or study.zip
    fixed = {}
    for k, vals in [*grid.items(), *zips.items()]:
        if k.startswith(("strategy", "_")) or k == "seed":
            continue
        distinct = {repr(v) for v in vals}
        if len(distinct) > 1:
            raise SftmixError(f"{where}: optimize searches one setting's mixture; the study varies {k!r} over {len(distinct)} "
                              "values (make a study, or a profile, with one)")
        fixed[k] = [vals[0]]
    return fixed


def _study_of(study: StudyConfig, profile: str | None, choices: list[Choice], space: Space, replicates: int,
              where: str) -> tuple[StudyConfig, list[PlannedRun]]:
    """The study that runs ``choices``: the base config (the profile's), one configuration per
    choice (multitask over its sources, each at its amount), ``replicates`` seeds each."""
    z = {AXIS: [c.label for c in choices], "strategy": [_strategy(space, c) for c in choices]}
    prof = {k: v for k, v in study.profiles.get(profile or "", {}).items() if k not in ("grid", "zip")}
    fixed = fixed_axes(study, profile, where)
    profiles = {**study.profiles, profile: {**prof, "zip": z, "grid": fixed}} if profile else study.profiles
    derived = study.model_copy(update={"grid": fixed, "zip": z, "profiles": profiles, "replicates": replicates,
                                       "compare": [], "predictions": []})
    runs = expand(derived, profile, where=where, decided=dict(study._fallback_decisions or {}))
    derived._fallback_decisions = study._fallback_decisions
    return derived, runs


def _new_step(log: OptimizeLog, picks: list[tuple[int, Pick | None]], kind: str, study, profile, where,
              ei: float | None = None, noise: float | None = None) -> Step:
    space, s = log.space, log.settings
    choices = []
    for i, p in picks:
        row = space.candidates[i]
        choices.append(Choice(amounts=dict(zip(space.sources, space.amounts(row))), k=space.k_of(row), label=label(space, row),
                              run_ids=[],
                              acquisition=p.acquisition if p else None,
                              predicted=Interval(estimate=p.predicted[0], low=p.predicted[1], high=p.predicted[2]) if p else None))
    _, runs = _study_of(study, profile, choices, space, s.replicates, where)
    by_label: dict[str, list[str]] = {}
    for r in runs:
        by_label.setdefault(r.point[AXIS], []).append(r.id)
    for c in choices:
        c.run_ids = by_label[c.label]
    return Step(index=len(log.steps), kind=kind, choices=choices, expected_improvement=ei, noise=noise)


def outputs(s: Settings) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The abilities the surrogate models (weighted, then only constrained), each one's share of
    the objective and its limit (inf: none)."""
    names = list(dict.fromkeys([*s.weights, *s.max_loss]))
    wsum = sum(s.weights.values())
    return (names, np.array([s.weights.get(a, 0.0) / wsum for a in names]),
            np.array([s.max_loss.get(a, np.inf) for a in names]))


def _observations(log: OptimizeLog) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """The observed configurations' features and losses (configurations x ``outputs``), and the
    candidates already chosen."""
    space, s = log.space, log.settings
    index = {tuple(c): i for i, c in enumerate(space.candidates)}
    done = [c for c in log.choices() if c.observed is not None]
    names, _, _ = outputs(s)
    X = space.features(s.budget, [space.row(c) for c in done])
    L = np.array([[c.by_ability[a].estimate for a in names] for c in done])
    taken = {index[space.row(c)] for c in log.choices()}
    return X, L, taken


def dimensions(space: Space) -> int:
    """The space's dimensions: the simplex's (sources - 1), the total, and k where several are searched."""
    return len(space.sources) + (len(space.k) > 1)


def design(study: StudyConfig, profile: str | None, runs: list[PlannedRun], where: str, weights: dict[str, float],
           runs_max: int, max_loss: dict[str, float] | None = None,
           budget: int | None = None, batch: int = 1, initial: int | None = None, replicates: int = 1, seed: int = 0,
           stop_below: float | None = None) -> tuple[Settings, Space]:
    """The settings (defaults filled in: the budget, an initial design of dimensions + 1) and the
    search space of a design over the study's ``runs``, checked before anything is written."""
    fixed_axes(study, profile, where)
    space, used = search_space(runs, budget, where)
    s = Settings(weights=weights, max_loss=max_loss or {}, budget=used, runs=runs_max, batch=batch,
                 initial=initial if initial is not None else dimensions(space) + 1, replicates=replicates, seed=seed,
                 stop_below=stop_below)
    check_settings(s, space)
    return s, space


def optimize(study: StudyConfig, profile: str | None, settings: Settings, space: Space, where: str, progress: bool = True,
             executor: str | None = None, address: str | None = None) -> OptimizeLog:
    """Run (or resume) the sequential design; return its log (also in ``optimize.json``)."""
    out = study_dir(study, profile)
    path = layout.optimize_file(out)
    log = load_log(path)
    if log is None:
        log = OptimizeLog(settings=settings, space=space)
    else:
        if not log.settings.same_search(settings) or log.space != space:
            what = "the study's search space" if log.space != space else "other settings"
            raise SftmixError(f"{path}: the design there was made with {what} ({log.settings.model_dump(exclude={'runs'})}); "
                              "give the same settings to resume it, or delete the file to start afresh")
        if log.stop_kind == "runs" and settings.runs > log.settings.runs:
            log.stopped = log.stop_kind = None
        log.settings = settings
    X_all = space.features(settings.budget)
    while True:
        pending = [c for c in log.choices() if c.observed is None]
        if pending:
            store = _run(study, profile, pending, space, settings, where, progress, executor, address)
            for c in pending:
                c.observed, c.by_ability = observe(store, c.run_ids, space, settings)
            for st in log.steps:
                if any(c in pending for c in st.choices):
                    inc = incumbent([c for t in log.steps[:st.index + 1] for c in t.choices], settings.max_loss)
                    st.incumbent, st.incumbent_observed = (inc.label, inc.observed) if inc else (None, None)
            save_log(path, log)
            _say(log, progress)
            continue
        if log.stopped:
            break
        used = log.runs_used()
        room = (settings.runs - used) // settings.replicates
        if not log.steps:
            log.steps.append(_new_step(log, [(i, None) for i in initial_design(X_all, settings.initial, settings.seed)],
                                       "initial", study, profile, where))
            save_log(path, log)
            continue
        X, L, taken = _observations(log)
        if room < 1:
            log.stopped, log.stop_kind = f"{used} runs done (--runs {settings.runs})", "runs"
        elif len(taken) >= len(space.candidates):
            log.stopped, log.stop_kind = "every configuration of the space was run", "exhausted"
        else:
            seed = settings.seed * 7919 + len(log.steps)
            names, weights, limits = outputs(settings)
            model = Surrogate.fit(X, L, weights, limits, seed)
            inc = incumbent(log.choices(), settings.max_loss)
            if inc is None and settings.max_loss:
                p = model.feasibility(X_all)
                if p.max() < 1e-3:
                    worst = ", ".join(f"{a}: lowest observed {L[:, names.index(a)].min():.4g} (asked <= {v:g})"
                                      for a, v in settings.max_loss.items())
                    raise SftmixError(f"--max-loss: no configuration of the space is likely to meet the limits ({worst}; "
                                      f"the most likely one has probability {p.max():.2g}); loosen --max-loss")
            free = [i for i in range(len(X_all)) if i not in taken]
            ei = float(model.expected_improvement(X_all[free], inc.observed.estimate).max()) if inc else math.inf
            noise = settings.stop_below if settings.stop_below is not None else resolution(Store(layout.store(out)), log)
            if noise is not None and ei < noise:
                why = "--stop-below" if settings.stop_below is not None else NOISE
                log.stopped, log.stop_kind = (f"the largest expected improvement left, {ei:.3g}, is below the noise {noise:.3g} "
                                              f"({why})"), "converged"
            else:
                picks = model.acquire(X, X_all, taken, min(settings.batch, room), seed)
                log.steps.append(_new_step(log, [(p.index, p) for p in picks], "acquired", study, profile, where,
                                           ei if math.isfinite(ei) else None, noise))
        if log.stopped:
            inc = incumbent(log.choices(), settings.max_loss)
            log.recommendation = inc.model_copy(deep=True) if inc else None
        save_log(path, log)
    return log


def _run(study, profile, pending: list[Choice], space: Space, s: Settings, where: str, progress: bool, executor, address) -> Store:
    derived, runs = _study_of(study, profile, pending, space, s.replicates, where)
    out = study_dir(study, profile)
    store = Store(layout.store(out)) if layout.store(out).exists() else None
    todo = [r for r in runs if store is None or store.status(r.id) != "done"]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        store = run_study(derived, todo, profile, progress=progress, executor=executor, address=address)
    return store


def _say(log: OptimizeLog, progress: bool) -> None:
    if not progress:
        return
    st = log.steps[-1] if log.steps else None
    for c in (st.choices if st else []):
        if c.observed is not None:
            pred = f" (predicted {c.predicted.estimate:.4f} [{c.predicted.low:.4f}, {c.predicted.high:.4f}])" if c.predicted else ""
            print(f"  step {st.index} {c.label}: weighted loss {c.observed.estimate:.4f} [{c.observed.low:.4f}, "
                  f"{c.observed.high:.4f}]{pred}", flush=True)
    if st and st.incumbent:
        print(f"  incumbent after {log.runs_used()} runs: {st.incumbent} {st.incumbent_observed.estimate:.4f}", flush=True)
