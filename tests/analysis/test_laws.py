"""Scaling and mixture laws: parameters recovered inside calibrated intervals, zero leave-one-out
error on exact data, the selection saying so when no law holds, the optimiser against brute force,
DMT's critical k against its closed form, the CLI on synthetic stores, and bad input."""

from __future__ import annotations

import csv
import json
import math
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from lawsynth import (
    ABILITIES,
    DESIGN,
    DMT_NEW,
    DMT_PARTS,
    amount_truth,
    dmt_study,
    fill,
    fill_dmt,
    joint_truth,
    mixture_study,
)
from sftmix.analysis import stats
from sftmix.analysis.lawfit import Fit, load_fit
from sftmix.analysis.laws import CANDIDATES, LAWS, Target, bootstrap, fit, fit_target
from sftmix.analysis.propose import Evidence, KProposal, MixtureProposal, load_proposal, propose_k, propose_mixture
from sftmix.cli import main
from sftmix.config import RunConfig, StudyConfig, validate
from sftmix.errors import SftmixError
from sftmix.study.grid import expand
from sftmix.study.runner import load_study
from sftmix.study.store import DataPart, Metric, Sample, Store

X = np.array([[d[1], d[2], d[0]] for d in DESIGN], float)  # (code, general, math), as the fit orders abilities
MATH = ABILITIES.index("math")


def simulated_target(law, theta, a, rng, n_items=48, sd_item=0.2, sd_e=0.05, draws=100) -> Target:
    """Estimates of ``law`` at the design, measured on shared held-out items (item difficulty
    shared by every configuration, per-item noise per configuration), one seed."""
    truth = law.predict(theta, X, a)
    d, w = rng.normal(0, sd_item, n_items), rng.uniform(50, 150, n_items)
    groups = []
    for L in truth:
        v = (L + d + rng.normal(0, sd_e, n_items)) * w
        groups.append(stats.items_of([(0, {f"i{i}": (v[i], w[i]) for i in range(n_items)})]))
    y = np.array([stats.estimate(g) for g in groups])
    return Target("loss/x", ABILITIES[a], a, y, stats.shared_item_draws(groups, draws, int(rng.integers(1 << 30))))


TRUTHS = {"amount": (np.array([0.8, math.log(0.9), 0.4]), MATH), "mixture": (np.array([0.7, -0.2, 0.5, -1.5]), MATH),
          "joint": (np.array([0.7, 0.8, 0.3, 0.5, -1.5]), MATH)}


@pytest.mark.parametrize("name", ["amount", "mixture"])
def test_bootstrap_intervals_cover_the_true_parameters(name):
    """Over repeated simulations, the 95% parameter intervals hold the true parameters about 95%
    of the time: neither too narrow (below 0.85) nor uselessly wide (above 0.99)."""
    law, (theta, a) = LAWS[name], TRUTHS[name]
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(30):
        t = simulated_target(law, theta, a, rng)
        th = fit(law, X, t.y, a, t.noise, [theta] + law.starts(X, t.y, a, rng))
        lo, hi = np.quantile(bootstrap(law, X, t, th), [0.025, 0.975], axis=0)
        hits.append((theta >= lo) & (theta <= hi))
    coverage = float(np.mean(hits))
    assert 0.85 <= coverage <= 0.99, coverage


def test_joint_law_is_recovered_and_selected():
    law, (theta, a) = LAWS["joint"], TRUTHS["joint"]
    t = simulated_target(law, theta, a, np.random.default_rng(3), sd_item=0.1, sd_e=0.01)
    res = fit_target(X, ABILITIES, t, loo_intervals=False)
    assert res.selected == "joint", res.why
    params = res.laws["joint"].params
    for (p, (_, lo, hi)), true in zip(params.items(), theta):
        assert lo <= true <= hi, (p, lo, hi, true)


@pytest.mark.parametrize("name", ["amount", "mixture", "joint"])
def test_exact_law_has_zero_leave_one_out_error(name):
    law, (theta, a) = LAWS[name], TRUTHS[name]
    y = law.predict(theta, X, a)
    t = Target("loss/x", ABILITIES[a], a, y, np.tile(y, (4, 1)))  # identical draws: the intervals are points
    res = fit_target(X, ABILITIES, t, loo_intervals=False)
    assert res.laws[name].loo.mae < 1e-4 * y.mean()
    assert res.selected == name  # the joint law also fits mixture data exactly; fewer parameters win the tie
    assert res.constant.loo.mae > 0.01


