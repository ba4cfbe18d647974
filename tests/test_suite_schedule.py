"""The suite's own two-worker schedule (tests/conftest.py): every file it names exists, and a real
xdist run keeps each file on one worker (xdist's loadgroup once grouped nothing without a word)."""

import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

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


def test_a_worker_s_torch_uses_its_share_of_the_cores():
    """The thread count reaches torch: set after torch was imported (by a plugin, say), it would
    not, and torch would start a thread per core in every worker."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("runs in an xdist worker (the suite's default -n 2); this run is serial")
    import torch  # imported here, as a test imports it: after the conftest set the thread count

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])  # the conftest's share, or the user's
