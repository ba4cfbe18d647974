"""MT-Bench (Zheng et al. 2023) with FastChat's single-answer grading by an LLM judge.

One raw question (``question.jsonl``)::

    {"question_id": 81, "category": "writing", "turns": ["Compose an engaging travel blog ...", "Rewrite your previous response ..."]}

Answers: two turns per question with FastChat's per-category temperatures; turn 2 sees the
model's own turn-1 answer. Judging (FastChat ``gen_judgment.py`` / ``common.py``): prompts are
loaded verbatim from ``judge_prompts.jsonl``; ``single-v1`` / ``single-v1-multi-turn`` for most
categories, ``single-math-v1`` / ``single-math-v1-multi-turn`` with the reference answers for
math, reasoning and coding; temperature 0, max_tokens 2048; rating ``[[N]]`` with the ``[N]``
fallback. Aggregation as ``show_result.py``: turn-1 mean, turn-2 mean and the overall mean pooled
over all judgments, plus per category. A failed parse (-1) is re-asked, then counted, never
silently dropped. Judgments are cached on disk keyed by (answers, question, turn, judge, prompt).
"""

from __future__ import annotations

import ast
import random
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from sftmix.errors import SftmixError
from sftmix.io import read_appended, read_jsonl, stable_hash
from sftmix.progress import track
from sftmix.templates import generation_prompt

TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
               "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def load(data_dir: str | Path) -> tuple[list[dict], dict, dict]:
    """Questions, judge prompts by name, and reference answers by question id."""
    d = Path(data_dir)
    for f in ("question.jsonl", "judge_prompts.jsonl", "reference_answer/gpt-4.jsonl"):
        if not (d / f).exists():
            raise SftmixError(f"MT-Bench: {d / f} not found (expected FastChat's llm_judge data layout)")
    questions = read_jsonl(d / "question.jsonl")
    prompts = {p["name"]: p for p in read_jsonl(d / "judge_prompts.jsonl")}
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in read_jsonl(d / "reference_answer" / "gpt-4.jsonl")}
    return questions, prompts, refs


class Verdict(BaseModel):
    """A line of the judge's cache (``judge_cache.jsonl``): the judge's answer to one prompt,
    the rating read from it (-1: none could be read) and which judge model gave it."""

    key: str
    judgment: str
    score: float
    judge: str


def read_verdicts(path: Path) -> dict[str, Verdict]:
    """The judge cache by key (later lines win). A last line cut off by a kill is cut from the file
    first (its prompt is judged again); a bad whole line is an error naming the file and line."""
    return {v.key: v for v in read_appended(path, Verdict)}


def parse_rating(text: str) -> float:
    """FastChat's rating parse: ``[[N]]``, else ``[N]``; -1 when neither is found."""
    m = ONE_SCORE.search(text) or ONE_SCORE_BACKUP.search(text)
    if not m:
        return -1
    try:
        return float(ast.literal_eval(m.group(1)))
    except (ValueError, SyntaxError):
        return -1


def generate_answers(generator, template: str, questions: list[dict], max_new_tokens: int = 1024, seed: int = 0) -> dict:
    """Two-turn answers: {question_id: [answer1, answer2]}."""
    answers: dict[int, list[str]] = {q["question_id"]: [] for q in questions}
    for turn in range(2):
        by_temp: dict[float, list[dict]] = {}
        for q in questions:
            by_temp.setdefault(TEMPERATURE.get(q["category"], 0.7), []).append(q)
        for temp, qs in sorted(by_temp.items()):
            prompts = []
            for q in qs:
                msgs = []
                for t in range(turn):
                    msgs += [{"role": "user", "content": q["turns"][t]}, {"role": "assistant", "content": answers[q["question_id"]][t]}]
                msgs.append({"role": "user", "content": q["turns"][turn]})
                prompts.append(generation_prompt(msgs, template, generator.tokenizer))
            outs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=temp, seed=seed,
                                      desc=f"mt-bench turn {turn + 1} (T={temp})")
            for q, o in zip(qs, outs):
                answers[q["question_id"]].append(o.strip())
    return answers