def test_data_following_no_law_say_so():
    rng = np.random.default_rng(7)
    y = 1.0 + rng.normal(0, 0.05, len(X))  # no relation to the amounts at all
    draws = y + rng.normal(0, 0.05, (12, len(X)))
    res = fit_target(X, ABILITIES, Target("loss/x", "math", MATH, y, draws), loo_intervals=False)
    assert res.selected is None and res.law is None
    assert "no law fits at this scale" in res.why


# ---------------------------------------------------------------- the optimiser

AMOUNT_THETA = {"code": [0.6, math.log(0.8), 0.5], "general": [1.5, math.log(0.4), 0.3], "math": [0.8, math.log(0.9), 0.4]}


def handmade_fit(caps: dict[str, float]) -> Fit:
    """A fit whose selected laws are known amount laws (no fitting involved)."""
    targets = {}
    configs = [{"label": f"c{i}", "seeds": [0], "stages": 1, "examples": dict(zip(ABILITIES, x.tolist())),
                "tokens": {}, "proportions": {}, "total": float(x.sum())} for i, x in enumerate(X)]
    n = len(X)
    for ab, theta in AMOUNT_THETA.items():
        a = ABILITIES.index(ab)
        y = LAWS["amount"].predict(np.array(theta), X, a).tolist()
        loo = {"mae": 0.0, "mre": 0.0, "r2": 1.0, "spearman": 1.0, "predicted": y, "pred_low": y, "pred_high": y,
               "thetas": [theta] * n, "residuals": [0.0] * n}
        targets[f"loss/{ab}_src"] = {
            "ability": ab, "noise": 0.01, "selected": "amount", "why": "made by hand", "observed": y, "observed_low": y,
            "observed_high": y, "constant": {"formula": "mean", "params": {"mean": float(np.mean(y))}, "loo": loo},
            "laws": {"amount": {"formula": LAWS["amount"].formula, "status": "fitted", "min_configs": 4, "theta": theta,
                                "draws": [theta] * 5, "loo": loo}}}
    return Fit.model_validate({"version": 1, "key": "handmade", "unit": "examples", "draws": 5, "seed": 0, "abilities": ABILITIES,
                               "configurations": configs, "targets": targets, "notes": [],
                               "sources": {ab: [f"{ab}_src"] for ab in ABILITIES},
                               "pools": {f"{ab}_src": caps[ab] for ab in ABILITIES}})


def brute_force(weights: dict, budget: int, caps: dict, max_loss: dict | None = None) -> tuple[float, tuple]:
    best = (np.inf, None)
    for c in range(0, min(budget, int(caps["code"])) + 1):
        for g in range(0, min(budget - c, int(caps["general"])) + 1):
            m = np.arange(0, min(budget - c - g, int(caps["math"])) + 1)
            D = np.c_[np.full(len(m), c), np.full(len(m), g), m].astype(float)
            losses = {ab: LAWS["amount"].predict(np.array(th), D, ABILITIES.index(ab)) for ab, th in AMOUNT_THETA.items()}
            J = sum(w * losses[ab] for ab, w in weights.items()) / sum(weights.values())
            ok = np.ones(len(m), bool)
            for ab, v in (max_loss or {}).items():
                ok &= losses[ab] <= v
            J = np.where(ok, J, np.inf)
            i = int(np.argmin(J))
            if J[i] < best[0]:
                best = (float(J[i]), (c, g, int(m[i])))
    return best


def _objective(weights, prop) -> float:
    D = np.array([[prop.proposal.examples[ab] for ab in ABILITIES]], float)
    return sum(w * LAWS["amount"].predict(np.array(AMOUNT_THETA[ab]), D, ABILITIES.index(ab))[0]
               for ab, w in weights.items()) / sum(weights.values())


