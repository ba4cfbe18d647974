"""Studies on Ray and through submitit, for real: same results as the local executor, nothing
trained twice after the driver is killed, and clear errors before any run starts."""

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import get_args

import psutil
import pytest
import yaml

import slurm_cluster
from helpers import TINY_MEASURE, TINY_SOURCES, TINY_TRAIN, losses, study_file, study_metrics
from sftmix.config import ExecutorConfig
from sftmix.eval.engine import free_port
from sftmix.study import worker
from sftmix.study.executors import EXECUTORS
from sftmix.study.executors.slurm import read_job, rendezvous_port
from sftmix import layout
from sftmix.layout import study_run
from sftmix.study import runner
from sftmix.study.runner import load_study, status_rows
from sftmix.runlock import RunLock, holder, is_running
from sftmix.study.worker import launch_command
from sftmix.train.checkpoints import checkpoint_complete
from sftmix.io import read_record, stable_hash
from sftmix.train.meta import read_meta
from sftmix.train.strategies import RunRecord, trained_view

pytestmark = pytest.mark.cluster

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'sftmix[ray]'); CI installs it")
submitit = pytest.importorskip("submitit", reason="submitit is an optional extra (pip install 'sftmix[slurm]'); CI installs it")


def sftmix(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sftmix.cli", *args], capture_output=True, text=True, **kw)


metrics = study_metrics


def stage_metas(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.glob("runs/*/stage*/final/meta.json")}


@pytest.fixture(scope="session")
def local_reference(mini_study):
    """The shared tiny study run by the local executor (``conftest.mini_study``)."""
    assert mini_study.rerun.returncode == 0, mini_study.rerun.stderr[-3000:]
    assert len(mini_study.metrics) == 8  # 4 runs x 2 held-out losses
    return mini_study.metrics


@pytest.fixture(scope="module", autouse=True)
def ray_token(tmp_path_factory):
    """Ray >= 2.59 turns token authentication on for a cluster whenever a token exists on its
    machine, and the first local ``ray.init()`` writes one to ``~/.ray/auth_token``. So these
    tests use their own token, explicitly, for the cluster and every driver: the outcome does not
    depend on what an earlier run left in HOME, and nothing is written there."""
    token = tmp_path_factory.mktemp("raytoken") / "auth_token"
    token.write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        yield token


# Ray's command line beside this interpreter (a virtual environment that is not activated has it
# there, not on PATH)
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"


# Ports `ray start` gives its own components by default: a GCS port drawn from the system's free
# ports must not be one of them (52365 was drawn once, and the cluster refused to start)
RAY_DEFAULT_PORTS = {6379, 8076, 8265, 10001, 52365, 62365} | set(range(10002, 20000))


def ray_free_port() -> int:
    """A free loopback port that is none of Ray's own."""
    while (port := free_port()) in RAY_DEFAULT_PORTS:
        pass
    return port


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster with 2 CPUs, started by the test (as a user would with `ray start`)."""
    port = ray_free_port()
    # a short folder of its own: Ray's socket paths below it must stay under 107 bytes, which
    # pytest's temporary folders (deeper still under an xdist worker) can pass
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([RAY, "start", "--head", "--num-cpus=2", "--num-gpus=0", f"--port={port}", "--include-dashboard=false",
                            "--disable-usage-stats", "--object-store-memory=200000000"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
    shutil.rmtree(tmp, ignore_errors=True)


def kill_after_first_done(cmd: list[str], db: Path, root: Path) -> None:
    log = root.parent / f"{root.name}-driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if list(root.glob("runs/*/done.json")):
                break
            time.sleep(0.1)
        ended = proc.poll()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and whatever it started in its session
        except ProcessLookupError:
            pass
        proc.wait()
    # the kill must land while the study is under way: a driver that ended on its own (an error,
    # or a study already finished) would make the rerun below test nothing
    errors = {p.parent.name: p.read_text()[-800:] for p in root.glob("runs/*/error.json")}
    assert ended is None, f"driver exited ({ended}) before any run was done; run errors {errors}; driver said:\n" + \
        log.read_text(errors="replace")[-3000:]
    assert list(root.glob("runs/*/done.json")), "no run finished within 600 s"
    assert len(list(root.glob("runs/*/done.json"))) < 4, "every run was done before the kill: nothing was interrupted"


def check_same_results_and_trained_once(f: Path, root: Path, cmd: list[str], reference: dict) -> None:
    db = root / "results.sqlite"
    kill_after_first_done(cmd, db, root)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM runs WHERE status = 'done'").fetchone()[0] == 4
    metas = stage_metas(root)
    assert len(metas) == 4  # one trained stage per run: nothing was trained twice
    got = metrics(db)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        assert abs(got[key] - value) < 2e-3 * max(1.0, abs(value)), key  # thread counts change summation order
    # a second rerun ingests nothing again and trains nothing
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and stage_metas(root) == metas
    st = sftmix("study", "status", str(f))
    assert "4 runs: 4 done, 0 running, 0 queued, 0 interrupted, 0 failed, 0 pending" in st.stdout, st.stdout
    for rid, _ in con.execute("SELECT id, status FROM runs"):  # and the table says it of each run
        assert any(rid in line and "done" in line for line in st.stdout.splitlines()), (rid, st.stdout)


def test_ray_runs_the_study_in_parallel_with_the_local_results(tmp_path, ray_cluster, local_reference):
    f = study_file(tmp_path, "onray", executor={"name": "ray", "address": ray_cluster})
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"]
    check_same_results_and_trained_once(f, tmp_path / "onray", cmd, local_reference)
    # 2 runs at a time on the 2-CPU cluster: the workers' own times (lock taken, done written) overlap
    import json

    spans = sorted((json.loads((r / ".lock").read_text())["since"], json.loads((r / "done.json").read_text())["finished"])
                   for r in (tmp_path / "onray" / "runs").iterdir())
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans


def test_runs_of_one_training_in_parallel_train_it_once(tmp_path, ray_cluster):
    """Two runs that differ only in what they evaluate, on a cluster that could run both at once:
    one trains, the other waits for it and takes its stages (weights hard-linked), not training
    the same thing beside it."""
    f = study_file(tmp_path, "twins", executor={"name": "ray", "address": ray_cluster}, grid={"eval.limit": [2, 3]})
    r = sftmix("study", "run", str(f), "--quiet")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = sorted((tmp_path / "twins" / "runs").iterdir())
    records = [read_record(run / "run.json", RunRecord) for run in runs]
    assert len(runs) == 2 and sorted(x.trained_in is None for x in records) == [False, True], records
    (trainer,) = [run for run, x in zip(runs, records) if x.trained_in is None]
    (taker,) = [run for run, x in zip(runs, records) if x.trained_in is not None]
    assert records[runs.index(taker)].trained_in == str(trainer)
    (final,) = trainer.glob("stage*/final")
    assert os.stat(taker / final.relative_to(trainer) / "model.safetensors").st_ino == os.stat(final / "model.safetensors").st_ino


def test_a_run_whose_training_runs_under_another_driver_waits_for_it(tmp_path):
    """Two drivers of one study (two `study run`s, as on two machines sharing the folder), two runs
    that differ only in what they evaluate. While the first driver trains one, the second finds it
    running elsewhere and holds its twin back rather than training the same stages beside it: the
    training happens once, and the twin takes its stages."""
    f = study_file(tmp_path, "two", grid={"eval.limit": [2, 3]})
    doc = yaml.safe_load(f.read_text())
    doc["base"]["train"]["epochs"] = 100  # a training (~12 s) long enough for the second driver to find it under way
    f.write_text(yaml.safe_dump(doc))
    _, runs = load_study(str(f))
    first, twin = (tmp_path / "two" / "runs" / r.id for r in runs)
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"]
    logs = [tmp_path / "driver1.log", tmp_path / "driver2.log"]
    with open(logs[0], "wb") as out1, open(logs[1], "wb") as out2:
        one = subprocess.Popen(cmd, stdout=out1, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not is_running(first) and one.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        two = subprocess.Popen(cmd, stdout=out2, stderr=subprocess.STDOUT)
        codes = [one.wait(timeout=600), two.wait(timeout=600)]
    said = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in logs)
    assert codes == [0, 0], said
    assert "is already running elsewhere; waiting for it" in logs[1].read_text(), said  # it did find the first under way
    took = {run: read_record(run / "run.json", RunRecord).trained_in for run in (first, twin)}
    assert took == {first: None, twin: str(first)}, said  # trained once, by the first driver


def test_a_twin_started_while_its_training_runs_waits_for_it_and_takes_its_stages(tmp_path, capfd):
    """Two drivers started at the same moment can each start one of two twin runs before either
    worker holds anything, so the drivers' own look (above) cannot hold the twin back. The
    workers settle it: the one training holds the training's claim (``runlock.TrainingClaim``),
    and the twin's worker waits on it, then takes the finished stages instead of training them
    beside it."""
    f = study_file(tmp_path, "claim", grid={"eval.limit": [2, 3]})
    doc = yaml.safe_load(f.read_text())
    doc["base"]["train"]["epochs"] = 30
    f.write_text(yaml.safe_dump(doc))
    _, runs = load_study(str(f))
    first, twin = (study_run(tmp_path / "claim", r.id) for r in runs)
    ended = {}
    one = threading.Thread(target=lambda: ended.setdefault("first", worker.execute(runs[0].config.model_dump(mode="json"),
                                                                                       str(first))))
    one.start()
    deadline = time.time() + 120
    while not layout.stages(first) and one.is_alive() and time.time() < deadline:  # its claim is held: it trains
        time.sleep(0.05)
    assert layout.stages(first), ended
    two = threading.Thread(target=lambda: ended.setdefault("twin", worker.execute(runs[1].config.model_dump(mode="json"),
                                                                                     str(twin))))
    two.start()
    shown = ""
    while one.is_alive() and "waiting for run" not in shown:  # `study status` says which run the twin waits for
        shown = {row[0]: row[3] for row in status_rows(None, runs, tmp_path / "claim")}[runs[1].id]
        time.sleep(0.05)
    assert f"; waiting for run {first.name}, which trains the same stages" in shown, shown
    one.join(timeout=300)
    two.join(timeout=300)
    said = capfd.readouterr().err
    assert ended == {"first": "done", "twin": "done"}, said
    assert f"run {twin.name}: run {first.name} is training the same stages; waiting for it, to take them" in said
    took = {run: read_record(run / "run.json", RunRecord).trained_in for run in (first, twin)}
    assert took == {first: None, twin: str(first)}, said
    assert [p.name for p in (tmp_path / "claim" / "trainings").iterdir()] == [f"{stable_hash(trained_view(runs[0].config))}.lock"]
    assert all(p.is_dir() for p in (tmp_path / "claim" / "runs").iterdir())  # runs/ holds run folders alone


def test_a_run_another_driver_took_first_is_waited_for_not_failed(tmp_path, monkeypatch):
    """The other half of that race: both drivers submit the same run, and this driver's worker
    finds its lock taken (it returns "running elsewhere"). The run is not recorded as failed: the
    driver waits for it as for any run held elsewhere, and runs it itself when the other worker
    ends without a result."""
    f = study_file(tmp_path, "took", grid={"eval.limit": [2, 3]})
    study, runs = load_study(str(f))
    held_by_other = study_run(tmp_path / "took", runs[0].id)
    looks = []

    def first_look_misses(run_out):  # the driver looked before the other driver's worker took the lock
        looks.append(Path(run_out))
        return False if looks.count(Path(run_out)) == 1 else is_running(run_out)

    monkeypatch.setattr(runner.runlock, "is_running", first_look_misses)
    monkeypatch.setattr(runner, "WAIT_POLL_S", 0.2)
    other = RunLock(held_by_other)
    other.__enter__()
    threading.Timer(4.0, other.__exit__, (None, None, None)).start()  # the other worker ends without a result
    store = runner.run_study(study, runs, progress=False)
    assert {r.id: r.status for r in store.runs()} == {r.id: "done" for r in runs}, [r.error for r in store.runs()]
    assert looks.count(held_by_other) >= 3  # the look that missed, the one after its worker was refused, the polls


def test_a_run_another_driver_took_and_finished_since_is_done_not_failed(tmp_path, monkeypatch):
    """The narrowest window of that race: this driver's worker is refused the run, and by the time
    the driver looks again the other worker has finished it. The run is ingested as done, not
    recorded as "ended without a result"."""
    f = study_file(tmp_path, "fin", grid={"eval.limit": [2, 3]})
    doc = yaml.safe_load(f.read_text())
    doc["base"]["train"]["epochs"] = 30  # longer than the 2 s a refused worker waits for the lock
    f.write_text(yaml.safe_dump(doc))
    study, runs = load_study(str(f))
    target = study_run(tmp_path / "fin", runs[0].id)
    other = threading.Thread(target=worker.execute, args=(runs[0].config.model_dump(mode="json"), str(target)))
    looks = []

    def look(run_out):
        looks.append(Path(run_out))
        if Path(run_out) == target and looks.count(target) == 1:  # the first look, before the other worker took it
            other.start()
            while not is_running(target) and other.is_alive():
                time.sleep(0.05)
            return False
        if Path(run_out) == target and looks.count(target) == 2:  # after its own worker was refused: it has ended since
            other.join(timeout=300)
            return False
        return is_running(run_out)

    monkeypatch.setattr(runner.runlock, "is_running", look)
    store = runner.run_study(study, runs, progress=False)
    assert {r.id: r.status for r in store.runs()} == {r.id: "done" for r in runs}, [r.error for r in store.runs()]
    assert read_record(target / "run.json", RunRecord).trained_in is None  # trained once, by the other worker


def test_submitit_local_jobs_run_the_study_with_the_local_results(tmp_path, local_reference):
    f = study_file(tmp_path, "onsubmitit")
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--executor", "slurm-local", "--quiet"]
    check_same_results_and_trained_once(f, tmp_path / "onsubmitit", cmd, local_reference)
    assert list((tmp_path / "onsubmitit" / "jobs").glob("*/*_log.out"))  # submitit's own job logs


def test_two_workers_never_train_the_same_run(tmp_path):
    run_out = tmp_path / "run"
    with RunLock(run_out):
        assert is_running(run_out)
        assert holder(run_out).pid == os.getpid()  # what `study status` shows as "running on"
        assert worker.execute({}, str(run_out)) == "running elsewhere"
    assert not is_running(run_out)


@pytest.mark.parametrize("extra,args,expected", [
    ({}, ["--executor", "kubernetes"], "invalid choice: 'kubernetes'"),
    ({"executor": "kubernetes"}, [], "executor.name"),
    ({"resources": {"cpus": 64}}, ["--executor", "ray"], "the Ray cluster has"),
    ({"resources": {"gpus": 4}}, [], "resources.gpus = 4"),
    ({"resources": {"nodes": 2}}, ["--executor", "slurm-local"], "resources.nodes = 2"),
    ({"resources": {"time": "forever"}}, [], "expected a duration"),
    ({}, ["--executor", "ray", "--address", "127.0.0.1:1"], "is not reachable"),
], ids=["unknown executor flag", "unknown executor in file", "more cpus than the cluster", "gpus", "nodes", "time",
        "unreachable ray address"])
def test_bad_executor_input_fails_before_any_run_starts(tmp_path, extra, args, expected):
    f = study_file(tmp_path, "bad", **extra)
    r = sftmix("study", "run", str(f), *args, "--quiet", timeout=300)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "bad").glob("runs/*/stage*"))


def test_launch_command_for_several_gpus_and_nodes():
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    assert launch_command(8, 1) == [*launch, "--multi_gpu", "--num_processes=8", "--num_machines=1", "--machine_rank=0"]
    assert launch_command(4, 2, rank=1, main_host="node01") == [
        *launch, "--multi_gpu", "--num_processes=8", "--num_machines=2", "--machine_rank=1",
        "--main_process_ip=node01", "--main_process_port=29500"]
    # CPU nodes: one process each, still through the multi-process launcher
    assert launch_command(0, 2, rank=0, main_host="node01") == [
        *launch, "--multi_gpu", "--num_processes=2", "--num_machines=2", "--machine_rank=0",
        "--main_process_ip=node01", "--main_process_port=29500"]
    assert launch_command(0, 1) == [*launch, "--num_processes=1", "--num_machines=1", "--machine_rank=0"]


def test_the_nodes_of_a_job_meet_on_a_port_of_their_own(monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert rendezvous_port("4242") == rendezvous_port("4242") == 24242
    assert rendezvous_port("4243") != rendezvous_port("4242") and 20000 <= rendezvous_port("987654_3") < 40000
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert rendezvous_port("4242") == 29999


NODE_RUNNER = """
import json, sys
from sftmix.study.executors.slurm import Job
config, run_out = json.loads(sys.argv[1]), sys.argv[2]
print("node result:", Job(config, run_out, 1, 0, 2)())
"""


def test_two_slurm_nodes_train_as_one_run(tmp_path):
    """Two "nodes" of one Slurm job as two local processes, each with the environment Slurm gives
    a node's task (SLURM_NODEID, SLURM_PROCID, SLURM_JOB_NODELIST, ...), run the job the Slurm
    executor submits. Its launcher code builds each node's accelerate launch from
    submitit.JobEnvironment; the nodes meet at the first host and train as one 2-process run: the
    same losses as one process at the same global batch, and node 0 alone evaluates and finishes."""
    cfg = {"name": "nodes", "model": "tiny", "sources": TINY_SOURCES, "strategy": {"name": "individual", "sources": ["generated_math"]},
           "train": {**TINY_TRAIN, "per_device_batch_size": 4, "batch_size": 8}, **TINY_MEASURE}
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "one")}))
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "train", str(one), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    run_out = tmp_path / "runs" / "nodes"
    port = ray_free_port()
    nodes = []
    for node in (0, 1):
        env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2",
               "SLURM_NODEID": str(node), "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        log = open(tmp_path / f"node{node}.log", "w")  # noqa: SIM115 - closed with the process below
        nodes.append((subprocess.Popen([sys.executable, "-c", NODE_RUNNER, json.dumps({**cfg, "output_dir": str(run_out)}), str(run_out)],
                                       stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, ), log))
    # A node that fails leaves the other waiting at the rendezvous: stop both and show why.
    deadline = time.time() + 600
    while any(p.poll() is None for p, _ in nodes) and not any(p.poll() for p, _ in nodes) and time.time() < deadline:
        time.sleep(0.5)
    for p, log in nodes:
        if p.poll() is None:  # with its launcher's ranks, which torch starts in sessions of their own
            for q in [*psutil.Process(p.pid).children(recursive=True), psutil.Process(p.pid)]:
                q.kill()
        p.wait()
        log.close()
    outs = [(tmp_path / f"node{node}.log").read_text() for node in (0, 1)]
    for (p, _), out in zip(nodes, outs):
        assert p.returncode == 0, out[-3000:]
    assert "node result: done" in outs[0] and "node result: trained" in outs[1]
    final = run_out / "stage1_generated_math" / "final"
    meta = read_meta(final)
    assert (meta.distributed_type, meta.processes) == ("MULTI_CPU", 2)  # one run over both nodes, not two runs
    l1, l2 = losses(tmp_path / "one" / "stage1_generated_math" / "final"), losses(final)
    assert len(l1) == len(l2) > 3 and max(abs(a - b) / abs(a) for a, b in zip(l1, l2)) < 1e-5
    # the tokens of both nodes are counted (the forgetting curves' token axis)
    meta1 = read_meta(tmp_path / "one" / "stage1_generated_math" / "final")
    assert meta.real_tokens == meta1.real_tokens > 0
    assert (run_out / "done.json").exists() and (run_out / "eval" / "results.json").exists()


@pytest.mark.parametrize("auth_env,expected", [
    ({"RAY_AUTH_MODE": None}, "requires token authentication: set RAY_AUTH_MODE=token"),
    ({"RAY_AUTH_TOKEN": "0" * 64}, "refused this machine's Ray token"),
], ids=["no token sent", "wrong token"])
def test_a_cluster_that_wants_a_token_gets_a_clear_error(tmp_path, ray_cluster, auth_env, expected):
    """A cluster with token authentication (Ray's default since 2.59 once a token exists) and a
    driver that sends none, or the wrong one: exit 2 with what to set, before any run starts."""
    f = study_file(tmp_path, "auth", executor={"name": "ray", "address": ray_cluster})
    env = {**os.environ, "RAY_NUM_REDIS_GET_RETRIES": "2"}  # Ray retries a refused connection for 20 s by default
    for key, value in auth_env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    r = sftmix("study", "run", str(f), "--quiet", timeout=300, env=env)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "auth").glob("runs/*/stage*"))


# --- a real Slurm cluster (slurmctld + slurmd on this machine; no accounting database) ---

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = slurm_cluster.missing()
    if why:
        pytest.skip(why)
    with contextlib.ExitStack() as stack:
        try:
            conf = stack.enter_context(slurm_cluster.slurm_cluster(tmp_path_factory.mktemp("slurm")))
        except slurm_cluster.ClusterDidNotStart as e:  # the machine, not sftmix: say so loudly
            pytest.skip(f"a Slurm cluster could not be started on this machine: {e}")
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("SLURM_CONF", str(conf))
        mp.setenv("PATH", slurm_cluster.search_path())
        yield conf


def squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout.strip()


def wait_for(what: str, check, timeout: float = 180, proc=None, log: Path | None = None, story=None):
    """``check()``'s first true value within ``timeout``; else the test fails with the driver's log
    (and ``story()``, what else explains it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    said = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what}: not within {timeout:g} s (driver exit {proc.poll() if proc else None}):\n{said}"
                + (f"\n{story()}" if story else ""))


def job_story(conf: Path, job_id: str, jobs: Path) -> str:
    """What Slurm and the job said of one job, for a failure message: the controller's and the
    node daemon's log lines that name it, and the end of the job's own stderr (every attempt's)."""
    parts = []
    names = re.compile(rf"JobId={job_id}\b|JOB {job_id}\b|job {job_id}\b|StepId={job_id}\.|\[{job_id}\.")
    for name in ("slurmctld.log", "slurmd.log"):
        path = conf.parent / name
        lines = [line for line in path.read_text(errors="replace").splitlines() if names.search(line)] if path.exists() else []
        parts.append(f"--- {name}, lines naming job {job_id}:\n" + "\n".join(lines[-40:]))
    for err in sorted((jobs / job_id).glob("*_log.err")):
        parts.append(f"--- {err.name}, its end:\n" + err.read_text(errors="replace")[-2000:])
    return "\n".join(parts)


def test_slurm_runs_the_study_with_the_local_results(tmp_path, slurm, local_reference):
    f = study_file(tmp_path, "onslurm", executor="slurm")
    cmd = [sys.executable, "-m", "sftmix.cli", "study", "run", str(f), "--quiet"]
    check_same_results_and_trained_once(f, tmp_path / "onslurm", cmd, local_reference)
    jobs = [read_job(p.parent) for p in (tmp_path / "onslurm").glob("runs/*/job.json")]
    assert len(jobs) == 4 and all(j.executor == "slurm" for j in jobs)  # every run went through sbatch
    assert all(list((tmp_path / "onslurm" / "jobs" / j.job_id).glob("*_log.out")) for j in jobs)


def long_study(tmp: Path, name: str, executor: str, size: int = 1600) -> Path:
    """One run long enough (``size`` / 8 optimizer steps, 200 by default, a checkpoint every 10) to
    be interrupted mid-stage."""
    study = {
        "name": name, "output_dir": str(tmp / name), "executor": executor,
        "base": {"model": "tiny", "sources": {"generated_math": {"size": size}},
                 "strategy": {"name": "individual", "sources": ["generated_math"]},
                 "train": {**TINY_TRAIN, "save_steps": 10},
                 "eval": {"tasks": ["loss"]}, "heldout": {"sources": ["generated_math"], "samples": 8},
                 "curve": {"points": 1}},
        "resources": {"cpus": 1},
    }
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(study))
    return f


