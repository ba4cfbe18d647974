"""One training of a run folder at a time: an exclusive ``flock`` on ``<run folder>/.lock``, held
by whatever trains the folder (a study's worker, ``sftmix run``, ``sftmix train``) for as long as
it trains and evaluates. Two trainings of one folder would write the same checkpoints; the second
is refused and told who holds the folder (``LockHolder``, written into the lock file).

The lock is taken once per training: the holder names its lock in ``SFTMIX_RUN_LOCK``, so the
processes it starts (``accelerate launch ... sftmix train`` for several GPUs or nodes) know that
their folder is already theirs, and in a distributed launch only the first process takes it. The
kernel releases a ``flock`` when its holder dies, so a killed training never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftmix.errors import SftmixError
from sftmix.layout import LOCK

HELD = "SFTMIX_RUN_LOCK"  # the lock file this process and its children hold


class LockHolder(BaseModel):
    """What the holder writes into the lock file: where it runs and since when."""

    model_config = ConfigDict(extra="allow")

    pid: int
    host: str
    since: float
    run: str | None = None  # a training's claim (``TrainingClaim``): the study run that holds it


class AlreadyRunning(Exception):
    """Another process holds this run folder's lock."""


class RunLock:
    """An exclusive ``flock`` on ``run_out/.lock``, held while a run trains and evaluates."""

    def __init__(self, run_out: Path, wait_s: float = 2.0):
        self.path = Path(run_out).resolve() / LOCK
        self.wait_s = wait_s
        self.fd: int | None = None
        self._before: str | None = None

    def __enter__(self) -> RunLock:
        self.fd = _open(self.path)
        if not _lock_within(self.fd, self.wait_s):
            os.close(self.fd)
            raise AlreadyRunning(str(self.path))
        _sign(self.fd)
        self._before = os.environ.get(HELD)
        os.environ[HELD] = str(self.path)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            _release(self.fd)
            self.fd = None
        if self._before is None:
            os.environ.pop(HELD, None)
        else:
            os.environ[HELD] = self._before


def is_running(run_out: Path) -> bool:
    """Whether a process holds the run's lock now (a probe: shared, non-blocking, released at once)."""
    return _held(Path(run_out) / LOCK)


def claimed_by(claim: Path) -> LockHolder | None:
    """Who holds a training's claim (``layout.training_claim``) now; None where nobody does."""
    return _holder(claim) if _held(claim) else None


def _held(path: Path) -> bool:
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def holder(run_out: Path) -> LockHolder | None:
    """Who holds (or last held) the run's lock, as it wrote it (None: not known)."""
    return _holder(Path(run_out) / LOCK)


def _holder(lock_file: Path) -> LockHolder | None:
    try:
        return LockHolder.model_validate_json(lock_file.read_text())
    except (OSError, ValueError):  # no lock file, or one its holder is writing now
        return None


def _open(lock_file: Path) -> int:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    return os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)


def _sign(fd: int, **extra) -> None:
    """Write who holds the lock (``LockHolder``) into its file."""
    os.ftruncate(fd, 0)
    os.write(fd, LockHolder(pid=os.getpid(), host=os.uname().nodename, since=time.time(), **extra).model_dump_json().encode())


def _lock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive ``flock`` on ``fd``, trying for ``seconds``; whether it was taken. A probe
    (``is_running``, ``claimed_by``) holds a lock for microseconds, and is no holder to give up to."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class TrainingLock:
    """``RunLock`` for ``sftmix run`` and ``sftmix train``: nothing where this process's parent
    already holds the folder (a launched training) or where it is not a launch's first process;
    elsewhere the lock, or an error that says who holds it."""

    def __init__(self, run_out: Path):
        self.run_out = Path(run_out)
        self.lock: RunLock | None = None

    def __enter__(self) -> TrainingLock:
        path = str(self.run_out.resolve() / LOCK)
        if os.environ.get(HELD) == path or os.environ.get("RANK", "0") != "0":
            return self
        self.lock = RunLock(self.run_out)
        try:
            self.lock.__enter__()
        except AlreadyRunning:
            h = holder(self.run_out)
            who = (f"process {h.pid} on {h.host} since {datetime.fromtimestamp(h.since):%Y-%m-%d %H:%M}" if h is not None
                   else "another process")
            raise SftmixError(f"{self.run_out} is being trained by {who} ({path}): two trainings of one folder would write "
                              "the same checkpoints; wait for it to end, or stop it") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.__exit__(*exc)


class TrainingClaim:
    """An exclusive ``flock`` on a training's claim file (``layout.training_claim``), waited for:
    held by a study run while it trains and evaluates, so that a twin run (same ``trained_view``,
    another evaluation) started meanwhile waits and then adopts the finished stages. ``waiting``
    is called once, with who holds the claim, when it has to wait."""

    def __init__(self, path: Path, run: str, waiting: Callable[[LockHolder | None], None] | None = None):
        self.path = Path(path)
        self.run = run
        self.waiting = waiting
        self.fd: int | None = None

    def __enter__(self) -> TrainingClaim:
        self.fd = _open(self.path)
        if not _lock_within(self.fd, 0.5):  # `study status` probes the claim: not a holder to wait for
            if self.waiting is not None:
                self.waiting(_holder(self.path))
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # released by the kernel if its holder dies
        _sign(self.fd, run=self.run)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            _release(self.fd)
            self.fd = None
