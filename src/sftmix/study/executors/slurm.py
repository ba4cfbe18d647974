"""Runs as Slurm jobs through submitit. Each run is a job with the study's resources; a job that
is preempted or reaches its time limit is requeued by submitit and resumes from its last
checkpoint (the stage trainer resumes); a run over several GPUs or nodes trains through
``accelerate launch`` started once per node. Whether a job is still queued or has ended is asked
of ``squeue``, not of ``sacct`` as submitit does: ``sacct`` needs an accounting database that many
clusters lack, and a job that died without a result would be waited for forever."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftmix import pipeline
from sftmix.config import Resources, RunConfig, minutes
from sftmix.errors import SftmixError
from sftmix.io import read_record, write_json
from sftmix.study import worker
from sftmix.study.executors.local import Executor, Handle


def rendezvous_port(job_id: str) -> int:
    """The port the nodes of a job meet on at its first host: ``MASTER_PORT`` where set, else one
    drawn from the job id, the same on every node of the job and different for two jobs that share a
    first host (a fixed 29500 would make the second one fail)."""
    if os.environ.get("MASTER_PORT"):
        return int(os.environ["MASTER_PORT"])
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


class Job:
    """What a Slurm (or submitit local) job runs: one run; requeued on preemption or timeout."""

    def __init__(self, config: dict, run_out: str, cpus: int, gpus: int, nodes: int):
        self.config, self.run_out, self.cpus, self.gpus, self.nodes = config, run_out, cpus, gpus, nodes
        self.cwd = os.getcwd()

    def __call__(self) -> str:
        self.requeuing = False  # this attempt's own flag (the requeued pickle carries the last one's)
        launcher = None
        rank = 0
        if self.gpus > 1 or self.nodes > 1:
            # imported here: submitit is an optional extra
            import submitit

            env = submitit.JobEnvironment()
            rank = env.global_rank
            main = env.hostnames[0] if env.hostnames else "localhost"
            launcher = worker.launch_command(self.gpus, self.nodes, env.node, main, rendezvous_port(env.job_id))
        os.chdir(self.cwd)
        if rank != 0:  # the other nodes only train: their launcher joins rank 0's
            cfg = RunConfig.model_validate({**self.config, "output_dir": self.run_out})
            pipeline.train(pipeline.plan(cfg), False, launcher)
            return "trained"
        try:
            return worker.execute(self.config, self.run_out, self.cpus, False, launcher, stopped=self.killed_by_requeue,
                                  adopt=self.nodes == 1)
        except subprocess.CalledProcessError as e:
            if not self.killed_by_requeue(e):
                raise
            # what submitit does after a requeue that returned: leave without a result; the next
            # attempt resumes from the newest checkpoint
            print(f"sftmix: this attempt ends: the job was requeued ({e})", file=sys.stderr)
            sys.exit(-1)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption or timeout, just before it runs ``scontrol requeue``:
        requeue the same job; it resumes."""
        # imported here: submitit is an optional extra
        import submitit

        self.requeuing = True
        return submitit.helpers.DelayedSubmission(self)

    def killed_by_requeue(self, error: BaseException) -> bool:
        """Whether ``error`` is submitit's ``scontrol requeue`` killed by the requeue it asked for.
        Slurm ends the job's processes as it requeues it, and ``scontrol`` is one of them: when it
        is slower to exit than Slurm to kill, submitit's handler raises CalledProcessError (died
        with SIGTERM) into the training, although the job was requeued. That is the end of this
        attempt, not a failure of the run (a CI run of the preemption test once recorded it as
        one). A ``scontrol`` that exits with an error of its own is still a failure."""
        return (getattr(self, "requeuing", False) and isinstance(error, subprocess.CalledProcessError)
                and list(error.cmd[:2]) == ["scontrol", "requeue"] and error.returncode < 0)


