"""Studies: the shared 2 x 2 tiny study killed mid-way and restarted, its report from the database;
the shipped study files."""

import base64
import csv
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import study_metrics
from sftmix import layout
from sftmix.io import read_record
from sftmix.study.runner import load_study
from sftmix.study.store import Store
from sftmix.train.strategies import RunRecord

pytestmark = pytest.mark.e2e

def test_study_kill_restart_and_report(mini_study):
    """The shared tiny study (``conftest.mini_study``): killed once a run was done, restarted."""
    f, db = mini_study.file, mini_study.root / "results.sqlite"
    assert 1 <= mini_study.killed_with_done < 4, "the kill did not land while the study was under way"
    r = mini_study.rerun
    assert r.returncode == 0, r.stderr[-2000:]
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, status FROM runs").fetchall()
    assert len(rows) == 4 and all(s == "done" for _, s in rows)
    st = subprocess.run([sys.executable, "-m", "sftmix.cli", "study", "status", str(f)], capture_output=True, text=True)
    assert "4 runs: 4 done, 0 running, 0 queued, 0 interrupted, 0 failed, 0 pending" in st.stdout, st.stdout
    for rid, _ in con.execute("SELECT id, status FROM runs"):  # and the table says it of each run
        assert any(rid in line and "done" in line for line in st.stdout.splitlines()), (rid, st.stdout)
    # every run trained exactly once: one final checkpoint per stage folder, never retrained
    finals = list((mini_study.root / "runs").glob("*/stage*/final/meta.json"))
    assert len(finals) == 4
    # the report's table matches the database
    rep = mini_study.root / "report"
    assert (rep / "report.html").exists() and (rep / "table.tex").exists()
    with open(rep / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    db_vals = {(lab, m): v for lab, m, v in con.execute(
        "SELECT runs.label, metrics.metric, metrics.value FROM metrics JOIN runs ON runs.id = metrics.run_id WHERE task='loss'")}
    assert len(table) == 4
    for row in table:
        assert abs(float(row["loss/generated_math"]) - db_vals[(row["run"], "generated_math")]) < 1e-9
    # one figure per held-out loss against the fraction axis, each a real picture of its own data
    html = (rep / "report.html").read_text()
    assert "<table>" in html
    expected = {f"strategy_fraction__loss_{s}.png" for s in ("generated_math", "generated_code")}
    pngs = {p.name: p.read_bytes() for p in rep.glob("*.png")}
    assert expected <= pngs.keys(), sorted(pngs)
    for name in expected:
        data = pngs[name]
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 400 and height >= 250, (name, width, height)
        assert base64.b64encode(data).decode() in html, f"{name} is not the figure the HTML report shows"
    assert len({pngs[n] for n in expected}) == len(expected)  # two metrics, two different pictures


def test_runs_that_differ_only_in_their_evaluation_reuse_the_finished_training(mini_study, tmp_path):
    """A study whose eval section changes gets new run ids (the evaluation is part of a run's id),
    but its runs need not train again: each takes the finished training of the run that differs
    from it only in what it evaluates (weights hard-linked), and only evaluates."""
    root = tmp_path / "mini"
    shutil.copytree(mini_study.root, root)
    doc = yaml.safe_load(mini_study.file.read_text())
    doc["output_dir"], doc["base"]["eval"] = str(root), {**doc["base"]["eval"], "limit": 3}  # only the evaluation changes
    f = tmp_path / "mini.yaml"
    f.write_text(yaml.safe_dump(doc))
    old = {r.label: r for r in Store(layout.store(root)).runs()}
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("(only the evaluation differs); its stages are reused") == 4, r.stderr[-2000:]
    new = [run for run in Store(layout.store(root)).runs() if run.label in old and run.id != old[run.label].id]
    assert len(new) == 4 and all(run.status == "done" for run in new)
    values = study_metrics(layout.store(root))
    for run in new:
        (was,) = (root / "runs" / old[run.label].id).glob("stage*/final")  # the copy's, which the store does not name
        record = read_record(root / "runs" / run.id / "run.json", RunRecord)
        assert record.trained_in == str(was.parents[1]) and record.config["eval"]["limit"] == 3
        assert os.stat(Path(run.checkpoint) / "model.safetensors").st_ino == os.stat(was / "model.safetensors").st_ino
        assert (Path(run.checkpoint) / "meta.json").read_bytes() == (was / "meta.json").read_bytes()  # not trained again
        assert not list((root / "runs" / run.id).glob("stage*/checkpoints"))
        for source in ("generated_math", "generated_code"):  # the same weights on the same rows: the same loss
            assert abs(values[(run.label, source)] - mini_study.metrics[(run.label, source)]) < 1e-6
    # a run whose training differs (another seed) trains for itself
    doc["base"]["seed"] = 1
    f.write_text(yaml.safe_dump({**doc, "grid": {"strategy.sources": [["generated_math"]], "strategy.fraction": [1]}}))
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0 and "its stages are reused" not in r.stderr, r.stderr[-2000:]


def test_shipped_studies_expand_without_training():
    shipped = sorted(Path("configs/studies").glob("*.yaml"))
    assert len(shipped) >= 7, shipped  # RQ1-RQ4, DMT's k, the mixture law...: a glob that finds nothing checks nothing
    for f in shipped:
        for profile in (None, "small"):
            study, runs = load_study(str(f), profile)
            assert runs, f
            if profile == "small":
                assert all(r.config.model == "smollm2" for r in runs), f
    _, rq4 = load_study("configs/studies/rq4_strategies.yaml", "small")
    assert [r.config.strategy.name for r in rq4] == ["individual"] * 3 + ["multitask", "sequential", "mixed_sequential", "dmt"]
