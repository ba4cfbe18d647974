"""Nothing silent: every input of the newer surfaces (strategies, user tasks, study files with
their profiles, claims and predictions, the arguments of fit / propose / export, the store and
fit.json) is checked before work starts. Each case exits 2 with one message naming the field,
argument or file and what was expected, prints no traceback, starts no training and leaves
nothing half-written; a store or fit file it refuses is left byte for byte as it was.

The last tests show what each silent case did before (the misspelt fraction key trained on the
whole pool, a repeated weight kept the last, ...), so the checks cannot pass vacuously."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

import sftmix.analysis.report as report
from sftmix.analysis.findings import pairs
from sftmix.analysis.results import Group
from lawsynth import DESIGN, amount_truth, fill, mixture_study
from sftmix.analysis.propose import load_proposal
from sftmix.cli import main
from sftmix.cli.study import _budget, _weights
from sftmix.config import RunConfig, load_config, validate
from sftmix.errors import SftmixError
from sftmix.eval.runner import TaskDone
from sftmix.eval.tasks import resolve
from sftmix.io import read_record, write_all
from sftmix.study.runner import ingest, load_study, status_rows, study_dir
from sftmix.study.store import APPLICATION_ID, SCHEMA, Store
from sftmix.train.strategies import multitask, run_id
from test_cli_bad_input import run_cfg, study_cfg

HERE = Path(__file__).parent
TRUTH = {"generated_math": amount_truth(0.5, np.log(0.8), 0.4, "math"),
         "generated_code": amount_truth(0.6, np.log(0.7), 0.5, "code"),
         "sharegpt": amount_truth(1.0, np.log(0.9), 0.3, "general")}


@pytest.fixture(autouse=True)
def user_tasks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- strategies and user tasks in a run config

def strategy(**st) -> callable:
    return lambda t: ["train", str(run_cfg(t, strategy=st))]


def tasks(*specs: str) -> callable:
    return lambda t: ["train", str(run_cfg(t, eval={"tasks": list(specs)}, heldout={"sources": ["generated_math"], "samples": 4}))]


MATH, CODE = "generated_math", "generated_code"
RUN_CASES = [
    ("misspelt fraction key", strategy(name="multitask", sources=[MATH, CODE], fraction={"generated_mth": 0.5}),
     "strategy: Value error, fraction: 'generated_mth' is not a source of this multitask strategy (did you mean 'generated_math'?)"),
    ("fraction key of an unused source", strategy(name="individual", sources=[MATH], fraction={CODE: 0.5}),
     "'generated_code' is not a source of this individual strategy"),
    ("fraction value 0", strategy(name="multitask", sources=[MATH, CODE], fraction={MATH: 0}), "fraction.generated_math must be in (0, 1]"),
    ("fraction 1.5", strategy(name="sequential", sources=[MATH, CODE], fraction=1.5), "fraction must be in (0, 1], got 1.5"),
    ("specialised under multitask", strategy(name="multitask", sources=[MATH], specialised=[CODE]),
     "unknown field 'specialised' of the multitask strategy; valid fields: fraction, name, sources"),
    ("k under multitask", strategy(name="multitask", sources=[MATH, CODE], k=0.5), "unknown field 'k' of the multitask strategy"),
    ("k under individual", strategy(name="individual", sources=[MATH], k="1/16"), "unknown field 'k' of the individual strategy"),
    ("general under sequential", strategy(name="sequential", sources=[MATH], general=CODE), "unknown field 'general' of the sequential"),
    ("sources under dmt", strategy(name="dmt", specialised=[MATH], general=CODE, k=0.5, sources=[MATH]),
     "unknown field 'sources' of the dmt strategy; valid fields: fraction, name, specialised, general, k"),
    ("k under mixed_sequential", strategy(name="mixed_sequential", specialised=[MATH], general=CODE, k=0.25),
     "unknown field 'k' of the mixed_sequential strategy"),
    ("misspelt fraction field", strategy(name="multitask", sources=[MATH], fractoin=0.5), "unknown field 'fractoin' of the multitask "
                                                                                           "strategy (did you mean 'fraction'?)"),
    ("individual with two sources", strategy(name="individual", sources=[MATH, CODE]), "strategy.sources: Value error, the individual strategy trains on one source, e.g. [gsm8k]; got 2"),
    ("dmt without k", strategy(name="dmt", specialised=[MATH], general=CODE), "strategy.k: Field required"),
    ("dmt without general", strategy(name="dmt", specialised=[MATH], k=0.5), "strategy.general: Field required"),
    ("source named twice", strategy(name="multitask", sources=[MATH, MATH]), "source 'generated_math' is named twice"),
    ("general also specialised", strategy(name="dmt", specialised=[MATH, CODE], general=MATH, k=0.5), "'generated_math' is named twice"),
    ("strategy without a name", strategy(sources=[MATH]), "strategy.name: missing; valid: individual, multitask"),
    ("misspelt strategy name", strategy(name="multi_task", sources=[MATH]), "strategy.name: unknown strategy 'multi_task' (did you mean "
                                                                             "'multitask'?)"),
    ("unknown task name", tasks("loss", "gsm9k"), "eval.tasks: unknown task 'gsm9k' (did you mean 'gsm8k'?)"),
    ("malformed task path", tasks("loss", "bad path:x"), ".yaml: invalid config\n  eval.tasks: Value error, task 'bad path:x': a "
                                                          "user task is named as package.module:attribute"),
    ("user task not importable", tasks("loss", "usertasks.nosuch:task"), "eval.tasks: task 'usertasks.nosuch:task': cannot import"),
    ("user task not a Task", tasks("loss", "usertasks.exact:not_a_task"), "usertasks.exact.not_a_task is a str, not a"),
    ("two user tasks of one name", tasks("usertasks.exact:arithmetic", "usertasks.bad:arithmetic_again"),
     "are both named 'arithmetic'"),
    ("a task named twice", tasks("loss", "usertasks.bad:fine", "usertasks.bad:fine"), "'usertasks.bad:fine' is named twice"),
]


@pytest.mark.parametrize("case,build,expected", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_run_configs_stop_before_any_training(case, build, expected, tmp_path, capsys):
    code, _, err = run(build(tmp_path), capsys)
    assert code == 2, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("stage*")), "work started before the input was checked"


# ---------------------------------------------------------------- user tasks' results

EVAL_CASES = [
    ("NaN headline metric", "usertasks.bad:nan_headline", "task 'nan_headline': its headline metric 'accuracy' is nan; expected a finite"),
    ("NaN row value", "usertasks.bad:nan_row", "task 'nan_row': item 'q2': score = nan"),
    ("infinite row value", "usertasks.bad:inf_row", "task 'inf_row': item 'only': score = inf"),
    ("metrics that do not fit the task's own type", "usertasks.bad:typed_nan_headline",
     "task 'typed_nan_headline': its metrics do not fit ScoreMetrics (n: Input should be a valid integer"),
]


@pytest.mark.parametrize("case,spec,expected", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_a_user_task_result_that_is_not_a_finite_number_is_refused(case, spec, expected, tmp_path, capsys):
    code, _, err = run(["eval", "tiny", "--tasks", spec, "--out", str(tmp_path / "ev"), "--quiet"], capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not list((tmp_path / "ev").glob("task_*.json")) and not (tmp_path / "ev" / "results.json").exists()


def test_a_user_task_s_own_metrics_type_is_checked_and_kept(tmp_path, capsys):
    code, out, err = run(["eval", "tiny", "--tasks", "usertasks.bad:typed_fine", "--out", str(tmp_path / "ev"), "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(out[: out.rindex("}") + 1]) == {"typed_fine": {"score": 0.5, "n": 2}}
    kept = read_record(tmp_path / "ev" / "task_typed_fine.json", TaskDone).metrics
    assert (kept.own(), kept.wall_s is not None) == ({"score": 0.5, "n": 2}, True)


# ---------------------------------------------------------------- study files

def test_a_claim_or_prediction_whose_group_matches_no_run_is_said_before_the_runs(tmp_path, capsys):
    """A typo in a claim's group (or a profile without that configuration) is said by `study
    status` and `study run` before anything runs; a nested mapping selects as its dotted paths do."""
    loss = "loss/generated_math"
    path = study_cfg(tmp_path, grid={"strategy.name": ["multitask", "individual"], "seed": [0, 1]},
                     compare=[{"a": "multitask", "b": "sequentail", "metric": loss, "claim": "a typo"},
                              {"a": {"strategy.name": "multitask"}, "b": {"strategy": {"name": "individual"}}, "metric": loss},
                              {"a": "multitask", "b": {"strategy.name": "individual", "model": "tiny"}, "metric": loss}],
                     predictions=[{"a": {"strategy.name": "dmt"}, "metric": loss, "estimate": 1.0, "low": 0.5, "high": 1.5},
                                  {"a": {"strategy": {"name": "individual"}}, "metric": loss, "estimate": 1.0, "low": 0.5, "high": 1.5}])
    code, out, err = run(["study", "status", str(path)], capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2, err
    assert ("compare.0: no configuration matches 'sequentail' (of the 2 configurations of this study); the claim 'a typo' "
            "will be reported as not tested") in warned[0]
    assert "predictions.0.a: strategy.name=dmt matches 0 of the 2 configurations of this study, not one" in warned[1]
    assert "4 runs" in out
    study_cfg_doc, runs = load_study(str(path))
    groups = {r.label.split(" ", 1)[1]: Group(r.label, r.point, r.config.model_dump()) for r in runs if r.point["seed"] == 0}
    nested, dotted = study_cfg_doc.compare[1], study_cfg_doc.compare[1].model_copy(update={"b": {"strategy.name": "individual"}})
    assert pairs(list(groups.values()), nested)[0] == pairs(list(groups.values()), dotted)[0] != []


def study(**fields) -> callable:
    return lambda t: ["study", "status", str(study_cfg(t, **fields))]


def profile(**prof) -> callable:
    return study(profiles={"small": prof})


LOSS_MATH = "loss/generated_math"
PRED = {"a": {"seed": 0}, "metric": LOSS_MATH, "estimate": 1.0, "low": 0.5, "high": 1.5}
STUDY_CASES = [
    ("profile zip as a list", profile(zip=[1, 2]), "profiles.small.zip: expected a mapping of axis -> list of values, got list"),
    ("profile axis as a number", profile(grid={"seed": 3}), "profiles.small.grid.seed: expected a non-empty list of values, got 3"),
    ("profile fallbacks as a list", profile(fallbacks=["generated_math"]), "profiles.small.fallbacks: expected a mapping of source name"),
    ("typo in a profile's fallback", profile(fallbacks={"gsm8k": {"bultin": "generated_math"}}),
     "profiles.small.fallbacks.gsm8k: Value error, unknown field 'bultin' (did you mean 'builtin'?)"),
    ("typo in a fallback", study(fallbacks={"gsm8k": {"builtin": "generated_math", "sise": 50}}), "fallbacks.gsm8k: Value error, "
                                                                                                  "unknown field 'sise'"),
    ("unknown profile key", profile(modle="tiny"), "profiles.small.modle: unknown field (did you mean 'model'?)"),
    ("profile zip of unequal lengths", profile(zip={"seed": [0, 1], "_x": ["a"]}), "profiles.small.zip: zipped axes must have equal "
                                                                                    "lengths, got _x: 1, seed: 2"),
    ("empty grid axis", study(grid={"seed": []}), "grid.seed: List should have at least 1 item"),
    ("zip of unequal lengths", study(zip={"seed": [0, 1], "_x": ["a"]}), "zip: zipped axes must have equal lengths"),
    ("prediction low above high", study(predictions=[{**PRED, "low": 2.0, "high": 1.0}]), "predictions.0: Value error, low (2) is above "
                                                                                          "high (1)"),
    ("prediction NaN estimate", study(predictions=[{**PRED, "estimate": float("nan")}]), "predictions.0.estimate: Input should be a finite number (got nan)"),
    ("prediction metric without its task", study(predictions=[{**PRED, "metric": "generated_math"}]),
     "predictions.0.metric: metric 'generated_math' is not task/metric"),
    ("prediction metric not measured", study(predictions=[{**PRED, "metric": "loss/sharegpt"}]),
     "predictions.0.metric: 'loss/sharegpt' is not measured by this study's runs; they measure loss/generated_code, loss/generated_math"),
    ("prediction weights NaN", study(predictions=[{**PRED, "metric": "w", "weights": {LOSS_MATH: float("nan")}}]),
     "predictions.0.weights.loss/generated_math: Input should be a finite number (got nan)"),
    ("claim metric of an unknown task", study(compare=[{"a": "x", "b": "y", "metric": "gsm8kk/accuracy"}]),
     "compare.0.metric: unknown task 'gsm8kk' (did you mean 'gsm8k'?)"),
    ("claim metric not a headline", study(compare=[{"a": "x", "b": "y", "metric": ["gsm8k/acc"]}]),
     "compare.0.metric: unknown headline metric of gsm8k 'acc' (did you mean 'accuracy'?)"),
    ("claim metric without its task", study(compare=[{"a": "x", "b": "y", "metric": "accuracy"}]), "compare.0.metric: metric 'accuracy' "
                                                                                                     "is not task/metric"),
    ("claim loss of an unknown source", study(compare=[{"a": "x", "b": "y", "metric": "loss/gsm8kk"}]),
     "unknown loss source 'gsm8kk' (did you mean 'gsm8k'?)"),
    ("claim weights negative", study(compare=[{"a": "x", "b": "y", "metric": "w", "weights": {LOSS_MATH: -1}}]),
     "weights.loss/generated_math must be >= 0, got -1"),
    ("claim weighted metric unknown", study(compare=[{"a": "x", "b": "y", "metric": "w", "weights": {"loss/sharegp": 1}}]),
     "compare.0.weights: unknown loss source 'sharegp' (did you mean 'sharegpt'?)"),
    ("study user task not importable", lambda t: ["study", "status", str(study_cfg(t, grid={"eval.tasks": [["loss"], ["usertasks.x:t"]]}))],
     "run 'tasks=usertasks.x:t': eval.tasks: task 'usertasks.x:t': cannot import usertasks.x"),
    ("study with an unknown task", lambda t: ["study", "status", str(study_cfg(t, grid={"eval.tasks": [["loss", "humaneva"]]}))],
     "eval.tasks: unknown task 'humaneva' (did you mean 'humaneval'?)"),
    ("a grid value listed twice", study(grid={"seed": [0, 0]}), "grid.seed: lists 0 twice (at 0 and 1)"),
    ("a profile's grid value listed twice", profile(grid={"train.lr": [0.1, 0.2, 0.1]}), "profiles.small.grid.train.lr: lists 0.1 twice (at 0 and 2)"),
    ("a million replicates", study(grid={"train.lr": [0.1]}, replicates=10**6),
     "the grid makes 1,000,000 runs (train.lr: 1 x replicates: 1,000,000); a study holds at most 10,000"),
    ("replicates and a seed axis", study(replicates=3), "replicates: 3 and a 'seed' axis in grid both set the seeds"),
    ("an unknown source in one run", study(grid={"strategy.sources": [["generated_math"], ["generated_mth"]]}),
     "run 'sources=generated_mth': unknown source 'generated_mth' (did you mean 'generated_math'?)"),
    ("study with two tasks of one name", lambda t: ["study", "status", str(study_cfg(
        t, grid={"eval.tasks": [["usertasks.exact:arithmetic", "usertasks.bad:arithmetic_again"]]}))], "are both named 'arithmetic'"),
]


@pytest.mark.parametrize("case,build,expected", STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_bad_study_files_are_refused_when_read(case, build, expected, tmp_path, capsys):
    code, _, err = run(build(tmp_path), capsys)
    assert code == 2, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "study").exists(), "the study wrote something before its file was checked"


# ---------------------------------------------------------------- fit, propose, export, the store and fit.json

@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A synthetic mixture study, its store filled from known laws and fitted once."""
    tmp = tmp_path_factory.mktemp("fitted")
    f = mixture_study(tmp, DESIGN, replicates=1)
    fill(f, TRUTH)
    assert main(["study", "fit", str(f), "--draws", "20", "--quiet"]) == 0
    return f


def clone(study_file: Path, tmp: Path) -> Path:
    """A copy of the fitted study (file and folder) under ``tmp``."""
    doc = yaml.safe_load(study_file.read_text())
    shutil.copytree(doc["output_dir"], tmp / "syn")
    doc["output_dir"] = str(tmp / "syn")
    f = tmp / "syn.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    return f


def propose(*args: str) -> callable:
    return lambda f, t: ["study", "propose", str(f), *args, "--draws", "20", "--quiet"]


def damage(name: str, data: bytes | None = None, cut: int | None = None, folder: bool = False) -> callable:
    """Replace (or cut short) a file of the study folder, then propose."""
    def build(f, t):
        p = t / "syn" / name
        if folder:
            p.mkdir()
        elif cut is not None:
            p.write_bytes(p.read_bytes()[:cut])
        else:
            p.write_bytes(data)
        return propose("--weights", "math=1,code=1")(f, t)
    return build


def foreign_store(f, t):
    db = t / "syn" / "results.sqlite"
    db.unlink()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()
    return ["study", "fit", str(f), "--quiet"]


def export_blocked(f, t):
    (t / "olmix" / "metrics.csv").mkdir(parents=True)
    return ["study", "export", str(f), "--olmix", str(t / "olmix")]


ARG_CASES = [
    ("weight given twice", propose("--weights", "math=1,math=2"), "--weights: ability 'math' is given twice in 'math=1,math=2'"),
    ("weight NaN", propose("--weights", "math=nan,code=1"), "--weights: math in 'math=nan,code=1': expected a finite number"),
    ("weight infinite", propose("--weights", "math=inf"), "--weights: math in 'math=inf': expected a finite number"),
    ("weights all zero", propose("--weights", "math=0,code=0"), "the weights in 'math=0,code=0' sum to 0"),
    ("weight not a number", propose("--weights", "math=lots"), "--weights: math in 'math=lots': expected a number, got 'lots'"),
    ("budget NaN", propose("--weights", "math=1", "--budget", "nan"), "--budget: budget: expected a finite number, got 'nan'"),
    ("budget infinite", propose("--weights", "math=1", "--budget", "inf"), "--budget: budget: expected a finite number"),
    ("max-loss NaN", propose("--weights", "math=1", "--max-loss", "code=nan"), "--max-loss: code in 'code=nan': expected a "
                                                                               "finite number"),
    ("max-loss given twice", propose("--weights", "math=1", "--max-loss", "code=2", "--max-loss", "code=3"),
     "--max-loss: ability 'code' is given twice (2 and 3)"),
    ("dmt-k NaN", propose("--dmt-k", "nan"), "--dmt-k: EPS: expected a finite number"),
    ("dmt-k with weights", propose("--dmt-k", "0.1", "--weights", "math=1"), "--dmt-k proposes DMT's replay k and takes no --weights"),
    ("dmt-k with a budget", propose("--dmt-k", "0.1", "--budget", "50"), "takes no --budget"),
    ("fit.json not JSON", damage("fit.json", b'{"version": 1, "key": '), "fit.json: not a readable fit"),
    ("fit.json of another shape", damage("fit.json", b'{"version": 1, "key": "k", "unit": "examples"}'),
     "fit.json: not a fit made by `sftmix study fit` (draws: Field required)"),
    ("fit.json a list", damage("fit.json", b"[1, 2]"), "fit.json: not a fit made by `sftmix study fit`"),
    ("fit.json target without a law", lambda f, t: _rewrite_fit(f, t, lambda d: d["targets"]["loss/generated_math"].pop("selected")),
     "targets.loss/generated_math.selected: Field required"),
    ("fit.json selects a law it lacks", lambda f, t: _rewrite_fit(f, t, lambda d: d["targets"]["loss/generated_math"]["laws"].pop(
        d["targets"]["loss/generated_math"]["selected"])), "targets.loss/generated_math.selected: "),
    ("fit.json law of an unknown status", lambda f, t: _rewrite_fit(f, t, lambda d: [
        law.update(status="half fitted") for law in d["targets"]["loss/generated_math"]["laws"].values()]), "status: Input should be"),
    ("store cut short", damage("results.sqlite", cut=6000), "results.sqlite: not a readable sftmix results database"),
    ("store overwritten with text", damage("results.sqlite", b"SQLite format 3\x00" + b"\x00" * 100), "not a readable sftmix results"),
    ("store of another program", foreign_store, "results.sqlite: not a readable sftmix results database: it is another program's SQLite "
                                                "file (tables invoices)"),
    ("proposal.yaml is a folder", damage("proposal.yaml", folder=True), "proposal.yaml: cannot write it (is a folder); none of"),
    ("export target is a folder", export_blocked, "metrics.csv: cannot write it (is a folder); none of"),
]


def _rewrite_fit(f, t, change) -> list[str]:
    p = t / "syn" / "fit.json"
    doc = json.loads(p.read_text())
    change(doc)
    p.write_text(json.dumps(doc))
    return propose("--weights", "math=1,code=1")(f, t)


@pytest.mark.parametrize("case,build,expected", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_bad_fit_propose_export_input_changes_nothing(case, build, expected, fitted, tmp_path, capsys):
    f = clone(fitted, tmp_path)
    argv = build(f, tmp_path)
    before = snapshot(tmp_path / "syn")
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert expected in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path / "syn") == before, "a refused command changed the study folder"
    assert not (tmp_path / "syn" / "proposal.json").exists()
    assert not (tmp_path / "olmix" / "ratios.csv").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_relabelled_study_is_refitted_not_crashed(fitted, tmp_path, capsys):
    """The study file renames its configurations; `study run` relabels the stored runs. fit.json
    was fitted under the old labels: propose says so and refits, where it raised StopIteration."""
    f = clone(fitted, tmp_path)
    doc = yaml.safe_load(f.read_text())
    doc["zip"]["_mix"] = [f"mix{i}" for i in range(len(doc["zip"]["_mix"]))]
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    st, runs = load_study(str(f))
    store = Store(study_dir(st, None) / "results.sqlite")
    assert all(ingest(store, r, study_dir(st, None)) for r in runs)  # what `study run` does first: labels follow the file
    code, out, err = run(["study", "propose", str(f), "--weights", "math=1,code=1", "--draws", "20", "--quiet"], capsys)
    assert code == 0, err
    assert "was fitted on other runs, configurations (labels, grid points) or settings; refitting" in out
    assert load_proposal(tmp_path / "syn" / "proposal.json").best_tried.label.startswith("_mix=mix")


def test_a_refused_store_is_left_untouched_and_nothing_is_created_in_it(tmp_path):
    db = tmp_path / "other.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE runs (name TEXT)")  # a table of the same name, another program's
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(SftmixError, match="another program's SQLite file"):
        Store(db)
    assert db.read_bytes() == before
    assert [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")] == ["runs"]


def test_a_store_made_before_the_stamp_is_still_read_and_then_stamped(tmp_path):
    """A store made by an earlier sftmix (its tables, no application id) is recognised by its
    tables, not refused."""
    db = tmp_path / "results.sqlite"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("INSERT INTO runs (id, label, status) VALUES ('r1', 'x', 'done')")
    con.commit()
    con.close()
    assert Store(db).status("r1") == "done"
    assert sqlite3.connect(db).execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


# ---------------------------------------------------------------- a failed run keeps its cause

def test_a_failed_study_run_keeps_its_real_error(tmp_path, capsys):
    base = yaml.safe_load(run_cfg(tmp_path).read_text())
    base.pop("output_dir")
    base["sources"] = {"mine": {"path": str(tmp_path / "gone.jsonl"), "format": "alpaca", "ability": "code"}}
    base["strategy"] = {"name": "individual", "sources": ["mine"]}
    f = study_cfg(tmp_path, base=base)
    code, _, err = run(["study", "run", str(f), "--quiet"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert "1 of 1 runs failed" in last and "gone.jsonl" in last and "without a result" not in last, err
    (row,) = Store(tmp_path / "study" / "results.sqlite").runs()
    assert row.status == "failed" and "gone.jsonl" in row.first_error_line
    _, runs = load_study(str(f))
    (shown,) = status_rows(Store(tmp_path / "study" / "results.sqlite"), runs, tmp_path / "study")  # what `study status` tabulates
    assert shown[2] == "failed" and "gone.jsonl" in shown[3]
    assert "gone.jsonl" in (tmp_path / "study" / "report" / "report.html").read_text()


# ---------------------------------------------------------------- all or nothing

def test_a_report_that_fails_midway_leaves_the_previous_one_whole(fitted, tmp_path, monkeypatch, capsys):
    f = clone(fitted, tmp_path)
    assert run(["study", "report", str(f)], capsys)[0] == 0
    rep = tmp_path / "syn" / "report"
    before = snapshot(rep)
    assert "table.csv" in before and "report.html" in before

    def broken(store):  # fails after the tables and findings are written
        raise RuntimeError("disk went away")

    monkeypatch.setattr(report, "curve_figures", broken)
    with pytest.raises(RuntimeError):
        report.write_report(report.Store(tmp_path / "syn" / "results.sqlite"), rep, "t")
    assert snapshot(rep) == before
    assert not [p for p in rep.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_all_writes_every_file_or_none(tmp_path):
    (tmp_path / "b.txt").mkdir()
    with pytest.raises(SftmixError, match="b.txt: cannot write it"):
        write_all({tmp_path / "a.txt": "new", tmp_path / "b.txt": "new"})
    assert not (tmp_path / "a.txt").exists() and not list(tmp_path.glob(".*.tmp"))
    write_all({tmp_path / "a.txt": "one", tmp_path / "c.txt": b"two"})
    assert (tmp_path / "a.txt").read_text() == "one" and (tmp_path / "c.txt").read_bytes() == b"two"


# ---------------------------------------------------------------- what the silent cases did before

def test_a_misspelt_fraction_key_trained_on_the_whole_pool():
    """The stage builder reads fraction.get(source, 1): with a misspelt key every source trains
    on its whole pool. The strategy model now refuses the key before stages are built."""
    stages = multitask([MATH, CODE], {"generated_mth": 0.5})
    assert [p.fraction for p in stages[0].mixture.parts] == [1.0, 1.0]  # what would have been trained
    with pytest.raises(SftmixError, match="'generated_mth' is not a source of this multitask strategy"):
        validate(RunConfig, {"model": "tiny", "strategy": {"name": "multitask", "sources": [MATH, CODE],
                                                           "fraction": {"generated_mth": 0.5}}}, "run")


def test_fields_of_another_strategy_were_dropped():
    """`k` under multitask used to be kept on a shared model and ignored by the builder: the run
    trained without replay while its config said k = 1/16."""
    with pytest.raises(SftmixError, match="unknown field 'k' of the multitask strategy"):
        validate(RunConfig, {"model": "tiny", "strategy": {"name": "multitask", "sources": [MATH], "k": "1/16"}}, "run")


def test_run_ids_are_those_of_the_shared_strategy_model():
    """A run's id hashes its config: the per-strategy models must not change it, or every stored
    result of a study would stop matching its runs (ids computed by the previous model)."""
    repo = HERE.parent
    assert run_id(load_config(repo / "configs" / "train" / "tiny_dmt.yaml", RunConfig)) == "a4a9b2117361"
    assert run_id(load_config(repo / "configs" / "train" / "smollm2_dmt.yaml", RunConfig)) == "7707d57afcf9"
    for st, rid in [({"name": "individual", "sources": [MATH]}, "67a885aea2e9"),
                    ({"name": "multitask", "sources": [MATH, CODE], "fraction": {CODE: "1/4"}}, "2e54c0ea6808"),
                    ({"name": "sequential", "sources": [CODE, MATH], "fraction": 0.5}, "434f9708d901"),
                    ({"name": "mixed_sequential", "specialised": [MATH], "general": CODE}, "38e0d6c7fa41")]:
        assert run_id(RunConfig(model="tiny", strategy=st)) == rid, st


def test_a_repeated_weight_kept_the_last_and_nan_passed():
    with pytest.raises(argparse.ArgumentTypeError, match="given twice"):
        _weights("math=1,math=5")  # was {'math': 5.0}: the first weight silently gone
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        _weights("math=nan")  # was {'math': nan}: a proposal with NaN losses
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        _budget("nan")  # was reported as an infeasible --max-loss


def test_a_second_task_of_the_same_name_got_the_first_ones_result():
    """The runner keyed results by task name: the second task's `task_<name>.json` was the first's,
    found done, and never run. Two tasks of one name are now refused."""
    with pytest.raises(SftmixError, match="both named 'arithmetic'"):
        resolve(["usertasks.exact:arithmetic", "usertasks.bad:arithmetic_again"])
    assert [t.name for t in resolve(["loss", "usertasks.bad:fine"])] == ["loss", "fine"]


def test_a_fit_of_another_version_is_named_in_the_report_not_silently_left_out(fitted, tmp_path, capsys):
    f = clone(fitted, tmp_path)
    p = tmp_path / "syn" / "fit.json"
    doc = json.loads(p.read_text())
    code, _, err = run(["study", "report", str(f)], capsys)
    assert code == 0, err
    assert "## Laws" in (tmp_path / "syn" / "report" / "report.md").read_text()  # this version's fit is shown
    doc["version"] = doc["version"] + 100
    p.write_text(json.dumps(doc))
    code, _, err = run(["study", "report", str(f)], capsys)
    assert code == 0, err
    md = (tmp_path / "syn" / "report" / "report.md").read_text()
    assert f"{p} was made by another version of the fitting (version {doc['version']}" in md and "run `sftmix study fit` to refit" in md
    assert "## Laws" not in md
