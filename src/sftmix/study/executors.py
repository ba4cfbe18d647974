"""Where a study's runs execute: here one after another (``local``), as Ray tasks (``ray``), or as
Slurm jobs through submitit (``slurm``; submitit's local mode, ``slurm-local``, runs the same
path as subprocess jobs on this machine). Each executor only starts ``worker.execute`` for a run
and reports when it has ended; what a run produced is read from its folder by the driver.

Ray: each run is a task with the study's ``resources`` (``num_cpus``, ``num_gpus``); ``address``
connects to an existing cluster, none starts a local one. Slurm: each run is a job with those
resources; a job that is preempted or reaches its time limit is requeued by submitit and
resumes from its last checkpoint (the stage trainer resumes); a run over several GPUs or nodes
trains through ``accelerate launch`` started once per node. Whether a Slurm job is still queued
or has ended is asked of ``squeue``, not of ``sacct`` as submitit does: ``sacct`` needs an
accounting database that many clusters lack, and a job that died without a result would be
waited for forever.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from sftmix.config import Strict
from sftmix.errors import SftmixError
from sftmix.io import read_json, write_json
from sftmix.study import worker

class Resources(Strict):
    """What one run needs (each run of the study gets the same)."""

    gpus: int = Field(0, ge=0, description="GPUs per node")
    cpus: int = Field(1, ge=1, description="CPU cores (per node); torch threads are limited to these")
    nodes: int = Field(1, ge=1)
    time: str = Field("12h", description="wall-clock limit of one job: 90m, 12h, 2d or H:MM:SS")
    partition: str | None = Field(None, description="Slurm partition")
    parallel: int | None = Field(None, ge=1, description="at most this many runs at once (default: as resources allow)")
    slurm: dict = Field(default_factory=dict, description="extra submitit/Slurm parameters, e.g. {account: x, qos: y}")

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        minutes(v)
        return v


def minutes(text: str) -> int:
    """'90m' / '12h' / '2d' / 'H:MM:SS' -> minutes (rounded up)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if m:
        return max(1, int(-(-float(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)] // 1)))
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2})\s*", text)
    if m:
        h, mi, s = (int(x) for x in m.groups())
        return max(1, h * 60 + mi + (1 if s else 0))
    raise ValueError(f"expected a duration like 90m, 12h, 2d or 1:30:00, got {text!r}")


class ExecutorConfig(Strict):
    """``executor`` in a study file: the engine and its connection."""

    name: Literal["local", "ray", "slurm", "slurm-local"] = "local"
    address: str | None = Field(None, description="ray: host:port of an existing cluster (else a local one is started)")


@dataclass
class Handle:
    run_id: str
    run_out: Path
    ref: object = None


