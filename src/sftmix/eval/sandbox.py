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

import functools
import json
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sftmix.errors import SftmixError

NOBODY = 65534
ISOLATIONS = ("bwrap", "unshare", "rlimits")
MAX_FRAME = 16 * 1024 * 1024  # largest message accepted from a sample

# Plain-data codec, used on both sides of the pipe: the same source runs in the sandbox (prepended
# to the harness) and here. Exact types only (``type(x) is int``), so no subclass crosses.
CODEC = r'''
def _enc(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return {"float": repr(x)}
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t is tuple:
        return {"tuple": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"dict": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {t.__name__: [_enc(v, depth + 1) for v in x]}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is complex:
        return {"complex": [repr(x.real), repr(x.imag)]}
    raise TypeError("a value of type %s cannot cross the sandbox boundary" % t.__name__)


def _dec(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is list:
        return [_dec(v, depth + 1) for v in x]
    if type(x) is not dict or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), = x.items()
    if tag == "float":
        return float(v)
    if tag == "complex":
        return complex(float(v[0]), float(v[1]))
    if tag == "bytes":
        return bytes.fromhex(v)
    items = [_dec(i, depth + 1) for i in v] if tag != "dict" else None
    if tag == "tuple":
        return tuple(items)
    if tag == "set":
        return set(items)
    if tag == "frozenset":
        return frozenset(items)
    if tag == "dict":
        return {_dec(k, depth + 1): _dec(w, depth + 1) for k, w in v}
    raise ValueError("unknown tag %r" % tag)
'''
_codec: dict = {}
exec(compile(CODEC, "sftmix-codec", "exec"), _codec)  # the same definitions on this side of the pipe
encode, decode = _codec["_enc"], _codec["_dec"]

# Runs inside the sandbox. Frames are 8-byte little-endian lengths + JSON, read from stdin and
# written to a private copy of stdout; the sample's own fd 1 is pointed at stderr and its stdin
# at /dev/null, so its prints cannot mix with the frames.
HARNESS = CODEC + r'''
import os, sys
_read_fd, _write_fd = os.dup(0), os.dup(1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)
_exit, _write, _read = os._exit, os.write, os.read

def _recv():
    head = b""
    while len(head) < 8:
        chunk = _read(_read_fd, 8 - len(head))
        if not chunk:
            _exit(3)
        head += chunk
    n, body = int.from_bytes(head, "little"), b""
    while len(body) < n:
        chunk = _read(_read_fd, min(1 << 20, n - len(body)))
        if not chunk:
            _exit(3)
        body += chunk
    import json
    return json.loads(body)

def _send(obj):
    import json
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(8, "little") + data
    while data:
        data = data[_write(_write_fd, data):]

_send({"alive": True})  # before any sample code: a session without it never started Python
_job = _recv()
_globals = {}
try:
    exec(compile(_job["program"], "<sample>", "exec"), _globals)
    _fn = _globals[_job["entry_point"]] if _job.get("entry_point") else None
except BaseException as e:
    try:
        _send({"load_error": "%s: %s" % (type(e).__name__, str(e)[:300])})
    finally:
        _exit(1)
if _fn is None:  # a whole program (run_program): done when it returns
    _send({"done": _job["nonce"]})
    _exit(0)
_send({"ready": True})
while True:
    _call = _recv()
    try:
        _value = _fn(*_dec(_call["args"]), **{k: _dec(v) for k, v in _call["kwargs"].items()})
        _reply = {"value": _enc(_value)}
    except BaseException as e:
        _reply = {"raised": type(e).__name__, "message": str(e)[:300]}
    _send(_reply)
'''


class SandboxError(SftmixError):
    """The sandbox cannot run samples here (the canary failed); no score must be produced."""


@dataclass
class Limits:
    timeout_s: float = 3.0
    memory_mb: int = 1024
    max_processes: int = 32
    file_size_mb: int = 16
    output_kb: int = 64  # kept of each of stdout and stderr; the rest is read and discarded
    grace_s: float = 1.0  # after the time limit: killing and reaping


@dataclass
class Result:
    passed: bool
    status: str  # passed | failed | timed out
    detail: str = ""
    mode: str = "program"  # program | proxy


# ---------------------------------------------------------------- where and how


