"""Evaluate one model on the configured tasks; write results.json and per-sample JSONL.

Each finished task is written to ``task_<name>.json`` at once (atomically), so an interrupted
evaluation resumes with the tasks still missing; ``results.json`` gathers them at the end. A
finished task is kept under a key of everything that decides its result (the model and its
weights, the template, the task and its settings): an evaluation asked again in the same folder
with another model, other weights or other settings measures that task again.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from sftmix import layout
from sftmix.config import EvalConfig, HeldoutConfig, SourceConfig, pop_path
from sftmix.errors import SftmixError
from sftmix.eval import tasks
from sftmix.eval.metrics import Engine, TaskMetrics, typed
from sftmix.io import read_record, read_records, stable_hash, write_json, write_jsonl
from sftmix.provenance import provenance


def _data_dir(cfg: EvalConfig, run_data_dir: str | None) -> Path | None:
    d = cfg.data_dir or run_data_dir or os.environ.get("SFTMIX_DATA_DIR")
    return Path(d) if d else None


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # the fields readers rely on are checked; others (provenance) are kept


class TaskInfo(_Record):
    """What a task of the evaluation was: its spec as configured, the ability it measures, its
    version, its headline metrics and whether they are pass/fail per item."""

    spec: str
    ability: str | None = None
    version: int = 1
    metrics: dict[str, str] = {}
    binary: bool = False


class Item(BaseModel):
    """A line of ``items_<task>.jsonl``: one item behind a task's headline metric, with its weight
    (a held-out sample: its summed token loss, weighted by its token count; a problem's pass or a
    judgment's score: weight 1)."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    item: str
    value: float
    weight: float


# Eval settings that decide how fast or through which process answers come, not what they are:
# left out of a finished task's key (tests/eval/test_eval.py walks every other field).
SPEED_ONLY = ("openai.api_key_env", "openai.concurrency", "openai.max_retries", "openai.timeout_s", "vllm.gpu_memory_utilization",
              "vllm.cpu_kv_cache_gb", "vllm_server.python", "vllm_server.command", "vllm_server.gpu_memory_utilization",
              "vllm_server.cpu_kv_cache_gb", "vllm_server.start_timeout_s", "vllm_server.concurrency", "humaneval.workers",
              "mtbench.judge.api_key_env", "mtbench.judge.parallel", "mtbench.judge.max_retries")
BENCHMARKS = ("gsm8k", "humaneval", "mtbench")  # each has its own settings section, and reads nothing of the run's data
LOSS_READS = ("batch_size",)  # the held-out loss: measured by transformers in float32, whatever engine generates


class TaskDone(BaseModel):
    """``task_<name>.json``: a finished task's metrics, the task as configured, and the key of
    everything that decided them (``task_key``)."""

    spec: str
    key: str
    metrics: SerializeAsAny[TaskMetrics]

    @model_validator(mode="before")
    @classmethod
    def _typed(cls, doc):  # a built-in task's metrics are read as its own type
        if isinstance(doc, dict) and isinstance(doc.get("spec"), str):
            doc = {**doc, "metrics": typed(tasks.metrics_type(doc["spec"]), doc.get("metrics"), "metrics")}
        return doc


def task_key(task, spec: str, ctx) -> str:
    """What decides a task's result: the model and its weights, the template, the task (spec and
    version), its eval settings (the other benchmarks' sections and ``SPEED_ONLY`` left out; of
    the held-out loss's, ``LOSS_READS``) and the data folder; for the held-out loss and user tasks
    also the run's sources, seed, held-out rows and training row ids, which they may read."""
    settings = ctx.cfg.model_dump(mode="json")
    if task.name == "loss":
        settings = {k: settings[k] for k in LOSS_READS}
    settings.pop("tasks", None)
    for other in BENCHMARKS:
        if other != task.name:
            settings.pop(other, None)
    for path in SPEED_ONLY:
        pop_path(settings, path)
    parts = [ctx.model_path, layout.weights_fingerprint(ctx.model_path), ctx.template, spec, task.version, settings,
             str(ctx.data_dir)]
    if task.name not in BENCHMARKS:
        parts += [{k: v.model_dump(mode="json") for k, v in ctx.sources.items()}, ctx.seed,
                  ctx.heldout.settings if ctx.heldout is not None else None, ctx.heldout_cfg.model_dump(mode="json"),
                  stable_hash(sorted(ctx.training_ids)) if ctx.training_ids is not None else None]
    return stable_hash(parts, 24)


def items_file(eval_dir: str | Path, task: str) -> Path:
    """Where an evaluation keeps the items behind a task's headline metrics."""
    return Path(eval_dir) / f"items_{task}.jsonl"


def read_items(eval_dir: str | Path, task: str) -> list[Item]:
    """The items behind a task's headline metrics, each line checked (a bad one names its line)."""
    return read_records(items_file(eval_dir, task), Item)


class EvalResults(_Record):
    """An evaluation's ``results.json``: each task's metrics (``sftmix.eval.metrics``), what each
    task was, the evaluation's config and which engine answered."""

    model: str = ""
    template: str = ""
    tasks: dict[str, SerializeAsAny[TaskMetrics]]
    task_info: dict[str, TaskInfo] = {}
    config: dict = {}
    engine: Engine | None = None  # None: no task generated (or an evaluation from before engines were recorded)
    engines: dict[str, Engine] = {}

    def spec(self, task: str) -> str:
        """The task's spec as configured (its name where not recorded)."""
        info = self.task_info.get(task)
        return info.spec if info else task

    @model_validator(mode="before")
    @classmethod
    def _typed(cls, doc):  # a built-in task's metrics are read as its own type
        if isinstance(doc, dict) and isinstance(doc.get("tasks"), dict):
            doc = {**doc, "tasks": {name: typed(tasks.metrics_type(name), m, "tasks", name) for name, m in doc["tasks"].items()}}
        return doc


def evaluate(model_path: str, cfg: EvalConfig, out_dir: str | Path, template: str = "vicuna", run_data_dir: str | None = None,
             sources: dict[str, SourceConfig] | None = None, seed: int = 0, training_ids: set[str] | None = None,
             progress: bool = True, heldout=None, heldout_cfg: HeldoutConfig | None = None) -> EvalResults:
    """Run every task in ``cfg.tasks`` (``sftmix.eval.tasks``) on ``model_path``; return and write
    the results. Per task: ``task_<name>.json`` (its metrics), ``samples_<name>.jsonl`` (its rows)
    and ``items_<name>.jsonl`` (the per-item values behind its headline metrics)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = tasks.resolve(cfg.tasks)  # a user task that cannot be imported, or two of one name, fail before any work
    if any(t.name == "mtbench" for t in todo):  # fail before any generation when the judge cannot be reached
        tasks.check_judge(cfg)
    generator = None

    def get_generator():  # loaded once, shared by the generation tasks and (when fp32 HF) the loss
        nonlocal generator
        if generator is None:
            from sftmix.eval.generate import make_generator  # torch: only when a task generates

            generator = make_generator(model_path, cfg.backend, cfg.batch_size, progress, cfg.dtype, cfg, log_dir=out)
            # a killed evaluation keeps what was answered; the key holds the model and its weights, so a
            # folder reused for another model (or retrained weights) never serves the old answers
            generator.identity = (*generator.identity, model_path, layout.weights_fingerprint(model_path))
            generator.use_cache(out / "generations.jsonl")
        return generator

    ctx = tasks.Context(model_path, cfg, template, _data_dir(cfg, run_data_dir), out, progress, get_generator,
                        sources or {}, seed, training_ids, [t.name for t in todo], heldout,
                        heldout_cfg or HeldoutConfig())
    results: dict[str, TaskMetrics] = {}
    info: dict[str, TaskInfo] = {}
    try:
        for spec, task in zip(cfg.tasks, todo):
            info[task.name] = TaskInfo(spec=spec, ability=task.ability, version=task.version, metrics=task.metrics,
                                       binary=task.binary)
            results[task.name] = _run_task(task, spec, ctx, out, lambda: generator)
    finally:  # a managed engine is stopped on success, on an error and on Ctrl-C
        if generator is not None:
            generator.close()
    engines = {name: m.engine for name, m in results.items() if m.engine is not None}
    doc = EvalResults(model=model_path, template=template, tasks=results, task_info=info, config=cfg.model_dump(mode="json"),
                      engine=next(iter(engines.values()), None), engines=engines, **provenance())
    write_json(out / "results.json", doc.model_dump(mode="json"))
    return doc


def _run_task(task, spec: str, ctx, out: Path, generator) -> TaskMetrics:
    """One task's metrics: read from ``task_<name>.json`` when an earlier evaluation finished it
    under the same key, else run and written (samples, items, then the metrics, each atomically).
    A generating task's metrics say which engine answered (``engine``)."""
    done = out / f"task_{task.name}.json"
    key = task_key(task, spec, ctx)
    if done.exists():
        try:
            kept = read_record(done, TaskDone)
        except SftmixError as e:  # damaged, or kept by an earlier sftmix without a key
            kept, why = None, str(e)
        else:
            why = "it was measured under other settings, or of another model or other weights"
        if kept is not None and kept.key == key:
            return kept.metrics
        print(f"task {spec!r}: measuring it again, not reusing {done}: {why}", file=sys.stderr)
    t0 = time.perf_counter()
    shared = generator()  # one generator serves every task: this task's tokens are what it adds
    before = shared.tokens_processed if shared is not None else 0
    try:
        metrics, rows = task.run(ctx)
    except SftmixError:
        raise
    except Exception as e:  # a user task's own failure: name it
        if task.name in tasks.BUILTIN:
            raise
        raise SftmixError(f"task {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(metrics, dict) or not isinstance(rows, list):
        raise SftmixError(f"task {spec!r}: run must return (metrics dict, list of row dicts), got "
                          f"({type(metrics).__name__}, {type(rows).__name__})")
    items = task.item_rows(rows)
    if task.name not in tasks.BUILTIN:
        tasks.check_rows(task, metrics, items)
    gen = generator()
    if task.generates and gen is not None:
        metrics = {**metrics, "tokens_processed": gen.tokens_processed - before, "engine": gen.engine()}
    typed = task.read_metrics({**metrics, "wall_s": round(time.perf_counter() - t0, 2)})
    write_jsonl(out / f"samples_{task.name}.jsonl", rows)
    write_jsonl(items_file(out, task.name), [Item(metric=m, item=i, value=v, weight=w).model_dump() for m, i, v, w in items])
    write_json(done, TaskDone(spec=spec, key=key, metrics=typed).model_dump(mode="json"))
    return typed
