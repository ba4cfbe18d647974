"""The results store: one SQLite database per study directory.

Tables: ``runs`` (one row per run: id, label, config, status, error, paths, timings),
``metrics`` (run id, task, metric, value), ``samples`` (the per-item results behind a metric: a
held-out sample's summed token loss and token count, a problem's pass or a judgment's score,
as value and weight, so that intervals come from data), ``data`` (what each stage trained on:
examples and approximate tokens per source and ability, replayed parts apart, from the stages'
manifests; the amounts that scaling and mixture laws are fitted on), ``curves`` (held-out
loss per held-out source during training) and ``contamination`` (per benchmark, the items the
run's training rows hold and its headline metric without them, ``sftmix.eval.contamination``). Every write is one transaction, so a kill at any time leaves the database
consistent (SQLite's journal rolls back a half-done write).
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from sftmix.errors import SftmixError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, label TEXT, point TEXT, config TEXT, status TEXT, error TEXT,
  checkpoint TEXT, eval_dir TEXT, started REAL, finished REAL, train_tokens REAL, params REAL, engine TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
  run_id TEXT, task TEXT, metric TEXT, value REAL, PRIMARY KEY (run_id, task, metric)
);
CREATE TABLE IF NOT EXISTS samples (
  run_id TEXT, task TEXT, metric TEXT, item TEXT, value REAL, weight REAL, PRIMARY KEY (run_id, task, metric, item)
);
CREATE TABLE IF NOT EXISTS data (
  run_id TEXT, stage_index INTEGER, stage TEXT, source TEXT, ability TEXT, replay INTEGER, examples REAL, tokens REAL,
  pool_size REAL, origin TEXT, PRIMARY KEY (run_id, stage_index, source, replay)
);
CREATE TABLE IF NOT EXISTS curves (
  run_id TEXT, stage TEXT, stage_index INTEGER, step INTEGER, run_step INTEGER, run_tokens REAL, source TEXT, loss REAL,
  PRIMARY KEY (run_id, stage, step, source)
);
CREATE TABLE IF NOT EXISTS contamination (
  run_id TEXT, task TEXT, metric TEXT, ngram INTEGER, items INTEGER, held_json TEXT, rows INTEGER, value REAL, clean_value REAL,
  PRIMARY KEY (run_id, task)
);
"""


SCHEMA_TABLES = ("runs", "metrics", "samples", "data", "curves", "contamination")
APPLICATION_ID = 0x7366746D  # "sftm": SQLite's application_id of an sftmix store
SCHEMA_VERSION = 4  # SQLite's user_version: the layout of SCHEMA (2: runs.engine; 3: curves.source, named ability before;
# 4: contamination, which runs ingested before it have no rows of)
# the columns an sftmix store's tables hold (a store made before the stamp is recognised by them)
COLUMNS = {"runs": {"id", "label", "point", "config", "status", "error", "checkpoint", "eval_dir", "started", "finished",
                    "train_tokens", "params"},
           "metrics": {"run_id", "task", "metric", "value"}}


class Run(NamedTuple):
    """A stored run (``runs``): its id, label, grid point and resolved config (as JSON), where it
    stands (running, done, failed, with the error) and, once done, its checkpoint, evaluation
    folder, trained tokens, parameter count and the engine that answered its generation tasks."""

    id: str
    label: str
    point: dict
    config: dict
    status: str
    error: str | None
    checkpoint: str | None
    eval_dir: str | None
    started: float | None
    finished: float | None
    train_tokens: float | None
    params: float | None
    engine: str | None

    @property
    def seed(self) -> int:
        """The run's seed (its config's; 0 where the config has none)."""
        return self.config.get("seed", 0)

    @property
    def first_error_line(self) -> str:
        """The first line of a failed run's error, '' for none."""
        return self.error.splitlines()[0] if self.error else ""


class Metric(NamedTuple):
    """A run's headline value of one task's metric (``metrics``)."""

    run_id: str
    task: str
    metric: str
    value: float

    @property
    def key(self) -> str:
        """``task/metric``, the column a study's tables and claims name."""
        return f"{self.task}/{self.metric}"


class Sample(NamedTuple):
    """One item behind a run's headline metric (``samples``): a held-out sample's summed token loss
    with its token count as weight, a problem's pass (weight 1), a judgment's score."""

    run_id: str
    task: str
    metric: str
    item: str
    value: float
    weight: float


class CurvePoint(NamedTuple):
    """A stored forgetting-curve point (``curves``): one run's held-out loss on one held-out source
    at one step of one stage, with where that step lies on the run's axes."""

    run_id: str
    stage: str
    stage_index: int
    step: int
    run_step: int
    run_tokens: float
    source: str
    loss: float


