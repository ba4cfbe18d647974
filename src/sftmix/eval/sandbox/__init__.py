"""Executing untrusted generated code: one isolated, limited process per sample.

Isolation, best first (``isolation()`` says which one this machine gets; ``sftmix eval`` prints
it and ``results.json`` records it):

- ``bwrap`` (bubblewrap, Debian package ``bubblewrap``): new PID, network, IPC, UTS (and cgroup)
  namespaces, and a new root that holds only a read-only view of the system's ``/usr`` and the
  interpreter's prefix, a fresh ``/proc``, a minimal ``/dev`` and an empty ``/tmp``: nothing of
  the user's project, home folder, ``/run`` or ``/etc``. ``--die-with-parent``, ``--new-session``.
  As root the sample then drops to ``nobody`` with no capabilities (``setpriv``); otherwise bwrap
  adds a user namespace.
- ``unshare`` (fallback where bwrap is missing): the same shape built with util-linux: new
  namespaces, a tmpfs root holding read-only bind mounts of the same folders, ``chroot``, then
  ``nobody``.
- ``rlimits`` (last resort, with a warning): rlimits, a clean environment and, on Linux, a reaper
  (a child subreaper that kills everything the sample started when its time is up, sessions left
  or not). Here a sample can read the file system, and, running as the evaluator's user, could kill
  the reaper first.

Always: rlimits (CPU, address space, file size, processes, no core files), a clean environment,
a wall-clock limit after which the whole sandbox is killed (with a PID namespace every process
the sample started dies with it), and stdout/stderr read with a fixed cap, so neither the
evaluator's memory nor its time depends on what the sample does with its file descriptors.

Two ways to run a sample:

- ``run_candidate`` (HumanEval's default): the sample's code runs in the sandbox and serves calls
  of its entry point; the dataset's ``check`` runs in the evaluator with a proxy as ``candidate``
  that sends the arguments across a pipe and gets the return value back as plain data (tagged
  JSON: None, bool, int, float, str, bytes, complex, list, tuple, dict, set). The assertions and
  expected values never enter the sample's process, so shadowing builtins, objects whose
  ``__eq__`` is always true, exiting early, patching ``os``/``sys`` or reporting "passed" cannot
  change the verdict.
- ``run_program`` (the fallback for a problem whose test cannot work through the proxy, and any
  other program): the whole program, tests included, runs in the sandbox; it passes when it
  reports a per-run nonce after the program returned and exits 0. Code in that process can still
  find the nonce (it shares the interpreter), so this path is used only where the proxy cannot
  be, and such problems are counted.

``canary`` runs a known-good and a known-bad sample of both kinds before any scoring; when the
good one fails (e.g. the interpreter is not visible inside the sandbox) evaluation stops with a
``SandboxError`` that says why, so a score never comes from a sandbox that cannot run Python.
"""

from __future__ import annotations

import builtins
import functools
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sftmix.eval.sandbox import commands
from sftmix.eval.sandbox.commands import ISOLATIONS, interpreter, isolation
from sftmix.eval.sandbox.harness import decode, encode
from sftmix.eval.sandbox.session import Limits, Result, SandboxError, Session
from sftmix.progress import track

__all__ = ["ISOLATIONS", "CandidateError", "Job", "Limits", "Result", "SandboxError", "canary", "decode", "encode",
           "interpreter", "isolation", "run_candidate", "run_job", "run_many", "run_program"]


