"""A real one-node Slurm cluster for tests: slurmctld and slurmd (Debian's slurmctld, slurmd and
slurm-client packages, which .ci/run installs) started in the foreground with a configuration in a
temporary folder, on free ports, without munge (auth/none) and without an accounting database
(so ``sacct`` does not work, as on many small clusters). Jobs run as root: slurmd needs root."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sftmix.eval.engine import free_port

DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # the daemons live here, which a minimal PATH may leave out


def search_path() -> str:
    return os.environ.get("PATH", "") + ":" + SBIN


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d, path=search_path()) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing; apt install slurmctld slurmd slurm-client)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


def _config(folder: Path, host: str, cpus: int) -> str:
    return f"""ClusterName=sftmixtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=2
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterDidNotStart(RuntimeError):
    pass


@contextlib.contextmanager
def slurm_cluster(folder: Path, cpus: int = 2):
    """Start the cluster; yields the path of its slurm.conf (set SLURM_CONF to it for clients)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, host, cpus))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": search_path()}
    procs = [subprocess.Popen([shutil.which("slurmctld", path=env["PATH"]), "-D", "-i", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        time.sleep(1.0)
        procs.append(subprocess.Popen([shutil.which("slurmd", path=env["PATH"]), "-D", "-N", host, "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 90
        state = ""
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=30)
            state = r.stdout.strip()
            if state == "idle":
                break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.5)
        if state != "idle":
            logs = "\n".join(f"--- {name}\n" + (folder / name).read_text(errors="replace")[-2000:]
                             for name in ("slurmctld.log", "slurmd.log") if (folder / name).exists())
            raise ClusterDidNotStart(f"the test Slurm cluster did not come up (sinfo says {state!r}):\n{logs}")
        yield conf
    finally:
        subprocess.run(["scancel", "--full", "--state=PENDING,RUNNING,SUSPENDED", "-u", "root"], env=env,
                       capture_output=True, timeout=30)
        time.sleep(0.5)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
