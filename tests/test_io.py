"""io.py: atomic writes; a writer killed with SIGKILL leaves a temp file the next write removes."""

import os
import subprocess
import sys


def test_killed_writers_leave_no_temp_files(tmp_path):
    from sftmix.io import write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".data.jsonl.{dead.stdout.strip()}.abc123.tmp"
    stale.write_text("half a file")
    mine = tmp_path / f".data.jsonl.{os.getpid()}.live.tmp"  # a writer still running keeps its file
    mine.write_text("in progress")
    write_json(tmp_path / "data.jsonl", {"ok": True})
    assert not stale.exists() and mine.exists()
