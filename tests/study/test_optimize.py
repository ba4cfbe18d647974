"""``sftmix study optimize`` on the tiny model: the loop's bookkeeping under a kill, the stop rule,
constraints, determinism, bad inputs, the report's Optimisation section, and the replay benchmark
in its quick form (optimize must need fewer runs than random search)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from helpers import TINY_TRAIN
from sftmix.analysis.propose import simplex_grid
from sftmix.cli import main
from sftmix.study.optimize import Choice, Surrogate, _study_of, design, initial_design
from sftmix.study.runner import load_study

pytestmark = pytest.mark.e2e

NAMES = ["generated_math", "generated_code", "sharegpt"]
POOL = {"generated_math": 200, "generated_code": 200, "sharegpt": 566}
WEIGHTS = "math=1,code=1,general=1"


def tiny_study(tmp: Path, name: str, **extra) -> Path:
    """A grid of three mixtures of the three abilities (48 examples each) on the tiny model."""
    design = [(48, 0, 0), (0, 48, 0), (16, 16, 16)]
    z = {"_mix": [], "strategy.sources": [], "strategy.fraction": []}
    for counts in design:
        z["_mix"].append("-".join(map(str, counts)))
        z["strategy.sources"].append([n for n, c in zip(NAMES, counts) if c])
        z["strategy.fraction"].append({n: f"{c}/{POOL[n]}" for n, c in zip(NAMES, counts) if c})
    study = {"name": name, "output_dir": str(tmp / name),
             "base": {"model": "tiny", "sources": {"generated_math": {"size": 200}, "generated_code": {"size": 200},
                                                   "sharegpt": {"limit": 180, "clean": {"max_tokens": 200}}},
                      "strategy": {"name": "multitask", "sources": NAMES}, "train": TINY_TRAIN,
                      "eval": {"tasks": ["loss"]}, "heldout": {"sources": NAMES, "samples": 8},
                      "curve": {"enabled": False}},
             "zip": z, **extra}
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(study, sort_keys=False))
    return f


def log_of(folder: Path) -> dict:
    return json.loads((folder / "optimize.json").read_text())


def sequence(log: dict) -> list[tuple]:
    return [(st["kind"], c["label"], c["run_ids"], round(c["observed"]["estimate"], 9))
            for st in log["steps"] for c in st["choices"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted design: the grid first (so the report compares with it), then 6 runs."""
    tmp = tmp_path_factory.mktemp("opt_ref")
    f = tiny_study(tmp, "ref")
    assert main(["study", "run", str(f), "--quiet"]) == 0
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--stop-below", "0", "--quiet"]) == 0
    return f, tmp / "ref"


def test_kill_at_any_moment_resumes_the_same_design(reference, tmp_path):
    ref_file, ref_out = reference
    ref = log_of(ref_out)
    assert sum(len(s["choices"]) for s in ref["steps"]) == 6
    assert ref["stop_kind"] == "runs" and [s["kind"] for s in ref["steps"]] == ["initial", "acquired", "acquired"]

    f = tiny_study(tmp_path, "killed")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS,
           "--stop-below", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    finals_then: dict[Path, float] = {}
    while time.time() < deadline and proc.poll() is None:
        try:
            log = log_of(out)
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        # the first acquired step is chosen and written, its run not yet observed: kill now
        if len(log["steps"]) >= 2 and log["steps"][1]["choices"][0]["observed"] is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            finals_then = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/stage*/final/meta.json")}
            break
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL, "the kill did not land while the design was under way"
    chosen_then = log_of(out)["steps"][1]["choices"][0]["label"]
    assert len(finals_then) == 4  # the initial design was done

    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    log = log_of(out)
    assert log["steps"][1]["choices"][0]["label"] == chosen_then  # the chosen step is resumed, not chosen again
    # deterministic: the same choices, runs and observations as the uninterrupted design
    assert sequence(log) == sequence(ref)
    # no run lost or trained twice: one final checkpoint per run; those done before the kill untouched
    ids = [rid for s in log["steps"] for c in s["choices"] for rid in c["run_ids"]]
    assert len(set(ids)) == 6
    finals = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/stage*/final/meta.json")}
    assert len(finals) == 6
    assert all(finals[p] == t for p, t in finals_then.items())