class Executor:
    """Start runs and tell when they end. ``check`` raises before any run starts."""

    name = "local"

    def __init__(self, resources: Resources, progress: bool = True):
        self.resources = resources
        self.progress = progress

    def check(self) -> None:
        want = self.resources.gpus
        if want:
            import torch

            have = torch.cuda.device_count()
            if want > have:
                raise SftmixError(f"resources.gpus = {want} but this machine has {have} GPU(s)")
        if self.resources.nodes > 1:
            raise SftmixError(f"resources.nodes = {self.resources.nodes}: the {self.name} executor runs on one machine; "
                              "use executor slurm for runs over several nodes")
        if self.resources.cpus > (os.cpu_count() or 1):
            raise SftmixError(f"resources.cpus = {self.resources.cpus} but this machine has {os.cpu_count()} CPU(s)")

    @property
    def parallel(self) -> int:
        return self.resources.parallel or 1

    def submit(self, run_id: str, config: dict, run_out: Path) -> Handle:
        h = Handle(run_id, run_out)
        h.ref = worker.execute(config, str(run_out), None, self.progress, self._launcher())
        return h

    def _launcher(self) -> list[str] | None:
        return worker.launch_command(self.resources.gpus, self.resources.nodes) if self.resources.gpus > 1 else None

    def finished(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, str | None]]:
        """Handles whose run has ended, each with an engine error message (None when the worker
        itself returned; its outcome is then in the run folder)."""
        return [(h, None) for h in handles]

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, resources: Resources, progress: bool = True, address: str | None = None):
        super().__init__(resources, progress)
        self.address = address

    def check(self) -> None:
        try:
            import ray
        except ImportError:
            raise SftmixError("executor ray needs Ray: pip install 'sftmix[ray]'") from None
        if self.resources.nodes > 1:
            raise SftmixError(f"resources.nodes = {self.resources.nodes}: with Ray, one run is one task on one node; "
                              "use executor slurm for runs over several nodes")
        if self.address and self.address != "auto":
            host, _, port = self.address.replace("ray://", "").rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except (OSError, ValueError) as e:
                raise SftmixError(f"Ray cluster at {self.address} is not reachable ({e}); start it with `ray start --head` "
                                  "or leave out --address to start a local one") from None
        if not ray.is_initialized():
            kwargs = {"address": self.address} if self.address else {"num_cpus": os.cpu_count(), "num_gpus": _gpu_count(),
                                                                      "object_store_memory": 256 * 1024 * 1024}
            try:
                ray.init(include_dashboard=False, log_to_driver=self.progress, ignore_reinit_error=True,
                         runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}, **kwargs)
            except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its own errors here
                raise SftmixError(_ray_init_error(self.address, e)) from None
        total = ray.cluster_resources()
        for key, want in (("CPU", self.resources.cpus), ("GPU", self.resources.gpus)):
            if want and total.get(key, 0) < want:
                raise SftmixError(f"resources: a run asks for {want} {key} but the Ray cluster has {total.get(key, 0):g} in "
                                  "total; no run could ever start")
        self._remote = ray.remote(max_retries=0)(worker.execute)

    @property
    def parallel(self) -> int:
        if self.resources.parallel:
            return self.resources.parallel
        import ray

        total = ray.cluster_resources()
        by_cpu = int(total.get("CPU", 1) // self.resources.cpus)
        by_gpu = int(total.get("GPU", 0) // self.resources.gpus) if self.resources.gpus else by_cpu
        return max(1, min(by_cpu, by_gpu))

    def submit(self, run_id: str, config: dict, run_out: Path) -> Handle:
        cpus = self.resources.cpus
        env = {v: str(cpus) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        ref = self._remote.options(num_cpus=cpus, num_gpus=self.resources.gpus, name=f"sftmix-{run_id}",
                                   runtime_env={"env_vars": env}).remote(config, str(run_out), cpus, False, self._launcher(),
                                                                         os.getcwd())
        return Handle(run_id, run_out, ref)

    def finished(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, str | None]]:
        import ray

        by_ref = {h.ref: h for h in handles}
        done, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            try:
                ray.get(ref)
                out.append((by_ref[ref], None))
            except Exception as e:  # noqa: BLE001 - the worker died (OOM kill, node loss): the driver records it
                out.append((by_ref[ref], f"Ray task failed: {type(e).__name__}: {str(e)[:500]}"))
        return out

    def describe(self) -> str:
        return f"ray ({self.address or 'local cluster'})"

    def close(self) -> None:
        import ray

        if ray.is_initialized() and not self.address:
            ray.shutdown()


def _ray_init_error(address: str | None, err: BaseException) -> str:
    """Why ``ray.init`` failed, in words a user can act on.

    Since Ray 2.59 a cluster started with ``ray start`` requires token authentication whenever a
    token exists on its machine (``~/.ray/auth_token`` is written by the first local
    ``ray.init()``), but a driver given an explicit address sends its token only when
    ``RAY_AUTH_MODE=token`` is set: Ray does not send a secret to an address unless told to, and
    neither does sftmix."""
    chain, e = [], err
    while e is not None and len(chain) < 8:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "auth token" in text.lower():
        if "no authentication token was found" in text:
            return (f"RAY_AUTH_MODE=token but no Ray token was found for {where}: put the cluster's token in "
                    "RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return (f"{where} refused this machine's Ray token (RAY_AUTH_MODE=token): give the cluster's own token in "
                    "RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")
        return (f"{where} requires token authentication: set RAY_AUTH_MODE=token, with the cluster's token in "
                "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (`ray get-auth-token` prints it on the head node)")
    last = next((line.strip() for line in reversed(str(err).strip().splitlines()) if line.strip()), type(err).__name__)
    return f"could not connect to {where}: {last[:500]}"


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


class Job:
    """What a Slurm (or submitit local) job runs: one run; requeued on preemption or timeout."""

    def __init__(self, config: dict, run_out: str, cpus: int, gpus: int, nodes: int):
        self.config, self.run_out, self.cpus, self.gpus, self.nodes = config, run_out, cpus, gpus, nodes
        self.cwd = os.getcwd()

    def __call__(self) -> str:
        launcher = None
        rank = 0
        if self.gpus > 1 or self.nodes > 1:
            import submitit

            env = submitit.JobEnvironment()
            rank = env.global_rank
            main = env.hostnames[0] if env.hostnames else "localhost"
            launcher = worker.launch_command(self.gpus, self.nodes, env.node, main)
        os.chdir(self.cwd)
        if rank != 0:  # the other nodes only train: their launcher joins rank 0's
            from sftmix.config import RunConfig

            cfg = RunConfig.model_validate({**self.config, "output_dir": self.run_out})
            worker._train(cfg, Path(self.run_out), launcher, False)
            return "trained"
        return worker.execute(self.config, self.run_out, self.cpus, False, launcher)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption or timeout: requeue the same job; it resumes."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


class SubmititExecutor(Executor):
    name = "slurm"
    QUEUE_POLL_S = 10.0

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
        write_json(run_out / worker.JOB, {"executor": self.name, "job_id": str(job.job_id), "folder": str(self.folder),
                                          "submitted": time.time()})
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
        ``QUEUE_POLL_S``, and a job must be missing twice in a row (a result file may still be
        on its way through a network file system)."""
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
            if self._missing[h.run_id] < 2 or h.ref.done():
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
        return f"{self.name} (jobs in {self.folder})"


def make_executor(cfg: ExecutorConfig, resources: Resources, out: Path, progress: bool = True) -> Executor:
    if cfg.name == "local":
        return Executor(resources, progress)
    if cfg.name == "ray":
        return RayExecutor(resources, progress, cfg.address)
    return SubmititExecutor(resources, progress, out / "jobs", local=cfg.name == "slurm-local")


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


def queued_job(run_out: Path) -> dict | None:
    """The Slurm job a run was submitted as (``job.json``), if it is still queued or running.

    When this machine has Slurm but its controller does not answer, the job counts as queued
    (state ``UNKNOWN``): the driver waits and asks again rather than submit the run a second time.
    Without Slurm here (a study folder copied elsewhere) it does not."""
    path = Path(run_out) / worker.JOB
    if not path.exists():
        return None
    info = read_json(path)
    if info.get("executor") != "slurm":
        return None
    if shutil.which("squeue") is None:
        return None
    try:
        state = slurm_queue_state(info["job_id"])
    except SftmixError as e:
        return {**info, "state": "UNKNOWN", "why": str(e)}
    return {**info, "state": state} if state in ACTIVE_STATES else None
