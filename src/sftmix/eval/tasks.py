"""Evaluation tasks as data: one registry that the eval runner, ``sftmix eval --tasks``, study
ingest, Findings and the report all read.

A task is a ``Task`` value: its name, the ability it measures, its version, a ``run`` function
(``Context`` -> metrics and per-item rows), its headline metrics each with a direction, whether
its items are pass/fail (then paired comparisons use McNemar's test), how its per-item rows
become the (metric, item, value, weight) rows behind intervals and paired tests, and the type its
metrics are read as (``sftmix.eval.metrics``).

Built in: ``gsm8k``, ``humaneval``, ``mtbench`` and ``loss``. A user's own benchmark is named in
a run config or on the command line by its Python path, ``package.module:attribute`` (the
attribute is a ``Task``), e.g. ``eval: {tasks: [loss, my_pkg.tasks:sql_exact]}``; nothing in
sftmix is edited. Its rows must carry an ``item`` id and a value for each headline metric (0 or
100 for pass/fail tasks), unless it gives its own ``items`` function.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftmix.config.run import is_task_path
from sftmix.errors import SftmixError, unknown
from sftmix.eval.metrics import Gsm8kMetrics, HumanEvalMetrics, LossMetrics, MtBenchMetrics, TaskMetrics

HIGHER, LOWER = "higher", "lower"


@dataclass
class Context:
    """What a task's ``run`` gets: the model (a generator, loaded on first use and shared by the
    tasks), the eval config, the chat template, the data folder, the output folder and, for the
    held-out loss, the run's sources, seed, training row ids and held-out rows."""

    model_path: str
    cfg: Any  # EvalConfig
    template: str
    data_dir: Path | None
    out: Path
    progress: bool
    get_generator: Callable[[], Any]
    sources: dict = field(default_factory=dict)
    seed: int = 0
    training_ids: set[str] | None = None
    tasks: list[str] = field(default_factory=list)  # every task of this evaluation (by name)
    heldout: Any = None  # the run's held-out rows (sftmix.data.heldout.HeldoutRows); None: chosen by the loss task
    heldout_cfg: Any = None  # HeldoutConfig: which rows the loss task scores, and how long each may be

    @property
    def generator(self):
        """The model's generator, loaded on first use."""
        return self.get_generator()


@dataclass(frozen=True)
class Task:
    """One evaluation task. ``metrics``: headline metric -> ``"higher"`` or ``"lower"`` (is
    better); ``"*"`` stands for every metric of the task (held-out loss: one per source)."""

    name: str
    run: Callable[[Context], tuple[dict, list[dict]]]
    metrics: dict[str, str]
    ability: str | None = None
    binary: bool = False
    version: int = 1
    generates: bool = True  # needs the generator (token counts for evaluation FLOPs)
    items: Callable[[list[dict]], list[tuple[str, str, float, float]]] | None = None
    metrics_type: type[TaskMetrics] = TaskMetrics  # what its metrics are read as (sftmix.eval.metrics)
    description: str = ""

    def __post_init__(self):
        bad = {m: d for m, d in self.metrics.items() if d not in (HIGHER, LOWER)}
        if not self.name or "/" in self.name or ":" in self.name:
            raise SftmixError(f"task {self.name!r}: a name without '/' or ':' is needed")
        if not self.metrics or bad:
            raise SftmixError(f"task {self.name!r}: metrics must map each headline metric to 'higher' or 'lower' "
                              f"(got {self.metrics!r})")

    def direction(self, metric: str) -> str | None:
        """``higher`` / ``lower`` (is better) for a metric of this task, None when not a headline metric."""
        return self.metrics.get(metric, self.metrics.get("*"))

    def item_rows(self, rows: list[dict]) -> list[tuple[str, str, float, float]]:
        """(metric, item, value, weight) per item behind each headline metric."""
        if self.items is not None:
            return self.items(rows)
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise SftmixError(f"task {self.name!r}: row {i} is {type(r).__name__}, not a mapping")
            for metric in self.metrics:
                if metric not in r:
                    raise SftmixError(f"task {self.name!r}: row {i} has no value for its metric {metric!r} "
                                      f"(keys: {', '.join(map(str, r)) or 'none'})")
                value = r[metric]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise SftmixError(f"task {self.name!r}: row {i} (item {r.get('item', i)!r}): {metric} = {value!r}, expected a number")
                if self.binary and value not in (0, 100):
                    raise SftmixError(f"task {self.name!r}: row {i}: {metric} = {value!r}; a pass/fail task scores 0 or 100")
                out.append((metric, str(r.get("item", i)), float(value), 1.0))
        return out

    def read_metrics(self, metrics: dict) -> TaskMetrics:
        """The metrics a run of the task returned (with what the runner added), as its type."""
        try:
            return self.metrics_type.model_validate(metrics)
        except ValidationError as e:
            first = e.errors()[0]
            raise SftmixError(f"task {self.name!r}: its metrics do not fit {self.metrics_type.__name__} "
                              f"({'.'.join(map(str, first['loc']))}: {first['msg']})") from None


