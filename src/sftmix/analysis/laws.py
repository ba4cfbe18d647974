"""Scaling and mixture laws: fitted per held-out loss to a study's configurations, with bootstrap
intervals and validation on configurations the fit did not see.

A configuration's features are the amounts ``D`` of each ability's data it trained on (all
stages together; examples, or tokens scaled to examples), their total ``N = sum(D)`` and the
proportions ``r = D / N``. For the held-out loss of an ability ``a``:

- ``amount``:  L = E + B·(1 + D_a)^(-alpha)                       (the fine-tuning scaling law; the
  1 keeps an untrained ability finite: E + B is about the base model's loss)
- ``mixture``: L = c + exp(b + sum_j t_j·r_j)                     (Ye et al. 2024, Data Mixing Laws;
  the proportions sum to 1, so one t is redundant with b: the last ability's t is fixed at 0)
- ``joint``:   L = c + exp(b + sum_j t_j·r_j)·N^(-beta)           (the mixing law nested in an amount
  law over the total, separable in proportion and amount as BiMix is: at a fixed N it is the
  mixing law, at fixed proportions an amount law in N)
- baselines: ``constant`` (the mean of the configurations) and ``loglinear``
  (L = w_0 + sum_j w_j·log(1 + D_j), a linear regression on log amounts).

Fitting: bounded least squares (scipy ``least_squares``) with a robust soft-L1 loss scaled to
the measurement noise, from several starts. Intervals: the estimates are redrawn as the report's
bootstrap draws them (items and seeds resampled; one item draw shared by every configuration,
since they are measured on the same rows), the law refitted on each draw.

Validation: leave one configuration out, fit on the others, predict it. A law *fits* only if its
leave-one-out error beats the constant's; the best such law is selected. A prediction at a new
configuration has two intervals: the law's band (the bootstrap refits) and a prediction interval
for the estimate one would observe there (jackknife+ over the leave-one-out fits: the law's
misfit and a configuration's noise as the study saw them, on the same held-out rows); the
prediction interval's coverage over left-out configurations is reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from sftmix.analysis.stats import percentile_interval


def _features(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amounts (configurations x abilities), their totals N and proportions r."""
    X = np.atleast_2d(X)
    N = X.sum(1)
    return X, N, X / np.where(N > 0, N, 1)[:, None]


def _distinct_proportions(X: np.ndarray) -> int:
    _, _, r = _features(X)
    return len({tuple(x) for x in np.round(r, 6)})


