"""One sandboxed harness process: started under an isolation with rlimits, framed messages on its
pipes with a deadline, stderr read with a cap, and the whole sandbox killed and reaped at the end."""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass

from sftmix.errors import SftmixError
from sftmix.eval.sandbox import commands, harness


class SandboxError(SftmixError):
    """The sandbox cannot run samples here (the canary failed); no score must be produced."""


@dataclass
class Limits:
    """What a sandboxed program may use: wall time, memory, processes, file size and kept output."""

    timeout_s: float = 3.0
    memory_mb: int = 1024
    max_processes: int = 32
    file_size_mb: int = 16
    output_kb: int = 64  # kept of each of stdout and stderr; the rest is read and discarded
    grace_s: float = 1.0  # after the time limit: killing and reaping


@dataclass
class Result:
    """How a sandboxed program ended: passed or not, its status, what it printed and how it ran."""

    passed: bool
    status: str  # passed | failed | timed out
    detail: str = ""
    mode: str = "program"  # program | proxy


def _preexec(limits: Limits):
    cpu = int(limits.timeout_s) + 1

    def fn():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        fs = limits.file_size_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    return fn


class _Capped:
    """Drains a pipe on a thread until EOF or the deadline, keeping the last ``cap`` bytes."""

    def __init__(self, fd: int, cap: int, deadline: float):
        self.kept: deque[bytes] = deque()
        self.size = 0
        self.cap = cap
        self.fd, self.deadline = fd, deadline
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while time.monotonic() < self.deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.kept.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.kept[0]) >= self.cap:
                self.size -= len(self.kept.popleft())

    def text(self) -> str:
        return b"".join(self.kept)[-self.cap:].decode("utf-8", "replace")


class Session:
    """One sandboxed harness process with framed messages on its stdin/stdout."""

    def __init__(self, limits: Limits, kind: str):
        self.limits = limits
        self.kind = kind
        self.start = time.monotonic()
        self.deadline = self.start + limits.timeout_s
        python, binds = commands.interpreter()
        self.root = tempfile.mkdtemp(prefix="sftmix-sbx-")
        self.proc = subprocess.Popen(commands.command(kind, python, binds, self.root), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=self.root, env=commands.ENV, preexec_fn=_preexec(limits),
                                     start_new_session=True, bufsize=0)
        self.out_fd = self.proc.stdout.fileno()
        self.err = _Capped(self.proc.stderr.fileno(), limits.output_kb * 1024, self.deadline + limits.grace_s)
        self.buffer = b""
        self.timed_out = False

    def send(self, obj: dict) -> None:
        """Write one frame, never blocking past the deadline (a sample that stops reading its
        stdin cannot hold the evaluator)."""
        data = json.dumps(obj).encode()
        data = len(data).to_bytes(8, "little") + data
        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        while data:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return
            _, ready, _ = select.select([], [fd], [], left)
            if not ready:
                continue
            try:
                data = data[os.write(fd, data[:65536]):]
            except BlockingIOError:
                continue
            except OSError:
                return  # the sample is gone; the next receive reports it

    def receive(self) -> dict | None:
        """The next frame, or None when the sample ended, broke the protocol or ran out of time."""
        while True:
            if len(self.buffer) >= 8:
                n = int.from_bytes(self.buffer[:8], "little")
                if n > harness.MAX_FRAME:
                    return None
                if len(self.buffer) >= 8 + n:
                    body, self.buffer = self.buffer[8:8 + n], self.buffer[8 + n:]
                    try:
                        msg = json.loads(body)
                    except (ValueError, RecursionError):
                        return None
                    return msg if isinstance(msg, dict) else None
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return None
            ready, _, _ = select.select([self.out_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.out_fd, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk

    def started(self) -> None:
        """Wait for the harness's first frame. A sandbox that ends without it never started the
        interpreter (setpriv or chroot could not run it, a limit stopped it): that is an error of
        the sandbox, raised, never a sample scored as failed."""
        hello = self.receive()
        if hello is None and not self.timed_out:
            err = self.close()
            python, binds = commands.interpreter()
            raise SandboxError(f"the sandbox ({self.kind}) cannot run Python: the interpreter never started. Interpreter "
                               f"{python}, visible folders {', '.join(binds)}. What it said: {err.strip()[-600:] or '(nothing)'}. "
                               "No sample is scored from a sandbox that cannot start; fix the cause and rerun.")

    def close(self) -> str:
        """Kill the whole sandbox and reap it; return the kept stderr (once closed, the same)."""
        if getattr(self, "_closed", None) is not None:
            return self._closed
        if self.kind == "rlimits" and self.proc.poll() is None:  # the reaper kills what the sample started
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=self.limits.grace_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=self.limits.grace_s)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.err.thread.join(timeout=self.limits.grace_s)
        try:
            self.proc.stderr.close()
        except OSError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        self._closed = self.err.text()
        return self._closed