def test_acquired_steps_say_why_and_report_compares_with_the_grid(reference):
    _, out = reference
    log = log_of(out)
    for st in log["steps"][1:]:
        c = st["choices"][0]
        assert c["acquisition"] is not None and np.isfinite(c["acquisition"])
        p = c["predicted"]
        assert p["low"] < p["estimate"] < p["high"]
        assert st["incumbent"] is not None
    # the incumbent is the best observed so far, step by step
    seen = []
    for st in log["steps"]:
        seen += st["choices"]
        assert st["incumbent"] == min(seen, key=lambda c: c["observed"]["estimate"])["label"]
    assert log["recommendation"]["label"] == log["steps"][-1]["incumbent"]
    md = (out / "optimize_report" / "report.md").read_text()
    assert "## Optimisation" in md
    assert "Against the best configuration of the grid in this store" in md and "out of 3 grid runs" in md
    assert "Recommendation: " + log["recommendation"]["label"] in md
    html = (out / "optimize_report" / "report.html").read_text()
    assert "<h2>Optimisation</h2>" in html
    for name in ("optimize__progress.png", "optimize__simplex.png"):
        data = (out / "optimize_report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # the grid's own report (`study report`) shows the design too (optimize.json beside the store)
    assert main(["study", "report", str(reference[0]), "--quiet"]) == 0
    assert "## Optimisation" in (out / "report" / "report.md").read_text()


def test_other_settings_refused_then_stop_rule_and_constraints(reference, capsys):
    f, out = reference
    before = (out / "optimize.json").read_text()
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", "math=2,code=1,general=1", "--quiet"]) == 2
    assert "made with other settings" in capsys.readouterr().err
    assert (out / "optimize.json").read_text() == before  # nothing changed

    # a larger --runs extends a design that stopped for runs: the next step is chosen, the first six kept
    assert main(["study", "optimize", str(f), "--runs", "7", "--weights", WEIGHTS, "--stop-below", "0", "--quiet"]) == 0
    longer = log_of(out)
    assert sequence(longer)[:6] == sequence(json.loads(before)) and len(sequence(longer)) == 7
    (out / "optimize.json").write_text(before)

    # the stop rule: an expected improvement below --stop-below ends the design after its initial step
    (out / "optimize.json").unlink()
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--stop-below", "10", "--quiet"]) == 0
    log = log_of(out)
    assert log["stop_kind"] == "converged" and "--stop-below" in log["stopped"]
    assert len(log["steps"]) == 1 and len(log["steps"][0]["choices"]) == 4
    # the default rule measures the noise: a paired interval between the two best configurations
    (out / "optimize.json").unlink()
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--quiet"]) == 0
    log = log_of(out)
    assert log["stop_kind"] in ("converged", "runs")
    if log["stop_kind"] == "converged":
        assert "runner-up" in log["stopped"]

    # a constraint: math's loss at most the median observed; the recommendation meets it
    math = sorted(c["by_ability"]["math"]["estimate"] for s in log["steps"] for c in s["choices"])
    limit = math[len(math) // 2]
    (out / "optimize.json").unlink()
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--max-loss", f"math={limit}",
                 "--stop-below", "0", "--quiet"]) == 0
    log = log_of(out)
    rec = log["recommendation"]
    assert rec["by_ability"]["math"]["estimate"] <= limit
    feasible = [c for s in log["steps"] for c in s["choices"] if c["by_ability"]["math"]["estimate"] <= limit]
    assert rec["observed"]["estimate"] == min(c["observed"]["estimate"] for c in feasible)

    # a batch: two configurations chosen together (sequentially greedy), both new and distinct
    (out / "optimize.json").unlink()
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--batch", "2", "--stop-below", "0",
                 "--quiet"]) == 0
    log = log_of(out)
    assert [len(s["choices"]) for s in log["steps"]] == [4, 2]
    labels = [c["label"] for s in log["steps"] for c in s["choices"]]
    assert len(set(labels)) == 6 and all(c["acquisition"] is not None for c in log["steps"][1]["choices"])

    # a limit no configuration can meet: refused once the initial design shows it, saying which
    (out / "optimize.json").unlink()
    capsys.readouterr()
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--max-loss", "math=0.01",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--max-loss" in err and "math: lowest observed" in err and "loosen" in err


