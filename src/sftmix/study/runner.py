"""Running a study: the driver submits runs to an executor (local, Ray, Slurm), and alone writes
the results store, from the files each run leaves in its folder (``sftmix.study.worker``).

A done run is ingested once and never started again; a half-finished one resumes; one still
running under an engine (its lock is held, or its Slurm job is queued) is waited for, not
started twice; a failed one is recorded with its error, the study goes on, and the next
``study run`` retries it."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from sftmix import layout
from sftmix.config import StudyConfig, load_config
from sftmix.errors import SftmixError
from sftmix.eval import contamination
from sftmix.io import stable_hash
from sftmix import runlock
from sftmix.study import worker
from sftmix.study.executors import make_executor, queued_job, read_job
from sftmix.study.grid import PlannedRun, check_metrics, expand, read_decisions, write_decisions
from sftmix.study.ingest import contamination_rows, read_run
from sftmix.study.store import Store
from sftmix.train.strategies import trained_view


def study_dir(study: StudyConfig, profile: str | None) -> Path:
    """A study's folder (per profile)."""
    return layout.study_dir(study.name, study.output_dir, profile)


def load_study(path: str, profile: str | None = None, notes: list[str] | None = None,
               read_only: bool = False) -> tuple[StudyConfig, list[PlannedRun]]:
    """The study file and its runs; ``notes`` receives where fallback sources took their data.

    Which sources fall back is decided by loading them, and recorded in the study folder
    (``layout.fallbacks_file``); ``read_only`` commands (status, report, fit, propose, export)
    take the recorded decisions and so load no data pool. ``study run`` decides afresh."""
    study = load_config(path, StudyConfig)
    record = layout.fallbacks_file(study_dir(study, profile))
    decided = read_decisions(record) if read_only else {}
    runs = expand(study, profile, where=str(path), notes=notes, decided=decided)
    check_metrics(study, runs, str(path))
    study._fallback_decisions = decided  # recorded by run_study, once the study folder is known to be usable
    return study, runs


def run_study(study: StudyConfig, runs: list[PlannedRun], profile: str | None = None, progress: bool = True,
              executor: str | None = None, address: str | None = None) -> Store:
    """Run every run not yet done with the study's executor (or ``executor``), ingesting each
    run's results into ``results.sqlite`` as it ends."""
    out = study_dir(study, profile).resolve()  # workers may run in another folder or on another machine
    store = Store(layout.store(out))
    if study._fallback_decisions:
        write_decisions(layout.fallbacks_file(out), study._fallback_decisions)
    ecfg = study.executor.model_copy(update={k: v for k, v in {"name": executor, "address": address}.items() if v})
    ex = make_executor(ecfg, study.resources, out, progress)
    todo = []
    for run in runs:
        if ingest(store, run, out):
            continue
        todo.append(run)
    if not todo:
        return store
    ex.check()  # bad resources or an unreachable cluster fail here, before any run starts
    at_once = "all at once" if ex.parallel >= len(todo) > 1 else f"{ex.parallel} at a time"
    print(f"{len(todo)} of {len(runs)} runs to do on {ex.describe()}, {at_once}", flush=True)
    trained = {r.id: stable_hash(trained_view(r.config)) for r in todo}  # runs of one training share it
    waiting = {}  # runs another worker (or a queued job) already has: wait for their files
    handles = []
    queue = list(todo)
    started = len(runs) - len(todo)
    last_look = float("-inf")

    def held_elsewhere(run: PlannedRun) -> None:
        print(f"  {run.label} ({run.id}) is already running elsewhere; waiting for it", flush=True)
        waiting[run.id] = run

    try:
        while queue or handles or waiting:
            while queue and len(handles) < ex.parallel:
                # a run whose training is a run's in flight, here or elsewhere (only its evaluation
                # differs), waits for that one, then takes its stages (adopt_training) instead of
                # training them again
                training = {trained[h.run_id] for h in handles} | {trained[rid] for rid in waiting}
                run = next((r for r in queue if trained[r.id] not in training), None)
                if run is None:
                    break
                queue.remove(run)
                run_out = run_path(out, run)
                if runlock.is_running(run_out) or queued_job(run_out):
                    held_elsewhere(run)
                    continue
                started += 1
                print(f"[{started}/{len(runs)}] {run.label} ({run.id})", flush=True)
                store.start(run.id, run.label, run.point, run.config.model_dump())
                (run_out / worker.ERROR).unlink(missing_ok=True)
                try:
                    handles.append(ex.submit(run.id, run.config.model_dump(mode="json"), run_out))
                except SftmixError as e:  # the engine refused the run: every other run would be refused alike
                    store.fail(run.id, str(e))
                    raise
            for h, engine_error in ex.finished(handles, timeout=5.0) if handles else []:
                handles.remove(h)
                run = next(r for r in todo if r.id == h.run_id)
                if ingest(store, run, out, engine_error) or store.status(run.id) == "failed":
                    continue
                if engine_error is None and runlock.is_running(run_path(out, run)):
                    # another driver's worker took the run between this driver's look and its own
                    # worker's: not a failure, a run to wait for like any run held elsewhere
                    held_elsewhere(run)
                    continue
                if engine_error is None and ingest(store, run, out):  # that worker ended since the first look
                    continue
                # neither done.json nor error.json: only then is the cause unknown here
                store.fail(run.id, engine_error or "the run ended without a result (see its folder)")
            # runs held elsewhere are looked at every WAIT_POLL_S: a queued Slurm job costs a squeue call
            if waiting and time.monotonic() - last_look >= WAIT_POLL_S:
                last_look = time.monotonic()
                for rid, run in list(waiting.items()):
                    run_out = run_path(out, run)
                    if not runlock.is_running(run_out) and not queued_job(run_out):
                        del waiting[rid]
                        if not ingest(store, run, out):
                            queue.append(run)  # its worker died without a result: run it here
            if waiting and not handles:  # nothing of ours in flight: what is queued waits for them
                time.sleep(1.0)
    finally:
        ex.close()
    return store