def slow_scontrol(folder: Path) -> dict:
    """An environment whose ``scontrol`` lingers after a requeue, as a loaded machine's may: Slurm
    then kills it while it is still running, since it is one of the requeued job's processes, and
    submitit's handler raises ``CalledProcessError`` (died with SIGTERM) into the training. Left to
    chance, that race failed this test once in CI; here it happens every time. The lingering is
    ``exec sleep``, so the one process Slurm kills is the one submitit waits on: with a shell
    around a child ``sleep``, Slurm's SIGTERM could reach the sleep first, the shell said
    "Terminated" and exited 0, and the requeue looked clean (a CI run failed that way)."""
    folder.mkdir()
    wrapper = folder / "scontrol"
    wrapper.write_text(f"#!/bin/sh\n{shutil.which('scontrol')} \"$@\" || exit $?\n"
                       '[ "$1" = requeue ] && exec sleep 30\nexit 0\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_a_preempted_slurm_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, slurm):
    """Preemption as submitit's own test hook sends it (SIGTERM, then USR2 to the job's step): the
    job checkpoints, requeues itself through ``scontrol requeue`` (which the requeue kills before it
    returns, see ``slow_scontrol``), runs again and resumes from the newest complete checkpoint; its
    result equals an uninterrupted run's."""
    ref = sftmix("study", "run", str(long_study(tmp_path, "ref", "local")), "--quiet", timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    root = tmp_path / "pre"
    log = tmp_path / "pre-driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sftmix.cli", "study", "run", str(long_study(tmp_path, "pre", "slurm"))],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=slow_scontrol(tmp_path / "bin"))
        try:
            wait_for("a complete checkpoint", lambda: [c for c in root.glob("runs/*/stage*/checkpoints/checkpoint-*")
                                                        if checkpoint_complete(c)], proc=proc, log=log)
            job_id = read_job(next(root.glob("runs/*/job.json")).parent).job_id
            # a failure says what Slurm and the job said too: the driver's log alone did not explain
            # the one time this test failed with the job "gone" instead of requeued
            story = functools.partial(job_story, slurm, job_id, root / "jobs")
            subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)
            subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
            # Slurm holds a requeued job until a begin time a few minutes away; start it now
            wait_for("the job requeued", lambda: squeue(job_id).startswith("PENDING"), proc=proc, log=log, story=story)
            # the first attempt's log, before the second attempt's output replaces it
            first_log = "".join(p.read_text(errors="replace") for p in (root / "jobs" / job_id).glob("*_log.err"))
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            assert proc.wait(timeout=600) == 0, log.read_text(errors="replace")[-3000:] + "\n" + story()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    meta = read_meta(next(root.glob("runs/*/stage*/final")))
    assert meta.resumed_from and Path(meta.resumed_from).name.startswith("checkpoint-"), meta.resumed_from
    resumed_at = int(Path(meta.resumed_from).name.split("-")[1])
    assert 0 < resumed_at < 200
    assert "this job is preempted" in first_log and f"JOB {job_id} ON" in first_log and "DUE TO JOB REQUEUE" in first_log, first_log[-2000:]
    assert "this attempt ends: the job was requeued" in first_log and "died with <Signals.SIGTERM" in first_log, first_log[-2000:]
    assert metrics(root / "results.sqlite") == pytest.approx(metrics(tmp_path / "ref" / "results.sqlite"), rel=2e-3)
    # the story a failure would print is not empty: Slurm's own lines about the job and its stderr
    told = story()
    assert re.search(rf"--- slurmctld.log, lines naming job {job_id}:\n.*JobId={job_id}\b", told), told[-3000:]
    assert re.search(rf"--- slurmd.log, lines naming job {job_id}:\n.*Launching batch job {job_id}\b", told), told[-3000:]
    assert f"--- {job_id}_0_log.err, its end:" in told, told[-3000:]


