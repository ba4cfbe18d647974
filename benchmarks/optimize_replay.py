"""Proof by replay: does ``sftmix study optimize`` reach the best mixture in fewer runs than random
search, and than the one-shot grid + ``study propose``?

1. A dense pool of real runs that are fast here: the tiny model on generated math and code data
   plus ShareGPT, every 1/STEP of the 3-source simplex at two totals (STEP 10: 132 runs; 5 with
   ``--quick``: 42), each run once with the normal study machinery (resumable: ``--out`` keeps
   the pool), and a few configurations again with a second seed: the noise between replicates.
2. Replay: each method chooses only from the pool, each run a lookup of the pool's weighted
   held-out loss (math, code and general weighted 1:1:1):
   - optimize: ``sftmix.study.optimize``'s initial design and acquisition (the same functions
     the command runs), one configuration at a time;
   - random search: the pool in a seeded random order;
   - grid + propose: a fixed 14-configuration design (corners, edges, centre and interior points
     at the larger total, four at the smaller, as ``configs/studies/mixture_law.yaml``), laws
     fitted to it (``study fit``'s code), then the pool configuration they predict best: 15 runs.
   Over ``--seeds`` seeds (50; 8 with ``--quick``).
3. Printed: epsilon (the mean absolute difference between replicates), the runs each method needs
   to come within epsilon of the pool's best (mean and median over seeds; a seed that never does
   within ``--runs`` counts as the pool's size), the mean simple regret after 5, 10 and 20 runs, and the ratio of
   random search's runs to optimize's. Exit 1 when optimize needs no fewer runs than random
   search (the CI form, ``--quick``, is a test of that).

    python benchmarks/optimize_replay.py --out /tmp/replay
    python benchmarks/optimize_replay.py --quick --out /tmp/replay_quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

SOURCES = ["generated_math", "generated_code", "sharegpt"]
ABILITIES = {"generated_math": "math", "generated_code": "code", "sharegpt": "general"}
WEIGHTS = {"math": 1.0, "code": 1.0, "general": 1.0}
TRAIN = {"epochs": 1, "batch_size": 8, "per_device_batch_size": 8, "max_length": 256, "lr": 1e-3, "precision": "fp32",
         "report_to": [], "logging_steps": 50, "group_by_length": False}


def pool_study(out: Path, step: int, totals: list[int], name: str, seeds: list[int], only: list[tuple] | None = None,
               folder: str = "pool") -> Path:
    """A study file ``name.yaml`` with every 1/step of the simplex at each total (or ``only`` those
    amounts); its runs live in ``out/folder`` (one store for the pool, its replicates and the
    grid, so a configuration run once is never run again)."""
    amounts = only or sorted({tuple(int(round(c * t / step)) for c in (i, j, step - i - j))
                              for t in totals for i in range(step + 1) for j in range(step + 1 - i)})
    z = {"_amounts": [], "strategy": []}
    for a in amounts:
        z["_amounts"].append("-".join(map(str, a)))
        z["strategy"].append({"name": "multitask", "sources": [s for s, n in zip(SOURCES, a) if n],
                              **({"fraction": {s: f"{n}/{POOL[s]}" for s, n in zip(SOURCES, a) if n}} if POOL else {})})
    study = {"name": name, "output_dir": str(out / folder),
             "base": {"model": "tiny", "sources": {"generated_math": {"size": 400}, "generated_code": {"size": 400},
                                                   "sharegpt": {"limit": 300, "clean": {"max_tokens": 200}}},
                      "strategy": {"name": "multitask", "sources": SOURCES}, "train": TRAIN,
                      "eval": {"tasks": ["loss"], "batch_size": 16}, "heldout": {"sources": SOURCES, "samples": 16},
                      "curve": {"enabled": False}},
             "grid": {"seed": seeds}, "zip": z}
    f = out / f"{name}.yaml"
    f.write_text(yaml.safe_dump(study, sort_keys=False))
    return f


# training pools of the study above (held-out rows left out), as sftmix computes them: filled in by main()
POOL: dict[str, int] = {}


def _pool_sizes(out: Path) -> dict[str, int]:
    """The sources' training pool sizes, as the runs will see them (sftmix's own rule)."""
    from sftmix.study.grid import expand
    from sftmix.config import StudyConfig, load_config
    from sftmix.train.strategies import training_pools

    f = pool_study(out, 1, [1], "sizes", [0], only=[(1, 1, 1)])
    runs = expand(load_config(str(f), StudyConfig))
    return {s: len(p) for s, p in training_pools(runs[0].config, SOURCES).items()}


def objectives(f: Path, weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the study (done runs are skipped) and return the amounts, weighted loss and each
    ability's loss (columns in ``weights``' order) of each of its runs."""
    from sftmix.analysis.results import Group
    from sftmix.cli import main
    from sftmix.study.optimize import Settings, Space, objective_parts
    from sftmix.study.runner import load_study, study_dir
    from sftmix.study.store import Store
    from sftmix import layout

    if main(["study", "run", str(f), "--quiet"]) != 0:
        raise SystemExit(f"{f}: the pool's study failed")
    study, runs = load_study(str(f), read_only=True)
    store = Store(layout.store(study_dir(study, None)))
    rows = {r.id: r for r in store.runs()}
    heldout = {a: [s] for s, a in ABILITIES.items()}
    space = Space(sources=SOURCES, abilities=ABILITIES, pools=POOL, totals=[], heldout=heldout, candidates=[])
    s = Settings(weights=weights, budget=1, runs=1, initial=1)
    A, Y, L = [], [], []
    for r in runs:
        parts, by = objective_parts(store, Group(r.label, {}, {}, [rows[r.id]]), space, s)
        A.append([int(x) for x in r.point["_amounts"].split("-")])
        Y.append(sum(w * (x.values.sum() / x.weights.sum()) for w, x in parts))
        L.append([np.mean([x.values.sum() / x.weights.sum() for x in by[a]]) for a in weights])
    return np.array(A), np.array(Y), np.array(L)


