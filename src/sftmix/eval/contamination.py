"""A run's benchmark scores on the items its training data did not hold (GPT-3's "clean subset").

After a run's evaluation, every row the run trained on (each stage's composed data) is searched
for the n-grams of the benchmarks it was evaluated on (``sftmix.data.contamination``). A benchmark
item that some training row holds is *hit*; each headline metric is then given over all items (as
the task reported it) and over the items no row holds. A score that drops on the clean items was
helped by training on the test; one that holds was not. ``eval/contamination.json`` keeps it
(``RunContamination``); ``sftmix run`` prints it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftmix import layout
from sftmix.data.compose import read_composed
from sftmix.config.run import NGRAM
from sftmix.data.contamination import index
from sftmix.eval.runner import BENCHMARKS, read_items
from sftmix.io import read_record, write_json

FILE = "contamination.json"


def benchmark_item(task: str, item: str) -> str:
    """The benchmark's id (``sftmix.data.contamination.benchmark_texts``) of an item of a task's
    ``items_<task>.jsonl``: GSM8K's by test index, HumanEval's by task id, MT-Bench's by question
    (a turn and repeat of a question is that question)."""
    if task == "gsm8k":
        return f"gsm8k/test/{item}"
    if task == "mtbench":
        return f"mtbench/{item.split(':')[0]}"
    return item


class TaskContamination(BaseModel):
    """One benchmark's headline metric over all its evaluated items and over the clean ones."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    items: int  # the benchmark's items evaluated (MT-Bench: questions)
    hit: list[str]  # of those, the ones some training row holds (benchmark ids)
    rows: int  # training rows that hold an evaluated item
    value: float  # over all items: the mean of the items' values, as the task reports it
    clean_value: float | None  # over the items no training row holds; None where every item is hit


class RunContamination(BaseModel):
    """``eval/contamination.json``: per benchmark task, its scores with and without the items the
    run's training data holds, and the n-gram length that decided it."""

    model_config = ConfigDict(extra="forbid")

    ngram: int
    tasks: dict[str, TaskContamination]


def training_rows(run_out: Path) -> list:
    """Every conversation a stage of the run trained on, from the stages' composed data, once each
    (DMT's second stage replays rows of its first)."""
    rows = {c.id: c for stage in layout.stages(run_out) for c in read_composed(layout.data_dir(stage)).conversations}
    return list(rows.values())


def measure(run_out: Path, eval_dir: Path, tasks: list[str], data_dir: str | None, n: int = NGRAM) -> RunContamination | None:
    """The run's clean-subset scores for the benchmarks among ``tasks`` (None: none of them); written
    to ``eval_dir``."""
    (Path(eval_dir) / FILE).unlink(missing_ok=True)  # an earlier evaluation's: never left to stand for this one
    benchmarks = [t for t in tasks if t in BENCHMARKS]
    if not benchmarks:
        return None
    rows = training_rows(run_out)
    found = index(benchmarks, n, data_dir).search(rows)
    out = {}
    for task in benchmarks:
        hits = found.get(task)
        held = hits.items if hits else set()
        items = read_items(eval_dir, task)
        if not items:  # nothing scored (e.g. no MT-Bench turn got a rating)
            continue
        evaluated = {benchmark_item(task, i.item) for i in items}  # MT-Bench: questions, not their turns and repeats
        hit = evaluated & held
        clean = [i for i in items if benchmark_item(task, i.item) not in hit]
        out[task] = TaskContamination(
            metric=items[0].metric, items=len(evaluated), hit=sorted(hit),
            rows=sum(1 for row_items in (hits.rows.values() if hits else ()) if row_items & hit),
            value=round(_mean(items), 4), clean_value=round(_mean(clean), 4) if clean else None)
    result = RunContamination(ngram=n, tasks=out)
    write_json(Path(eval_dir) / FILE, result.model_dump(mode="json"))
    return result


def _mean(items) -> float:
    return sum(i.value * i.weight for i in items) / sum(i.weight for i in items)


def read(eval_dir: Path) -> RunContamination | None:
    """A run's ``contamination.json``, None where it has none."""
    path = Path(eval_dir) / FILE
    return read_record(path, RunContamination) if path.exists() else None


def describe(task: str, c: TaskContamination) -> str:
    """One line: how many evaluated items the training data holds, and the metric with and without them."""
    clean = f"{c.clean_value:.2f} on the {c.items - len(c.hit)} others" if c.clean_value is not None else "no item is clean"
    return (f"{task}: training rows hold {len(c.hit)} of the {c.items} items evaluated ({c.rows} rows); "
            f"{c.metric} {c.value:.2f} on all, {clean}")