class DataPart(NamedTuple):
    """What one part of one stage's mixture of a run trained on (``data``; replay = 1 for a
    replayed part): examples, approximate tokens, the source's pool size and where its rows came
    from (``origin``: a data file, the hub, generated)."""

    run_id: str
    stage_index: int
    stage: str
    source: str
    ability: str
    replay: int
    examples: float
    tokens: float
    pool_size: float
    origin: str


class Contamination(NamedTuple):
    """A run's benchmark over all its evaluated items and over those none of its training rows
    holds (``contamination``; a run's ``eval/contamination.json``): the headline metric, the
    n-gram length that decided, the items evaluated, the held ones (``held_json``: their benchmark ids,
    as a JSON list), the training rows that hold them, and the values (``clean_value`` None where
    every item is held)."""

    run_id: str
    task: str
    metric: str
    ngram: int
    items: int
    held_json: str
    rows: int
    value: float
    clean_value: float | None

    @property
    def held(self) -> list[str]:
        """The benchmark ids of the evaluated items some training row holds."""
        return json.loads(self.held_json)


ROW_TABLES = (("metrics", Metric), ("samples", Sample), ("curves", CurvePoint), ("data", DataPart),
              ("contamination", Contamination))  # a finished run's rows


def _decoded(r: Run) -> Run:
    """A run row with its grid point and config read from their JSON columns."""
    return r._replace(point=json.loads(r.point or "{}"), config=json.loads(r.config or "{}"))


def _tables(conn: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: {c[1] for c in conn.execute(f"PRAGMA table_info('{n}')")} for n in names}