def grid_design(pool: np.ndarray, totals: list[int]) -> list[int]:
    """The 14-configuration design of ``configs/studies/mixture_law.yaml`` (in sixths), each point
    the nearest pool configuration."""
    big = [(6, 0, 0), (0, 6, 0), (0, 0, 6), (3, 3, 0), (3, 0, 3), (0, 3, 3), (2, 2, 2), (4, 1, 1), (1, 4, 1), (1, 1, 4)]
    small = [(4, 1, 1), (1, 4, 1), (1, 1, 4), (2, 2, 2)]
    want = [np.array(p) / 6 * totals[-1] for p in big] + [np.array(p) / 6 * totals[0] for p in small]
    out = []
    for w in want:
        d = np.abs(pool - w).sum(1)
        d[out] = np.inf
        out.append(int(np.argmin(d)))
    return out


def grid_propose(f_grid: Path, pool: np.ndarray, weights: dict[str, float], tmp: Path) -> int:
    """The pool configuration the laws fitted to the grid's runs predict best (``study fit``'s code)."""
    from sftmix.analysis.lawfit import run_fit
    from sftmix.analysis.propose import weighted_prediction
    from sftmix.study.runner import load_study, study_dir
    from sftmix.study.store import Store
    from sftmix import layout

    study, runs = load_study(str(f_grid), read_only=True)
    store = Store(layout.store(study_dir(study, None))).restricted(r.id for r in runs)
    fit = run_fit(store, tmp, "examples", 40, 0, progress=False)
    order = [ABILITIES[s] for s in SOURCES]
    D = pool[:, [order.index(a) for a in fit.abilities]].astype(float)
    fitted = {a: w for a, w in weights.items() if any(t.ability == a and t.selected for t in fit.targets.values())}
    return int(np.argmin(weighted_prediction(fit, fitted, D)))


def law_priors(D: np.ndarray, L: np.ndarray, budget: int, seed: int) -> list:
    """Per ability (pool column j), the amount law L_j = E + B·(1 + D_j)^(-alpha) fitted to the
    runs so far (``sftmix.analysis.laws``), as a function of optimize's features: a GP prior mean."""
    from sftmix.analysis.laws import LAWS, fit

    law, rng = LAWS["amount"], np.random.default_rng(seed)
    out = []
    for j in range(L.shape[1]):
        y = L[:, j]
        theta = fit(law, D, y, j, max(float(np.std(y)), 1e-3), law.starts(D, y, j, rng))
        out.append(lambda Z, th=theta, j=j: law.predict(th, np.expm1(Z * np.log1p(budget)), j))
    return out


def replay_optimize(pool: np.ndarray, L: np.ndarray, budget: int, runs: int, seed: int, initial: int,
                    prior: bool = False) -> list[int]:
    """The order in which optimize's design would run pool configurations: its own initial design,
    features and surrogate (one GP per ability's loss), one configuration at a time; with
    ``prior``, each GP's prior mean is the amount law fitted to the runs so far."""
    from sftmix.study.optimize import Surrogate, features, initial_design

    X = features(pool, budget)
    w = np.array([WEIGHTS[a] for a in WEIGHTS]) / sum(WEIGHTS.values())
    order = initial_design(X, initial, seed)
    while len(order) < min(runs, len(pool)):
        step_seed = seed * 7919 + len(order)
        priors = law_priors(pool[order].astype(float), L[order], budget, step_seed) if prior else None
        model = Surrogate.fit(X[order], L[order], w, np.full(len(w), np.inf), step_seed, priors)
        order.append(model.acquire(X[order], X, set(order), 1, step_seed)[0].index)
    return order


def runs_to_reach(order: list[int], y: np.ndarray, target: float, cap: int) -> int:
    best = np.minimum.accumulate(y[order])
    hit = np.nonzero(best <= target)[0]
    return int(hit[0]) + 1 if len(hit) else cap


