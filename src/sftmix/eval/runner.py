"""Evaluate one model on the configured tasks; write results.json and per-sample JSONL.

Each finished task is written to ``task_<name>.json`` at once (atomically), so an interrupted
evaluation resumes with the tasks still missing; ``results.json`` gathers them at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sftmix.config import EvalConfig, SourceConfig
from sftmix.data.heldout import heldout
from sftmix.errors import SftmixError
from sftmix.io import read_json, write_json, write_jsonl
from sftmix.provenance import provenance


def _data_dir(cfg: EvalConfig, run_data_dir: str | None) -> Path | None:
    d = cfg.data_dir or run_data_dir or os.environ.get("SFTMIX_DATA_DIR")
    return Path(d) if d else None


def _gsm8k_problems(cfg: EvalConfig, data_dir: Path | None) -> list[dict]:
    from sftmix.data.sources import load_raw

    probs = load_raw("gsm8k", SourceConfig(split="test"), str(data_dir) if data_dir else None)
    return probs[: cfg.limit] if cfg.limit else probs


def evaluate(model_path: str, cfg: EvalConfig, out_dir: str | Path, template: str = "vicuna", run_data_dir: str | None = None,
             sources: dict[str, SourceConfig] | None = None, seed: int = 0, training_ids: set[str] | None = None,
             progress: bool = True) -> dict:
    """Run every task in ``cfg.tasks`` on ``model_path``; return and write the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = _data_dir(cfg, run_data_dir)
    if "mtbench" in cfg.tasks:  # fail before any generation when the judge cannot be reached
        _check_judge(cfg)
    generator = None

    def get_generator():  # loaded once, shared by the generation tasks and (when fp32 HF) the loss
        nonlocal generator
        if generator is None:
            from sftmix.eval.generate import make_generator

            generator = make_generator(model_path, cfg.backend, cfg.batch_size, progress, cfg.dtype)
        return generator

    results = {}
    for task in cfg.tasks:
        done = out / f"task_{task}.json"
        if done.exists():
            results[task] = read_json(done)
            continue
        t0 = time.perf_counter()
        if task == "loss":
            shared = cfg.backend != "vllm" and cfg.dtype == "float32" and any(t != "loss" for t in cfg.tasks)
            g = get_generator() if shared else None  # otherwise loaded only if a source is not already measured
            loaded = (g.tokenizer, g.model) if getattr(g, "model", None) is not None else None
            metrics, rows = _loss(model_path, cfg, template, data_dir, sources or {}, seed, training_ids, loaded)
        else:
            generator = get_generator()
            metrics, rows = _generation_task(task, generator, cfg, template, data_dir, model_path, out, progress)
            metrics["tokens_processed"] = _count_tokens(rows, generator.tokenizer)
        metrics["wall_s"] = round(time.perf_counter() - t0, 2)
        write_jsonl(out / f"samples_{task}.jsonl", rows)
        write_json(done, metrics)
        results[task] = metrics
    doc = {"model": model_path, "template": template, "tasks": results, "config": cfg.model_dump(), **provenance()}
    write_json(out / "results.json", doc)
    return doc


def _count_tokens(rows: list[dict], tokenizer) -> int:
    """Prompt plus generated tokens of a generation task (for evaluation FLOPs, 2 N per token)."""
    n = 0
    for r in rows:
        for key in ("prompt", "output", "completion"):
            if isinstance(r.get(key), str):
                n += len(tokenizer(r[key], add_special_tokens=False)["input_ids"])
        for a in r.get("answers", []) if r.get("turn") == 2 else []:
            n += len(tokenizer(a, add_special_tokens=False)["input_ids"])
    return n


def _check_judge(cfg: EvalConfig) -> None:
    if not os.environ.get(cfg.judge.api_key_env):
        raise SftmixError(f"MT-Bench needs a judge API key in ${cfg.judge.api_key_env} "
                          f"(judge base_url: {cfg.judge.base_url or os.environ.get('OPENAI_BASE_URL') or 'OpenAI'})")


def _generation_task(task, generator, cfg: EvalConfig, template, data_dir, model_path, out: Path, progress):
    if task == "gsm8k":
        from sftmix.eval import gsm8k

        return gsm8k.run(generator, template, _gsm8k_problems(cfg, data_dir), cfg.gsm8k_max_new_tokens)
    if task == "humaneval":
        from sftmix.eval import humaneval

        problems = humaneval.load_problems()
        problems = problems[: cfg.limit] if cfg.limit else problems
        return humaneval.run(generator, template, problems, cfg.humaneval_wrapper, cfg.humaneval_max_new_tokens,
                             cfg.humaneval_workers, progress)
    if task == "mtbench":
        from sftmix.eval import mtbench

        if data_dir is None or not (data_dir / "mt_bench").exists():
            raise SftmixError(f"MT-Bench data not found: expected {data_dir or '<data_dir>'}/mt_bench/question.jsonl "
                              "(set eval.data_dir or $SFTMIX_DATA_DIR)")
        judge = mtbench.Judge(cfg.judge.base_url or os.environ.get("OPENAI_BASE_URL"), cfg.judge.model,
                              os.environ.get(cfg.judge.api_key_env), out / "judgments_cache.jsonl",
                              parallel=cfg.judge.parallel, max_retries=cfg.judge.max_retries)
        return mtbench.run(generator, template, data_dir / "mt_bench", judge, model_path, cfg.mtbench_repeats, cfg.limit,
                           cfg.mtbench_max_new_tokens, progress)
    raise SftmixError(f"unknown task {task!r}; valid: gsm8k, humaneval, mtbench, loss")


def _loss(model_path, cfg: EvalConfig, template, data_dir, sources, seed, training_ids, loaded=None):
    """Held-out loss per source. A checkpoint whose training already measured exactly these rows
    the same way at its last step (``heldout_loss.json``, written by the forgetting curve) is not
    measured again: the numbers are the same by construction (tested)."""
    from sftmix.models import load_model, load_tokenizer
    from sftmix.supervised import HELDOUT_FILE, heldout_key, mean_loss

    sets, hows = {}, {}
    for name in cfg.loss_sources:
        sets[name], hows[name] = heldout(name, cfg.loss_samples, cfg.heldout_seed, sources.get(name),
                                         str(data_dir) if data_dir else None)
    saved = Path(model_path) / HELDOUT_FILE
    measured = {}
    if saved.exists():
        doc = read_json(saved)
        if doc.get("key") == heldout_key(sets, template, cfg.loss_max_length, cfg.batch_size):
            measured = doc["results"]
    model = tok = None
    metrics, rows = {}, []
    for name, convs in sets.items():
        how = hows[name]
        if name in measured:
            m = dict(measured[name])
        else:
            if model is None:
                tok, model = loaded or (load_tokenizer(model_path), load_model(model_path))
            m = mean_loss(model, tok, convs, template, cfg.loss_max_length, cfg.batch_size)
        per_sample = m.pop("per_sample")
        m["heldout"] = how
        if training_ids is not None:
            m["overlap_with_training"] = sum(c.id in training_ids for c in convs)
        metrics[name] = m
        rows += [{"source": name, "id": i, "loss_sum": s, "tokens": k} for i, s, k in per_sample]
    return metrics, rows
