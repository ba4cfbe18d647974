"""Evaluation: GSM8K extraction, generation, HumanEval sandbox, MT-Bench judge, held-out loss."""

import argparse
import os
import re
import subprocess
import sys

import pytest

from helpers import tiny_run
from openai_server import OpenAIServer as JudgeServer
from sftmix.cli.common import config_values
from sftmix.cli.eval import EVAL_FLAGS, HELDOUT_FLAGS, add_commands
from sftmix.config import EvalConfig, HeldoutConfig, validate
from sftmix.errors import SftmixError
from sftmix.eval import gsm8k, humaneval, mtbench, tasks
from sftmix.eval.generate import Generator, HFGenerator, cut_at_stop
from sftmix.eval.runner import BENCHMARKS, LOSS_READS, SPEED_ONLY, evaluate, task_key
from sftmix.eval.sandbox import run_program
from sftmix.models import load_tokenizer, resolve_model
from sftmix.templates import generation_prompt
from sftmix.train.strategies import run_strategy
from test_run_id import leaves, other_value, with_value


@pytest.mark.parametrize("text,rft,flex", [
    ("so 3+4 = 7\n#### 7", 7.0, 7.0),
    ("#### 1,200", 1200.0, 1200.0),
    ("#### $18", None, 18.0),          # RFT: $ is not in the class -> invalid
    ("#### 18.", 18.0, 18.0),          # trailing period parses as 18.0
    ("#### 18.00", 18.0, 18.0),        # numeric comparison, not string
    ("#### -3", -3.0, -3.0),
    ("#### 5\nmore\n#### 6", 5.0, 6.0),  # first #### wins; flexible takes the last number
    ("The answer is 42.", None, 42.0),
    ("no number here", None, None),
    ("#### 7\u0000#### 8", 7.0, 8.0),
])
def test_gsm8k_extraction_table(text, rft, flex):
    assert gsm8k.extract_rft(text) == rft
    assert gsm8k.extract_flexible(text) == flex


def test_gsm8k_score_counts_invalid_and_flexible():
    m, rows = gsm8k.score(["#### 72", "It is 72", "#### 71"], ["x\n#### 72"] * 3)
    assert m["accuracy"] == pytest.approx(100 / 3) and m["flexible_accuracy"] == pytest.approx(200 / 3)
    assert m["invalid_rate"] == pytest.approx(100 / 3) and rows[1]["invalid"]


def test_batched_greedy_equals_batch_one():
    """Left-padded batches answer as batch 1 does, on prompts of very different lengths (so the
    batch of 4 pads) and with real, distinct answers (the embedded model; a random model's
    answers repeat one token and would compare equal while padding broke them)."""
    path = resolve_model("smollm2")
    g1 = HFGenerator(path, batch_size=1, progress=False)
    questions = ["What is 2 + 2?", "Write a Python function that returns the square of a number.", "Hi",
                 "Explain in one sentence why the sky looks blue during the day but red at sunset, for a child."]
    prompts = [generation_prompt([{"role": "user", "content": q}], "vicuna", g1.tokenizer) for q in questions]
    lengths = [len(g1.tokenizer(p)["input_ids"]) for p in prompts]
    assert max(lengths) - min(lengths) > 10
    one = g1.generate(prompts, max_new_tokens=12)
    four = HFGenerator(path, batch_size=4, progress=False).generate(prompts, max_new_tokens=12)
    assert all(a.strip() for a in one) and len(set(one)) == 4, one
    assert four == one
    # what the answers cost (evaluation FLOPs): every prompt token read and every answer token written
    written = sum(len(g1.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in one)
    assert g1.tokens_processed == sum(lengths) + written and sum(lengths) > written


def test_stop_strings_cut_output():
    assert cut_at_stop("def f():\n    return 1\nif __name__", ["\nif __name__", "\n```\n"]) == "def f():\n    return 1"


# ---------------------------------------------------------------- HumanEval

def test_canonical_solutions_pass_and_empty_fail(problems, canonical_scored, empty_scored):
    assert len(problems) == 164
    m, rows = canonical_scored
    assert m["pass@1"] == 100.0 and len(rows) == 164 and all(r["passed"] for r in rows)
    m, rows = empty_scored
    assert m["pass@1"] == 0.0 and len(rows) == 164 and not any(r["passed"] for r in rows)


def test_extraction_fenced_whole_function_and_body(problems):
    p = problems[0]
    body = p["canonical_solution"]
    whole = p["prompt"] + body
    fenced = f"Here you go:\n```python\n{whole}\n```\nHope it helps."
    for out in (body, fenced, whole):
        assert run_program(humaneval.build_program(p, out)).passed, out[:80]


def test_pass_at_k_estimator():
    assert humaneval.pass_at_k(10, 0, 1) == 0.0
    assert humaneval.pass_at_k(10, 10, 1) == 1.0
    assert humaneval.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert humaneval.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)


