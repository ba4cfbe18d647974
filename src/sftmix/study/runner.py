"""Running a study: the driver submits runs to an executor (local, Ray, Slurm), and alone writes
the results store, from the files each run leaves in its folder (``sftmix.study.worker``).

A done run is ingested once and never started again; a half-finished one resumes; one still
running under an engine (its lock is held, or its Slurm job is queued) is waited for, not
started twice; a failed one is recorded with its error, the study goes on, and the next
``study run`` retries it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sftmix import layout
from sftmix.config import StudyConfig, load_config
from sftmix.errors import SftmixError
from sftmix.eval.tasks import BUILTIN, stored_values
from sftmix.io import read_jsonl
from sftmix.study import worker
from sftmix.study.executors import make_executor, queued_job
from sftmix.study.grid import PlannedRun, check_metrics, expand
from sftmix.study.store import Store


def study_dir(study: StudyConfig, profile: str | None) -> Path:
    return layout.study_dir(study.name, study.output_dir, profile)


def load_study(path: str, profile: str | None = None, notes: list[str] | None = None) -> tuple[StudyConfig, list[PlannedRun]]:
    """The study file and its runs; ``notes`` receives where fallback sources took their data."""
    study = load_config(path, StudyConfig)
    runs = expand(study, profile, where=str(path), notes=notes)
    check_metrics(study, runs, str(path))
    return study, runs


def flatten_metrics(results: dict) -> list[tuple[str, str, float]]:
    """(task, metric, value) for the store, as each task's registry entry gives them (a user
    task's: every number of its metrics)."""
    return [(task, k, v) for task, m in results.items() for k, v in stored_values(task, m)]


def per_item_samples(eval_dir: Path, tasks: dict) -> list[tuple]:
    """(task, metric, item, value, weight) for every item behind a headline metric: the
    evaluation's ``items_<task>.jsonl`` (written by the task registry's ``item_rows``: held-out
    loss as (summed token loss, tokens), GSM8K accuracy and HumanEval pass@1 as 0/100 per problem,
    MT-Bench as the score of each valid judgment, a user task as its rows say). Evaluations made
    before those files existed are read from ``samples_<task>.jsonl`` by the built-in tasks."""
    out: list[tuple] = []
    for task in tasks:
        items, samples = eval_dir / f"items_{task}.jsonl", eval_dir / f"samples_{task}.jsonl"
        if items.exists():
            out += [(task, r["metric"], r["item"], r["value"], r["weight"]) for r in read_jsonl(items)]
        elif samples.exists() and task in BUILTIN:
            out += [(task, *row) for row in BUILTIN[task].item_rows(read_jsonl(samples))]
    return out


def curve_rows(run_out: Path) -> list[tuple]:
    """(stage, stage_index, step, run_step, run_tokens, ability, loss) from the stages' meta.json."""
    out = []
    for meta_path in layout.stage_metas(run_out):
        meta = json.loads(meta_path.read_text())
        index = layout.stage_index(meta_path.parent.parent)
        for pt in meta.get("curve", []):
            out += [(pt["stage"], index, pt["step"], pt["run_step"], pt["run_tokens"], ability, loss)
                    for ability, loss in pt["loss"].items()]
    return out


def data_rows(run_out: Path) -> list[tuple]:
    """(stage_index, stage, source, ability, replay, examples, tokens, pool_size, origin) per part
    of every stage's mixture, from the stages' manifests (replayed parts have replay = 1; tokens
    are the manifest's approximate count, characters / 4)."""
    out = []
    for mpath in layout.stage_manifests(run_out):
        stage = mpath.parent.parent.name
        index = layout.stage_index(mpath.parent.parent)
        for part in json.loads(mpath.read_text())["parts"]:
            origin = part.get("origin") or {}
            out.append((index, stage, part["source"], part["ability"], int(bool(part.get("replay_of"))), float(part["count"]),
                        float(part.get("approx_tokens", 0)), float(part.get("pool_size", 0)),
                        origin.get("kind", "") if isinstance(origin, dict) else str(origin)))
    return out


def _train_tokens_and_params(run_out: Path) -> tuple[float, float]:
    """Real tokens trained over all stages (from their meta.json) and the model's parameter count
    (from its weight files' headers: one file or several shards)."""
    tokens, params = 0.0, 0.0
    for meta in layout.stage_metas(run_out):
        tokens += float(json.loads(meta.read_text()).get("real_tokens", 0))
        if not params:
            params = layout.param_count(meta.parent)
    return tokens, params