def test_a_slurm_job_killed_without_a_result_is_recorded_not_waited_for(tmp_path, slurm):
    """A job that dies before it can write anything (here SIGKILL, as the OOM killer would) is
    seen leaving the queue through squeue; submitit alone would wait for ever here, since it
    asks sacct and this cluster, like many, keeps no accounting database."""

    root = tmp_path / "killed"
    # 1,000 steps: 200 (5 s here) ended once before a kill sent at the first checkpoint landed, on
    # two loaded cores; the kill ends the run, so the length costs nothing when it lands
    f = long_study(tmp_path, "killed", "slurm", size=8000)
    log = tmp_path / "killed-driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sftmix.cli", "study", "run", str(f)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for("training under way", lambda: list(root.glob("runs/*/stage*/checkpoints/checkpoint-*")), proc=proc, log=log)
            job_id = read_job(next(root.glob("runs/*/job.json")).parent).job_id
            subprocess.run(["scancel", job_id, "--signal", "KILL"], check=True)
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    said = log.read_text(errors="replace")
    assert not list(root.glob("runs/*/done.json")), "the run finished before the kill landed: nothing was tested"
    assert rc == 2, said[-3000:]
    assert f"slurm job {job_id} left the queue" in said, said[-3000:]
    status, error = sqlite3.connect(root / "results.sqlite").execute("SELECT status, error FROM runs").fetchone()
    assert status == "failed" and "left the queue" in error
    st = sftmix("study", "status", str(f))
    assert "failed" in st.stdout and "left the queue" in st.stdout, st.stdout