@pytest.mark.parametrize("args, says", [
    (["--runs", "3"], "--runs 3: fewer than the initial design's 4 configuration(s)"),
    (["--runs", "6", "--weights", "math=1,poetry=1"], "--weights: unknown ability 'poetry'"),
    (["--runs", "6", "--max-loss", "poetry=1"], "--max-loss: unknown ability 'poetry'"),
    (["--runs", "6", "--max-loss", "math=-1"], "--max-loss math=-1.0: a held-out loss limit is a positive number"),
    (["--runs", "6", "--budget", "0"], "--budget 0: a mixture needs at least 1 example"),
])
def test_bad_inputs_name_the_argument_and_write_nothing(tmp_path, capsys, args, says):
    f = tiny_study(tmp_path, "bad")
    argv = ["study", "optimize", str(f), *args]
    if "--weights" not in args:
        argv += ["--weights", WEIGHTS]
    assert main(argv) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_spaces_optimize_cannot_search_are_refused(tmp_path, capsys):
    # one source at one total: a space of one point
    one = {"zip": {"_x": ["a"], "strategy": [{"name": "individual", "sources": ["generated_math"], "fraction": "48/192"}]}}
    f = tiny_study(tmp_path, "one")
    doc = yaml.safe_load(f.read_text())
    doc.update(one)
    f.write_text(yaml.safe_dump(doc))
    assert main(["study", "optimize", str(f), "--runs", "4", "--weights", "math=1", "--quiet"]) == 2
    assert "the search space has 1 point(s)" in capsys.readouterr().err
    # DMT on whole pools at one k: one point too (k counts as a dimension)
    doc["zip"] = {"_x": ["a"], "strategy": [{"name": "dmt", "specialised": ["generated_math"], "general": "sharegpt", "k": 0.25}]}
    f.write_text(yaml.safe_dump(doc))
    assert main(["study", "optimize", str(f), "--runs", "4", "--weights", "math=1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the search space has 1 point(s) (2 source(s), totals [766], k [0.25])" in err
    assert "the study's runs train on whole pools, 766 examples: give --budget N" in err
    # sequential training (one stage per source), or DMT beside multitask: not a space optimize searches
    for strategies, named in (([{"name": "sequential", "sources": ["generated_math", "sharegpt"]}], "sequential"),
                              ([{"name": "dmt", "specialised": ["generated_math"], "general": "sharegpt", "k": 0.25},
                                {"name": "multitask", "sources": ["generated_math", "sharegpt"]}], "dmt, multitask")):
        doc["zip"] = {"_x": [str(i) for i in range(len(strategies))], "strategy": strategies}
        f.write_text(yaml.safe_dump(doc))
        assert main(["study", "optimize", str(f), "--runs", "4", "--weights", "math=1", "--quiet"]) == 2
        assert ("one-stage mixture (multitask), or a DMT design's amounts and k; the study's runs use strategy "
                + named) in capsys.readouterr().err
    # DMT designs that split the sources into stages differently
    doc["zip"] = {"_x": ["a", "b"], "strategy": [
        {"name": "dmt", "specialised": ["generated_math"], "general": "sharegpt", "k": 0.25},
        {"name": "dmt", "specialised": ["generated_math", "generated_code"], "general": "sharegpt", "k": 0.25}]}
    f.write_text(yaml.safe_dump(doc))
    assert main(["study", "optimize", str(f), "--runs", "4", "--weights", "math=1", "--quiet"]) == 2
    assert "split their sources into stages in 2 ways" in capsys.readouterr().err
    # a grid over something else than the mixture
    f2 = tiny_study(tmp_path, "lr", grid={"train.lr": [1e-3, 1e-4]})
    assert main(["study", "optimize", str(f2), "--runs", "6", "--weights", WEIGHTS, "--quiet"]) == 2
    assert "the study varies 'train.lr' over 2 values" in capsys.readouterr().err
    assert not (tmp_path / "one").exists() and not (tmp_path / "lr").exists()


def test_acquisition_finds_a_known_minimum_faster_than_chance():
    """The design's own functions on a known composite objective over a simplex (two "abilities",
    each a loss of its own): a broken acquisition (say, maximising, or a wrong weighting) or a bad
    initial design would need about as many evaluations as a random order."""
    X = simplex_grid(3, 200)
    L = np.c_[((X - [0.2, 0.5, 0.3]) ** 2).sum(1), 0.3 * X[:, 0] * X[:, 2] + 0.2 * X[:, 1]]
    w, inf = np.array([0.5, 0.5]), np.full(2, np.inf)
    y = L @ w
    best = int(np.argmin(y))
    found = []
    for seed in range(3):
        order = initial_design(X, 4, seed)
        assert order == initial_design(X, 4, seed)  # deterministic for a seed
        while best not in order and len(order) < 30:
            picks = Surrogate.fit(X[order], L[order], w, inf, seed).acquire(X[order], X, set(order), 1, seed)
            again = Surrogate.fit(X[order], L[order], w, inf, seed).acquire(X[order], X, set(order), 1, seed)
            assert picks == again
            assert picks[0].index not in order
            order.append(picks[0].index)
        found.append(len(order))
    # random search needs (n + 1) / 2 = 116 evaluations on average to hit one point among 231
    assert max(found) <= 20, found
    # a limit on the second loss: the feasibility the surrogate gives falls where the loss exceeds it
    m = Surrogate.fit(X[order], L[order], w, np.array([np.inf, 0.1]), 0)
    p = m.feasibility(X)
    assert p[np.argmin(L[:, 1])] > 0.9 and p[np.argmax(L[:, 1])] < 0.1


def test_replay_quick_optimize_beats_random_search(tmp_path):
    """The replay benchmark in its CI form: a pool of 42 real tiny-model runs, 8 seeds."""
    out = tmp_path / "replay.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "optimize_replay.py"), "--quick", "--out",
                        str(tmp_path / "pool"), "--json", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    doc = json.loads(out.read_text())
    assert doc["pool"] == 42 and doc["seeds"] == 8
    assert doc["ratio"] > 1.0, doc
    assert np.mean(doc["runs_to_reach"]["optimize"]) < np.mean(doc["runs_to_reach"]["random"])
    assert doc["regret"]["optimize"]["20"] <= doc["regret"]["random"]["20"]


def test_a_damaged_log_is_named_and_left_alone(tmp_path, capsys):
    f = tiny_study(tmp_path, "damaged")
    out = tmp_path / "damaged"
    out.mkdir()
    (out / "optimize.json").write_text('{"version": 1, "settings": {"weights": "math"}}')
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'optimize.json'}: not an optimize log (settings.weights" in err and "delete it" in err
    assert (out / "optimize.json").read_text() == '{"version": 1, "settings": {"weights": "math"}}'


def dmt_study(tmp: Path, name: str) -> Path:
    """DMT (generated math and code in stage 1, ShareGPT in stage 2) at 16 examples each, over three k."""
    study = {"name": name, "output_dir": str(tmp / name),
             "base": {"model": "tiny", "sources": {"generated_math": {"size": 200}, "generated_code": {"size": 200},
                                                   "sharegpt": {"limit": 180, "clean": {"max_tokens": 200}}},
                      "strategy": {"name": "dmt", "specialised": NAMES[:2], "general": "sharegpt", "k": 0,
                                   "fraction": {n: f"16/{POOL[n]}" for n in NAMES}},
                      "train": TINY_TRAIN, "eval": {"tasks": ["loss"]}, "heldout": {"sources": NAMES, "samples": 8},
                      "curve": {"enabled": False}},
             "grid": {"strategy.k": [0, "1/16", 1]}}
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(study, sort_keys=False))
    return f


def test_a_dmt_design_searches_amounts_and_k(tmp_path):
    """DMT's k is a dimension of the space where the study varies it: every configuration is a DMT
    run with its k, the grid's run of the same amounts and k is the same run (same id), and the
    report plots the objective against k."""
    f = dmt_study(tmp_path, "dmt")
    study, grid = load_study(str(f))
    _, space = design(study, None, grid, str(f), {"math": 1, "code": 1, "general": 1}, 5)
    assert space.general == "sharegpt" and space.k == [0.0, 1 / 16, 1.0]
    assert space.sources == NAMES
    rows = np.array(space.candidates)
    assert rows.shape[1] == 4 and set(rows[:, 3]) == {0, 1, 2}
    assert (rows[:, 2] >= 8).all() and (rows[:, :2].sum(1) >= 8).all()  # both stages train a batch (8) at least
    X = space.features(space.totals[-1])
    assert X.shape == (len(rows), 4) and X[:, 3].min() == 0 and X[:, 3].max() == 1
    # a choice with the grid's amounts and k is the grid's run
    for run in grid:
        k = run.config.strategy.k
        c = Choice(amounts={n: 16 for n in NAMES}, k=k, label=f"x{k}", run_ids=[])
        _, runs = _study_of(study, None, [c], space, 1, str(f))
        assert [r.id for r in runs] == [run.id]

    assert main(["study", "run", str(f), "--quiet"]) == 0
    assert main(["study", "optimize", str(f), "--runs", "6", "--weights", WEIGHTS, "--stop-below", "0", "--quiet"]) == 0
    out = tmp_path / "dmt"
    log = log_of(out)
    choices = [c for s in log["steps"] for c in s["choices"]]
    # the initial design: dimensions + 1 = (2 of the simplex, the total, k) + 1
    assert [len(s["choices"]) for s in log["steps"]] == [5, 1] and [s["kind"] for s in log["steps"]] == ["initial", "acquired"]
    configs = dict(sqlite3.connect(out / "results.sqlite").execute("SELECT id, config FROM runs").fetchall())
    for c in choices:
        assert c["k"] in (0.0, 1 / 16, 1.0) and c["label"].endswith(f",k:{ {0.0: '0', 1 / 16: '1/16', 1.0: '1'}[c['k']] }")
        strategy = json.loads(configs[c["run_ids"][0]])["strategy"]
        assert strategy["name"] == "dmt" and strategy["k"] == c["k"] and strategy["general"] == "sharegpt"
        assert {n: round(v * POOL[n]) for n, v in strategy["fraction"].items()} == {n: a for n, a in c["amounts"].items() if a}
        assert list((out / "runs" / c["run_ids"][0]).glob("stage2*/final/meta.json"))  # two stages trained
    md = (out / "optimize_report" / "report.md").read_text()
    assert "as DMT (generated_math, generated_code in stage 1, sharegpt in stage 2) with k in {0, 1/16, 1}" in md
    assert (out / "optimize_report" / "optimize__k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Against the best configuration of the grid in this store" in md and "out of 3 grid runs" in md
