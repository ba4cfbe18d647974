"""One run of a study, executed wherever an executor puts it (this process, a Ray worker, a Slurm
job): train, evaluate, mark done, all inside the run's own folder.

One writer, one truth: a worker writes nothing but files under ``runs/<id>/`` (checkpoints, the
evaluation, ``done.json`` or ``error.json``); the driver alone writes ``results.sqlite``, from
those files (``sftmix.study.runner.ingest``). A lock on ``runs/<id>/.lock`` (``flock``) makes it
impossible for two workers to train the same run at once; the driver probes the same lock to
tell a running run from a pending one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftmix import layout, pipeline
from sftmix.config import RunConfig
from sftmix.io import read_record, stable_hash, write_json
from sftmix.runlock import AlreadyRunning, LockHolder, RunLock, TrainingClaim
from sftmix.threads import thread_env
from sftmix.train.strategies import adopt_training, trained_view

DONE, ERROR, JOB = layout.DONE, layout.ERROR, layout.JOB


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # the fields readers rely on are checked; others are kept


class DoneRecord(_Record):
    """``done.json``: the run trained and evaluated."""

    checkpoint: str
    eval_dir: str
    finished: float


class ErrorRecord(_Record):
    """``error.json``: the run failed, with its error and traceback."""

    error: str
    traceback: str = ""


def read_error(run_out: Path) -> ErrorRecord | None:
    """A failed run's ``error.json``, where there is one."""
    path = Path(run_out) / ERROR
    return read_record(path, ErrorRecord) if path.exists() else None


def limit_threads(cpus: int | None) -> None:
    """Keep a worker's torch (and BLAS) threads to the CPUs it was given."""
    if not cpus:
        return
    os.environ.update(thread_env(cpus))
    # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
    import torch

    torch.set_num_threads(cpus)


def execute(config: dict, run_out: str, cpus: int | None = None, progress: bool = False, launcher: list[str] | None = None,
            cwd: str | None = None, stopped: Callable[[BaseException], bool] | None = None, adopt: bool = True) -> str:
    """Train and evaluate one run in ``run_out``; return "done", "failed" or "running elsewhere".

    ``config`` is the run's resolved config (a dict, so that it travels to any worker).
    ``launcher``: a command prefix (``accelerate launch ...``) that trains in separate processes,
    for runs over several GPUs or nodes; evaluation then runs here on the final checkpoint.
    ``cwd``: the driver's working folder (a Ray or Slurm worker may start elsewhere).
    ``stopped``: whether an error means the worker was stopped from outside (a Slurm requeue) rather
    than that the run failed; such an error is raised, not recorded.
    ``adopt``: take a finished run's training where only the evaluation differs (``adopt_training``);
    off for a run over several nodes, whose other nodes train without asking and must agree.
    """
    if cwd:  # relative paths in the config (data_dir, sources) mean what they meant to the driver
        os.chdir(cwd)
    run_out_p = Path(run_out)
    try:
        with RunLock(run_out_p):
            if (run_out_p / DONE).exists():
                return "done"
            (run_out_p / ERROR).unlink(missing_ok=True)
            limit_threads(cpus)
            try:
                cfg = RunConfig.model_validate({**config, "output_dir": str(run_out_p)})
                with training_claim(cfg, run_out_p) if adopt else contextlib.nullcontext():
                    adopted = adopt_training(cfg, run_out_p.parent) if adopt else None
                    if adopted is not None:
                        print(f"run {run_out_p.name}: trained as run {adopted.name} (only the evaluation differs); "
                              "its stages are reused", file=sys.stderr)
                    p, _ = pipeline.run(cfg, progress, launcher)
                write_json(run_out_p / DONE, DoneRecord(checkpoint=str(p.final), eval_dir=str(p.eval_dir),
                                                        finished=time.time()).model_dump())
                return "done"
            except Exception as e:  # noqa: BLE001 - recorded for the driver, which reports it
                if stopped is not None and stopped(e):
                    raise
                write_json(run_out_p / ERROR, ErrorRecord(error=f"{type(e).__name__}: {e}",
                                                          traceback=traceback.format_exc()[-4000:]).model_dump())
                return "failed"
    except AlreadyRunning:
        return "running elsewhere"


def training_claim(cfg: RunConfig, run_out: Path) -> TrainingClaim:
    """The claim on the run's training, held while it trains and evaluates: a twin run of it (only
    the evaluation differs) that another driver started at the same moment waits, then adopts."""
    def waiting(by: LockHolder | None) -> None:
        twin = by.run if by is not None and by.run else "another run"
        print(f"run {run_out.name}: run {twin} is training the same stages; waiting for it, to take them", file=sys.stderr,
              flush=True)

    return TrainingClaim(layout.training_claim(run_out, stable_hash(trained_view(cfg))), run_out.name, waiting)


def launch_command(gpus: int, nodes: int = 1, rank: int = 0, main_host: str = "localhost", port: int = 29500) -> list[str]:
    """``accelerate launch`` for one node of a run over ``gpus`` GPUs per node on ``nodes`` nodes
    (one launcher per node, as accelerate expects; it starts one process per GPU, or one on a CPU
    node). ``--multi_gpu`` names accelerate's torchrun launcher, which on CPU processes trains with
    gloo: without it accelerate starts a lone process per node whatever ``--num_machines`` says, and
    each node would train the whole run by itself. The launcher is run by this interpreter, so a
    node needs no activated environment."""
    per_node = max(1, gpus)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", f"--num_processes={per_node * nodes}", f"--num_machines={nodes}",
           f"--machine_rank={rank}"]
    if per_node * nodes > 1:
        cmd.insert(3, "--multi_gpu")
    if nodes > 1:
        cmd += [f"--main_process_ip={main_host}", f"--main_process_port={port}"]
    return cmd
