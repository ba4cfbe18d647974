"""study/store.py: the study's results database: runs, metrics and per-item rows written together,
restarts, relabelling, restricted views, and a file that is not a database."""

import json
import sqlite3

import pytest

from sftmix.errors import SftmixError
from sftmix.study.store import SCHEMA, SCHEMA_VERSION, Contamination, CurvePoint, DataPart, Metric, Run, Sample, Store


def test_a_run_is_started_finished_and_read_back(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    assert s.status("a") is None
    s.start("a", "x=1", {"x": 1}, {"seed": 0})
    assert s.status("a") == "running"
    sample = Sample("a", "loss", "math", "r1", 3.0, 2.0)
    curve = CurvePoint("a", "stage1_x", 1, 0, 0, 0.0, "math", 2.0)
    part = DataPart("a", 1, "stage1_x", "gsm8k", "math", 0, 8.0, 80.0, 100.0, "file")
    s.finish("a", "/ckpt", "/eval", [Metric("a", "loss", "math", 1.5)], 1000.0, 10.0, samples=[sample], curves=[curve], data=[part])
    assert s.status("a") == "done"
    # each table reads back as its row type, every field in its place
    assert s.metrics() == [Metric("a", "loss", "math", 1.5)] and s.metrics()[0].key == "loss/math"
    assert s.samples("loss", "math") == [sample] and s.samples("loss", "other") == [] and s.samples() == [sample]
    assert s.data() == [part] and s.curves() == [curve]
    (run,) = s.runs()
    assert isinstance(run, Run) and (run.id, run.label, run.point, run.config, run.seed) == ("a", "x=1", {"x": 1}, {"seed": 0}, 0)
    assert (run.status, run.checkpoint, run.eval_dir, run.train_tokens, run.params) == ("done", "/ckpt", "/eval", 1000.0, 10.0)
    # finishing again replaces, never duplicates
    s.finish("a", "/ckpt", "/eval", [Metric("a", "loss", "math", 1.25)], 1000.0, 10.0)
    assert [m.value for m in s.metrics()] == [1.25] and s.samples() == []


def test_finish_takes_rows_of_its_own_run_alone(tmp_path):
    """A row of another run, or a bare tuple in the old column order, is refused before anything
    is written: the run stays as it was."""
    s = Store(tmp_path / "r.sqlite")
    s.start("a", "a", {}, {"seed": 3})
    for metrics, samples in (([Metric("b", "loss", "math", 1.0)], []), ([("loss", "math", 1.0)], []),
                             ([], [("loss", "math", "r1", 3.0, 2.0)])):
        with pytest.raises(ValueError, match="of this run"):
            s.finish("a", "", "", metrics, 0.0, 0.0, samples=samples)
    assert s.status("a") == "running" and s.metrics() == [] and s.runs()[0].seed == 3


def test_a_failed_run_restarts_and_takes_its_current_label(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.start("a", "old", {"x": 1}, {})
    s.fail("a", "boom")
    assert s.status("a") == "failed" and s.runs()[0].error == "boom" and s.runs()[0].first_error_line == "boom"
    s.start("a", "new", {"x": 2}, {})
    row = s.runs()[0]
    assert (row.status, row.error, row.label, row.point) == ("running", None, "new", {"x": 2})
    s.relabel("a", "newer", {"x": 3})
    assert (s.runs()[0].label, s.runs()[0].point) == ("newer", {"x": 3})


def test_a_restricted_view_reads_its_runs_alone(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    for rid in ("a", "b"):
        s.start(rid, rid, {}, {})
        s.finish(rid, "", "", [Metric(rid, "loss", "m", 1.0)], 0.0, 0.0, samples=[Sample(rid, "loss", "m", "i", 1.0, 1.0)])
    view = s.restricted(["b"])
    assert [r.id for r in view.runs()] == ["b"] and [m.run_id for m in view.metrics()] == ["b"]
    assert [r.run_id for r in view.samples()] == ["b"]
    assert len(s.runs()) == 2  # the store itself is unchanged


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "r.sqlite"
    bad.write_text("not sqlite at all, " * 100)
    with pytest.raises(SftmixError, match="not a readable sftmix results database"):
        Store(bad)
    assert bad.read_text() == "not sqlite at all, " * 100  # left as it was
    fresh = Store(tmp_path / "fresh.sqlite")  # beside it, a new store is made and stamped as sftmix's
    fresh.start("a", "x", {}, {})
    con = sqlite3.connect(tmp_path / "fresh.sqlite")
    assert con.execute("PRAGMA application_id").fetchone()[0] == 0x7366746D
    assert con.execute("SELECT id, status FROM runs").fetchall() == [("a", "running")]


def test_the_engine_of_a_run_is_kept_and_a_version_1_store_gains_the_column(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.start("a", "x", {}, {})
    s.finish("a", "/ckpt", "/eval", [Metric("a", "gsm8k", "accuracy", 50.0)], 0.0, 0.0, engine="vllm_server: vllm 0.32.0, float32")
    assert s.runs()[0].engine == "vllm_server: vllm 0.32.0, float32"
    old = tmp_path / "v1.sqlite"  # a store as version 1 wrote it: runs without the engine column
    con = sqlite3.connect(old)
    con.executescript("""CREATE TABLE runs (id TEXT PRIMARY KEY, label TEXT, point TEXT, config TEXT, status TEXT, error TEXT,
        checkpoint TEXT, eval_dir TEXT, started REAL, finished REAL, train_tokens REAL, params REAL);
        CREATE TABLE metrics (run_id TEXT, task TEXT, metric TEXT, value REAL, PRIMARY KEY (run_id, task, metric));
        INSERT INTO runs (id, label, status) VALUES ('b', 'y', 'done');
        PRAGMA application_id = 1936094317; PRAGMA user_version = 1;""")
    con.commit()
    con.close()
    v1 = Store(old)
    assert [(r.id, r.status, r.engine) for r in v1.runs()] == [("b", "done", None)]
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_a_version_3_store_gains_the_contamination_table_and_keeps_its_runs(tmp_path):
    """Version 4 keeps each run's benchmark scores without the items its training held; a store
    written before it gains the (empty) table on opening, its runs and metrics as they were."""
    old = tmp_path / "v3.sqlite"
    con = sqlite3.connect(old)
    con.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS contamination")[0] + """
        INSERT INTO runs (id, label, status) VALUES ('b', 'y', 'done');
        INSERT INTO metrics VALUES ('b', 'gsm8k', 'accuracy', 40.0);
        PRAGMA application_id = 1936094317; PRAGMA user_version = 3;""")
    con.commit()
    con.close()
    s = Store(old)
    assert s.contamination() == [] and [m.value for m in s.metrics()] == [40.0]
    s.start("c", "z", {}, {})
    row = Contamination("c", "gsm8k", "accuracy", 13, 3, json.dumps(["gsm8k/test/0"]), 1, 66.67, 50.0)
    s.finish("c", "/ckpt", "/eval", [], 0.0, 0.0, contamination=[row])
    assert s.contamination() == [row] and row.held == ["gsm8k/test/0"]
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 4
    with pytest.raises(ValueError, match="a contamination row must be a Contamination of this run"):
        s.finish("c", "/ckpt", "/eval", [], 0.0, 0.0, contamination=[row._replace(run_id="b")])


def test_a_version_2_store_keeps_its_curves_under_the_source_column(tmp_path):
    """Up to version 2 the curves' column of held-out source names was called ``ability``; opening
    such a store renames it, keeps every point, and the report's readers see the source."""
    old = tmp_path / "v2.sqlite"
    con = sqlite3.connect(old)
    con.executescript("""CREATE TABLE runs (id TEXT PRIMARY KEY, label TEXT, point TEXT, config TEXT, status TEXT, error TEXT,
        checkpoint TEXT, eval_dir TEXT, started REAL, finished REAL, train_tokens REAL, params REAL, engine TEXT);
        CREATE TABLE metrics (run_id TEXT, task TEXT, metric TEXT, value REAL, PRIMARY KEY (run_id, task, metric));
        CREATE TABLE samples (run_id TEXT, task TEXT, metric TEXT, item TEXT, value REAL, weight REAL,
          PRIMARY KEY (run_id, task, metric, item));
        CREATE TABLE data (run_id TEXT, stage_index INTEGER, stage TEXT, source TEXT, ability TEXT, replay INTEGER,
          examples REAL, tokens REAL, pool_size REAL, origin TEXT, PRIMARY KEY (run_id, stage_index, source, replay));
        CREATE TABLE curves (run_id TEXT, stage TEXT, stage_index INTEGER, step INTEGER, run_step INTEGER, run_tokens REAL,
          ability TEXT, loss REAL, PRIMARY KEY (run_id, stage, step, ability));
        INSERT INTO runs (id, label, status) VALUES ('b', 'y', 'done');
        INSERT INTO curves VALUES ('b', '1_s', 1, 0, 0, 0.0, 'gsm8k', 2.5), ('b', '1_s', 1, 4, 4, 10.0, 'gsm8k', 1.5),
          ('b', '1_s', 1, 4, 4, 10.0, 'sharegpt', 3.0);
        PRAGMA application_id = 1936094317; PRAGMA user_version = 2;""")
    con.commit()
    con.close()
    s = Store(old)
    assert [(c.run_id, c.step, c.source, c.loss) for c in s.curves()] == [
        ("b", 0, "gsm8k", 2.5), ("b", 4, "gsm8k", 1.5), ("b", 4, "sharegpt", 3.0)]
    raw = sqlite3.connect(old)
    assert "source" in {c[1] for c in raw.execute("PRAGMA table_info('curves')")}
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    # the renamed column keeps the key: the same point twice is still refused
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO curves VALUES ('b', '1_s', 1, 4, 4, 10.0, 'gsm8k', 9.9)")
    raw.rollback()
    raw.close()
    # and a new point lands beside the old ones
    s.start("c", "z", {}, {})
    s.finish("c", "/ck", "/ev", [], 0.0, 0.0, curves=[CurvePoint("c", "1_s", 1, 0, 0, 0.0, "gsm8k", 2.0)])
    assert [c.source for c in Store(old).curves() if c.run_id == "c"] == ["gsm8k"]