class SubmititExecutor(Executor):
    """Runs as Slurm jobs through submitit (or submitit's local executor)."""

    name = "slurm"
    QUEUE_POLL_S = 10.0
    MISSING_POLLS = 3

    def __init__(self, resources: Resources, progress: bool = True, folder: Path = Path("jobs"), local: bool = False):
        super().__init__(resources, progress)
        self.folder = Path(folder)
        self.local = local
        if local:
            self.name = "slurm-local"
        self._last_poll = float("-inf")
        self._missing: dict[str, int] = {}

    def check(self) -> None:
        try:
            # imported here: submitit is an optional extra
            import submitit
        except ImportError:
            raise SftmixError("executor slurm needs submitit: pip install 'sftmix[slurm]'") from None
        if self.local:
            super().check()
        else:
            if shutil.which("sbatch") is None:
                raise SftmixError("executor slurm: no `sbatch` on this machine (use slurm-local to run the same jobs "
                                  "as local processes)")
        self.ex = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster="local" if self.local else "slurm")
        params = {"timeout_min": minutes(self.resources.time), "cpus_per_task": self.resources.cpus,
                  "nodes": self.resources.nodes, "tasks_per_node": 1, "name": "sftmix"}
        if self.resources.gpus:
            params["gpus_per_node"] = self.resources.gpus
        if not self.local:
            if self.resources.partition:
                params["slurm_partition"] = self.resources.partition
            params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in self.resources.slurm.items()})
        if self.local:
            params = {k: v for k, v in params.items() if k in ("timeout_min", "cpus_per_task", "gpus_per_node", "nodes",
                                                                "tasks_per_node", "name")}
            params.pop("nodes", None)
        try:
            self.ex.update_parameters(**params)
        except (NameError, ValueError, TypeError) as e:  # submitit names the parameter it does not know
            raise SftmixError(f"resources.slurm: {str(e)[:600]}") from None

    @property
    def parallel(self) -> int:
        if self.resources.parallel:
            return self.resources.parallel
        return max(1, (os.cpu_count() or 1) // self.resources.cpus) if self.local else 10_000

    def submit(self, run_id: str, config: dict, run_out: Path) -> Handle:
        r = self.resources
        try:
            job = self.ex.submit(Job(config, str(run_out), r.cpus, r.gpus, r.nodes))
        except Exception as e:  # noqa: BLE001 - sbatch refused the job (partition, account, time, gres): its words
            said = str(e).strip().splitlines()
            raise SftmixError(f"{self.name}: the job for run {run_id} was refused: "
                              + " | ".join(line.strip() for line in said[-4:] if line.strip())) from None
        write_json(run_out / worker.JOB, JobRecord(executor=self.name, job_id=str(job.job_id), folder=str(self.folder),
                                                   submitted=time.time()).model_dump())
        return Handle(run_id, run_out, job)

    def finished(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, str | None]]:
        deadline = time.monotonic() + timeout
        while True:
            out = []
            for h in handles:
                if h.ref.done():
                    try:
                        h.ref.result()
                        out.append((h, None))
                    except Exception as e:  # noqa: BLE001 - the job failed outside the worker: recorded by the driver
                        out.append((h, f"{self.name} job {h.ref.job_id} failed: {str(e)[-500:]}"))
            if not out and not self.local:
                out = self._left_the_queue(handles)
            if out or time.monotonic() > deadline:
                return out
            time.sleep(0.5)

    def _left_the_queue(self, handles: list[Handle]) -> list[tuple[Handle, str | None]]:
        """Jobs that are no longer in Slurm's queue but left no result: cancelled, killed by a
        node failure or the OOM killer before submitit could write one. submitit learns a job's
        end from ``sacct``, which needs Slurm's accounting database; many clusters have none, and
        its jobs would then be waited for forever. ``squeue`` is asked instead, every
        ``QUEUE_POLL_S``, and a job must be missing ``MISSING_POLLS`` times in a row: a result file
        may still be on its way through a network file system, and a job requeued on preemption
        was once seen missing twice, 10 s apart, on a loaded machine and declared failed (a CI run
        of the preemption test failed so; the cause within Slurm is not known)."""
        now = time.monotonic()
        if now - self._last_poll < self.QUEUE_POLL_S:
            return []
        self._last_poll = now
        out = []
        for h in handles:
            try:
                state = slurm_queue_state(str(h.ref.job_id))
            except SftmixError:
                continue  # the controller did not answer: ask again later
            if state in ACTIVE_STATES:
                self._missing.pop(h.run_id, None)
                continue
            self._missing[h.run_id] = self._missing.get(h.run_id, 0) + 1
            if self._missing[h.run_id] < self.MISSING_POLLS or h.ref.done():
                continue
            if (h.run_out / worker.DONE).exists():
                out.append((h, None))  # the worker finished; only submitit's own result is missing
                continue
            log = h.ref.stderr() or ""
            tail = "\n".join(log.strip().splitlines()[-5:])
            out.append((h, f"slurm job {h.ref.job_id} left the queue ({state or 'gone'}) without a result"
                           + (f"; its stderr ends:\n{tail}" if tail else "")))
        return out

    def describe(self) -> str:
        """Where runs go, in words (for the progress line)."""
        return f"{self.name} (jobs in {self.folder})"


# squeue's states of a job that has not ended (a requeued job passes through several of them)
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT",
                           "RESV_DEL_HOLD"})


def slurm_queue_state(job_id: str) -> str | None:
    """The job's state in Slurm's queue, from ``squeue`` (which works without an accounting
    database, unlike ``sacct``); None once the job has left the queue. Raises SftmixError when
    Slurm cannot be asked."""
    if shutil.which("squeue") is None:
        raise SftmixError("no `squeue` on this machine")
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SftmixError(f"squeue failed: {e}") from None
    if r.returncode != 0:
        if "invalid job id" in r.stderr.lower():
            return None  # already purged from the controller's memory
        raise SftmixError(f"squeue failed: {r.stderr.strip()[-300:]}")
    states = r.stdout.split()
    return next((st for st in states if st in ACTIVE_STATES), states[0] if states else None)


class JobRecord(BaseModel):
    """``job.json``: the job a run was submitted as."""

    model_config = ConfigDict(extra="allow")  # the fields readers rely on are checked; others are kept

    executor: str  # slurm, or slurm-local
    job_id: str
    folder: str
    submitted: float


class QueuedJob(BaseModel):
    """A run's job that is still in Slurm's queue, with its state there (UNKNOWN, and why, when the
    controller did not answer)."""

    job: JobRecord
    state: str
    why: str | None = None


def read_job(run_out: Path) -> JobRecord | None:
    """The job a run was submitted as (``job.json``), where it was submitted as one."""
    path = Path(run_out) / worker.JOB
    return read_record(path, JobRecord) if path.exists() else None


def queued_job(run_out: Path) -> QueuedJob | None:
    """The Slurm job a run was submitted as (``job.json``), if it is still queued or running.

    When this machine has Slurm but its controller does not answer, the job counts as queued
    (state ``UNKNOWN``): the driver waits and asks again rather than submit the run a second time.
    Without Slurm here (a study folder copied elsewhere) it does not."""
    job = read_job(run_out)
    if job is None or job.executor != "slurm":
        return None
    if shutil.which("squeue") is None:
        return None
    try:
        state = slurm_queue_state(job.job_id)
    except SftmixError as e:
        return QueuedJob(job=job, state="UNKNOWN", why=str(e))
    return QueuedJob(job=job, state=state) if state in ACTIVE_STATES else None
