"""How ``python -m sftmix.cli`` ends. A rank of a launched run (``WORLD_SIZE`` > 1) that succeeded
leaves without the interpreter's finalisation, where gloo's worker threads could abort it after
all its work was saved (SIGABRT, and the launcher fails the run); its exit hooks still run (a
tracker such as wandb finishes its run in one) and everything it printed still arrives."""

import os
import subprocess
import sys


def end_of(tmp_path, world_size: str | None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``sftmix data show`` through ``python -m sftmix.cli``, with an exit hook and an object that
    only the interpreter's finalisation deletes; which of the two left their mark."""
    marks = tmp_path / (world_size or "plain")
    marks.mkdir()
    code = ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: open({str(marks / 'exit_hook')!r}, 'w').close() or print('the exit hook ran'))\n"
            "class Finalised:\n"
            f"    def __del__(self, _open=open): _open({str(marks / 'finalisation')!r}, 'w').close()\n"
            "kept = Finalised()\n"
            "sys.argv = ['sftmix', 'data', 'show', 'generated_math', '--limit', '3']\n"
            "runpy.run_module('sftmix.cli', run_name='__main__')\n")
    # stdout into a pipe is block-buffered, as a launcher's is, only without PYTHONUNBUFFERED
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "PYTHONUNBUFFERED")}
    if world_size:
        env["WORLD_SIZE"] = world_size
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    return r, {p.name for p in marks.iterdir()}


def test_a_launched_rank_that_succeeded_leaves_without_finalisation_but_with_its_hooks_and_output(tmp_path):
    plain, plain_marks = end_of(tmp_path, None)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert plain_marks == {"exit_hook", "finalisation"}  # the probe sees a whole interpreter's end
    rank, rank_marks = end_of(tmp_path, "2")
    assert rank.returncode == 0, rank.stderr[-2000:]
    assert rank_marks == {"exit_hook"}  # the hooks ran; the finalisation did not
    # nothing printed was lost in a buffer (the exit hook's line is printed last, with no flush after it)
    assert rank.stdout == plain.stdout and "generated_math" in rank.stdout and rank.stdout.endswith("the exit hook ran\n")