# ---------------------------------------------------------------- the built-in tasks
# Each run function imports what runs its task when it runs: the config (which names tasks) reads
# this module, and must not load the sandbox, the judge client or torch to do so.


def _run_gsm8k(ctx: Context) -> tuple[dict, list[dict]]:
    from sftmix.config import SourceConfig
    from sftmix.data.sources import load_raw
    from sftmix.eval import gsm8k

    problems = load_raw("gsm8k", SourceConfig(split="test"), str(ctx.data_dir) if ctx.data_dir else None)
    problems = problems[: ctx.cfg.limit] if ctx.cfg.limit else problems
    return gsm8k.run(ctx.generator, ctx.template, problems, ctx.cfg.gsm8k.max_new_tokens)


def _run_humaneval(ctx: Context) -> tuple[dict, list[dict]]:
    from sftmix.eval import humaneval

    problems = humaneval.load_problems()
    problems = problems[: ctx.cfg.limit] if ctx.cfg.limit else problems
    return humaneval.run(ctx.generator, ctx.template, problems, ctx.cfg.humaneval.wrapper, ctx.cfg.humaneval.max_new_tokens,
                         ctx.cfg.humaneval.workers, ctx.progress)


def check_judge(cfg) -> None:
    """MT-Bench needs its judge's key before any generation starts."""
    judge = cfg.mtbench.judge
    if not os.environ.get(judge.api_key_env):
        raise SftmixError(f"MT-Bench needs a judge API key in ${judge.api_key_env} "
                          f"(judge base_url: {judge.base_url or os.environ.get('OPENAI_BASE_URL') or 'OpenAI'})")


def _run_mtbench(ctx: Context) -> tuple[dict, list[dict]]:
    from sftmix.eval import mtbench

    d = ctx.data_dir
    if d is None or not (d / "mt_bench").exists():
        raise SftmixError(f"MT-Bench data not found: expected {d or '<data_dir>'}/mt_bench/question.jsonl "
                          "(set eval.data_dir or $SFTMIX_DATA_DIR)")
    cfg = ctx.cfg
    jc = cfg.mtbench.judge
    judge = mtbench.Judge(jc.base_url or os.environ.get("OPENAI_BASE_URL"), jc.model, os.environ.get(jc.api_key_env),
                          ctx.out / "judgments_cache.jsonl", parallel=jc.parallel, max_retries=jc.max_retries)
    return mtbench.run(ctx.generator, ctx.template, d / "mt_bench", judge, ctx.model_path, cfg.mtbench.repeats, cfg.limit,
                       cfg.mtbench.max_new_tokens, ctx.progress)


def _run_loss(ctx: Context) -> tuple[dict, list[dict]]:
    from sftmix.eval.loss import heldout_loss

    cfg = ctx.cfg
    shared = cfg.backend in ("auto", "hf") and cfg.dtype == "float32" and any(t != "loss" for t in ctx.tasks)
    g = ctx.get_generator() if shared else None  # otherwise loaded only if a source is not already measured
    loaded = (g.tokenizer, g.model) if getattr(g, "model", None) is not None else None
    return heldout_loss(ctx.model_path, cfg, ctx.heldout_cfg, ctx.template, ctx.data_dir, ctx.sources, ctx.seed, ctx.training_ids, loaded,
                        ctx.heldout)


def _gsm8k_items(rows):
    return [("accuracy", str(r.get("item", i)), 100.0 * bool(r["correct"]), 1.0) for i, r in enumerate(rows)]


def _humaneval_items(rows):
    per: dict[str, list] = {}
    for r in rows:
        per.setdefault(r["task_id"], []).append(bool(r["passed"]))
    return [("pass@1", t, 100.0 * sum(v) / len(v), 1.0) for t, v in per.items()]


def _mtbench_items(rows):
    return [("score", f"{r['question_id']}:{r['turn']}:{r.get('repeat', 0)}", float(r["score"]), 1.0)
            for r in rows if r.get("score", -1) != -1]


def _loss_items(rows):
    return [(r["source"], r["id"], r["loss_sum"], r["tokens"]) for r in rows if "loss_sum" in r]


BUILTIN: dict[str, Task] = {t.name: t for t in (
    Task("gsm8k", _run_gsm8k, {"accuracy": HIGHER}, ability="math", binary=True, items=_gsm8k_items, metrics_type=Gsm8kMetrics,
         description="GSM8K test: exact match of the final number (evaluation-protocol.md)"),
    Task("humaneval", _run_humaneval, {"pass@1": HIGHER}, ability="code", binary=True, items=_humaneval_items,
         metrics_type=HumanEvalMetrics,
         description="HumanEval: pass@1 of sandboxed completions"),
    Task("mtbench", _run_mtbench, {"score": HIGHER}, ability="general", items=_mtbench_items, metrics_type=MtBenchMetrics,
         description="MT-Bench: LLM-judge score 1-10"),
    Task("loss", _run_loss, {"*": LOWER}, generates=False, items=_loss_items, metrics_type=LossMetrics,
         description="held-out loss per source (the source's ability)"),
)}

