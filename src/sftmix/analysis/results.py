"""A study's results by configuration, read from the results store alone: the configurations
(replicates merged), the headline metrics present with their directions, the per-item values
behind each, and the results table (an estimate with a 95% interval per metric) with FLOPs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sftmix.analysis import stats
from sftmix.eval import tasks
from sftmix.study.grid import REPLICATE_AXIS, group_label
from sftmix.study.store import Metric, Run, Store


def eval_tokens(metrics: list[Metric]) -> dict[str, float]:
    """Per run, the prompt and generated tokens its generation tasks processed (held-out loss excluded)."""
    out: dict[str, float] = {}
    for m in metrics:
        if m.metric == "tokens_processed":
            out[m.run_id] = out.get(m.run_id, 0.0) + m.value
    return out


def flops(run: Run, tokens: dict[str, float]) -> tuple[float, float]:
    """Training FLOPs 6·N·D over the real tokens trained on (all stages and epochs); evaluation
    FLOPs 2·N per prompt or generated token of the generation tasks (``tokens``: ``eval_tokens``)."""
    n = run.params or 0
    return 6 * n * (run.train_tokens or 0), 2 * n * tokens.get(run.id, 0.0)


def lower_is_better(metric: str, known: dict[str, tasks.Task] = tasks.BUILTIN) -> bool:
    """Whether lower is better on a ``task/metric`` column. ``known``: the tasks that may be
    named (``study_tasks`` for a study: its user tasks too); an unknown task is an error."""
    return tasks.direction(metric, known) == tasks.LOWER


def study_tasks(store: Store) -> dict[str, tasks.Task]:
    """Every task the study's runs evaluated, by name: the built-ins and the user tasks their
    configs name (imported here, so a task module that is gone is a clear error)."""
    return tasks.known([r.config for r in store.runs() if r.config])


@dataclass
class Group:
    """One configuration: its label, grid point (seed removed), config and runs (one per seed)."""

    label: str
    point: dict
    config: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        """The seed of each run of the configuration, in run order."""
        return [r.seed for r in self.runs]


def configuration(label: str, point: dict, config: dict) -> Group:
    """The configuration (without runs) a run of this label, grid point and config belongs to: its
    seeds (the replicate axis) are one configuration."""
    return Group(group_label(point) if REPLICATE_AXIS in point else label,
                 {k: v for k, v in point.items() if k != REPLICATE_AXIS}, config)


def groups(store: Store) -> list[Group]:
    """Done runs grouped by configuration, in the order the runs were first recorded."""
    out: dict[str, Group] = {}
    for r in store.runs():
        if r.status != "done":
            continue
        g = configuration(r.label, r.point, r.config)
        out.setdefault(g.label, g).runs.append(r)
    return list(out.values())


def metric_keys(store: Store) -> list[str]:
    """The headline metrics present: benchmarks first, then held-out loss per source."""
    known = study_tasks(store)
    keys = {m.key for m in store.metrics() if m.task in known and known[m.task].direction(m.metric) is not None}
    order = {"gsm8k": 0, "humaneval": 1, "mtbench": 2, "loss": 4}  # a user's own tasks between the benchmarks and loss
    return sorted(keys, key=lambda k: (order.get(k.split("/")[0], 3), k))


def group_items(store: Store, g: Group, metric: str, cache: dict | None = None) -> stats.Items | None:
    """The per-item results of a group on a metric, or None when the store has none (then only
    the runs' aggregate values exist, and no interval can be given)."""
    task, name = metric.split("/", 1)
    key = (task, name)
    if cache is not None and key in cache:
        rows = cache[key]
    else:
        rows = store.samples(task, name)
        if cache is not None:
            cache[key] = rows
    ids = {r.id for r in g.runs}
    per_run: dict[str, dict] = {}
    for s in rows:
        if s.run_id in ids:
            per_run.setdefault(s.run_id, {})[s.item] = (s.value, s.weight)
    if len(per_run) != len(g.runs):
        return None
    seeds = {r.id: r.seed for r in g.runs}
    return stats.items_of([(seeds[rid], per_run[rid]) for rid in sorted(per_run, key=lambda x: seeds[x])])


def summary(store: Store) -> tuple[list[str], list[list]]:
    """Table rows: one per configuration, a cell per metric: (estimate, low, high) or a plain
    value when no per-item results exist; plus the number of seeds and FLOPs."""
    keys = metric_keys(store)
    metrics = store.metrics()
    vals = {(m.run_id, m.key): m.value for m in metrics}
    tokens = eval_tokens(metrics)
    header = ["run", "seeds"] + keys + ["train PFLOPs", "eval PFLOPs"]
    rows, cache = [], {}
    for g in groups(store):
        cells: list[Any] = [g.label, len(g.runs)]
        for k in keys:
            items = group_items(store, g, k, cache)
            if items is not None and items.values.size:
                cells.append(stats.interval(items))
            else:
                present = [vals[(r.id, k)] for r in g.runs if (r.id, k) in vals]
                cells.append(sum(present) / len(present) if present else None)
        fl = [flops(r, tokens) for r in g.runs]
        cells += [round(sum(t for t, _ in fl) / len(fl) / 1e15, 6), round(sum(e for _, e in fl) / len(fl) / 1e15, 6)]
        rows.append(cells)
    return header, rows