# ---------------------------------------------------------------- MT-Bench

def test_rating_parse():
    assert mtbench.parse_rating("Rating: [[8]]") == 8
    assert mtbench.parse_rating("Rating: [8.5]") == 8.5
    assert mtbench.parse_rating("no rating") == -1


def test_judge_prompts_match_fastchat(shared_data):
    qs, prompts, refs = mtbench.load(shared_data / "mt_bench")
    q = next(q for q in qs if q["category"] == "math")
    name, msgs = mtbench.judge_request(q, ["a1", "a2"], 2, prompts, refs)
    assert name == "single-math-v1-multi-turn"
    assert msgs[0]["content"] == prompts[name]["system_prompt"]
    assert refs[q["question_id"]][1] in msgs[1]["content"] and "a2" in msgs[1]["content"]
    w = next(q for q in qs if q["category"] == "writing")
    assert mtbench.judge_request(w, ["a1"], 1, prompts, refs)[0] == "single-v1"


class FixedGenerator:
    """Generation stand-in for the judge tests only (the judge is the thing under test here)."""

    def __init__(self):
        self.tokenizer = load_tokenizer(resolve_model("tiny"))

    def generate(self, prompts, **kw):
        return [f"answer to prompt of length {len(p)}" for p in prompts]


def test_mtbench_end_to_end_with_flaky_judge_and_cache(shared_data, tmp_path):
    srv = JudgeServer(flaky=True)
    try:
        judge = mtbench.Judge(srv.url, "local-judge", "k", tmp_path / "cache.jsonl", parallel=4, max_retries=4)
        m, rows = mtbench.run(FixedGenerator(), "vicuna", shared_data / "mt_bench", judge, "m", limit=12, progress=False)
        assert m["score"] == 7 and m["turn1"] == 7 and m["turn2"] == 7 and m["failed_judgments"] == 0
        assert m["n_judgments"] == 24 and judge.stats["retries"] > 0
        calls = srv.calls
        judge2 = mtbench.Judge(srv.url, "local-judge", "k", tmp_path / "cache.jsonl")
        m2, _ = mtbench.run(FixedGenerator(), "vicuna", shared_data / "mt_bench", judge2, "m", limit=12, progress=False)
        assert srv.calls == calls and judge2.stats["cached"] == 24  # a rerun pays nothing twice
        assert all(r["temperature"] == 0 and r["max_tokens"] == 2048 for r in srv.requests)
    finally:
        srv.close()


def test_a_judge_cache_cut_off_by_a_kill_loses_one_verdict_and_a_damaged_one_names_its_line(shared_data, tmp_path):
    cache = tmp_path / "cache.jsonl"
    srv = JudgeServer()
    try:
        judge = mtbench.Judge(srv.url, "local-judge", "k", cache)
        first, _ = mtbench.run(FixedGenerator(), "vicuna", shared_data / "mt_bench", judge, "m", limit=2, progress=False)
        lines = cache.read_text().splitlines()
        assert len(lines) == 4 and all(mtbench.Verdict.model_validate_json(line).score == 7 for line in lines)
        cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])  # killed while appending the 4th
        calls = srv.calls
        again = mtbench.Judge(srv.url, "local-judge", "k", cache)
        second, _ = mtbench.run(FixedGenerator(), "vicuna", shared_data / "mt_bench", again, "m", limit=2, progress=False)
        assert again.stats["cached"] == 3 and srv.calls == calls + 1 and second["score"] == first["score"]
        third = mtbench.Judge(srv.url, "local-judge", "k", cache)  # the verdict judged again was kept whole
        mtbench.run(FixedGenerator(), "vicuna", shared_data / "mt_bench", third, "m", limit=2, progress=False)
        assert third.stats["cached"] == 4 and srv.calls == calls + 1
        cache.write_text(lines[0] + "\n" + '{"key": "x"}\n' + lines[1] + "\n")
        with pytest.raises(SftmixError, match=rf"{re.escape(str(cache))}:2: not a Verdict \(judgment: Field required\)"):
            mtbench.Judge(srv.url, "local-judge", "k", cache)
    finally:
        srv.close()


