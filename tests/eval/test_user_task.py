"""A user's own benchmark, added without editing sftmix: ``tests/usertasks/exact.py`` defines an
exact-match task over a small JSONL file, named by its Python path in a config or on the command
line. It runs in ``sftmix eval`` and in a study, gets intervals and McNemar (it is pass/fail),
can be named in a claim, and has its column in the report. A task that cannot be loaded, or that
returns rows without its metric, is an exit-2 error naming it."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import TESTS
from helpers import TINY_SOURCES, TINY_TRAIN
from sftmix.eval.tasks import Context
from sftmix.models import load_tokenizer, resolve_model
from usertasks import exact

SPEC = "usertasks.exact:arithmetic"


@pytest.fixture
def user_env(monkeypatch):
    """The user's package importable, as after `pip install` of it (child processes too)."""
    here = str(TESTS)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(here)
    return {**os.environ}


def sftmix(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sftmix.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def test_a_user_task_runs_in_a_study_with_intervals_mcnemar_a_claim_and_a_column(tmp_path, user_env):
    study = {
        "name": "own", "output_dir": str(tmp_path / "own"),
        "base": {"model": "tiny", "sources": TINY_SOURCES, "strategy": {"name": "individual", "sources": ["generated_math"]},
                 "train": TINY_TRAIN,
                 "eval": {"tasks": ["loss", SPEC]}, "heldout": {"sources": ["generated_math"], "samples": 8},
                 "curve": {"points": 0}},
        "grid": {"strategy.sources": [["generated_math"], ["generated_code"]]},
        "compare": [{"a": {"strategy.sources": ["generated_math"]}, "b": {"strategy.sources": ["generated_code"]},
                     "metric": "arithmetic/accuracy", "expect": "better", "claim": "math data helps arithmetic"}],
    }
    f = tmp_path / "own.yaml"
    f.write_text(yaml.safe_dump(study))
    r = sftmix("study", "run", str(f), "--quiet", env=user_env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    root = tmp_path / "own"
    evals = sorted(root.glob("runs/*/eval/results.json"))
    assert len(evals) == 2
    doc = json.loads(evals[0].read_text())
    assert doc["task_info"]["arithmetic"] == {"spec": SPEC, "ability": "math", "version": 1, "metrics": {"accuracy": "higher"},
                                              "binary": True}
    items = [json.loads(x) for x in (evals[0].parent / "items_arithmetic.jsonl").read_text().splitlines()]
    assert len(items) == 8 and {i["value"] for i in items} <= {0.0, 100.0}
    # the report: its column (an interval over the 8 items) and a Findings line with McNemar
    with open(root / "report" / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and all("arithmetic/accuracy" in row and row["arithmetic/accuracy"] != "" for row in table), table
    findings = json.loads((root / "report" / "findings.json").read_text())
    rows = findings if isinstance(findings, list) else findings.get("claims", findings.get("findings", []))
    (row,) = [x for x in rows if x.get("metric") == "arithmetic/accuracy"]
    assert row["items"] == 8 and row["mcnemar"] is not None and "verdict" in row and row["low"] <= row["diff"] <= row["high"]
    assert set(row["mcnemar"]) == {"a_only", "b_only", "p"} and 0 <= row["mcnemar"]["p"] <= 1
    assert "arithmetic/accuracy" in (root / "report" / "report.md").read_text()


def test_sftmix_eval_runs_a_user_task(tmp_path, user_env):
    r = sftmix("eval", "tiny", "--tasks", f"loss,{SPEC}", "--loss-sources", "generated_math", "--loss-samples", "4",
               "-o", str(tmp_path / "ev"), "--quiet", env=user_env)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert set(printed) == {"loss", "arithmetic"} and printed["arithmetic"]["n"] == 8
    rows = [json.loads(x) for x in (tmp_path / "ev" / "samples_arithmetic.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all("output" in x for x in rows)


@pytest.mark.parametrize("spec,expected", [
    ("usertasks.nosuch:arithmetic", "task 'usertasks.nosuch:arithmetic': cannot import usertasks.nosuch"),
    ("usertasks.exact:nothing", "module usertasks.exact has no attribute 'nothing'"),
    ("usertasks.exact:not_a_task", "usertasks.exact.not_a_task is a str, not a sftmix.eval.tasks.Task"),
    ("usertasks.exact:malformed", "task 'malformed': row 0 has no value for its metric 'accuracy'"),
    ("usertasks.exact", "a user task is named as package.module:attribute"),
], ids=["no module", "no attribute", "not a task", "malformed rows", "no attribute named"])
def test_a_user_task_that_cannot_load_or_returns_bad_rows_is_a_clear_error(tmp_path, user_env, spec, expected):
    r = sftmix("eval", "tiny", "--tasks", spec, "-o", str(tmp_path / "ev"), "--quiet", env=user_env)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ev" / "results.json").exists()


def test_the_user_scorer_gives_credit_for_a_right_answer(tmp_path):
    """The study test above runs the tiny model, which never answers right: a scorer that always
    gave 0 would pass it. Here the model's answers are the right ones for half the questions, and
    the scores must say exactly which (the tokenizer is the tiny model's own)."""
    rows = [json.loads(x) for x in exact.DATA.read_text().splitlines() if x.strip()]

    class Answers:  # stands in for a model that answers the even questions right
        tokenizer = load_tokenizer(resolve_model("tiny"))

        def generate(self, prompts, **kw):
            return [f" {r['answer']}" if i % 2 == 0 else " 999" for i, r in enumerate(rows)]

    metrics, scored = exact._run(Context("m", None, "vicuna", None, tmp_path, False, lambda: Answers()))
    assert [s["accuracy"] for s in scored] == [100.0 if i % 2 == 0 else 0.0 for i in range(len(rows))]
    assert metrics["accuracy"] == 50.0 and metrics["n"] == len(rows)