@pytest.mark.parametrize("weights,budget,max_loss", [
    ({"math": 1, "code": 1, "general": 1}, 120, {}),
    ({"math": 3, "code": 1, "general": 0.5}, 80, {}),
    ({"math": 1, "code": 1, "general": 1}, 120, {"general": 1.62}),
])
def test_optimiser_finds_the_known_optimum_within_budget_caps_and_constraints(weights, budget, max_loss):
    caps = {"code": 25.0, "general": 500.0, "math": 500.0}  # code's source is small: its cap binds
    prop = propose_mixture(Evidence(fit=handmade_fit(caps)), weights, budget, max_loss)
    ex = prop.proposal.examples
    assert sum(ex.values()) <= budget
    assert all(ex[ab] <= caps[ab] for ab in ABILITIES)
    J_best, at = brute_force(weights, budget, caps, max_loss)
    J = _objective(weights, prop)
    assert J <= J_best + 1e-4, (ex, at, J, J_best)
    for ab, v in max_loss.items():
        assert prop.proposal.predicted[f"loss/{ab}_src"].estimate <= v + 1e-9
    if max_loss:  # the constraint changes the answer
        free = propose_mixture(Evidence(fit=handmade_fit(caps)), weights, budget, {})
        assert free.proposal.examples != ex


def test_optimiser_infeasible_constraint_says_what_is_reachable():
    reachable = 0.8 + 0.9 * 51 ** -0.4  # all 50 examples on math
    with pytest.raises(SftmixError, match=r"no mixture of at most 50 examples meets every --max-loss: the lowest predicted math "
                                          rf"loss within the budget is {reachable:.4g} \(asked <= 0.9\)"):
        propose_mixture(Evidence(fit=handmade_fit({"code": 25.0, "general": 500.0, "math": 500.0})), {"math": 1}, 50, {"math": 0.9})


# ---------------------------------------------------------------- DMT's k

def test_dmt_k_finds_the_critical_k(tmp_path):
    c, b, t = 0.5, math.log(0.6), -12.0  # math loss after stage 2 falls with the replayed proportion r
    f = dmt_study(tmp_path, [0, "1/64", "1/16", "1/8", "1/4", "1/2", 1])
    store = fill_dmt(f, {"generated_math": lambda r: c + math.exp(b + t * r),
                         "sharegpt": lambda r: 1.6 + 0.5 * r}, stage1={"generated_math": 0.52})
    eps = 0.03
    prop = propose_k(Evidence(store), eps, n_boot=20)
    # closed form: c + exp(b + t r) <= 0.52 + eps  <=>  r >= (log(0.55 - c) - b) / t; r = R / (R + new), R ~ k * 400
    r_star = (math.log(0.52 + eps - c) - b) / t
    k_star = r_star * DMT_NEW / (1 - r_star) / sum(DMT_PARTS.values())
    assert abs(prop.k - k_star) <= 0.02 * k_star + 2 / sum(DMT_PARTS.values()), (prop.k, k_star)
    assert prop.targets["loss/generated_math"].fit.selected == "mixture"
    assert prop.best_tried.k == 0.25  # the smallest tried k whose observed math loss is within eps
    # the same through the CLI: a study file running the proposed k beside the best tried one
    assert main(["study", "propose", str(f), "--dmt-k", str(eps), "--draws", "20", "--quiet"]) == 0
    runs = expand(StudyConfig(**yaml.safe_load((tmp_path / "dmtk" / "proposal.yaml").read_text())))
    assert sorted(r.config.strategy.k for r in runs) == sorted([0.25, prop.k])
    written = load_proposal(tmp_path / "dmtk" / "proposal.json")  # the file reads back as the value it was written from
    assert isinstance(written, KProposal) and written.k == pytest.approx(prop.k, abs=1e-9)
    raw = json.loads((tmp_path / "dmtk" / "proposal.json").read_text())  # nothing of the file is lost in the typed value
    assert json.dumps(written.model_dump(), sort_keys=True) == json.dumps(raw, sort_keys=True)  # as text: NaN != NaN
    with pytest.raises(SftmixError, match="no k in \\[0, 1\\] keeps loss/generated_math within 0.001"):
        store = fill_dmt(dmt_study(tmp_path, [0, "1/16", "1/4", 1], "d2"), {"generated_math": lambda r: c + math.exp(b + t * r)},
                         stage1={"generated_math": 0.4})
        propose_k(Evidence(store), 0.001, n_boot=10)


# ---------------------------------------------------------------- the CLI on synthetic stores