class Store:
    """The study's results in SQLite: runs, metrics, per-item samples, curves and what each run trained on."""

    only: frozenset | None = None  # a restricted view reads these runs alone (``restricted``)

    def __init__(self, path: str | Path):
        """Open (or create) the study's store. An existing file must be an sftmix store, readable
        through: another program's SQLite file, a damaged or a cut-short one is an error naming
        it, and nothing is created inside it."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        bad = f"{self.path}: not a readable sftmix results database"
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.row_factory = sqlite3.Row
            if not new:
                check = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
                if check != ["ok"]:
                    raise SftmixError(f"{bad}: it is damaged ({'; '.join(check[:3])}); move it aside to start afresh "
                                      "(the runs' folders keep their results: `study run` ingests them again)")
                app = self.conn.execute("PRAGMA application_id").fetchone()[0]
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                tables = _tables(self.conn)
                if app == APPLICATION_ID:
                    if version > SCHEMA_VERSION:
                        raise SftmixError(f"{self.path}: an sftmix store of a newer layout (version {version}; this sftmix "
                                          f"reads up to {SCHEMA_VERSION}); use a newer sftmix")
                elif app != 0 or any(not cols <= tables.get(t, set()) for t, cols in COLUMNS.items()):
                    what = f"application id {app:#x}" if app else "tables " + (", ".join(sorted(tables)) or "none")
                    raise SftmixError(f"{bad}: it is another program's SQLite file ({what}); sftmix left it as it was. "
                                      "Give the study another output_dir or move the file aside")
            stamped = (self.conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                       and self.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION)
            if not stamped or set(SCHEMA_TABLES) - set(_tables(self.conn)):  # a store that is whole is only read
                with self.conn:
                    self.conn.executescript(SCHEMA)
                    if "engine" not in _tables(self.conn)["runs"]:  # version 1: which engine answered was not kept
                        self.conn.execute("ALTER TABLE runs ADD COLUMN engine TEXT")
                    if "ability" in _tables(self.conn)["curves"]:  # up to version 2: it held the held-out source's name
                        self.conn.execute("ALTER TABLE curves RENAME COLUMN ability TO source")
                    self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.conn.execute("SELECT id, status FROM runs LIMIT 1").fetchall()
        except SftmixError:
            self.conn.close()
            raise
        except sqlite3.DatabaseError as e:
            raise SftmixError(f"{bad} ({e}); move it aside to start afresh") from None

    def status(self, run_id: str) -> str | None:
        """A run's status (running, done, failed), None if it was never started."""
        row = self.conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row["status"] if row else None

    def relabel(self, run_id: str, label: str, point: dict) -> None:
        """Give a run the label and grid point the study file now gives it."""
        with self.conn:
            self.conn.execute("UPDATE runs SET label = ?, point = ? WHERE id = ?", (label, json.dumps(point), run_id))

    def start(self, run_id: str, label: str, point: dict, config: dict) -> None:
        """Record a run as running (starting again a run recorded before, under its current label)."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (id, label, point, config, status, started) VALUES (?, ?, ?, ?, 'running', ?) "
                "ON CONFLICT(id) DO UPDATE SET status = 'running', error = NULL, started = excluded.started, label = excluded.label, "
                "point = excluded.point",
                (run_id, label, json.dumps(point), json.dumps(config), time.time()))

    def finish(self, run_id: str, checkpoint: str, eval_dir: str, metrics: list[Metric], train_tokens: float, params: float,
               samples: list[Sample] = (), curves: list[CurvePoint] = (), data: list[DataPart] = (),
               engine: str | None = None, contamination: list[Contamination] = ()) -> None:
        """Record a finished run: its metrics, per-item samples, curve points, the data it trained
        on and its benchmarks' scores without the items that data holds (each row of this run);
        ``engine``: which engine answered its generation tasks."""
        rows = {"metrics": metrics, "samples": samples, "curves": curves, "data": data, "contamination": contamination}
        for table, kind in ROW_TABLES:
            bad = next((r for r in rows[table] if not isinstance(r, kind) or r.run_id != run_id), None)
            if bad is not None:
                raise ValueError(f"finish({run_id!r}): a {table} row must be a {kind.__name__} of this run, got {bad!r}")
        with self.conn:  # every row of the run and the 'done' status land together or not at all
            for table, kind in ROW_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                self._insert(table, kind, rows[table])
            self.conn.execute("UPDATE runs SET status = 'done', checkpoint = ?, eval_dir = ?, finished = ?, train_tokens = ?, "
                              "params = ?, engine = ? WHERE id = ?", (checkpoint, eval_dir, time.time(), train_tokens, params, engine, run_id))

    def has_contamination(self, run_id: str) -> bool:
        """Whether the store holds contamination rows of the run."""
        return self.conn.execute("SELECT 1 FROM contamination WHERE run_id = ? LIMIT 1", (run_id,)).fetchone() is not None

    def keep_contamination(self, run_id: str, rows: list[Contamination]) -> bool:
        """Give a done run its contamination rows where it has none (a run ingested by an sftmix
        whose store had no such table); True when rows were added."""
        if not rows or self.has_contamination(run_id):
            return False
        if any(r.run_id != run_id for r in rows):
            raise ValueError(f"keep_contamination({run_id!r}): every row must be of this run")
        with self.conn:
            self._insert("contamination", Contamination, rows)
        return True

    def _insert(self, table: str, kind, rows) -> None:
        """Rows of ``kind`` into ``table``, by column name (inside the caller's transaction)."""
        self.conn.executemany(f"INSERT INTO {table} ({', '.join(kind._fields)}) VALUES ({', '.join('?' * len(kind._fields))})", rows)

    def fail(self, run_id: str, error: str) -> None:
        """Record a run as failed, with its error."""
        with self.conn:
            self.conn.execute("UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE id = ?", (error, time.time(), run_id))

    def restricted(self, run_ids) -> Store:
        """The same database read through these runs alone (the runs a study file plans now):
        runs an earlier version of the study left behind must not enter its report or its laws,
        where their labels could even merge with a current configuration's. Writes are not
        restricted."""
        view = copy.copy(self)
        view.only = frozenset(run_ids)
        return view

    def _read(self, kind, table: str, where: str = "", args: tuple = (), order: str = "") -> list:
        """The rows of ``table`` (of this view's runs) as ``kind``, its columns read by name."""
        key = "id" if kind is Run else "run_id"
        rows = self.conn.execute(f"SELECT {', '.join(kind._fields)} FROM {table} {where} {order}", args)
        return [kind(*r) for r in rows if self.only is None or r[key] in self.only]

    def runs(self) -> list[Run]:
        """Every run (of this view), in the order they were first recorded."""
        return [_decoded(r) for r in self._read(Run, "runs", order="ORDER BY rowid")]

    def run(self, run_id: str) -> Run | None:
        """One run (of this view), None where it was never recorded."""
        found = self._read(Run, "runs", "WHERE id = ?", (run_id,))
        return _decoded(found[0]) if found else None

    def metrics(self) -> list[Metric]:
        """Every metric value of the runs."""
        return self._read(Metric, "metrics")

    def samples(self, task: str | None = None, metric: str | None = None) -> list[Sample]:
        """Per-item values, optionally of one task and metric."""
        where = [(c, v) for c, v in (("task", task), ("metric", metric)) if v is not None]
        return self._read(Sample, "samples", "WHERE " + " AND ".join(f"{c} = ?" for c, _ in where) if where else "",
                          tuple(v for _, v in where), "ORDER BY run_id, item")

    def data(self) -> list[DataPart]:
        """What each run trained on: a row per stage, source and replay part."""
        return self._read(DataPart, "data", order="ORDER BY run_id, stage_index, replay, source")

    def curves(self) -> list[CurvePoint]:
        """The forgetting-curve points of the runs."""
        return self._read(CurvePoint, "curves", order="ORDER BY run_id, run_step, source")

    def contamination(self) -> list[Contamination]:
        """Per run and benchmark, its scores with and without the items its training rows hold."""
        return self._read(Contamination, "contamination", order="ORDER BY run_id, task")