def judge_request(q: dict, answers: list[str], turn: int, prompts: dict, refs: dict) -> tuple[str, list[dict]]:
    """The prompt name and OpenAI messages FastChat sends for (question, turn)."""
    ref = q["category"] in NEED_REF_CATS
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    p = prompts[name]
    kw = {}
    if ref:
        if q["question_id"] not in refs:
            raise SftmixError(f"MT-Bench: no reference answer for question {q['question_id']} ({q['category']})")
        r = refs[q["question_id"]]
        kw["ref_answer_1"] = r[0]
        if turn == 2:
            kw["ref_answer_2"] = r[1]
    if turn == 1:
        user = p["prompt_template"].format(question=q["turns"][0], answer=answers[0], **kw)
    else:
        user = p["prompt_template"].format(question_1=q["turns"][0], question_2=q["turns"][1],
                                           answer_1=answers[0], answer_2=answers[1], **kw)
    return name, [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": user}]


class Judge:
    """OpenAI-compatible chat client with retries, backoff and a judgment cache."""

    def __init__(self, base_url: str | None, model: str, api_key: str | None, cache_file: Path,
                 parallel: int = 4, max_retries: int = 6, reask: int = 2, timeout: float = 120.0):
        # imported here: openai is only needed when an OpenAI-compatible endpoint is called
        from openai import OpenAI

        if not api_key:
            raise SftmixError("MT-Bench judge: no API key; set OPENAI_API_KEY (or judge.api_key); "
                              "for a local server without auth any non-empty value works")
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.base_url = str(self.client.base_url)
        self.model = model
        self.parallel, self.max_retries, self.reask = parallel, max_retries, reask
        self.cache_file = Path(cache_file)
        self.cache = read_verdicts(self.cache_file) if self.cache_file.exists() else {}
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "reasked": 0, "cached": 0}

    def _call(self, messages: list[dict]) -> str:
        # imported here: openai is only needed when an OpenAI-compatible endpoint is called
        import openai

        delay = 1.0
        for attempt in range(self.max_retries + 1):
            try:
                with self.lock:
                    self.stats["requests"] += 1
                r = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0, max_tokens=2048, n=1)
                return r.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError) as e:
                if attempt == self.max_retries:
                    raise SftmixError(f"MT-Bench judge at {self.base_url} failed after {attempt + 1} attempts: {type(e).__name__}: {e}") from None
                with self.lock:
                    self.stats["retries"] += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)
            except openai.APIStatusError as e:
                raise SftmixError(f"MT-Bench judge at {self.base_url}: HTTP {e.status_code}: {e.message}") from None

    def judge(self, key: str, messages: list[dict]) -> Verdict:
        """The judge's rating of one prompt: cached by ``key``, asked again while no rating can be read."""
        if key in self.cache:
            with self.lock:
                self.stats["cached"] += 1
            return self.cache[key]
        text = self._call(messages)
        score = parse_rating(text)
        tries = 0
        while score == -1 and tries < self.reask:
            tries += 1
            with self.lock:
                self.stats["reasked"] += 1
            text = self._call(messages)
            score = parse_rating(text)
        verdict = Verdict(key=key, judgment=text, score=score, judge=self.model)
        with self.lock:
            self.cache[key] = verdict
            with open(self.cache_file, "a", encoding="utf-8") as f:  # append-only: a kill loses at most a line
                f.write(verdict.model_dump_json() + "\n")
        return verdict

    def judge_all(self, jobs: list[tuple[str, list[dict]]], progress: bool = True) -> list[Verdict]:
        """The verdicts of many prompts, judged in parallel with progress."""
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(self.parallel) as pool:
            futs = [pool.submit(self.judge, k, m) for k, m in jobs]
            return [f.result() for f in track(futs, "judging", enabled=progress)]


def aggregate(rows: list[dict]) -> dict:
    """FastChat's show_result (single): -1 rows dropped but counted; overall pooled."""
    ok = [r for r in rows if r["score"] != -1]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731 (None: no valid judgment, written as null)
    out = {
        "score": mean([r["score"] for r in ok]),
        "turn1": mean([r["score"] for r in ok if r["turn"] == 1]),
        "turn2": mean([r["score"] for r in ok if r["turn"] == 2]),
        "failed_judgments": len(rows) - len(ok),
        "n_judgments": len(rows),
        "per_category": {},
    }
    for cat in sorted({r["category"] for r in rows}):
        out["per_category"][cat] = mean([r["score"] for r in ok if r["category"] == cat])
    return out


def run(generator, template: str, data_dir, judge: Judge, model_id: str, repeats: int = 1, limit: int | None = None,
        max_new_tokens: int = 1024, progress: bool = True) -> tuple[dict, list[dict]]:
    """Generate and judge ``repeats`` times; mean ± sd over repeats (the paper averages 3)."""
    questions, prompts, refs = load(data_dir)
    if limit:
        questions = questions[:limit]
    all_rows, per_repeat = [], []
    for rep in range(repeats):
        answers = generate_answers(generator, template, questions, max_new_tokens, seed=rep)
        jobs, meta = [], []
        for q in questions:
            for turn in (1, 2):
                name, msgs = judge_request(q, answers[q["question_id"]], turn, prompts, refs)
                key = stable_hash([answers[q["question_id"]][:turn], q["question_id"], turn, judge.model, name], 24)
                jobs.append((key, msgs))
                meta.append({"question_id": q["question_id"], "category": q["category"], "turn": turn, "prompt_name": name,
                             "repeat": rep, "answers": answers[q["question_id"]], "model": model_id})
        judged = judge.judge_all(jobs, progress)
        rows = [{**m, "judgment": v.judgment, "score": v.score, "judge": v.judge} for m, v in zip(meta, judged)]
        per_repeat.append(aggregate(rows))
        all_rows += rows
    scores = [r["score"] for r in per_repeat]
    valid = [s for s in scores if s is not None]
    metrics = {**aggregate(all_rows), "repeats": repeats, "score_per_repeat": scores,
               "score_sd": statistics.stdev(valid) if len(valid) > 1 else 0.0, "judge_model": judge.model,
               "judge_base_url": judge.base_url, "judge_stats": dict(judge.stats)}
    metrics["score"] = statistics.mean(valid) if valid else None
    return metrics, all_rows