def test_failed_parse_is_reasked_then_counted(shared_data, tmp_path):
    answers = iter(["no rating"] * 3 + ["[[9]]"] * 100)
    srv = JudgeServer(reply=lambda body: next(answers))
    try:
        judge = mtbench.Judge(srv.url, "j", "k", tmp_path / "c.jsonl", parallel=1)
        m, _ = mtbench.run(FixedGenerator(), "vicuna", shared_data / "mt_bench", judge, "m", limit=1, progress=False)
        assert judge.stats["reasked"] == 2 and m["failed_judgments"] == 1 and m["n_judgments"] == 2 and m["score"] == 9
    finally:
        srv.close()


def test_unreachable_judge_and_missing_key(tmp_path, monkeypatch):
    with pytest.raises(SftmixError, match="no API key"):
        mtbench.Judge("http://127.0.0.1:9/v1", "j", None, tmp_path / "c.jsonl")
    judge = mtbench.Judge("http://127.0.0.1:9/v1", "j", "k", tmp_path / "c.jsonl", max_retries=1)
    with pytest.raises(SftmixError, match="127.0.0.1:9.*failed after 2 attempts"):
        judge.judge("key", [{"role": "user", "content": "x"}])


def test_eval_cli_unknown_task_and_missing_key(tmp_path, monkeypatch):
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "eval", "tiny", "--tasks", "gsm8k,mmlu", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown task" in r.stderr and "mmlu" in r.stderr
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENAI_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "eval", "tiny", "--tasks", "mtbench", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr


def test_heldout_loss_drops_after_training_on_that_ability(tmp_path):
    cfg = tiny_run(tmp_path, "math", strategy={"name": "individual", "sources": ["generated_math"]}, train={"epochs": 3})
    final = run_strategy(cfg, progress=False)
    ecfg, held = EvalConfig(tasks=["loss"]), HeldoutConfig(sources=["generated_math"], samples=16)
    before = evaluate(resolve_model("tiny"), ecfg, tmp_path / "e0", sources=cfg.sources, progress=False, heldout_cfg=held)
    after = evaluate(str(final), ecfg, tmp_path / "e1", sources=cfg.sources, progress=False, heldout_cfg=held)
    b, a = before.tasks["loss"].per_source["generated_math"], after.tasks["loss"].per_source["generated_math"]
    assert a.loss < b.loss - 0.5 and a.heldout == "test split" and a.samples == 16


def test_salvage_recovers_a_rambling_completion_and_is_reported_separately(problems):
    p = problems[0]
    good = p["canonical_solution"]
    rambling = good + "\n\ndef " + p["entry_point"] + "(numbers, threshold):\n    \"\"\" unterminated docstring"
    m, rows = humaneval.score([p], [[rambling]], progress=False)
    assert m["pass@1"] == 0.0 and m["pass@1_salvaged"] == 100.0
    assert rows[0]["salvaged_changed"] and not rows[0]["passed"] and rows[0]["passed_salvaged"]


def test_eval_flags_come_from_the_config_fields():
    """`sftmix eval`'s flags are the eval config's fields: unset, they leave its defaults (and say
    them in the help); set, they land on the field, nested ones included."""
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["eval", "tiny"])
    assert config_values(args, EVAL_FLAGS) == {} == config_values(args, HELDOUT_FLAGS)
    assert validate(EvalConfig, config_values(args, EVAL_FLAGS), "x") == EvalConfig()
    args = parser.parse_args(["eval", "tiny", "--tasks", "loss,gsm8k", "--loss-samples", "5", "--judge-model", "j",
                              "--loss-sources", "a, b", "--dtype", "bfloat16", "--repeats", "3"])
    cfg = validate(EvalConfig, config_values(args, EVAL_FLAGS), "x")
    held = validate(HeldoutConfig, config_values(args, HELDOUT_FLAGS), "x")
    assert (cfg.tasks, held.samples, cfg.mtbench.judge.model, held.sources, cfg.dtype, cfg.mtbench.repeats) == \
        (["loss", "gsm8k"], 5, "j", ["a", "b"], "bfloat16", 3)
    helps = {a.option_strings[0]: a.help or "" for a in parser._subparsers._group_actions[0].choices["eval"]._actions
             if a.option_strings}
    assert f"(default: {EvalConfig().mtbench.judge.model})" in helps["--judge-model"]
    assert f"(default: {HeldoutConfig().samples})" in helps["--loss-samples"]
    assert EvalConfig.model_fields["dtype"].description in helps["--dtype"]
    assert set(EVAL_FLAGS.values()) | set(HELDOUT_FLAGS.values()) <= helps.keys()


