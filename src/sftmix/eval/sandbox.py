"""Executing untrusted generated code: one process per sample, isolated and limited.

Each program runs in a fresh child with:
- rlimits: CPU time, address space (memory), file size, number of processes (no fork bombs);
- a clean environment (none of the evaluator's variables, API keys included);
- on Linux, when ``unshare`` works (root, or user namespaces allowed): new network namespace
  (no network), PID namespace (the evaluator is invisible and unkillable; killing the namespace's
  first process kills every process the sample started), IPC namespace, and a mount namespace
  with fresh tmpfs on /tmp, /var/tmp and /dev/shm; the code then drops to the ``nobody`` user,
  so the rest of the file system is read-only to it. Where namespaces are unavailable, a warning
  says so and only rlimits and the clean environment apply: never silently.
- a wall-clock timeout after which the whole process group is killed.

The verdict comes from the parent's view: a sample passes only when the harness, after the tests
returned, writes a per-run random nonce to a pipe that the parent reads, and the process then
exits with status 0. ``sys.exit(0)`` or ``os._exit(0)`` before the tests, printing "passed", or a
swallowed exception cannot produce that. (Code in the same interpreter could still search memory
for the nonce; the in-process guard makes that harder, not impossible.)
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# Runs inside the sandbox: reads "nonce fd\nprogram" from stdin, runs the program, reports.
HARNESS = r'''
import os, sys
data = sys.stdin.buffer.read().decode("utf-8")
_head, _program = data.split("\n", 1)
_nonce, _fd = _head.split()
del data, _head
_out = os.fdopen(int(_fd), "w")
def _report(msg, _n=_nonce, _o=_out):
    _o.write(_n + " " + msg + "\n"); _o.flush()
del _nonce
import builtins, faulthandler
faulthandler.disable()
for _name in ("kill", "killpg", "system", "putenv", "fork", "forkpty", "setuid", "chdir", "fchdir", "chroot"):
    if hasattr(os, _name):
        setattr(os, _name, None)
_g = {"__name__": "__main__"}
try:
    exec(compile(_program, "<sample>", "exec"), _g)
except BaseException as e:  # noqa: BLE001 - any failure of the sample is a failure
    sys.stderr.write("failed: %s: %s\n" % (type(e).__name__, e))
    os._exit(1)
_report("passed")
os._exit(0)
'''

NOBODY = 65534


@dataclass
class Limits:
    timeout_s: float = 3.0
    memory_mb: int = 1024
    max_processes: int = 32
    file_size_mb: int = 16


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether ``unshare`` can create the namespaces and tmpfs mounts here."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return False
    try:
        r = subprocess.run(["unshare", "--net", "--pid", "--fork", "--ipc", "--mount", "--mount-proc", "--",
                            "sh", "-c", "mount -t tmpfs tmpfs /tmp && true"], capture_output=True, timeout=10)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _preexec(limits: Limits, cpu_s: int):
    def fn():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        fs = limits.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    return fn


def _command(isolated: bool) -> list[str]:
    py = [sys.executable, "-I", "-c", HARNESS]
    if not isolated:
        return py
    root = os.geteuid() == 0
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"] if root else []
    script = ("mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp && mount -t tmpfs -o size=8m,mode=1777 tmpfs /var/tmp "
              "&& mount -t tmpfs -o size=8m,mode=1777 tmpfs /dev/shm; cd /tmp && exec \"$@\"")
    ns = ["unshare", "--net", "--pid", "--fork", "--ipc", "--uts", "--mount", "--mount-proc"]
    if not root:
        ns.insert(1, "--map-root-user")
    return [*ns, "--", "sh", "-c", script, "sandbox", *drop, *py]


@dataclass
class Result:
    passed: bool
    status: str  # passed | failed | timed out
    detail: str = ""


def run_program(program: str, limits: Limits = Limits(), isolated: bool | None = None) -> Result:
    """Run ``program`` in the sandbox; the verdict is the parent's (see the module docstring)."""
    if isolated is None:
        isolated = namespaces_available()
        if not isolated:
            _warn_once()
    nonce = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    workdir = tempfile.mkdtemp(prefix="sftmix-sbx-")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}
    cpu = int(limits.timeout_s) + 1
    try:
        proc = subprocess.Popen(_command(isolated), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=workdir, env=env, preexec_fn=_preexec(limits, cpu), pass_fds=(write_fd,))
    except OSError as e:
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(workdir, ignore_errors=True)
        return Result(False, "failed", f"could not start: {e}")
    os.close(write_fd)
    status, detail = "failed", ""
    try:
        _, err = proc.communicate(f"{nonce} {write_fd}\n{program}".encode("utf-8"), timeout=limits.timeout_s + 1.0)
        detail = err.decode("utf-8", "replace")[-500:]
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        status = "timed out"
    finally:
        _kill_group(proc)  # anything the sample left behind in its session
        with os.fdopen(read_fd, "r", errors="replace") as f:
            report = f.read()
        shutil.rmtree(workdir, ignore_errors=True)
    passed = status != "timed out" and proc.returncode == 0 and report.strip() == f"{nonce} passed"
    return Result(passed, "passed" if passed else status, detail)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_warned = False


def _warn_once() -> None:
    global _warned
    if not _warned:
        warnings.warn("sandbox: Linux namespaces (unshare) are unavailable here; generated code runs with rlimits and a "
                      "clean environment only (no network or file-system isolation)", RuntimeWarning, stacklevel=3)
        _warned = True


def run_many(programs: list[str], limits: Limits = Limits(), workers: int = 4, progress: bool = True) -> list[Result]:
    """Run programs in parallel workers; results in input order."""
    from sftmix.progress import track

    isolated = namespaces_available()
    if not isolated:
        _warn_once()
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_program, p, limits, isolated) for p in programs]
        return [f.result() for f in track(futures, "executing", enabled=progress)]