@dataclass(frozen=True)
class Law:
    """A law as a value: its name, formula, parameters, bounds, starting points, prediction and
    Jacobian, and what a design needs to determine it. Fitting, validation and prediction are
    functions over laws (below): a new law is one new value (and a test)."""

    name: str
    formula: str
    params: Callable[[list[str]], list[str]]  # abilities -> parameter names
    value: Callable[..., np.ndarray]  # (theta, X, N, r, a) -> predicted loss per configuration
    jac: Callable[..., np.ndarray]  # (theta, X, N, r, a) -> d prediction / d theta
    bounds_of: Callable[[int], tuple[list, list]]  # number of abilities -> (lower, upper)
    needs: Callable[[np.ndarray, int], str | None]  # (X, a) -> why the design cannot determine it
    starts_of: Callable[..., list[np.ndarray]]  # (X, y, a, rng) -> initial parameters
    linear: bool = False  # least squares in closed form (its starts are the solution)

    def param_names(self, abilities: list[str], a: int) -> list[str]:
        """The names of the law's parameters for these abilities (``a``: the target ability's index)."""
        return self.params(abilities)

    def n_params(self, m: int) -> int:
        """How many parameters the law has over ``m`` abilities."""
        return len(self.params([str(j) for j in range(m)]))

    def min_configs(self, m: int) -> int:
        """Configurations needed: one more than the parameters, so that every leave-one-out fit is
        determined."""
        return self.n_params(m) + 1

    def predict(self, theta: np.ndarray, X: np.ndarray, a: int) -> np.ndarray:
        """Predicted loss for the rows of ``X`` (configurations x abilities, amounts)."""
        X, N, r = _features(X)
        return self.value(theta, X, N, r, a)

    def jacobian(self, theta: np.ndarray, X: np.ndarray, a: int) -> np.ndarray:
        """d prediction / d parameters, (configurations x parameters): analytic, so a fit costs a
        few evaluations instead of one per parameter per step."""
        X, N, r = _features(X)
        return self.jac(theta, X, N, r, a)

    def bounds(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper parameter bounds over ``m`` abilities, as arrays for the optimiser."""
        lo, hi = self.bounds_of(m)
        return np.array(lo, float), np.array(hi, float)

    def cannot(self, X: np.ndarray, a: int) -> str | None:
        """Why the design cannot determine this law (None when it can)."""
        return self.needs(X, a)

    def starts(self, X: np.ndarray, y: np.ndarray, a: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Initial parameters for the multi-start fit."""
        return self.starts_of(X, y, a, rng)


BIG = 30.0


def _spread(y: np.ndarray) -> tuple[float, float]:
    return float(np.min(y)), float(np.ptp(y)) or max(abs(float(np.mean(y))) * 0.1, 1e-3)


def _exp_sum(theta_b: float, t, r: np.ndarray, extra: np.ndarray | float = 0.0) -> np.ndarray:
    return np.exp(np.clip(theta_b + r[:, :-1] @ np.asarray(t) + extra, -50, 50))


# ---- amount: L = E + B·(1 + D_a)^(-alpha)

def _amount_value(theta, X, N, r, a):
    E, logb, alpha = theta
    return E + np.exp(logb) * (1.0 + X[:, a]) ** (-alpha)


def _amount_jac(theta, X, N, r, a):
    _, logb, alpha = theta
    term = np.exp(logb) * (1.0 + X[:, a]) ** (-alpha)
    return np.c_[np.ones(len(X)), term, -term * np.log1p(X[:, a])]


def _amount_starts(X, y, a, rng):
    """A grid over the exponent and the floor, B so that the curve spans the data at the smallest amount."""
    lo_y, spread = _spread(y)
    out = []
    for alpha in (0.1, 0.3, 0.6, 1.0, 2.0):
        for E in (max(lo_y - spread, 0.0), max(lo_y - 0.1 * spread, 0.0)):
            top = float(np.max(y)) - E
            x0 = float(np.min(X[:, a]))
            out.append(np.array([E, math.log(max(top, 1e-6)) + alpha * math.log1p(x0), alpha]))
    return out


def _amount_needs(X, a):
    return "the study has fewer than 3 distinct amounts of this ability's data" if len(set(np.round(X[:, a], 6))) < 3 else None


# ---- mixture: L = c + exp(b + sum_j t_j·r_j)

def _mixture_value(theta, X, N, r, a):
    c, b, *t = theta
    return c + _exp_sum(b, t, r)


def _mixture_jac(theta, X, N, r, a):
    c, b, *t = theta
    e = _exp_sum(b, t, r)
    return np.c_[np.ones(len(X)), e, e[:, None] * r[:, :-1]]


def _proportion_starts(X, y, rng, with_beta: bool):
    """A few random directions for the mixture weights, the level matched to the data (and,
    for the joint law, a grid over beta)."""
    m = X.shape[1]
    lo_y, spread = _spread(y)
    out = []
    for t in [np.zeros(m - 1)] + [rng.normal(0, 2, m - 1) for _ in range(5)]:
        for frac in (0.5, 0.9):
            c = max(lo_y - frac * spread, 0.0)
            if not with_beta:
                out.append(np.array([c, math.log(max(float(np.mean(y)) - c, 1e-6)), *t]))
            else:
                for beta in (0.2, 0.6):
                    nbar = float(np.exp(np.mean(np.log(np.maximum(X.sum(1), 1.0)))))
                    out.append(np.array([c, math.log(max(float(np.mean(y)) - c, 1e-6)) + beta * math.log(nbar), beta, *t]))
    return out


def _mixture_needs(X, a):
    return "the study has fewer than 3 distinct proportions" if _distinct_proportions(X) < 3 else None


# ---- joint: L = c + exp(b + sum_j t_j·r_j)·N^(-beta)

def _joint_value(theta, X, N, r, a):
    c, b, beta, *t = theta
    return c + _exp_sum(b, t, r, -beta * np.log(np.maximum(N, 1.0)))


def _joint_jac(theta, X, N, r, a):
    c, b, beta, *t = theta
    logn = np.log(np.maximum(N, 1.0))
    e = _exp_sum(b, t, r, -beta * logn)
    return np.c_[np.ones(len(X)), e, -e * logn, e[:, None] * r[:, :-1]]


def _joint_needs(X, a):
    if _distinct_proportions(X) < 3:
        return "the study has fewer than 3 distinct proportions"
    if len(set(np.round(X.sum(1), 6))) < 2:
        return "the study trains every configuration on the same total amount (the joint law needs 2 or more)"
    return None


# ---- loglinear (a baseline): L = w_0 + sum_j w_j·log(1 + D_j), a linear regression on log amounts

def _loglinear_design(X):
    return np.c_[np.ones(len(X)), np.log1p(X)]


def _loglinear_value(theta, X, N, r, a):
    w0, *w = theta
    return w0 + np.log1p(X) @ np.asarray(w)


def _loglinear_needs(X, a):
    return ("the amounts of the abilities are collinear in this design"
            if np.linalg.matrix_rank(_loglinear_design(X)) < 1 + X.shape[1] else None)


def _ts(abilities):
    return [f"t_{x}" for x in abilities[:-1]]


LAWS = {law.name: law for law in (
    Law("amount", "L = E + B·(1 + D_a)^(-alpha)", lambda ab: ["E", "log_B", "alpha"], _amount_value, _amount_jac,
        lambda m: ([0, -BIG, 0], [BIG, BIG, 4]), _amount_needs, _amount_starts),
    Law("mixture", "L = c + exp(b + Σ_j t_j·r_j)", lambda ab: ["c", "b", *_ts(ab)], _mixture_value, _mixture_jac,
        lambda m: ([0, -BIG] + [-BIG] * (m - 1), [BIG, 10] + [BIG] * (m - 1)), _mixture_needs,
        lambda X, y, a, rng: _proportion_starts(X, y, rng, with_beta=False)),
    Law("joint", "L = c + exp(b + Σ_j t_j·r_j)·N^(-beta)", lambda ab: ["c", "b", "beta", *_ts(ab)], _joint_value, _joint_jac,
        lambda m: ([0, -BIG, 0] + [-BIG] * (m - 1), [BIG, 10, 4] + [BIG] * (m - 1)), _joint_needs,
        lambda X, y, a, rng: _proportion_starts(X, y, rng, with_beta=True)),
)}
BASELINES = {"loglinear": Law("loglinear", "L = w_0 + Σ_j w_j·log(1 + D_j)", lambda ab: ["w_0", *[f"w_{x}" for x in ab]],
                              _loglinear_value, lambda theta, X, N, r, a: _loglinear_design(X),
                              lambda m: ([-np.inf] * (1 + m), [np.inf] * (1 + m)), _loglinear_needs,
                              lambda X, y, a, rng: [np.linalg.lstsq(_loglinear_design(X), y, rcond=None)[0]], linear=True)}
CANDIDATES = {**LAWS, **BASELINES}


def _clip_into(x0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = np.where(np.isfinite(hi - lo), (hi - lo) * 1e-6, 1e-6)
    return np.clip(x0, lo + span, hi - span)


def fit(law: Law, X: np.ndarray, y: np.ndarray, a: int, scale: float, starts: list[np.ndarray]) -> np.ndarray:
    """The law's parameters minimising a soft-L1 loss (scale ``scale``) of the residuals, best
    of the given starts."""
    if law.linear:  # closed form (robustness adds nothing with few points): its one start is the solution
        return law.starts(X, y, a, np.random.default_rng(0))[0]
    lo, hi = law.bounds(X.shape[1])
    best, best_cost = None, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for x0 in starts:
            try:
                r = least_squares(lambda th: law.predict(th, X, a) - y, _clip_into(np.asarray(x0, float), lo, hi),
                                  jac=lambda th: law.jacobian(th, X, a), bounds=(lo, hi), loss="soft_l1", f_scale=scale,
                                  max_nfev=200, x_scale="jac")
            except ValueError:
                continue
            if np.isfinite(r.cost) and r.cost < best_cost:
                best, best_cost = r.x, r.cost
    if best is None:
        raise RuntimeError(f"the {law.name} law could not be fitted from any start")
    return best


@dataclass
class Target:
    """One held-out loss to model: its name (``loss/<source>``), ability index, the observed
    estimate per configuration, the bootstrap draws of those estimates (n_boot x configs) and
    each configuration's observed interval."""

    name: str
    ability: str
    a: int
    y: np.ndarray
    draws: np.ndarray
    low: np.ndarray = field(default=None)
    high: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.low is None:
            self.low, self.high = percentile_interval(self.draws, axis=0)

    @property
    def noise(self) -> float:
        """The typical measurement noise of one configuration (median bootstrap sd)."""
        sd = float(np.median(np.std(self.draws, axis=0))) if self.draws.size else 0.0
        # floored: exact data (no noise) would otherwise scale the robust loss to rounding error
        return max(sd, 1e-4 * float(np.mean(np.abs(self.y))), 1e-9)


def _fit_many(law: Law, X, y, a, scale, rng) -> np.ndarray:
    return fit(law, X, y, a, scale, law.starts(X, y, a, rng))


def bootstrap(law: Law, X: np.ndarray, t: Target, theta: np.ndarray) -> np.ndarray:
    """Parameters refitted on every bootstrap draw of the estimates (warm-started at ``theta``):
    (n_boot, params)."""
    out = np.empty((len(t.draws), len(theta)))
    for i, yb in enumerate(t.draws):
        out[i] = fit(law, X, yb, t.a, t.noise, [theta])
    return out


def jackknife_interval(preds: np.ndarray, residuals: np.ndarray) -> tuple[float, float]:
    """A prediction interval from leave-one-out fits (jackknife+ with signed residuals): each
    left-out fit's prediction at the new point plus that fit's error on the configuration it
    left out; the 2.5% and 97.5% quantiles of those values. It carries the law's misfit and a
    configuration's measurement noise as the study saw them (same held-out rows)."""
    v = preds + residuals
    lo, hi = percentile_interval(v)
    return float(lo), float(hi)


def _errors(pred: np.ndarray, y: np.ndarray) -> dict:
    err = pred - y
    out = {"mae": float(np.mean(np.abs(err))), "mre": float(np.mean(np.abs(err) / np.abs(y))),
           "r2": float(1 - np.sum(err ** 2) / np.sum((y - y.mean()) ** 2)) if np.ptp(y) > 0 else float("nan")}
    if len(y) > 2 and np.ptp(pred) > 0 and np.ptp(y) > 0:
        out["spearman"] = float(spearmanr(pred, y).statistic)
    else:
        out["spearman"] = float("nan")
    return out


def _loo_fits(law: Law | None, X: np.ndarray, y: np.ndarray, a: int, scale: float, theta: np.ndarray | None,
              rng: np.random.Generator, cols: np.ndarray, extra: int = 3) -> tuple[list, np.ndarray]:
    """Fits leaving out each configuration of ``cols`` in turn (the others of ``cols`` kept):
    their parameters and their predictions at the configuration left out."""
    thetas, pred = [], np.empty(len(cols))
    for k, g in enumerate(cols):
        keep = cols[cols != g]
        if law is None:
            th = np.array([y[keep].mean()])
            pred[k] = th[0]
        else:
            starts = ([theta] if theta is not None else []) + (law.starts(X[keep], y[keep], a, rng)[:extra] if extra else [])
            th = fit(law, X[keep], y[keep], a, scale, starts)
            pred[k] = law.predict(th, X[g][None, :], a)[0]
        thetas.append(th)
    return thetas, pred


def predict_loo(law: Law | None, thetas: list, X: np.ndarray, a: int) -> np.ndarray:
    """Each leave-one-out fit's prediction at the rows of ``X``: (fits, rows)."""
    if law is None:
        return np.array([[th[0]] * len(X) for th in thetas])
    return np.array([law.predict(th, X, a) for th in thetas])


def loo(law: Law | None, X: np.ndarray, t: Target, theta: np.ndarray | None, rng: np.random.Generator,
        intervals: bool = True) -> Loo:
    """Leave one configuration out: fit on the others, predict it. ``law`` None is the constant
    baseline. The left-out fits and their errors are kept (they give new configurations their
    prediction intervals, ``jackknife_interval``). With ``intervals``, ``add_coverage``."""
    n = len(t.y)
    thetas, pred = _loo_fits(law, X, t.y, t.a, t.noise, theta, rng, np.arange(n))
    out = Loo(**_errors(pred, t.y), predicted=pred.tolist(), pred_low=[float("nan")] * n, pred_high=[float("nan")] * n,
              thetas=[np.asarray(th).tolist() for th in thetas], residuals=(t.y - pred).tolist())
    if intervals:
        add_coverage(out, law, X, t, rng)
    return out


def add_coverage(res: Loo, law: Law | None, X: np.ndarray, t: Target, rng: np.random.Generator) -> None:
    """To a leave-one-out result: each configuration's prediction interval built from the other
    configurations alone (leaving out two at a time, warm-started at that configuration's
    leave-one-out fit), and the share of configurations inside theirs."""
    n = len(t.y)
    if n < 3:
        return
    allc = np.arange(n)
    lo, hi = np.full(n, np.nan), np.full(n, np.nan)
    for g in range(n):
        keep = allc[allc != g]
        th2, p2 = _loo_fits(law, X, t.y, t.a, t.noise, np.array(res.thetas[g]), rng, keep, extra=0)
        at_g = predict_loo(law, th2, X[g][None, :], t.a)[:, 0]
        lo[g], hi[g] = jackknife_interval(at_g, t.y[keep] - p2)
    res.pred_low, res.pred_high = lo.tolist(), hi.tolist()
    res.coverage = float(np.mean((t.y >= lo) & (t.y <= hi)))


def extrapolation(law: Law | None, X: np.ndarray, t: Target, rng: np.random.Generator, need: int) -> Extrapolation | None:
    """Fit without the configurations at the largest amount of the target's ability, predict
    them; None when fewer than ``need`` configurations would remain."""
    top = X[:, t.a].max()
    held = np.where(np.isclose(X[:, t.a], top))[0]
    keep = np.where(~np.isclose(X[:, t.a], top))[0]
    if len(keep) < need or not len(held):
        return None
    if law is None:
        pred = np.full(len(held), t.y[keep].mean())
    else:
        th = _fit_many(law, X[keep], t.y[keep], t.a, t.noise, rng)
        pred = law.predict(th, X[held], t.a)
    err = pred - t.y[held]
    return Extrapolation(held_out_amount=float(top), configurations=held.tolist(), predicted=pred.tolist(),
                         mae=float(np.mean(np.abs(err))), mre=float(np.mean(np.abs(err) / np.abs(t.y[held]))))


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Loo(_Value):
    """Leave one configuration out, fit on the others, predict it: the errors over configurations,
    each configuration's prediction (and, with coverage measured, its predictive interval), the
    left-out fits' parameters and their errors (which give new configurations their intervals)."""

    mae: float
    mre: float
    r2: float
    spearman: float
    predicted: list[float]
    pred_low: list[float]
    pred_high: list[float]
    thetas: list[list[float]]
    residuals: list[float]
    coverage: float | None = None


class Extrapolation(_Value):
    """Fitted without the configurations at the target ability's largest amount, predicting them."""

    held_out_amount: float
    configurations: list[int]
    predicted: list[float]
    mae: float
    mre: float


class LawFit(_Value):
    """One candidate law on one held-out loss: fitted (parameters with 95% intervals, bootstrap
    draws, validation) or not (``why``)."""

    formula: str
    status: Literal["fitted", "not fitted"]
    min_configs: int
    why: str | None = None
    theta: list[float] = []
    param_names: list[str] = []
    fitted: list[float] = []
    loo: Loo | None = None
    extrapolation: Extrapolation | None = None
    params: dict[str, tuple[float, float, float]] = {}
    fitted_low: list[float] = []
    fitted_high: list[float] = []
    draws: list[list[float]] = []

    def predict(self, law_name: str, X: np.ndarray, a: int) -> np.ndarray:
        """The fitted law at the rows of ``X``."""
        return CANDIDATES[law_name].predict(np.array(self.theta), X, a)


class ConstantFit(_Value):
    """The constant baseline (the mean of the configurations) and its validation."""

    formula: str
    params: dict[str, float]
    loo: Loo
    extrapolation: Extrapolation | None = None


class TargetFit(_Value):
    """Every candidate law fitted to one held-out loss, the constant beside them, the selection
    (``selected`` None: no law fits) and why, and what was observed per configuration."""

    ability: str
    noise: float
    constant: ConstantFit
    laws: dict[str, LawFit]
    selected: str | None
    why: str
    observed: list[float]
    observed_low: list[float]
    observed_high: list[float]

    @property
    def law(self) -> LawFit | None:
        """The selected law's fit (None: no law fits)."""
        return self.laws[self.selected] if self.selected else None

    def fitted_laws(self) -> dict[str, LawFit]:
        """The laws that could be fitted."""
        return {n: d for n, d in self.laws.items() if d.status == "fitted"}


class Prediction(_Value):
    """A law's prediction at a configuration: the estimate, the law's 95% band (bootstrap refits)
    and the 95% interval for an estimate observed there (``low``, ``high``)."""

    estimate: float
    law_low: float
    law_high: float
    low: float
    high: float
    law: str = ""


@dataclass(frozen=True)
class PredictionDraws:
    """A prediction with the values its intervals come from, to combine predictions draw by draw:
    ``band`` (one per bootstrap refit) and ``values`` (one per left-out fit, jackknife+)."""

    prediction: Prediction
    band: np.ndarray
    values: np.ndarray


def fit_target(X: np.ndarray, abilities: list[str], t: Target, seed: int = 0, loo_intervals: bool = True,
               laws: dict[str, Law] | None = None) -> TargetFit:
    """Every candidate law on one held-out loss: parameters with bootstrap intervals, leave-one-out
    and extrapolation validation, and the selection (``selected`` None: no law fits).

    Each fitted law keeps its bootstrap parameters (``draws``) and its leave-one-out fits
    (``loo``) for predictions at new configurations; the selected one (or the constant, when none
    fits) also gets its prediction intervals' coverage."""
    rng = np.random.default_rng(seed)
    laws = CANDIDATES if laws is None else laws
    m = X.shape[1]
    constant = ConstantFit(formula="L = mean of the configurations", params={"mean": float(t.y.mean())},
                           loo=loo(None, X, t, None, rng, False), extrapolation=extrapolation(None, X, t, rng, 1))
    fits: dict[str, LawFit] = {}
    for name, law in laws.items():
        why = law.cannot(X, t.a)
        if why is None and len(t.y) < law.min_configs(m):
            why = (f"the {name} law has {law.n_params(m)} parameters and needs at least {law.min_configs(m)} configurations "
                   f"(one more, so every leave-one-out fit is determined); the study has {len(t.y)} done")
        if why:
            fits[name] = LawFit(formula=law.formula, status="not fitted", why=why, min_configs=law.min_configs(m))
            continue
        theta = _fit_many(law, X, t.y, t.a, t.noise, rng)
        fits[name] = LawFit(formula=law.formula, status="fitted", theta=theta.tolist(), param_names=law.param_names(abilities, t.a),
                            min_configs=law.min_configs(m), fitted=law.predict(theta, X, t.a).tolist(),
                            loo=loo(law, X, t, theta, rng, False),
                            extrapolation=extrapolation(law, X, t, rng, law.min_configs(m) - 1))
    const = constant.loo.mae
    fitted = {n: d for n, d in fits.items() if d.status == "fitted"}
    good = {n: d for n, d in fitted.items() if d.loo.mae < const}
    selected = None
    if not fitted:
        why = "no law could be fitted: " + "; ".join(f"{n}: {d.why}" for n, d in fits.items())
    elif not good:
        best = min(fitted, key=lambda n: fitted[n].loo.mae)
        why = (f"no law fits at this scale: the best leave-one-out error ({best}: {fitted[best].loo.mae:.4g}) does not "
               f"beat the constant's ({const:.4g})")
    else:
        # parsimony: among laws within 0.1% of the best error, the one with fewest parameters
        top = min(d.loo.mae for d in good.values())
        near = [n for n in good if good[n].loo.mae <= top * 1.001 + 1e-12]
        selected = min(near, key=lambda n: (laws[n].n_params(m), good[n].loo.mae))
        lead = ("the log-linear baseline predicts best, so no law beats a plain regression here: " if selected in BASELINES else "")
        why = (lead + f"lowest leave-one-out error ({good[selected].loo.mae:.4g}) of the models that beat the constant "
               f"({const:.4g}): " + ", ".join(f"{n} {d.loo.mae:.4g}" for n, d in sorted(fitted.items(), key=lambda kv: kv[1].loo.mae)))
    for name, d in fitted.items():  # parameter intervals from the bootstrap
        law = laws[name]
        theta = np.array(d.theta)
        draws = bootstrap(law, X, t, theta)
        lo, hi = percentile_interval(draws, axis=0)
        d.params = {p: (float(v), float(a_), float(b_)) for p, v, a_, b_ in zip(d.param_names, theta, lo, hi)}
        fl, fh = percentile_interval(np.array([law.predict(th, X, t.a) for th in draws]), axis=0)
        d.fitted_low, d.fitted_high = fl.tolist(), fh.tolist()
        d.draws = draws.tolist()
        if loo_intervals and name == selected:
            add_coverage(d.loo, law, X, t, rng)
    if loo_intervals and selected is None:
        add_coverage(constant.loo, None, X, t, rng)
    return TargetFit(ability=t.ability, noise=t.noise, constant=constant, laws=fits, selected=selected, why=why,
                     observed=t.y.tolist(), observed_low=np.asarray(t.low).tolist(), observed_high=np.asarray(t.high).tolist())


def predict_with(law_name: str, d: LawFit, x: np.ndarray, a: int) -> PredictionDraws:
    """A fitted law's prediction at a new configuration ``x``: the estimate, the law's 95% band
    (bootstrap refits) and the 95% prediction interval for an observed estimate there (from the
    leave-one-out fits, ``jackknife_interval``)."""
    law = CANDIDATES[law_name]
    x = np.atleast_2d(x)
    est = float(law.predict(np.array(d.theta), x, a)[0])
    band = np.array([law.predict(th, x, a)[0] for th in np.array(d.draws)])
    lo, hi = percentile_interval(band)
    at = predict_loo(law, [np.array(th) for th in d.loo.thetas], x, a)[:, 0]
    residuals = np.array(d.loo.residuals)
    plo, phi = jackknife_interval(at, residuals)
    return PredictionDraws(Prediction(estimate=est, law_low=float(lo), law_high=float(hi), low=plo, high=phi, law=law_name),
                           band, at + residuals)