def regret(order: list[int], y: np.ndarray, t: int) -> float:
    return float(y[order[:t]].min() - y.min())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a pool of 42 runs and 8 seeds (CI)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None, help="runs each method may use (default 30; 20 with --quick)")
    ap.add_argument("--out", default=None, help="keep the pool here (a rerun reuses its done runs)")
    ap.add_argument("--json", default=None, help="write the figures as JSON here")
    ap.add_argument("--law-prior", action="store_true", help="also replay optimize with the amount law as each GP's prior mean")
    args = ap.parse_args(argv)
    step = 5 if args.quick else 10
    seeds = args.seeds or (8 if args.quick else 50)
    runs = args.runs or (20 if args.quick else 30)
    out = Path(args.out or tempfile.mkdtemp(prefix="sftmix_replay_"))
    out.mkdir(parents=True, exist_ok=True)
    POOL.update(_pool_sizes(out))
    totals = [48, 144]
    t0 = time.time()
    f = pool_study(out, step, totals, "pool", [0])
    pool, y, L = objectives(f, WEIGHTS)
    build_s = time.time() - t0
    # the noise between replicates: every 4th configuration again with seed 1
    rep = [tuple(a) for a in pool[::4]]
    f_rep = pool_study(out, step, totals, "replicates", [1], only=rep)
    pool_rep, y_rep, _ = objectives(f_rep, WEIGHTS)
    y0 = np.array([y[np.nonzero((pool == a).all(1))[0][0]] for a in pool_rep])
    eps = float(np.mean(np.abs(y_rep - y0)))
    n, cap = len(pool), len(pool)
    target = y.min() + eps
    within = int((y <= target).sum())
    budget = int(pool.sum(1).max())
    print(f"pool: {n} configurations of {', '.join(SOURCES)} at totals {totals} (every 1/{step} of the simplex), built in "
          f"{build_s:.0f} s; best weighted held-out loss {y.min():.4f} at {pool[int(np.argmin(y))].tolist()}; epsilon "
          f"(mean |seed 1 - seed 0| over {len(rep)} replicated configurations) {eps:.4f}; {within} configuration(s) within it")

    rng = np.random.default_rng(12345)
    methods = ["optimize", "random", *(["optimize, law prior"] if args.law_prior else [])]
    res = {m: [] for m in methods}
    orders = {m: [] for m in methods}
    t1 = time.time()
    for seed in range(seeds):
        picked = {"optimize": replay_optimize(pool, L, budget, min(runs, n), seed, initial=len(SOURCES) + 1),
                  "random": list(rng.permutation(n))}
        if args.law_prior:
            picked["optimize, law prior"] = replay_optimize(pool, L, budget, min(runs, n), seed, initial=len(SOURCES) + 1, prior=True)
        for m, o in picked.items():
            orders[m].append(o)
            res[m].append(runs_to_reach(o, y, target, cap))
    replay_s = time.time() - t1
    g_idx = grid_design(pool, totals)
    f_grid = pool_study(out, step, totals, "grid", [0], only=[tuple(pool[i]) for i in g_idx])
    objectives(f_grid, WEIGHTS)  # the same configs and seed as in the pool: the store's runs are the pool's values
    pick = grid_propose(f_grid, pool, WEIGHTS, out / "grid")
    g_order = [*g_idx, pick]
    g_best = float(y[g_order].min())
    rows = []
    for name in methods:
        r = np.array(res[name])
        rows.append([name, f"{r.mean():.1f}", f"{np.median(r):.0f}", *(f"{np.mean([regret(o, y, t) for o in orders[name]]):.4f}"
                                                                       for t in (5, 10, 20)),
                     f"{np.mean(r <= cap - 1) * 100:.0f}%"])
    rows.append(["grid + propose", "15 (fixed)" if g_best <= target else f"not reached ({g_best - y.min():.4f} above)",
                 "-", "-", "-", f"{g_best - y.min():.4f} (15 runs)", "-"])
    header = ["method", "runs to reach best+eps (mean)", "median", "regret @5", "@10", "@20", "seeds reaching"]
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(k) for x, k in zip(row, w)))
    ratio = np.mean(res["random"]) / np.mean(res["optimize"])
    print(f"random search / optimize (mean runs to reach the best within epsilon): {ratio:.2f}x over {seeds} seeds "
          f"(replay {replay_s:.0f} s)")
    if args.law_prior:
        print(f"random search / optimize with the law prior: {np.mean(res['random']) / np.mean(res['optimize, law prior']):.2f}x")
    doc = {"pool": n, "epsilon": eps, "within": within, "seeds": seeds, "runs_to_reach": res, "ratio": ratio,
           "grid_propose_regret": g_best - float(y.min()), "grid_propose_pick": pool[pick].tolist(),
           "regret": {name: {t: float(np.mean([regret(o, y, t) for o in orders[name]])) for t in (5, 10, 20)}
                      for name in orders}}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if ratio <= 1.0:
        print("FAIL: optimize needs no fewer runs than random search", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