@pytest.mark.parametrize("resources,expected,recorded", [
    ({"cpus": 1, "partition": "nope"}, "invalid partition", True),  # sbatch refuses the submitted run
    ({"cpus": 1, "slurm": {"fooo": 1}}, "resources.slurm: Unknown argument 'fooo'", False),  # refused before any run starts
], ids=["no such partition", "unknown slurm parameter"])
def test_slurm_refusals_are_clear_errors(tmp_path, slurm, resources, expected, recorded):
    """What the cluster refuses (sbatch's own words) or submitit does not know: exit 2, no traceback,
    nothing trained; a run the cluster refused is recorded as failed with the reason, and a study
    refused before any run started records none."""
    f = study_file(tmp_path, "refused", executor="slurm", resources=resources)
    r = sftmix("study", "run", str(f), "--quiet", timeout=300)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-2000:]
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "refused").glob("runs/*/stage*"))
    db = tmp_path / "refused" / "results.sqlite"
    assert db.exists()  # the store is opened before the executor
    rows = sqlite3.connect(db).execute("SELECT status, error FROM runs").fetchall()
    if recorded:
        assert rows and all(status == "failed" and expected in error for status, error in rows), rows
    else:
        assert rows == []


def test_every_executor_the_config_accepts_is_registered_and_offered():
    names = set(get_args(ExecutorConfig.model_fields["name"].annotation))
    assert names == set(EXECUTORS)
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "study", "run", "--help"], capture_output=True, text=True)
    assert all(n in r.stdout for n in names)