def test_a_generator_that_cannot_count_its_tokens_says_so():
    """Evaluation FLOPs come from the generator's count: one without a tokenizer is an error, not
    a count of 0 that would pass for an evaluation that cost nothing."""
    class Echo(Generator):
        def _answers(self, prompts, *args):
            yield from enumerate(prompts)

    with pytest.raises(SftmixError, match="Echo has no tokenizer to count the tokens its answers cost"):
        Echo().generate(["a prompt"])
    assert Echo().generate([]) == []


@pytest.mark.parametrize("task", ["gsm8k", "mtbench", "loss"])
def test_every_eval_setting_changes_a_finished_tasks_key_but_the_speed_only_ones(task, tmp_path):
    """A finished task is reused under its key: every eval field walked, a change must change the
    key of a task it can affect, and leave it alone where it cannot (``SPEED_ONLY``, the other
    benchmarks' sections). A field added later and forgotten by the key fails here, naming it."""
    cfg = EvalConfig(tasks=[task])
    doc = cfg.model_dump(mode="json")

    def key(c: EvalConfig, **ctx) -> str:
        fields = {"model_path": resolve_model("tiny"), "cfg": c, "template": "vicuna", "data_dir": None, "out": tmp_path,
                  "progress": False, "get_generator": lambda: None, "heldout_cfg": HeldoutConfig(), **ctx}
        return task_key(tasks.get(task), task, tasks.Context(**fields))

    # the fields left out, named here and not only read from the code: a result-changing field
    # added to SPEED_ONLY (or LOSS_READS losing one) would otherwise pass the walk below
    assert set(SPEED_ONLY) == {"openai.api_key_env", "openai.concurrency", "openai.max_retries", "openai.timeout_s",
                               "vllm.gpu_memory_utilization", "vllm.cpu_kv_cache_gb", "vllm_server.python", "vllm_server.command",
                               "vllm_server.gpu_memory_utilization", "vllm_server.cpu_kv_cache_gb", "vllm_server.start_timeout_s",
                               "vllm_server.concurrency", "humaneval.workers", "mtbench.judge.api_key_env",
                               "mtbench.judge.parallel", "mtbench.judge.max_retries"}
    assert LOSS_READS == ("batch_size",)
    base, wrong = key(cfg), []
    for path, annotation, v in leaves(EvalConfig, cfg):
        if path == "tasks":
            continue  # which tasks run, not how this one is measured
        changed = EvalConfig.model_validate(with_value(doc, path, other_value("eval." + path, annotation, v)))
        assert changed.model_dump(mode="json") != doc, path
        inert = (path in SPEED_ONLY or path.split(".")[0] in set(BENCHMARKS) - {task}
                 or (task == "loss" and path not in LOSS_READS))
        if (key(changed) == base) != inert:
            wrong.append(path)
    assert not wrong, f"fields the key takes wrongly (left out, or taken though they cannot matter): {wrong}"
    assert key(cfg, template="model") != base and key(cfg, data_dir=tmp_path) != base
    run_data = {"seed": 1, "training_ids": {"a"}, "heldout_cfg": HeldoutConfig(samples=3)}
    for name, value in run_data.items():  # what the held-out loss reads of the run; the benchmarks read none of it
        assert (key(cfg, **{name: value}) != base) == (task == "loss"), name


def test_quiet_silences_the_libraries_progress_bars_too(tmp_path):
    cmd = [sys.executable, "-m", "sftmix.cli", "eval", "tiny", "--tasks", "loss", "--loss-sources", "generated_math",
           "--loss-samples", "2", "--out", str(tmp_path / "ev")]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    loud = subprocess.run(cmd, capture_output=True, text=True, env=env)
    quiet = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env)
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert "Loading weights" in loud.stderr  # the bar that --quiet must silence is there without it
    assert "Loading weights" not in quiet.stderr and "it/s]" not in quiet.stderr, quiet.stderr
