"""A 2 x 2 study on the tiny model, killed mid-way and restarted; report from the database."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from helpers import TINY_SOURCES, TINY_TRAIN


def test_study_kill_restart_and_report(tmp_path):
    study = {
        "name": "mini", "output_dir": str(tmp_path / "st"),
        "base": {"model": "tiny", "sources": TINY_SOURCES, "strategy": {"name": "individual", "sources": ["generated_math"]},
                 "train": {**TINY_TRAIN, "epochs": 3},
                 "eval": {"tasks": ["loss"], "loss_sources": ["generated_math", "generated_code"], "loss_samples": 8}},
        "grid": {"strategy.sources": [["generated_math"], ["generated_code"]], "strategy.fraction": ["1/2", 1]},
    }
    f = tmp_path / "mini.yaml"
    f.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "st" / "results.sqlite"
    deadline = time.time() + 300
    while time.time() < deadline:
        if db.exists() and sqlite3.connect(db).execute("SELECT count(*) FROM runs WHERE status='done'").fetchone()[0] >= 1:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, status FROM runs").fetchall()
    assert len(rows) == 4 and all(s == "done" for _, s in rows)
    st = subprocess.run([sys.executable, "-m", "sftmix.cli", "study", "status", str(f)], capture_output=True, text=True)
    assert "'done': 4" in st.stdout
    # every run trained exactly once: one final checkpoint per stage folder, never retrained
    finals = list((tmp_path / "st" / "runs").glob("*/stage*/final/meta.json"))
    assert len(finals) == 4
    # the report's table matches the database
    rep = tmp_path / "st" / "report"
    assert (rep / "report.html").exists() and (rep / "table.tex").exists()
    with open(rep / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    db_vals = {(lab, m): v for lab, m, v in con.execute(
        "SELECT runs.label, metrics.metric, metrics.value FROM metrics JOIN runs ON runs.id = metrics.run_id WHERE task='loss'")}
    assert len(table) == 4
    for row in table:
        assert abs(float(row["loss/generated_math"]) - db_vals[(row["run"], "generated_math")]) < 1e-9
    pngs = list(rep.glob("*.png"))
    assert pngs  # figures of loss against the fraction axis
    html = (rep / "report.html").read_text()
    assert "data:image/png;base64" in html and "<table>" in html


def test_shipped_studies_expand_without_training():
    from sftmix.study.runner import load_study

    for f in sorted(Path("configs/studies").glob("*.yaml")):
        for profile in (None, "small"):
            study, runs = load_study(str(f), profile)
            assert runs, f
            if profile == "small":
                assert all(r.config.model == "smollm2" for r in runs), f
    _, rq4 = load_study("configs/studies/rq4_strategies.yaml", "small")
    assert [r.config.strategy.name for r in rq4] == ["individual"] * 3 + ["multitask", "sequential", "mixed_sequential", "dmt"]


def test_report_marks_best_two():
    from sftmix.analysis.report import markdown

    md = markdown(["run", "gsm8k/accuracy", "loss/x", "train PFLOPs", "eval PFLOPs"],
                  [["a", 10.0, 1.0, 0, 0], ["b", 30.0, 2.0, 0, 0], ["c", 20.0, 3.0, 0, 0]])
    assert "**30.0000**" in md and "<u>20.0000</u>" in md and "**1.0000**" in md and "<u>2.0000</u>" in md


def test_tsne_same_ids_for_both_models(tmp_path):
    from helpers import tiny_run
    from sftmix.analysis.tsne import load_points, tsne
    from sftmix.models import resolve_model
    from sftmix.train.strategies import run_strategy

    final = run_strategy(tiny_run(tmp_path, "t", strategy={"name": "individual", "sources": ["generated_code"]}), progress=False)
    png = tsne({"base": resolve_model("tiny"), "tuned": str(final)}, ["generated_math", "generated_code"], tmp_path / "ts",
               n=12, layer=15)
    doc = load_points(tmp_path / "ts" / "tsne.json")
    assert png.exists() and len(doc["ids"]) == 24
    assert doc["models"]["base"]["layer"] == 1  # 2-layer model: the middle layer instead of 15
    assert len(doc["models"]["tuned"]["xy"]) == 24 and doc["models"]["base"]["xy"] != doc["models"]["tuned"]["xy"]
