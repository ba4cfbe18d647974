"""Generation through a real inference engine: vLLM's CPU build serving the embedded SmolLM2
through its OpenAI-compatible server (``tests/vllm_server.py``), against HF generate.

- greedy outputs through the server equal HF generate's, token for token, in fp32;
- GSM8K and HumanEval on a few problems score the same through both backends;
- a server that is down, or answers with errors, is a clear exit-2 error (never an empty answer
  scored as wrong), after the client's retries;
- a killed evaluation resumes without asking the server again for what was answered (counted by
  the server's own metrics).

The server tests skip, saying why, where vLLM's environment cannot be installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import TESTS
from sftmix.cli import main
from sftmix.config import EvalConfig
from sftmix.config.run import OpenAIBackendConfig
from sftmix.errors import SftmixError
from sftmix.eval.generate import HFGenerator, OpenAIGenerator
from sftmix.eval.runner import EvalResults, TaskDone, evaluate
from sftmix.io import read_record, write_json
from sftmix.models import load_tokenizer, resolve_model
from sftmix.templates import generation_prompt
from vllm_server import Unavailable, VLLMServer, free_port

pytestmark = pytest.mark.vllm

QUESTIONS = ["What is 12 + 30?", "Write a Python function that reverses a string.", "Name three colours.",
             "Janet has 3 apples and buys 5 more. How many apples does she have?", "Explain what a list is in Python.",
             "What is the capital of France?", "Sort these numbers: 5, 2, 9, 1.", "Give me a haiku about the sea."]


@pytest.fixture(scope="module")
def smollm2() -> str:
    return resolve_model("smollm2")


@pytest.fixture(scope="module")
def server(smollm2):
    try:
        s = VLLMServer(smollm2, dtype="float32")
    except Unavailable as e:
        pytest.skip(f"no vLLM server here: {e}")
    yield s
    s.close()


def openai_cfg(url: str, **kw):
    return OpenAIBackendConfig(base_url=url, **kw)


def test_greedy_outputs_through_vllm_serve_equal_hf_generate(server, smollm2):
    hf = HFGenerator(smollm2, batch_size=8, dtype="float32", progress=False)
    prompts = [generation_prompt([{"role": "user", "content": q}], "vicuna", hf.tokenizer) for q in QUESTIONS]
    want = hf.generate(prompts, max_new_tokens=48)
    served = OpenAIGenerator(smollm2, openai_cfg(server.url), progress=False)
    got = served.generate(prompts, max_new_tokens=48)
    first = [(i, a, b) for i, (a, b) in enumerate(zip(got, want)) if a != b][:1]
    assert got == want, f"{sum(a == b for a, b in zip(got, want))}/{len(want)} equal; first difference: {first}"
    assert len({len(t) for t in want}) > 1 and all(t.strip() for t in want)  # real, distinct answers were compared
    # the prompt tokens evaluation FLOPs count are those the engine itself reports reading
    usage = served.client.completions.create(model=served.served, prompt=prompts, max_tokens=1).usage
    assert hf.count_tokens(prompts, [""] * len(prompts)) == served.count_tokens(prompts, [""] * len(prompts)) == usage.prompt_tokens


def test_stop_strings_and_sampling_through_the_server(server, smollm2):
    g = OpenAIGenerator(smollm2, openai_cfg(server.url, concurrency=2), progress=False)
    p = [generation_prompt([{"role": "user", "content": "Count from 1 to 20, separated by commas."}], "vicuna", g.tokenizer)]
    full = g.generate(p, max_new_tokens=40)[0]
    assert "5" in full
    cut = g.generate(p, max_new_tokens=40, stop=["5"])[0]
    assert cut == full[: full.index("5")]
    a = g.generate(p * 3, max_new_tokens=24, temperature=1.0, seed=1)
    b = g.generate(p * 3, max_new_tokens=24, temperature=1.0, seed=1)
    assert a == b  # seeded sampling is repeatable through the server


@pytest.mark.parametrize("backend", ["openai"])
def test_gsm8k_and_humaneval_score_the_same_through_both_backends(server, smollm2, shared_data, tmp_path, backend):
    tok = load_tokenizer(smollm2)
    common = {"tasks": ["gsm8k", "humaneval"], "limit": 2, "gsm8k": {"max_new_tokens": 48}, "humaneval": {"max_new_tokens": 48},
              "data_dir": str(shared_data), "batch_size": 8}
    docs, samples = {}, {}
    for b, extra in (("hf", {}), (backend, {"openai": {"base_url": server.url}})):
        out = tmp_path / b
        docs[b] = evaluate(smollm2, EvalConfig(**common, backend=b, **extra), out, progress=False)
        samples[b] = {t: [json.loads(x) for x in (out / f"samples_{t}.jsonl").read_text().splitlines()] for t in ("gsm8k", "humaneval")}
    assert docs["hf"].tasks["gsm8k"].accuracy == docs[backend].tasks["gsm8k"].accuracy
    assert docs["hf"].tasks["humaneval"].pass_at_1 == docs[backend].tasks["humaneval"].pass_at_1
    for t in ("gsm8k", "humaneval"):
        outs = {b: [r.get("output", r.get("completion")) for r in samples[b][t]] for b in samples}
        assert outs["hf"] == outs[backend] and len(outs["hf"]) == 2, t
        # the evaluation's tokens: the prompts read as well as the answers written, the same whichever engine answered
        tokens = {b: docs[b].tasks[t].tokens_processed for b in docs}
        written = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in outs["hf"])
        assert tokens["hf"] == tokens[backend] > written + 2 * 20, (t, tokens, written)  # two prompts of 20+ tokens


def test_a_killed_evaluation_resumes_without_regenerating(server, smollm2, shared_data, tmp_path):
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "sftmix.cli", "eval", smollm2, "--tasks", "gsm8k", "--limit", "3", "--max-new-tokens", "48",
           "--backend", "openai", "--base-url", server.url, "--concurrency", "1", "--data-dir", str(shared_data), "--out", str(out),
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    cache = out / "generations.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and len(cache.read_text().splitlines()) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the evaluation ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    answered = len(cache.read_text().splitlines())
    assert 1 <= answered < 3 and not (out / "results.json").exists()
    time.sleep(1.0)  # the server finishes (aborts) what the killed client left in flight
    before = server.requests_served()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert server.requests_served() - before == 3 - answered  # only what was not answered was asked again
    assert read_record(out / "results.json", EvalResults).tasks["gsm8k"].n == 3


def test_the_answer_cache_serves_what_was_answered(tmp_path):
    path = resolve_model("tiny")
    g = HFGenerator(path, batch_size=2, progress=False)
    g.use_cache(tmp_path / "gen.jsonl")
    first = g.generate(["a b c", "d e", "f"], max_new_tokens=4)
    h = HFGenerator(path, batch_size=2, progress=False)
    h.use_cache(tmp_path / "gen.jsonl")
    h._answers = lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated"))
    assert h.generate(["a b c", "d e", "f"], max_new_tokens=4) == first
    with open(tmp_path / "gen.jsonl", "a") as f:
        f.write('{"key": "torn')  # a kill in the middle of a line
    k = HFGenerator(path, batch_size=2, progress=False)
    k.use_cache(tmp_path / "gen.jsonl")
    assert k.generate(["a b c"], max_new_tokens=4) == first[:1]
    longer = k.generate(["a b c"], max_new_tokens=5)  # other settings: generated, not served from the cache
    k.cache.close()
    assert longer != [None] and "torn" not in (tmp_path / "gen.jsonl").read_text()
    m = HFGenerator(path, batch_size=2, progress=False)  # the answer appended after the torn line is kept
    m.use_cache(tmp_path / "gen.jsonl")
    m._answers = h._answers
    assert m.generate(["a b c"], max_new_tokens=5) == longer
    with open(tmp_path / "gen.jsonl", "a") as f:
        f.write('{"key": "whole line, no text"}\n')
    with pytest.raises(SftmixError, match=r"gen.jsonl:5: not a CachedAnswer \(text: Field required\)"):
        HFGenerator(path, batch_size=2, progress=False).use_cache(tmp_path / "gen.jsonl")


# ---------------------------------------------------------------- servers that fail (a loopback double: a
# real server cannot be made to fail on demand)

class FailingServer:
    """Lists one model; answers every completion with HTTP ``status``."""

    def __init__(self, status: int = 500):
        self.completions = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "smollm2", "object": "model", "created": 0, "owned_by": "x"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.completions += 1
                self._send(status, {"error": {"message": "the engine died", "type": "internal"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def user_tasks(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def test_a_server_answering_errors_is_a_clear_error_after_retries(tmp_path, capsys, user_tasks):
    s = FailingServer(500)
    try:
        code = main(["eval", "tiny", "--tasks", "usertasks.exact:arithmetic", "--backend", "openai", "--base-url", s.url,
                     "--out", str(tmp_path / "ev"), "--quiet"])
    finally:
        s.close()
    err = capsys.readouterr().err
    assert code == 2 and f"generation server {s.url} answered HTTP 500: the engine died" in err and "Traceback" not in err, err
    assert s.completions >= 4  # the first request and its 3 retries (eval.openai.max_retries)
    assert not (tmp_path / "ev" / "samples_arithmetic.jsonl").exists()  # no answer was scored


def test_a_server_that_is_down_is_a_clear_error(tmp_path, capsys, user_tasks):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["eval", "tiny", "--tasks", "usertasks.exact:arithmetic", "--backend", "openai", "--base-url", url,
                 "--out", str(tmp_path / "ev"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"generation server {url} is not reachable" in err and "is it running?" in err, err
    assert not (tmp_path / "ev" / "task_arithmetic.json").exists()


def test_the_served_model_must_be_one_the_server_serves(tmp_path):
    s = FailingServer()
    try:
        with pytest.raises(SftmixError, match="does not serve 'other'; it serves smollm2"):
            OpenAIGenerator(resolve_model("tiny"), openai_cfg(s.url, served_model="other"), progress=False)
        with pytest.raises(SftmixError, match="backend openai needs the server's address"):
            OpenAIGenerator(resolve_model("tiny"), openai_cfg(None), progress=False)
    finally:
        s.close()


def test_answers_cached_for_one_model_are_not_served_for_another(tmp_path, user_tasks):
    """The cache lives in the evaluation folder; its key holds the model and its weights, so the
    same folder reused for another model generates anew (and the finished task, kept under a key
    of the model too, is measured again rather than reported for the other model)."""
    a = tmp_path / "a"
    shutil.copytree(resolve_model("tiny"), a)
    cfg = EvalConfig(tasks=["usertasks.exact:arithmetic"], backend="hf", batch_size=8)
    evaluate(str(a), cfg, tmp_path / "ev", progress=False)
    cached = (tmp_path / "ev" / "generations.jsonl").read_text().splitlines()
    assert len(cached) == 8
    b = tmp_path / "b"
    shutil.copytree(a, b)
    evaluate(str(b), cfg, tmp_path / "ev", progress=False)
    assert len((tmp_path / "ev" / "generations.jsonl").read_text().splitlines()) == 16  # generated for b, not served
    (tmp_path / "ev" / "task_arithmetic.json").unlink()
    evaluate(str(b), cfg, tmp_path / "ev", progress=False)
    assert len((tmp_path / "ev" / "generations.jsonl").read_text().splitlines()) == 16  # b's own answers: served


def test_a_finished_task_is_reused_only_under_the_settings_that_measured_it(tmp_path, user_tasks, capsys):
    """Asked again in the same folder, an evaluation reuses a finished task only where its key
    (model, weights, template, task, its settings) is the same: a planted metric shows which
    runs were reused and which measured again."""
    model, ev = resolve_model("tiny"), tmp_path / "ev"
    done = ev / "task_arithmetic.json"
    cfg = EvalConfig(tasks=["usertasks.exact:arithmetic"], backend="hf", batch_size=8)
    measured = evaluate(model, cfg, ev, progress=False).tasks["arithmetic"]
    kept = read_record(done, TaskDone)
    assert kept.spec == "usertasks.exact:arithmetic" and kept.metrics == measured

    def plant():
        write_json(done, kept.model_copy(update={"metrics": {**kept.metrics.model_dump(mode="json"), "accuracy": 12.5}}).model_dump(mode="json"))

    plant()
    faster = cfg.model_copy(update={"humaneval": cfg.humaneval.model_copy(update={"workers": 1})})  # SPEED_ONLY
    assert evaluate(model, faster, ev, progress=False).tasks["arithmetic"].own()["accuracy"] == 12.5
    assert evaluate(model, cfg, ev, template="model", progress=False).tasks["arithmetic"].own()["accuracy"] != 12.5
    assert "measuring it again" in capsys.readouterr().err
    plant()
    assert evaluate(model, cfg.model_copy(update={"batch_size": 4}), ev, progress=False).tasks["arithmetic"].own()["accuracy"] != 12.5
    write_json(done, {**measured.model_dump(mode="json"), "accuracy": 12.5})  # the bare metrics an earlier sftmix kept: no key, measured again
    again = evaluate(model, cfg, ev, progress=False).tasks["arithmetic"]
    assert again.own()["accuracy"] == measured.own()["accuracy"] and "not a TaskDone" in capsys.readouterr().err
