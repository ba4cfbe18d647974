"""io.py: atomic writes; a writer killed with SIGKILL leaves a temp file the next write removes; cache
folders built once by processes that ask for them at the same time."""

import os
import subprocess
import sys
import time

import pytest
from pydantic import BaseModel

from sftmix.errors import SftmixError
from sftmix.io import building, read_appended, write_json


def test_killed_writers_leave_no_temp_files(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".data.jsonl.{dead.stdout.strip()}.abc123.tmp"
    stale.write_text("half a file")
    mine = tmp_path / f".data.jsonl.{os.getpid()}.live.tmp"  # a writer still running keeps its file
    mine.write_text("in progress")
    write_json(tmp_path / "data.jsonl", {"ok": True})
    assert not stale.exists() and mine.exists()


RACE = """
import os, sys, time
from pathlib import Path
from sftmix.data.sources import load_pool
from sftmix.io import stable_hash
from sftmix.models import load_model, load_tokenizer, resolve_model
from sftmix.train.tokenize import tokenize_mixture
import datasets, tokenizers, transformers
start = Path(sys.argv[1])
(start.parent / f"ready{os.getpid()}").touch()
while not start.exists():  # every process is started and imported before any of them builds
    time.sleep(0.005)
path = resolve_model("tiny")
load_model(path)
convs = load_pool("generated_math", None).conversations[:40]
ds, stats = tokenize_mixture(convs, stable_hash([c.id for c in convs]), load_tokenizer(path), "vicuna", 128,
                             cache_root=Path(os.environ["SFTMIX_CACHE"]) / "tokenized", progress=False)
print("built", path, len(ds), stats.rows)
"""


def test_processes_building_the_same_cache_folders_at_once_all_get_them_whole(tmp_path):
    """Four processes ask for the tiny model and the same tokenised rows in an empty cache at the
    same moment (a study's parallel workers on a fresh machine): each gets the model and the rows,
    built once. Each used to build into one shared temporary folder and rename it: the others
    failed with "Directory not empty" or found the folder gone."""
    env = {**os.environ, "SFTMIX_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(start)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    deadline = time.time() + 240
    while len(list(tmp_path.glob("ready*"))) < len(procs) and time.time() < deadline:  # all imported, none building yet
        time.sleep(0.05)
    assert len(list(tmp_path.glob("ready*"))) == len(procs), "the processes did not all start"
    start.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    lines = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(lines) == 1 and next(iter(lines)).startswith("built "), lines  # one model, the same rows for all
    models = tmp_path / "cache" / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["tiny-llama-v2"]  # no partial folder left
    assert len([p for p in (tmp_path / "cache" / "tokenized").iterdir() if not p.name.startswith(".")]) == 1


def test_a_builder_killed_midway_leaves_a_partial_folder_the_next_one_replaces(tmp_path):
    folder = tmp_path / "model"
    (tmp_path / "model.partial").mkdir()
    (tmp_path / "model.partial" / "half.bin").write_text("cut off")  # what a killed builder left
    with building(folder, "config.json") as tmp:
        assert tmp is not None and not any(tmp.iterdir())
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"] and not (tmp_path / "model.partial").exists()
    with building(folder, "config.json") as tmp:
        assert tmp is None  # complete: reused


class Line(BaseModel):
    key: str


def test_an_append_only_file_loses_only_its_torn_last_line(tmp_path):
    """A kill in the middle of an append leaves a line without its newline. Reading cuts exactly
    that fragment off the file (one longer than the 64 KiB read back from the end, too), so the next
    line appended stands on its own; whole lines are kept byte for byte."""
    path = tmp_path / "cache.jsonl"
    whole = "".join(f'{{"key": "k{i}"}}\n' for i in range(3))
    for torn in ('{"key": "k3', "x" * 200_000, ""):
        path.write_text(whole + torn)
        assert [r.key for r in read_appended(path, Line)] == ["k0", "k1", "k2"]
        assert path.read_text() == whole
    path.write_text('{"key": "only a fragment')
    assert read_appended(path, Line) == [] and path.read_bytes() == b""
    path.write_text(whole + '{"nokey": 1}\n')
    with pytest.raises(SftmixError, match=r"cache.jsonl:4: not a Line \(key: Field required\)"):
        read_appended(path, Line)