def run_study(study: StudyConfig, runs: list[PlannedRun], profile: str | None = None, progress: bool = True,
              executor: str | None = None, address: str | None = None) -> Store:
    """Run every run not yet done with the study's executor (or ``executor``), ingesting each
    run's results into ``results.sqlite`` as it ends."""
    out = study_dir(study, profile).resolve()  # workers may run in another folder or on another machine
    store = Store(layout.store(out))
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
    waiting = {}  # runs another worker (or a queued job) already has: wait for their files
    handles = []
    queue = list(todo)
    started = len(runs) - len(todo)
    last_look = float("-inf")
    try:
        while queue or handles or waiting:
            while queue and len(handles) < ex.parallel:
                run = queue.pop(0)
                run_out = run_path(out, run)
                if worker.is_running(run_out) or queued_job(run_out):
                    print(f"  {run.label} ({run.id}) is already running elsewhere; waiting for it", flush=True)
                    waiting[run.id] = run
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
                if not ingest(store, run, out, engine_error) and store.status(run.id) != "failed":
                    # neither done.json nor error.json: only then is the cause unknown here
                    store.fail(run.id, engine_error or "the run ended without a result (see its folder)")
            # runs held elsewhere are looked at every WAIT_POLL_S: a queued Slurm job costs a squeue call
            if waiting and time.monotonic() - last_look >= WAIT_POLL_S:
                last_look = time.monotonic()
                for rid, run in list(waiting.items()):
                    run_out = run_path(out, run)
                    if not worker.is_running(run_out) and not queued_job(run_out):
                        del waiting[rid]
                        if not ingest(store, run, out):
                            queue.append(run)  # its worker died without a result: run it here
            if waiting and not handles and not queue:
                time.sleep(1.0)
    finally:
        ex.close()
    return store


WAIT_POLL_S = 10.0


def run_path(out: Path, run: PlannedRun) -> Path:
    return layout.study_run(out, run.id)


def ingest(store: Store, run: PlannedRun, out: Path, engine_error: str | None = None) -> bool:
    """Record a run whose folder says it ended; True when it is done (now or before)."""
    if store.status(run.id) == "done":
        store.relabel(run.id, run.label, run.point)  # labels follow the study file
        return True
    run_out = run_path(out, run)
    done, error = run_out / worker.DONE, run_out / worker.ERROR
    if done.exists():
        info = json.loads(done.read_text())
        eval_dir = Path(info["eval_dir"])
        doc = json.loads((eval_dir / "results.json").read_text())
        tokens, params = _train_tokens_and_params(run_out)
        if store.status(run.id) is None:
            store.start(run.id, run.label, run.point, run.config.model_dump())
        store.finish(run.id, info["checkpoint"], str(eval_dir), flatten_metrics(doc["tasks"]), tokens, params,
                     per_item_samples(eval_dir, doc["tasks"]), curve_rows(run_out), data_rows(run_out))
        return True
    if error.exists():
        err = json.loads(error.read_text())
        if store.status(run.id) is None:
            store.start(run.id, run.label, run.point, run.config.model_dump())
        store.fail(run.id, f"{err['error']}\n{err.get('traceback', '')[-2000:]}")
        print(f"  failed: {err['error'][:300]}", flush=True)
    elif engine_error:
        if store.status(run.id) is None:
            store.start(run.id, run.label, run.point, run.config.model_dump())
        store.fail(run.id, engine_error)
        print(f"  failed: {engine_error[:300]}", flush=True)
    return False


def status_rows(store: Store | None, runs: list[PlannedRun], out: Path | None = None) -> list[list[str]]:
    """[id, label, state, detail] per run: done / running (on which executor) / queued / failed /
    pending, from the store and, where given, the run folders."""
    by_id = {r["id"]: r for r in store.runs()} if store else {}
    rows = []
    for r in runs:
        row = by_id.get(r.id) or {}
        state, detail = row.get("status") or "pending", (row.get("error") or "").splitlines()[0][:300] if row.get("error") else ""
        if out is not None and state != "done":
            run_out = run_path(out, r)
            job = json.loads((run_out / worker.JOB).read_text()) if (run_out / worker.JOB).exists() else None
            where = f"{job['executor']} job {job['job_id']}" if job else "local"
            if (run_out / worker.DONE).exists():
                state, detail = "done", "finished; ingested at the next `study run`"
            elif worker.is_running(run_out):
                holder = worker.holder(run_out)
                on = f"host {holder['host']}, pid {holder['pid']}" if holder else "a worker"
                state, detail = "running", f"on {where + ', ' if job else ''}{on}"
            elif q := queued_job(run_out):
                state, detail = "queued", f"{where} ({q['state']})"
            elif (run_out / worker.ERROR).exists():
                state = "failed"
                detail = json.loads((run_out / worker.ERROR).read_text())["error"].splitlines()[0][:300]
            elif state == "running":
                state, detail = "interrupted", "its worker is gone; `study run` resumes it"
        rows.append([r.id, r.label, state, detail])
    return rows
