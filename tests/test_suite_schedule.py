"""The suite's own two-worker schedule (tests/conftest.py): every file it names exists, and a real
xdist run keeps each file on one worker (xdist's loadgroup once grouped nothing without a word)."""

import re
import subprocess
import sys
from collections import defaultdict

from conftest import LONGEST_FIRST, SAME_WORKER, TESTS, worker_group


def test_the_files_the_schedule_names_exist():
    for name in [*LONGEST_FIRST, *SAME_WORKER]:
        assert (TESTS / name).is_file(), f"tests/conftest.py names {name}, which is not a test file"
    assert worker_group("tests/study/test_study.py::t") == worker_group("tests/study/test_executors.py::t[x]")
    assert worker_group("tests/test_io.py::t") != worker_group("tests/test_layout.py::t")


def test_two_workers_run_each_file_whole_on_one():
    files = ["tests/test_layout.py", "tests/test_run_id.py", "tests/study/test_store.py"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider", *files],
                       capture_output=True, text=True, cwd=TESTS.parent)
    assert r.returncode == 0, r.stdout[-3000:]
    workers = defaultdict(set)
    for worker, nodeid in re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED (\S+)", r.stdout):
        workers[nodeid.split("::")[0]].add(worker)
    assert set(workers) == set(files), r.stdout[-3000:]
    assert all(len(w) == 1 for w in workers.values()), dict(workers)
    assert len(set().union(*workers.values())) == 2, dict(workers)  # both workers had work: a real parallel run