def interpreter() -> tuple[str, list[str]]:
    """The Python to run samples with, and the folders it needs visible (read-only).

    The base installation's interpreter (not a virtual environment's link to it): it needs only
    its own prefix, and samples need only the standard library.
    """
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = os.path.join(sys.base_prefix, "bin", ver)
    exe = base if os.path.exists(base) else os.path.realpath(sys.executable)
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(exe)))
    return exe, sorted({os.path.realpath(sys.base_prefix), prefix})


def _root_entries(binds: list[str]) -> list[tuple[str, str, str]]:
    """(kind, path, target) of what the sandbox root holds: /usr and the top-level links or
    folders of a merged or split /usr system, plus the interpreter's folders."""
    out = [("bind", "/usr", "/usr")]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            out.append(("link", top, os.readlink(top)))
        elif os.path.isdir(top):
            out.append(("bind", top, top))
    for b in binds:
        if not any(b == p or b.startswith(p.rstrip("/") + "/") for k, p, _ in out if k == "bind"):
            out.append(("bind", b, b))
    return out


def _drop_privileges() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


def _bwrap_command(python: str, binds: list[str]) -> list[str]:
    cmd = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp",
           "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    if os.geteuid() != 0:
        cmd += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    for kind, path, target in _root_entries(binds):
        cmd += ["--symlink", target, path] if kind == "link" else ["--ro-bind", path, target]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp", "--chdir", "/tmp", "--"]
    return [*cmd, *_drop_privileges(), python, "-I", "-S", "-c", HARNESS]


# The unshare fallback builds the same root by hand: a tmpfs, read-only bind mounts, chroot.
UNSHARE_SCRIPT = r'''
set -e
PATH=/usr/sbin:/usr/bin:/sbin:/bin
R="$1"; shift
mount --make-rprivate /
mount -t tmpfs -o size=64m,mode=755 sandbox-root "$R"
while [ "$1" != "--" ]; do
  kind="$1"; path="$2"; target="$3"; shift 3
  if [ "$kind" = link ]; then ln -s "$target" "$R$path"; else
    mkdir -p "$R$path"; mount --rbind "$path" "$R$path"; mount -o remount,bind,ro "$R$path"; fi
done
shift
mkdir -p "$R/proc" "$R/dev" "$R/tmp"; chmod 1777 "$R/tmp"
mount -t proc proc "$R/proc"
for d in null zero urandom random; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
cd "$R/tmp"
# Not exec: this shell stays the namespace's PID 1. unshare --kill-child gives it a parent-death
# SIGKILL, which a change of credentials would clear (setpriv, below, changes them for the
# sample); so when unshare is killed this shell dies, and with the namespace's PID 1 every
# process in the namespace dies, whatever session or group the sample moved to.
chroot "$R" "$@"
'''


def _unshare_command(python: str, binds: list[str], root_dir: str) -> list[str]:
    ns = ["unshare", "--fork", "--pid", "--kill-child", "--net", "--ipc", "--uts", "--mount", "--mount-proc"]
    if os.geteuid() != 0:
        ns.insert(1, "--map-root-user")
    entries = [x for e in _root_entries(binds) for x in e]
    return [*ns, "--", "sh", "-c", UNSHARE_SCRIPT, "sandbox", root_dir, *entries, "--",
            *_drop_privileges(), python, "-I", "-S", "-c", HARNESS]


# rlimits has no PID namespace to tear down: the harness runs under this reaper, a child
# subreaper (prctl PR_SET_CHILD_SUBREAPER), so whatever the sample starts stays its descendant
# even after leaving its session (setsid, double fork); on SIGTERM, or when the harness ends, the
# reaper kills its descendants until none is left (a sample that forks while being killed
# included), then exits with the harness's status. The sample runs as the same user, so it
# could still kill the reaper first: rlimits is the last resort, and says so.
REAPER = r'''
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("sandbox reaper: prctl(PR_SET_CHILD_SUBREAPER) failed: %s" % os.strerror(ctypes.get_errno()))
child = os.fork()
if child == 0:
    os.execv(sys.argv[1], sys.argv[1:])
me = os.getpid()

def descendants():
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [me]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out

def end(code):
    for _ in range(200):
        alive = descendants()
        if not alive:
            break
        for p in alive:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
    os._exit(code)

signal.signal(signal.SIGTERM, lambda *_: end(137))
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        end(1)
    if pid == child:
        end(os.waitstatus_to_exitcode(status) & 0xFF)
'''


