"""Shared fixtures: where the real data lives, and small data files the tests build."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sftmix.threads import thread_env

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"  # the suite's helpers and the user-task package live here (test files sit in folders mirroring the package)
SHARED_DATA = REPO.parent / "shared" / "data"

# The suite runs offline unless a test says otherwise: no probe of the Hugging Face hub, and
# `datasets` reads only its local cache (a test of the hub path sets up local files). Child
# processes (the CLI, workers, clusters) inherit it.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "gsm8k" / "train.jsonl").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repo on dev and CI machines)")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    """A data directory with small GSM8K-, alpaca- and ShareGPT-format files."""
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl",
                [{"question": f"What is {i} + {i}?", "answer": f"{i}+{i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"} for i in range(400)])
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl",
                [{"question": f"What is {i} * 3?", "answer": f"#### {3 * i}"} for i in range(20)])
    (tmp_path / "code_alpaca").mkdir()
    (tmp_path / "code_alpaca" / "code_alpaca_2k.json").write_text(json.dumps(
        [{"instruction": f"Write a function returning {i}.", "input": "", "output": f"def f():\n    return {i}"} for i in range(200)]))
    (tmp_path / "sharegpt").mkdir()
    (tmp_path / "sharegpt" / "sharegpt.json").write_text(json.dumps(
        [{"id": str(i), "conversations": [{"from": "human", "value": f"Tell me about topic {i}."},
                                          {"from": "gpt", "value": f"Topic {i} is interesting."}]} for i in range(300)]))
    return tmp_path


# ---- HumanEval: the problems, and the canonical and empty solutions scored once per session
# (test_eval and test_sandbox each assert their own part of the same scoring)

@pytest.fixture(scope="session")
def problems() -> list[dict]:
    from sftmix.eval import humaneval  # after HF_HUB_OFFLINE is set above: the hub client reads it when first imported

    return humaneval.load_problems()


@pytest.fixture(scope="session")
def canonical_scored(problems) -> tuple[dict, list[dict]]:
    """The 164 canonical solutions through the default sandbox: (metrics, per-sample rows)."""
    from sftmix.eval import humaneval  # after HF_HUB_OFFLINE is set above: the hub client reads it when first imported

    return humaneval.score(problems, [[p["canonical_solution"]] for p in problems], progress=False)


@pytest.fixture(scope="session")
def empty_scored(problems) -> tuple[dict, list[dict]]:
    """164 empty completions through the default sandbox: (metrics, per-sample rows)."""
    from sftmix.eval import humaneval  # after HF_HUB_OFFLINE is set above: the hub client reads it when first imported

    return humaneval.score(problems, [[""] for _ in problems], progress=False)


# ---- the suite's one tiny study, run locally once per session: killed after its first run was
# done and restarted (test_study checks that and the report; test_executors compares Ray, submitit
# and Slurm with its results)

@dataclass
class MiniStudy:
    file: Path
    root: Path
    killed_with_done: int  # runs done when the driver was killed
    rerun: subprocess.CompletedProcess
    metrics: dict


@pytest.fixture(scope="session")
def mini_study(tmp_path_factory) -> MiniStudy:
    # imported here, as the HumanEval fixtures' sftmix.eval: after HF_HUB_OFFLINE is set above (the hub
    # client reads it once, when first imported)
    from helpers import study_file, study_metrics

    tmp = tmp_path_factory.mktemp("mini")
    f = study_file(tmp, "mini")
    root = tmp / "mini"
    db = root / "results.sqlite"
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done, deadline = 0, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                done = sqlite3.connect(db).execute("SELECT count(*) FROM runs WHERE status='done'").fetchone()[0]
            except sqlite3.OperationalError:  # the table is being created
                done = 0
            if done >= 1:
                break
        time.sleep(0.1)
    assert proc.poll() is None, f"the study driver ended on its own (exit {proc.returncode}) before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    return MiniStudy(f, root, done, rerun, study_metrics(db))


# ---- two workers (pytest-xdist; `-n 2` in pyproject.toml's addopts). About a third of a serial run
# waits on other processes (servers starting, clusters, distributed training), so a second worker
# fills that time. A test file runs whole on one worker, so its module fixtures are built once;
# files that share a costly session fixture run on the same worker; the longest files are handed
# out first, so that neither worker is left with a long file at the end. (xdist's own
# `--dist loadgroup` cannot be used: with pytest 9.2 its xdist_group marks group nothing.)

SAME_WORKER = {  # files sharing a costly session fixture
    "study/test_study.py": "mini_study", "study/test_executors.py": "mini_study",
    "eval/test_eval.py": "humaneval", "eval/test_sandbox.py": "humaneval", "eval/test_humaneval_extraction.py": "humaneval",
}
LONGEST_FIRST = [  # the serial run's slowest files (--durations=0 summed per file), longest first
    "eval/test_engines.py", "study/test_optimize.py", "train/test_train_resume_distributed.py", "study/test_executors.py",
    "eval/test_generation_backends.py", "analysis/test_laws.py", "eval/test_eval.py", "train/test_checkpoint_kill.py",
    "train/test_kernels.py", "analysis/test_laws_e2e.py",
]


def worker_group(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the group of files it shares a fixture with."""
    name = nodeid.split("::")[0].removeprefix("tests/")
    return SAME_WORKER.get(name, name)


GROUP_RANK = {SAME_WORKER.get(name, name): i for i, name in reversed(list(enumerate(LONGEST_FIRST)))}  # a group ranks by its longest file


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; the suite still runs without xdist (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling  # imported here: an optional plugin's module

    class ByTestFile(LoadScopeScheduling):
        def __init__(self, config: pytest.Config, log=None) -> None:
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the collection's order: longest first (below)

        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return ByTestFile(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the longest groups first (the serial run keeps the file order)
        items.sort(key=lambda item: GROUP_RANK.get(worker_group(item.nodeid), len(LONGEST_FIRST)))


def pytest_configure(config: pytest.Config) -> None:
    # An xdist worker gets its share of the cores for torch's (OpenMP's) threads, and so do the
    # processes it starts. Left at every core each, two workers' thread pools contend for the same
    # cores and spin: on 2 cores the train/laws/mask-parity files (54 tests) took 81 s with one
    # thread a worker against 96 s, and the whole suite 16:22 (cold caches) against 25:39 (warm).
    # Set here, before any test module imports torch (this conftest and sftmix.threads import
    # none); a value the user set stays.
    if hasattr(config, "workerinput"):
        threads = max(1, len(os.sched_getaffinity(0)) // int(config.workerinput["workercount"]))
        for var, value in thread_env(threads).items():
            os.environ.setdefault(var, value)