TRUTH = {"generated_math": amount_truth(0.8, math.log(0.9), 0.4, "math"),
         "generated_code": amount_truth(0.6, math.log(0.7), 0.5, "code"),
         "sharegpt": joint_truth(1.5, 0.5, 0.3, [0.5, -1.0])}


def test_fit_propose_export_on_a_synthetic_study(tmp_path, capsys):
    f = mixture_study(tmp_path, DESIGN, replicates=2)
    store = fill(f, TRUTH, fail=1, running=1, only=len(DESIGN) * 2 - 2, sd_noise=0.02)
    # a run an earlier version of the study file left behind, under a current configuration's label:
    # it must enter neither the fit nor the report
    first = store.runs()[0]
    stale = "stale0000000"
    store.start(stale, first.label, first.point, first.config)
    store.finish(stale, "ck", "ev", [Metric(stale, "loss", "generated_math", 9.0)], 1e4, 1e6,
                 [Sample(stale, "loss", "generated_math", f"generated_math-{i}", 9.0 * 100, 100.0) for i in range(32)], (),
                 [DataPart(stale, 1, "stage1_multitask", "generated_code", "code", 0, 5.0, 500.0, 400.0, "generated")])
    assert main(["study", "fit", str(f), "--draws", "40", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "26 of 28 runs done (1 failed, 1 running); fitting on the done ones" in out
    doc = load_fit(tmp_path / "syn")
    assert len(doc.configurations) == len(DESIGN) and doc.configurations[0].seeds == [0, 1]
    with open(tmp_path / "syn" / "report" / "table.csv") as fh:
        assert max(float(r["loss/generated_math"]) for r in csv.DictReader(fh)) < 5  # the stale 9.0 stayed out
    sel = {n: r.selected for n, r in doc.targets.items()}
    assert sel == {"loss/generated_code": "amount", "loss/generated_math": "amount", "loss/sharegpt": "joint"}
    for r in doc.targets.values():
        loo = r.law.loo
        assert loo.mre < 0.03 and loo.spearman > 0.8 and 0 <= loo.coverage <= 1
        assert len(loo.predicted) == len(DESIGN)
    rep = tmp_path / "syn" / "report"
    html = (rep / "report.html").read_text()
    assert "<h2>Laws</h2>" in html and "LOO MAE" in html and "law__loss_generated_math.png" in html
    with open(rep / "laws_validation.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["configuration"] for r in rows} == {c.label for c in doc.configurations}

    assert main(["study", "propose", str(f), "--weights", "math=1,code=1,general=1", "--draws", "40", "--quiet"]) == 0
    prop = load_proposal(tmp_path / "syn" / "proposal.json")
    assert isinstance(prop, MixtureProposal) and prop.study_file == str(tmp_path / "syn" / "proposal.yaml")
    assert prop.proposal.total <= 96 and prop.budget == 96  # default budget: the largest total tried
    assert prop.proposal.weighted.estimate <= prop.best_tried.weighted_predicted + 1e-9
    study = yaml.safe_load((tmp_path / "syn" / "proposal.yaml").read_text())
    runs = expand(StudyConfig(**study))
    assert len(runs) == 4 and {r.point["_config"] for r in runs} == {"proposal", "best tried"}
    proposed = next(r for r in runs if r.point["_config"] == "proposal").config.strategy
    assert {s: round(proposed.fraction[s] * {"generated_math": 400, "generated_code": 400, "sharegpt": 300}[s])
            for s in proposed.sources} == prop.proposal.sources
    assert study["compare"][0]["weights"] and len(study["predictions"]) == 4

    assert main(["study", "export", str(f), "--olmix", str(tmp_path / "olmix")]) == 0
    with open(tmp_path / "olmix" / "ratios.csv") as fh:
        ratios = list(csv.DictReader(fh))
    with open(tmp_path / "olmix" / "metrics.csv") as fh:
        metrics = list(csv.DictReader(fh))
    assert len(ratios) == len(metrics) == 26 and list(ratios[0]) == ["run", *ABILITIES]
    assert all(abs(sum(float(r[a]) for a in ABILITIES) - 1) < 1e-9 for r in ratios)
    assert "loss/generated_math" in metrics[0]


def test_report_says_no_law_fits(tmp_path, capsys):
    rng = np.random.default_rng(0)
    level = {tuple(x): 1.0 + v for x, v in zip(X.tolist(), rng.normal(0, 0.05, len(X)))}  # unrelated to the amounts
    f = mixture_study(tmp_path, DESIGN, replicates=1)
    fill(f, {"generated_math": lambda x: np.array([level[tuple(x[0].tolist())]])}, sd_item=0.0, sd_noise=0.01)
    assert main(["study", "fit", str(f), "--draws", "30", "--quiet"]) == 0
    assert load_fit(tmp_path / "syn").targets["loss/generated_math"].selected is None
    md = (tmp_path / "syn" / "report" / "report.md").read_text()
    assert "no law fits at this scale" in md
    assert main(["study", "propose", str(f), "--weights", "math=1", "--quiet"]) == 2
    assert "drop math from --weights" in capsys.readouterr().err
    assert not (tmp_path / "syn" / "proposal.yaml").exists()


def _fails(capsys, argv: list[str], expect: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(expect, err), err
    return err


def _nothing_written(folder: Path, fit_too: bool) -> None:
    left = {p.name for p in folder.iterdir()}
    assert not left & {"proposal.yaml", "proposal.json"}
    if fit_too:
        assert "fit.json" not in left
    assert not [p for p in folder.rglob("*.tmp")]


@pytest.mark.parametrize("case", ["too_few", "no_variation", "no_loss", "no_data"])
def test_fit_bad_input_is_a_clear_exit_2_with_nothing_written(tmp_path, capsys, case):
    design, truth, fill_kw = DESIGN, TRUTH, {}
    if case == "no_data":  # a run the store keeps no data rows for: nothing reads them back from elsewhere
        expect = r"the store does not say what 1 configuration\(s\) trained on \(e.g. .*\): rerun them"
    elif case == "too_few":
        fill_kw, expect = {"only": 3}, (r"3 configuration\(s\) are done, fewer than any law needs: the amount law needs 4, "
                                        r"the mixture law needs 5, the joint law needs 6")
    elif case == "no_variation":
        design, expect = [(32, 32, 32)], "all trained on the same amounts of every ability"
    else:
        truth, expect = {}, "measured no held-out loss"
    f = mixture_study(tmp_path, design, replicates=2)
    fill(f, truth, **fill_kw)
    if case == "no_data":
        with sqlite3.connect(tmp_path / "syn" / "results.sqlite") as con:
            con.execute("DELETE FROM data WHERE run_id = (SELECT MIN(id) FROM runs)")
    _fails(capsys, ["study", "fit", str(f), "--draws", "20", "--quiet"], expect)
    _nothing_written(tmp_path / "syn", fit_too=True)


@pytest.fixture(scope="module")
def fitted_without_general(tmp_path_factory):
    """A synthetic study fitted once; its general ability has no held-out loss."""
    tmp = tmp_path_factory.mktemp("nogeneral")
    f = mixture_study(tmp, DESIGN, replicates=1)
    fill(f, {k: v for k, v in TRUTH.items() if k != "sharegpt"})
    assert main(["study", "fit", str(f), "--draws", "20", "--quiet"]) == 0
    return f


@pytest.mark.parametrize("args,expect", [
    (["--weights", "math=1,reasoning=1"], "unknown ability 'reasoning'; the study's abilities: code, general, math"),
    (["--weights", "general=1"], "ability 'general' has no held-out loss in this study"),
    (["--weights", "math=1", "--max-loss", "code=0.1"], "no mixture of at most 96 examples meets every --max-loss: the lowest "
                                                         "predicted code loss within the budget is"),
    (["--weights", "math=1", "--budget", "0.5"], "a mixture needs at least 1 example"),
    (["--weights", "math=-1"], "--weights: math in .math=-1.: a weight must be >= 0"),
    ([], "give --weights"),
])
def test_propose_bad_input_is_a_clear_exit_2_with_nothing_written(fitted_without_general, capsys, args, expect):
    f = fitted_without_general
    _fails(capsys, ["study", "propose", str(f), *args, "--draws", "20", "--quiet"], expect)
    _nothing_written(f.parent / "syn", fit_too=False)


def test_a_run_restarted_under_a_new_label_takes_it(tmp_path):
    """A run started again after the study file relabelled it (an interrupted run) must join its
    configuration: the store keeps the new label and point, or the fit sees two configurations."""
    store = Store(tmp_path / "results.sqlite")
    store.start("r1", "seed=1 _mix=64-0-0", {"_mix": "64-0-0", "seed": 1}, {})
    store.start("r1", "seed=1 _mix=6:0:0", {"_mix": "6:0:0", "seed": 1}, {})
    row = store.runs()[0]
    assert row.label == "seed=1 _mix=6:0:0" and row.point["_mix"] == "6:0:0"


def test_a_fallback_stands_in_for_missing_data_only(tmp_path):
    """No data directory and no hub: the fallback, said in the notes. A data file that is there
    but broken stays an error: a typo must not silently train on toy data."""
    study = StudyConfig(name="fb", base={"model": "tiny", "data_dir": str(tmp_path / "data"), "sources": {"gsm8k": {"limit": 50}},
                                         "strategy": {"name": "individual", "sources": ["gsm8k"]}},
                        fallbacks={"gsm8k": {"builtin": "generated_math", "size": 50}})
    notes: list[str] = []
    (run,) = expand(study, notes=notes)
    assert run.config.sources["gsm8k"].builtin == "generated_math" and notes[0].startswith("gsm8k: FALLBACK to generated_math")
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    (tmp_path / "data" / "gsm8k" / "train.jsonl").write_text('{"question": "1+1?"}\nnot json\n')
    with pytest.raises(SftmixError) as e:
        expand(study, notes=[])
    assert "FALLBACK" not in str(e.value) and "train.jsonl" in str(e.value)


@pytest.mark.parametrize("name", ["amount", "mixture", "joint", "loglinear"])
def test_each_law_value_is_consistent(name):
    """A law is a value: its parameter names, bounds and starts agree in length, its starts lie in
    its bounds, and its analytic Jacobian is the finite-difference one (a wrong Jacobian would
    still fit, slowly and to the wrong optimum)."""
    law = CANDIDATES[name]
    rng = np.random.default_rng(3)
    X = rng.uniform(5, 200, (9, 3))
    y = 1.0 + rng.uniform(0, 0.5, 9)
    lo, hi = law.bounds(3)
    names = law.param_names(["code", "general", "math"], 2)
    assert len(names) == len(lo) == len(hi) == law.n_params(3) and law.min_configs(3) == law.n_params(3) + 1
    starts = law.starts(X, y, 2, rng)
    assert starts and all(len(s) == len(names) for s in starts)
    theta = np.clip(starts[0], lo + 1e-3, hi - 1e-3) if np.isfinite(lo).all() else starts[0]
    J = law.jacobian(theta, X, 2)
    eps = 1e-6
    fd = np.stack([(law.predict(theta + eps * e, X, 2) - law.predict(theta - eps * e, X, 2)) / (2 * eps)
                   for e in np.eye(len(theta))], axis=1)
    assert J.shape == fd.shape and np.allclose(J, fd, rtol=1e-4, atol=1e-6), (J, fd)
    assert law.cannot(X, 2) is None and law.cannot(np.ones((9, 3)), 2) is not None


def test_a_store_of_an_earlier_version_still_gives_a_runnable_proposal(tmp_path):
    """Runs recorded before the held-out and benchmark settings had sections keep their flat eval
    in the store (their ids are unchanged, so they stay done); the proposal built from them is a
    study file today's sftmix runs."""
    f = mixture_study(tmp_path, DESIGN, replicates=1)
    fill(f, TRUTH)
    db = tmp_path / "syn" / "results.sqlite"
    with sqlite3.connect(db) as con:
        for rid, config in con.execute("SELECT id, config FROM runs").fetchall():
            cfg = validate(RunConfig, json.loads(config), rid)
            flat = {**cfg.legacy_dump(), "strategy": cfg.strategy.model_dump()}
            con.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps(flat), rid))
    assert main(["study", "fit", str(f), "--draws", "20", "--quiet"]) == 0
    assert main(["study", "propose", str(f), "--weights", "math=1,code=1", "--draws", "20", "--quiet"]) == 0
    study, runs = load_study(str(tmp_path / "syn" / "proposal.yaml"))
    assert runs and all(r.config.heldout.samples == 8 for r in runs)
