"""A run folder as a typed record: what the study store keeps of one finished run.

The files a run leaves (``sftmix.layout``) are read through typed records, each checked when
read: ``DoneRecord`` (``done.json``, ``sftmix.study.worker``), ``StageMeta`` (a stage's
``final/meta.json``, ``sftmix.train.meta``), ``Manifest`` (a stage's ``data/manifest.json``, ``sftmix.data.compose``) and ``EvalResults`` (the
evaluation's ``results.json``, ``sftmix.eval.runner``). ``read_run`` turns a finished run's folder into a ``RunRecord``,
whose rows are the store's rows (``Metric``, ``Sample``, ``CurvePoint``, ``DataPart`` of
``sftmix.study.store``), and ``Contamination`` rows from the evaluation's ``contamination.json``
(``RunContamination``, ``sftmix.eval.contamination``). A malformed file is an error naming it and its field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sftmix import layout
from sftmix.data.compose import Manifest
from sftmix.errors import SftmixError
from sftmix.eval.runner import EvalResults, items_file, read_items
from sftmix.eval import contamination
from sftmix.eval.metrics import TaskMetrics
from sftmix.io import read_record
from sftmix.study.store import Contamination, CurvePoint, DataPart, Metric, Sample
from sftmix.study.worker import DoneRecord
from sftmix.train.meta import StageMeta

# ---------------------------------------------------------------- a run as a record


@dataclass
class RunRecord:
    """What the store keeps of one finished run."""

    run_id: str
    checkpoint: str
    eval_dir: str
    metrics: list[Metric] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    curves: list[CurvePoint] = field(default_factory=list)
    data: list[DataPart] = field(default_factory=list)
    train_tokens: float = 0.0
    params: float = 0.0
    engine: str | None = None
    contamination: list[Contamination] = field(default_factory=list)


def metric_rows(run_id: str, results: dict[str, TaskMetrics]) -> list[Metric]:
    """Each task's stored values, as its type gives them (a user task's: every number)."""
    return [Metric(run_id, task, k, v) for task, m in results.items() for k, v in m.stored()]


def sample_rows(run_id: str, eval_dir: Path, tasks: dict) -> list[Sample]:
    """Every item behind a headline metric, from the evaluation's ``items_<task>.jsonl``."""
    out: list[Sample] = []
    for task in tasks:
        if not items_file(eval_dir, task).exists():
            raise SftmixError(f"{items_file(eval_dir, task)}: missing; the evaluation of task {task!r} wrote no per-item results "
                              "(rerun the run's evaluation: delete its eval folder and `study run` again)")
        out += [Sample(run_id, task, i.metric, i.item, i.value, i.weight) for i in read_items(eval_dir, task)]
    return out


def curve_rows(run_id: str, run_out: Path) -> list[CurvePoint]:
    """The forgetting-curve points of every finished stage."""
    out = []
    for path in layout.stage_metas(run_out):
        index = layout.stage_index(path.parent.parent)
        for pt in read_record(path, StageMeta).curve:
            out += [CurvePoint(run_id, pt.stage, index, pt.step, pt.run_step, pt.run_tokens, source, loss) for source, loss in pt.loss.items()]
    return out


def data_rows(run_id: str, run_out: Path) -> list[DataPart]:
    """Per part of every stage's mixture, from the stages' manifests (tokens: the manifest's
    approximate count, characters / 4)."""
    out = []
    for path in layout.stage_manifests(run_out):
        stage = path.parent.parent
        for part in read_record(path, Manifest).parts:
            origin = part.origin or {}
            out.append(DataPart(run_id, layout.stage_index(stage), stage.name, part.source, part.ability, int(bool(part.replay_of)),
                               float(part.count), float(part.approx_tokens), float(part.pool_size),
                               origin.get("kind", "") if isinstance(origin, dict) else str(origin)))
    return out


def contamination_rows(run_id: str, eval_dir: Path) -> list[Contamination]:
    """The run's benchmark scores without the items its training rows hold, from the evaluation's
    ``contamination.json`` (none where it has none: no benchmark was evaluated, or measuring failed)."""
    held = contamination.read(eval_dir)
    return [Contamination(run_id, task, c.metric, held.ngram, c.items, json.dumps(c.hit), c.rows, c.value, c.clean_value)
            for task, c in (held.tasks.items() if held else ())]


def read_run(run_id: str, run_out: Path) -> RunRecord:
    """A finished run's folder (its ``done.json`` present) as the record of run ``run_id``."""
    done = read_record(Path(run_out) / layout.DONE, DoneRecord)
    eval_dir = Path(done.eval_dir)
    results = read_record(eval_dir / "results.json", EvalResults)
    tokens, params = 0.0, 0.0
    for path in layout.stage_metas(run_out):
        tokens += float(read_record(path, StageMeta).real_tokens)
        if not params:
            params = layout.param_count(path.parent)
    return RunRecord(run_id, done.checkpoint, str(eval_dir), metric_rows(run_id, results.tasks),
                     sample_rows(run_id, eval_dir, results.tasks), curve_rows(run_id, run_out), data_rows(run_id, run_out), tokens, params,
                     results.engine.describe() if results.engine else None, contamination_rows(run_id, eval_dir))


