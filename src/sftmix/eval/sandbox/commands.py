"""Where and how a sample runs: the interpreter, and the command that starts the harness under
each isolation (bwrap, the unshare fallback, rlimits with a reaper); which isolation works here."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

from sftmix.errors import unknown
from sftmix.eval.sandbox import harness

NOBODY = 65534


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
    return [*cmd, *_drop_privileges(), python, "-I", "-S", "-c", harness.HARNESS]


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
            *_drop_privileges(), python, "-I", "-S", "-c", harness.HARNESS]


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


def _rlimits_command(python: str, binds: list[str], root_dir: str) -> list[str]:
    if sys.platform.startswith("linux"):  # the reaper needs prctl and /proc
        return [python, "-I", "-S", "-c", REAPER, python, "-I", "-S", "-c", harness.HARNESS]
    return [python, "-I", "-S", "-c", harness.HARNESS]


# isolation -> the command that starts the harness under it
COMMANDS = {
    "bwrap": lambda python, binds, root_dir: _bwrap_command(python, binds),
    "unshare": _unshare_command,
    "rlimits": _rlimits_command,
}
ISOLATIONS = tuple(COMMANDS)


def command(isolation: str, python: str, binds: list[str], root_dir: str) -> list[str]:
    """The command line that starts ``python`` under an isolation, with these folders bound read-only."""
    return COMMANDS[isolation](python, binds, root_dir)


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
            cmd = command(kind, python, binds, root)
            cmd[-1] = probe  # the harness's place: a one-line program
            if subprocess.run(cmd, capture_output=True, timeout=20, env=ENV).returncode == 0:
                return kind
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return "rlimits"


ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}


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


def resolve(kind: str | None) -> str:
    """The isolation to use: ``kind``, else the best this machine offers; an unknown one is an error."""
    kind = kind or isolation()
    if kind not in ISOLATIONS:
        raise unknown("sandbox isolation", kind, ISOLATIONS)
    _warn_once(kind)
    return kind