WAIT_POLL_S = 10.0


def run_path(out: Path, run: PlannedRun) -> Path:
    """A study run's folder."""
    return layout.study_run(out, run.id)


def ingest(store: Store, run: PlannedRun, out: Path, engine_error: str | None = None) -> bool:
    """Record a run whose folder says it ended; True when it is done (now or before)."""
    if store.status(run.id) == "done":
        store.relabel(run.id, run.label, run.point)  # labels follow the study file
        backfill_contamination(store, run.id)
        return True
    run_out = run_path(out, run)
    if (run_out / layout.DONE).exists():
        record = read_run(run.id, run_out)  # a malformed file in the folder is an error naming it
        if store.status(run.id) is None:
            store.start(run.id, run.label, run.point, run.config.model_dump())
        store.finish(run.id, record.checkpoint, record.eval_dir, record.metrics, record.train_tokens, record.params,
                     record.samples, record.curves, record.data, record.engine, record.contamination)
        return True
    err = worker.read_error(run_out)
    if err is not None:
        if store.status(run.id) is None:
            store.start(run.id, run.label, run.point, run.config.model_dump())
        store.fail(run.id, f"{err.error}\n{err.traceback[-2000:]}")
        print(f"  failed: {err.error[:300]}", flush=True)
    elif engine_error:
        if store.status(run.id) is None:
            store.start(run.id, run.label, run.point, run.config.model_dump())
        store.fail(run.id, engine_error)
        print(f"  failed: {engine_error[:300]}", flush=True)
    return False


def backfill_done(store: Store, runs: list[PlannedRun]) -> None:
    """Every done run of ``runs`` that has no contamination rows gets them (``backfill_contamination``):
    a report or fit of a study whose runs an older sftmix ingested shows their clean-item scores
    without a ``study run`` first."""
    done = {r.id for r in store.runs() if r.status == "done"}
    try:
        for run in runs:
            if run.id in done:
                backfill_contamination(store, run.id)
    except sqlite3.OperationalError as e:  # a store this user may read but not write: reported without the rows
        print(f"warning: {store.path}: the contamination rows of its earlier runs were not added ({e}); "
              "the report shows none for them", file=sys.stderr)


def backfill_contamination(store: Store, run_id: str) -> None:
    """A run ingested before the store kept contamination rows (version 4) gets them from its
    evaluation folder, where it still has one."""
    if store.has_contamination(run_id):  # the usual case: one query, no file read
        return
    run = store.run(run_id)
    if run is None or not run.eval_dir or not (Path(run.eval_dir) / contamination.FILE).exists():
        return
    try:
        store.keep_contamination(run_id, contamination_rows(run_id, Path(run.eval_dir)))
    except SftmixError as e:  # a damaged record of a done run: its results stand without it
        print(f"warning: {e}", file=sys.stderr)


def status_rows(store: Store | None, runs: list[PlannedRun], out: Path | None = None) -> list[list[str]]:
    """[id, label, state, detail] per run: done / running (on which executor) / queued / failed /
    pending, from the store and, where given, the run folders."""
    by_id = {r.id: r for r in store.runs()} if store else {}
    rows = []
    for r in runs:
        stored = by_id.get(r.id)
        state, detail = (stored.status, stored.first_error_line[:300]) if stored else ("pending", "")
        if out is not None and state != "done":
            run_out = run_path(out, r)
            job = read_job(run_out)
            where = f"{job.executor} job {job.job_id}" if job else "local"
            if (run_out / worker.DONE).exists():
                state, detail = "done", "finished; ingested at the next `study run`"
            elif runlock.is_running(run_out):
                holder = runlock.holder(run_out)
                on = f"host {holder.host}, pid {holder.pid}" if holder else "a worker"
                state, detail = "running", f"on {where + ', ' if job else ''}{on}"
                twin = runlock.claimed_by(layout.training_claim(run_out, stable_hash(trained_view(r.config))))
                if twin is not None and twin.run not in (None, r.id):
                    detail += f"; waiting for run {twin.run}, which trains the same stages"
            elif q := queued_job(run_out):
                state, detail = "queued", f"{where} ({q.state})"
            elif err := worker.read_error(run_out):
                state = "failed"
                detail = err.error.splitlines()[0][:300]
            elif state == "running":
                state, detail = "interrupted", "its worker is gone; `study run` resumes it"
        rows.append([r.id, r.label, state, detail])
    return rows