def _command(isolation: str, python: str, binds: list[str], root_dir: str) -> list[str]:
    if isolation == "bwrap":
        return _bwrap_command(python, binds)
    if isolation == "unshare":
        return _unshare_command(python, binds, root_dir)
    if sys.platform.startswith("linux"):  # the reaper needs prctl and /proc
        return [python, "-I", "-S", "-c", REAPER, python, "-I", "-S", "-c", HARNESS]
    return [python, "-I", "-S", "-c", HARNESS]


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """The strongest isolation that works here: bwrap, unshare or rlimits."""
    if not sys.platform.startswith("linux"):
        return "rlimits"
    probe = "import sys; sys.exit(0)"
    python, binds = interpreter()
    for kind, tool in (("bwrap", "bwrap"), ("unshare", "unshare")):
        if shutil.which(tool) is None or (os.geteuid() == 0 and not os.path.exists("/usr/bin/setpriv")):
            continue
        root = tempfile.mkdtemp(prefix="sftmix-sbx-probe-")
        try:
            cmd = _command(kind, python, binds, root)
            cmd[-1] = probe  # the harness's place: a one-line program
            if subprocess.run(cmd, capture_output=True, timeout=20, env=_ENV).returncode == 0:
                return kind
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return "rlimits"


_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}


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


_warned = False


def _warn_once(kind: str) -> None:
    global _warned
    if kind == "rlimits" and not _warned:
        warnings.warn("sandbox: neither bubblewrap (bwrap) nor Linux namespaces (unshare) work here; generated code runs "
                      "with rlimits and a clean environment only: it can read the file system and reach the network. "
                      "Install bubblewrap (apt-get install bubblewrap).", RuntimeWarning, stacklevel=3)
        _warned = True
    elif kind == "unshare" and not _warned:
        why = ("bubblewrap (bwrap) is not installed: install it (apt-get install bubblewrap) for the reviewed isolation"
               if shutil.which("bwrap") is None else "bubblewrap is installed, but was not chosen or did not work here")
        warnings.warn("sandbox: generated code runs under the unshare fallback (namespaces, chroot and nobody built by hand "
                      f"with util-linux); {why}.", RuntimeWarning, stacklevel=3)
        _warned = True


# ---------------------------------------------------------------- one sandboxed process


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


class _Session:
    """One sandboxed harness process with framed messages on its stdin/stdout."""

    def __init__(self, limits: Limits, kind: str):
        self.limits = limits
        self.kind = kind
        self.start = time.monotonic()
        self.deadline = self.start + limits.timeout_s
        python, binds = interpreter()
        self.root = tempfile.mkdtemp(prefix="sftmix-sbx-")
        self.proc = subprocess.Popen(_command(kind, python, binds, self.root), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=self.root, env=_ENV, preexec_fn=_preexec(limits),
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
                if n > MAX_FRAME:
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
            python, binds = interpreter()
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


def _resolve(kind: str | None) -> str:
    kind = kind or isolation()
    if kind not in ISOLATIONS:
        raise SftmixError(f"unknown sandbox isolation {kind!r}; valid: {', '.join(ISOLATIONS)}")
    _warn_once(kind)
    return kind


def run_program(program: str, limits: Limits = Limits(), kind: str | None = None) -> Result:
    """Run a whole program (tests included) in the sandbox; passed = it returned and exited 0."""
    kind = _resolve(kind)
    nonce = secrets.token_hex(16)
    try:
        s = _Session(limits, kind)
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
    kind = _resolve(kind)
    try:
        s = _Session(limits, kind)
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
    import builtins

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
    kind = _resolve(kind)
    python, binds = interpreter()
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
    if job.entry_point is None:
        return run_program(job.program, job.limits, kind)
    return run_candidate(job.program, job.entry_point, job.check_source, job.limits, kind)


def run_many(jobs: list[Job], workers: int = 4, progress: bool = True, kind: str | None = None) -> list[Result]:
    """Run jobs in parallel (after the canary); results in input order."""
    from sftmix.progress import track

    kind = canary(kind)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_job, j, kind) for j in jobs]
        return [f.result() for f in track(futures, "executing", enabled=progress)]