def run_program(program: str, limits: Limits = Limits(), kind: str | None = None) -> Result:
    """Run a whole program (tests included) in the sandbox; passed = it returned and exited 0."""
    kind = commands.resolve(kind)
    nonce = secrets.token_hex(16)
    try:
        s = Session(limits, kind)
    except OSError as e:
        return Result(False, "failed", f"could not start: {e}")
    try:
        s.send({"program": program, "nonce": nonce})
        s.started()
        msg = s.receive()
        reported = msg is not None and msg.get("done") == nonce
        if reported:
            try:
                s.proc.wait(timeout=max(0.0, s.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.timed_out = True
        timed_out = s.timed_out
    finally:
        detail = s.close()
    if msg is not None and "load_error" in msg:
        detail = (detail + "\n" + str(msg["load_error"]))[-2000:]
    passed = reported and not timed_out and s.proc.returncode == 0
    return Result(passed, "passed" if passed else "timed out" if timed_out else "failed", detail[-2000:])


class CandidateError(Exception):
    """The candidate could not answer a call (it crashed, timed out or returned something that
    cannot cross the boundary)."""


def run_candidate(program: str, entry_point: str, check_source: str, limits: Limits = Limits(),
                  kind: str | None = None) -> Result:
    """Run ``program`` in the sandbox as a server of ``entry_point``; run the dataset's
    ``check_source`` (which must define ``check(candidate)``) here, with a proxy as candidate."""
    kind = commands.resolve(kind)
    try:
        s = Session(limits, kind)
    except OSError as e:
        return Result(False, "failed", f"could not start: {e}", "proxy")
    status, detail = "failed", ""
    try:
        s.send({"program": program, "entry_point": entry_point})
        s.started()
        hello = s.receive()
        if hello is None or not hello.get("ready"):
            detail = str((hello or {}).get("load_error", "the sample ended before serving"))
            status = "timed out" if s.timed_out else "failed"
        else:
            def candidate(*args, **kwargs):
                s.send({"args": encode(list(args)), "kwargs": {str(k): encode(v) for k, v in kwargs.items()}})
                reply = s.receive()
                if reply is None:
                    raise CandidateError("the sample timed out" if s.timed_out else "the sample ended or broke the protocol")
                if "raised" in reply:
                    raise _exception(reply)
                try:
                    return decode(reply["value"])
                except Exception as e:  # noqa: BLE001 - a malformed value is the sample's failure
                    raise CandidateError(f"unreadable return value: {e}") from None

            namespace: dict = {}
            try:
                exec(compile(check_source, "<check>", "exec"), namespace)  # the dataset's trusted code
                namespace[entry_point] = candidate  # tests that call the function by name reach it too
                namespace["check"](candidate)
                status = "passed"
            except CandidateError as e:
                status, detail = ("timed out" if s.timed_out else "failed"), str(e)
            except Exception as e:  # noqa: BLE001 - an assertion or any error of the check is a failure
                detail = f"{type(e).__name__}: {e}"[:500]
            if status == "passed" and time.monotonic() > s.deadline:
                status, detail = "timed out", "the check finished after the time limit"
    finally:
        err = s.close()
    detail = (detail + ("\n" + err if err else ""))[-2000:]
    return Result(status == "passed", status, detail, "proxy")


def _exception(reply: dict) -> BaseException:
    """The candidate's exception as the builtin type of that name (a test may expect one)."""
    cls = getattr(builtins, str(reply.get("raised")), None)
    msg = str(reply.get("message", ""))
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001 - exception types with unusual constructors
            pass
    return CandidateError(f"{reply.get('raised')}: {msg}")


# ---------------------------------------------------------------- canary and many samples

CANARY_PROGRAM = "def f(x):\n    return x + 1\n"
CANARY_CHECK = "def check(candidate):\n    assert candidate(1) == 2 and candidate(x=41) == 42\n"


@functools.lru_cache(maxsize=8)
def canary(kind: str | None = None) -> str:
    """Run a known-good and a known-bad sample of both kinds; raise ``SandboxError`` unless the
    good ones pass and the bad ones fail. Returns the isolation used."""
    kind = commands.resolve(kind)
    python, binds = commands.interpreter()
    limits = Limits(timeout_s=10.0)
    good = [run_program(CANARY_PROGRAM + "assert f(1) == 2\n", limits, kind),
            run_candidate(CANARY_PROGRAM, "f", CANARY_CHECK, limits, kind)]
    bad = [run_program(CANARY_PROGRAM + "assert f(1) == 3\n", limits, kind),
           run_candidate("def f(x):\n    return x\n", "f", CANARY_CHECK, limits, kind)]
    for r in good:
        if not r.passed:
            raise SandboxError(f"the sandbox ({kind}) cannot run Python: a known-good {r.mode} sample did not pass "
                               f"({r.status}). Interpreter {python}, visible folders {', '.join(binds)}. "
                               f"What it said: {r.detail.strip()[-600:] or '(nothing)'}. No score is produced from a "
                               "sandbox that cannot run code; fix the cause (e.g. an interpreter the sandbox cannot see) "
                               "and rerun.")
    for r in bad:
        if r.passed:
            raise SandboxError(f"the sandbox ({kind}) passed a known-bad {r.mode} sample: its verdicts cannot be trusted")
    return kind


@dataclass
class Job:
    """One sample: a candidate (proxy mode) or a whole program (``entry_point`` None)."""

    program: str
    entry_point: str | None = None
    check_source: str = ""
    limits: Limits = field(default_factory=Limits)


def run_job(job: Job, kind: str | None = None) -> Result:
    """Run one job in the sandbox (``kind``: the isolation; default the best available)."""
    if job.entry_point is None:
        return run_program(job.program, job.limits, kind)
    return run_candidate(job.program, job.entry_point, job.check_source, job.limits, kind)


def run_many(jobs: list[Job], workers: int = 4, progress: bool = True, kind: str | None = None) -> list[Result]:
    """Run jobs in parallel (after the canary); results in input order."""
    kind = canary(kind)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_job, j, kind) for j in jobs]
        return [f.result() for f in track(futures, "executing", enabled=progress)]
