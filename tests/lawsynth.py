"""Synthetic results stores for the law tests: a real study file (expanded as sftmix expands it,
so run ids, labels and configs are the real ones) whose results are drawn from known laws.

Each held-out item i has a difficulty d_i shared by every configuration (the same held-out rows
are measured everywhere) and a token count w_i; a configuration's run at seed s gets per-token
loss L(x) + d_i + e_is, e ~ N(0, sd_noise). So a configuration's estimate is L(x) plus noise of
exactly the kind the bootstrap resamples (items and seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from helpers import TINY_TRAIN
from sftmix.config import StudyConfig
from sftmix.data.compose import round_half_up
from sftmix.study.grid import expand
from sftmix.study.store import CurvePoint, DataPart, Metric, Sample, Store

SOURCES = {"generated_math": "math", "generated_code": "code", "sharegpt": "general"}
POOLS = {"generated_math": 400, "generated_code": 400, "sharegpt": 300}
ABILITIES = ["code", "general", "math"]  # sorted, as the fit orders them
ORDER = ["generated_math", "generated_code", "sharegpt"]  # design tuples are (math, code, general)


def mixture_study(tmp: Path, design: list[tuple], replicates: int = 2, name: str = "syn") -> Path:
    """A study file over the (math, code, general) example counts of ``design``."""
    z = {"_mix": [], "strategy.sources": [], "strategy.fraction": []}
    for counts in design:
        z["_mix"].append("-".join(str(c) for c in counts))
        used = [s for s, c in zip(ORDER, counts) if c > 0]
        z["strategy.sources"].append(used)
        z["strategy.fraction"].append({s: f"{c}/{POOLS[s]}" for s, c in zip(ORDER, counts) if c > 0})
    doc = {"name": name, "output_dir": str(tmp / name), "replicates": replicates,
           "base": {"model": "tiny", "sources": {"generated_math": {"size": 400}, "generated_code": {"size": 400},
                                                 "sharegpt": {"limit": 300}},
                    "strategy": {"name": "multitask", "sources": ORDER}, "train": TINY_TRAIN,
                    "eval": {"tasks": ["loss"]}, "heldout": {"sources": ORDER, "samples": 8}},
           "zip": z}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def fill(study_file: Path, truth: dict, n_items: int = 32, sd_item: float = 0.3, sd_noise: float = 0.05, seed: int = 0,
         only: int | None = None, fail: int = 0, running: int = 0) -> Store:
    """Record every run of the study as done, with held-out losses from ``truth`` (source ->
    function of the (code, general, math) example counts, rows = configurations). ``only``: the
    first N runs alone; ``fail`` / ``running``: that many more runs recorded as failed / running."""
    study = StudyConfig(**yaml.safe_load(study_file.read_text()))
    runs = expand(study)
    store = Store(Path(study.output_dir) / "results.sqlite")
    rng = np.random.default_rng(seed)
    difficulty = {s: rng.normal(0, sd_item, n_items) for s in truth}
    tokens = {s: rng.uniform(50, 150, n_items) for s in truth}
    todo = runs if only is None else runs[:only]
    for run in todo:
        fr = run.config.strategy.fraction
        ex = {SOURCES[s]: round(fr[s] * POOLS[s]) if s in run.config.strategy.sources else 0 for s in ORDER}
        x = np.array([[ex[a] for a in ABILITIES]], float)
        store.start(run.id, run.label, run.point, run.config.model_dump())
        metrics, samples = [], []
        for s, law in truth.items():
            w = tokens[s]
            per_token = float(law(x)[0]) + difficulty[s] + rng.normal(0, sd_noise, n_items)
            samples += [Sample(run.id, "loss", s, f"{s}-{i}", per_token[i] * w[i], w[i]) for i in range(n_items)]
            metrics.append(Metric(run.id, "loss", s, float((per_token * w).sum() / w.sum())))
        data = [DataPart(run.id, 1, "stage1_multitask", s, SOURCES[s], 0, float(ex[SOURCES[s]]), 100.0 * ex[SOURCES[s]],
                         float(POOLS[s]), "generated") for s in ORDER if ex[SOURCES[s]] > 0]
        store.finish(run.id, "ck", "ev", metrics, 1e4, 1e6, samples, (), data)
    rest = runs[len(todo):]
    for run in rest[:fail]:
        store.start(run.id, run.label, run.point, run.config.model_dump())
        store.fail(run.id, "synthetic failure")
    for run in rest[fail:fail + running]:
        store.start(run.id, run.label, run.point, run.config.model_dump())
    return store


# A design of 14 configurations: corners, edges, centre and interior points at 96 examples, and
# four points at 32 (math, code, general).
DESIGN = [(96, 0, 0), (0, 96, 0), (0, 0, 96), (48, 48, 0), (48, 0, 48), (0, 48, 48), (32, 32, 32), (64, 16, 16),
          (16, 64, 16), (16, 16, 64), (24, 4, 4), (4, 24, 4), (4, 4, 24), (11, 11, 10)]


def amount_truth(E: float, logb: float, alpha: float, ability: str):
    j = ABILITIES.index(ability)
    return lambda X: E + np.exp(logb) * (1 + X[:, j]) ** (-alpha)


def joint_truth(c: float, b: float, beta: float, t: list[float]):
    def f(X):
        N = X.sum(1)
        r = X / N[:, None]
        return c + np.exp(b + r[:, :-1] @ np.array(t) - beta * np.log(N))
    return f


# ---------------------------------------------------------------- DMT over k

DMT_PARTS = {"generated_math": 200, "generated_code": 200}  # stage 1: all of each pool
DMT_NEW = 300  # stage 2: sharegpt


def dmt_study(tmp: Path, ks: list, name: str = "dmtk") -> Path:
    doc = {"name": name, "output_dir": str(tmp / name),
           "base": {"model": "tiny", "sources": {"generated_math": {"size": 200}, "generated_code": {"size": 200},
                                                 "sharegpt": {"limit": 300}},
                    "strategy": {"name": "dmt", "specialised": ["generated_math", "generated_code"], "general": "sharegpt", "k": 0},
                    "train": TINY_TRAIN, "eval": {"tasks": ["loss"]}, "heldout": {"sources": ORDER, "samples": 8}},
           "grid": {"strategy.k": ks}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def fill_dmt(study_file: Path, truth: dict, stage1: dict, n_items: int = 32, sd_item: float = 0.2, sd_noise: float = 0.0,
             seed: int = 0) -> Store:
    """DMT runs over k: final held-out loss per source from ``truth`` (source -> function of the
    replayed proportion of stage 2), stage-1 end losses ``stage1`` in the forgetting curves."""
    study = StudyConfig(**yaml.safe_load(study_file.read_text()))
    store = Store(Path(study.output_dir) / "results.sqlite")
    rng = np.random.default_rng(seed)
    difficulty = {s: rng.normal(0, sd_item, n_items) for s in truth}
    tokens = {s: rng.uniform(50, 150, n_items) for s in truth}
    for run in expand(study):
        k = run.config.strategy.k
        replay = {s: round_half_up(k * n) for s, n in DMT_PARTS.items()}
        r = sum(replay.values()) / (sum(replay.values()) + DMT_NEW)
        store.start(run.id, run.label, run.point, run.config.model_dump())
        metrics, samples = [], []
        for s, law in truth.items():
            w = tokens[s]
            per_token = law(r) + difficulty[s] + rng.normal(0, sd_noise, n_items)
            # the estimate is L + the weighted mean difficulty: centre it so the estimate is L itself
            per_token -= float((difficulty[s] * w).sum() / w.sum())
            samples += [Sample(run.id, "loss", s, f"{s}-{i}", per_token[i] * w[i], w[i]) for i in range(n_items)]
            metrics.append(Metric(run.id, "loss", s, float((per_token * w).sum() / w.sum())))
        data = [DataPart(run.id, 1, "stage1_1_specialised", s, SOURCES[s], 0, float(n), 100.0 * n, float(n), "generated")
                for s, n in DMT_PARTS.items()]
        data.append(DataPart(run.id, 2, "stage2_2_general", "sharegpt", "general", 0, float(DMT_NEW), 100.0 * DMT_NEW, 300.0, "package"))
        data += [DataPart(run.id, 2, "stage2_2_general", s, SOURCES[s], 1, float(n), 100.0 * n, float(DMT_PARTS[s]), "generated")
                 for s, n in replay.items() if n]
        curves = [CurvePoint(run.id, "1_specialised", 1, 25, 25, 1e4, s, v) for s, v in stage1.items()]
        curves += [CurvePoint(run.id, "1_specialised", 1, 0, 0, 0.0, s, v + 1.0) for s, v in stage1.items()]  # the start: not the end
        store.finish(run.id, "ck", "ev", metrics, 1e4, 1e6, samples, curves, data)
    return store
