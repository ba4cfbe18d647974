"""A run folder as a typed record: what the study store keeps of one finished run.

The files a run leaves (``sftmix.layout``) are read through typed records, each checked when
read: ``DoneRecord`` (``done.json``, ``sftmix.study.worker``), ``StageMeta`` (a stage's
``final/meta.json``, ``sftmix.train.meta``), ``Manifest`` (a stage's ``data/manifest.json``, ``sftmix.data.compose``) and ``EvalResults`` (the
evaluation's ``results.json``, ``sftmix.eval.runner``). ``read_run`` turns a finished run's folder into a ``RunRecord``,
whose rows are the store's rows (``MetricRow``, ``SampleRow``, ``CurveRow``, ``DataRow``). A
malformed file is an error naming it and its field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from sftmix import layout
from sftmix.data.compose import Manifest
from sftmix.errors import SftmixError
from sftmix.eval.runner import EvalResults
from sftmix.eval.tasks import stored_values
from sftmix.io import read_jsonl, read_record
from sftmix.study.worker import DoneRecord
from sftmix.train.meta import StageMeta

# ---------------------------------------------------------------- the store's rows


class MetricRow(NamedTuple):
    """A run's metric: task, metric, value."""

    task: str
    metric: str
    value: float


class SampleRow(NamedTuple):
    """One item behind a headline metric (held-out loss: summed token loss and tokens as weight)."""

    task: str
    metric: str
    item: str
    value: float
    weight: float


class CurveRow(NamedTuple):
    """A forgetting-curve point: held-out loss on one held-out source at one step."""

    stage: str
    stage_index: int
    step: int
    run_step: int
    run_tokens: float
    source: str
    loss: float


class DataRow(NamedTuple):
    """What one part of a stage's mixture trained on (replay = 1 for replayed parts)."""

    stage_index: int
    stage: str
    source: str
    ability: str
    replay: int
    examples: float
    tokens: float
    pool_size: float
    origin: str


# ---------------------------------------------------------------- the files of a run


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # the fields readers rely on are checked; others are kept


# ---------------------------------------------------------------- a run as a record


@dataclass
class RunRecord:
    """What the store keeps of one finished run."""

    checkpoint: str
    eval_dir: str
    metrics: list[MetricRow] = field(default_factory=list)
    samples: list[SampleRow] = field(default_factory=list)
    curves: list[CurveRow] = field(default_factory=list)
    data: list[DataRow] = field(default_factory=list)
    train_tokens: float = 0.0
    params: float = 0.0
    engine: str | None = None


def metric_rows(results: dict) -> list[MetricRow]:
    """Each task's stored values, as its registry entry gives them (a user task's: every number)."""
    return [MetricRow(task, k, v) for task, m in results.items() for k, v in stored_values(task, m)]


def sample_rows(eval_dir: Path, tasks: dict) -> list[SampleRow]:
    """Every item behind a headline metric, from the evaluation's ``items_<task>.jsonl``."""
    out: list[SampleRow] = []
    for task in tasks:
        items = Path(eval_dir) / f"items_{task}.jsonl"
        if not items.exists():
            raise SftmixError(f"{items}: missing; the evaluation of task {task!r} wrote no per-item results (rerun the run's "
                              "evaluation: delete its eval folder and `study run` again)")
        out += [SampleRow(task, r["metric"], r["item"], r["value"], r["weight"]) for r in read_jsonl(items)]
    return out


def curve_rows(run_out: Path) -> list[CurveRow]:
    """The forgetting-curve points of every finished stage."""
    out = []
    for path in layout.stage_metas(run_out):
        index = layout.stage_index(path.parent.parent)
        for pt in read_record(path, StageMeta).curve:
            out += [CurveRow(pt.stage, index, pt.step, pt.run_step, pt.run_tokens, source, loss) for source, loss in pt.loss.items()]
    return out


def data_rows(run_out: Path) -> list[DataRow]:
    """Per part of every stage's mixture, from the stages' manifests (tokens: the manifest's
    approximate count, characters / 4)."""
    out = []
    for path in layout.stage_manifests(run_out):
        stage = path.parent.parent
        for part in read_record(path, Manifest).parts:
            origin = part.origin or {}
            out.append(DataRow(layout.stage_index(stage), stage.name, part.source, part.ability, int(bool(part.replay_of)),
                               float(part.count), float(part.approx_tokens), float(part.pool_size),
                               origin.get("kind", "") if isinstance(origin, dict) else str(origin)))
    return out


def read_run(run_out: Path) -> RunRecord:
    """A finished run's folder (its ``done.json`` present) as a record."""
    done = read_record(Path(run_out) / layout.DONE, DoneRecord)
    eval_dir = Path(done.eval_dir)
    results = read_record(eval_dir / "results.json", EvalResults)
    tokens, params = 0.0, 0.0
    for path in layout.stage_metas(run_out):
        tokens += float(read_record(path, StageMeta).real_tokens)
        if not params:
            params = layout.param_count(path.parent)
    return RunRecord(done.checkpoint, str(eval_dir), metric_rows(results.tasks), sample_rows(eval_dir, results.tasks),
                     curve_rows(run_out), data_rows(run_out), tokens, params,
                     results.engine.describe() if results.engine else None)