def is_spec(name: str) -> bool:
    """A user task's Python path, ``package.module:attribute`` (the config's rule)."""
    return is_task_path(name)


def check_name(name: str) -> str:
    """A task entry of a config: a built-in name or a Python path (not imported here)."""
    if name in BUILTIN or is_spec(name):
        return name
    if ":" in name or "." in name:
        raise SftmixError(f"task {name!r}: a user task is named as package.module:attribute (e.g. my_pkg.tasks:sql_exact)")
    raise unknown("task", name, [*BUILTIN, "<package.module:attribute>"])


def get(name: str) -> Task:
    """The task a config entry names: a built-in, or a user task imported from its Python path
    (Python keeps the module: asking again returns the same task). No registry is kept here, so
    what a name means never depends on what was asked before: callers pass the tasks they know."""
    if name in BUILTIN:
        return BUILTIN[name]
    check_name(name)
    module, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise SftmixError(f"task {name!r}: cannot import {module}: {e}") from None
    except AttributeError:
        raise SftmixError(f"task {name!r}: module {module} has no attribute {attr!r}") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise SftmixError(f"task {name!r}: importing {module} failed: {type(e).__name__}: {e}") from None
    if not isinstance(obj, Task):
        raise SftmixError(f"task {name!r}: {module}.{attr} is a {type(obj).__name__}, not a sftmix.eval.tasks.Task")
    if obj.name in BUILTIN:
        raise SftmixError(f"task {name!r}: its name {obj.name!r} is a built-in task's")
    return obj


def resolve(specs: list[str], where: str = "eval.tasks") -> list[Task]:
    """The tasks a config names, imported and type-checked, each name once: what a run checks
    before any training, so that a user task that cannot run is found before hours are spent."""
    out: list[Task] = []
    by_name: dict[str, str] = {}
    for spec in specs:
        try:
            t = get(spec)
        except SftmixError as e:
            raise SftmixError(f"{where}: {e}") from None
        if t.name in by_name:
            same = by_name[t.name] == spec
            raise SftmixError(f"{where}: {spec!r} is named twice" if same else
                              f"{where}: {by_name[t.name]!r} and {spec!r} are both named {t.name!r}; two tasks cannot share a "
                              "name (the second would be given the first one's results)")
        by_name[t.name] = spec
        out.append(t)
    return out


def check_rows(task: Task, metrics: dict, items: list[tuple]) -> None:
    """A user task's results are evidence: every headline metric it returns, and every item
    value behind one, must be a finite number; the error names the task, the item and the metric."""
    for metric in task.metrics:
        if metric == "*":
            continue
        v = metrics.get(metric)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SftmixError(f"task {task.name!r}: its headline metric {metric!r} is {v!r}; expected a finite number "
                              f"(metrics returned: {', '.join(map(str, metrics)) or 'none'})")
    for metric, item, value, weight in items:
        if not (math.isfinite(value) and math.isfinite(weight)):
            raise SftmixError(f"task {task.name!r}: item {item!r}: {metric} = {value!r} (weight {weight!r}); expected a finite number")


def known(configs: list[dict]) -> dict[str, Task]:
    """Every task the given run configs evaluate, by name (the built-ins always). Two different
    tasks of one name across the configs are an error: their results could not be told apart."""
    out, spec_of = dict(BUILTIN), {}
    for c in configs:
        for spec in (c.get("eval") or {}).get("tasks", []):
            if spec not in BUILTIN:
                t = get(spec)
                if out.get(t.name, t) is not t:
                    raise SftmixError(f"tasks {spec_of[t.name]!r} and {spec!r} are both named {t.name!r}; two tasks cannot "
                                      "share a name (their results would be taken for one task's)")
                out[t.name], spec_of[t.name] = t, spec
    return out


def direction(metric_key: str, tasks: dict[str, Task] = BUILTIN) -> str | None:
    """``"higher"`` / ``"lower"`` for a ``task/metric`` key, None when not a headline metric.
    ``tasks``: the tasks known here (``known``; the built-ins by default)."""
    task, _, metric = metric_key.partition("/")
    t = tasks.get(task)
    if t is None:  # never guess a direction: a claim or a mark would silently flip
        raise SftmixError(f"metric {metric_key!r}: task {task!r} is not known here (a user task is known once the study's "
                          "run configs that name it have been read)")
    return t.direction(metric)


def is_binary(metric_key: str, tasks: dict[str, Task] = BUILTIN) -> bool:
    """Whether a ``task/metric`` key is a pass/fail metric (per item 0 or 100)."""
    t = tasks.get(metric_key.partition("/")[0])
    return bool(t and t.binary)


def metrics_type(spec: str) -> type[TaskMetrics]:
    """What a task's kept metrics are read as, from the task as configured, without importing a
    user task (a built-in's own type; a user task's: ``TaskMetrics``)."""
    return BUILTIN[spec].metrics_type if spec in BUILTIN else TaskMetrics
