"""Running a study: runs in order; a done run is skipped, a half-finished one resumes, a failed
one is recorded with its error and the study goes on."""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path

from sftmix.config import load_config
from sftmix.study.grid import PlannedRun, StudyConfig, expand
from sftmix.study.store import Store


def study_dir(study: StudyConfig, profile: str | None) -> Path:
    base = Path(study.output_dir or Path("studies") / study.name)
    return base / profile if profile else base


def load_study(path: str, profile: str | None = None) -> tuple[StudyConfig, list[PlannedRun]]:
    study = load_config(path, StudyConfig)
    return study, expand(study, profile, where=str(path))


def flatten_metrics(tasks: dict) -> list[tuple[str, str, float]]:
    out = []
    for task, m in tasks.items():
        if task == "loss":
            out += [("loss", src, float(v["loss"])) for src, v in m.items() if isinstance(v, dict)]
            continue
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((task, k, float(v)))
    return out


def per_item_samples(eval_dir: Path, tasks: dict) -> list[tuple]:
    """(task, metric, item, value, weight) for every item behind a headline metric, read from the
    evaluation's ``samples_<task>.jsonl``: held-out loss as (summed token loss, tokens), GSM8K
    accuracy and HumanEval pass@1 as 0/100 per problem (mean over samples), MT-Bench as the score
    of each valid judgment."""
    from sftmix.io import read_jsonl

    out: list[tuple] = []
    for task in tasks:
        path = eval_dir / f"samples_{task}.jsonl"
        if not path.exists():
            continue
        rows = read_jsonl(path)
        if task == "loss":
            out += [("loss", r["source"], r["id"], r["loss_sum"], r["tokens"]) for r in rows if "loss_sum" in r]
        elif task == "gsm8k":
            out += [("gsm8k", "accuracy", str(r.get("item", i)), 100.0 * bool(r["correct"]), 1.0) for i, r in enumerate(rows)]
        elif task == "humaneval":
            per: dict[str, list] = {}
            for r in rows:
                per.setdefault(r["task_id"], []).append(bool(r["passed"]))
            out += [("humaneval", "pass@1", t, 100.0 * sum(v) / len(v), 1.0) for t, v in per.items()]
        elif task == "mtbench":
            out += [("mtbench", "score", f"{r['question_id']}:{r['turn']}:{r.get('repeat', 0)}", float(r["score"]), 1.0)
                    for r in rows if r.get("score", -1) != -1]
    return out


def curve_rows(run_out: Path) -> list[tuple]:
    """(stage, stage_index, step, run_step, run_tokens, ability, loss) from the stages' meta.json."""
    out = []
    for meta_path in sorted(run_out.glob("stage*/final/meta.json")):
        meta = json.loads(meta_path.read_text())
        index = int(meta_path.parent.parent.name[len("stage"):].split("_")[0])
        for pt in meta.get("curve", []):
            out += [(pt["stage"], index, pt["step"], pt["run_step"], pt["run_tokens"], ability, loss)
                    for ability, loss in pt["loss"].items()]
    return out


def _train_tokens_and_params(run_out: Path) -> tuple[float, float]:
    """Real tokens trained over all stages (from their meta.json) and the model's parameter count."""
    from safetensors import safe_open

    tokens, params = 0.0, 0.0
    for meta in sorted(run_out.glob("stage*/final/meta.json")):
        tokens += float(json.loads(meta.read_text()).get("real_tokens", 0))
        if not params:
            with safe_open(str(meta.parent / "model.safetensors"), "pt") as f:
                params = float(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    return tokens, params


def run_study(study: StudyConfig, runs: list[PlannedRun], profile: str | None = None, progress: bool = True) -> Store:
    from sftmix.eval.runner import evaluate
    from sftmix.train.strategies import run_strategy, training_ids

    out = study_dir(study, profile)
    store = Store(out / "results.sqlite")
    for i, run in enumerate(runs):
        if store.status(run.id) == "done":
            store.relabel(run.id, run.label, run.point)  # labels follow the study file
            continue
        print(f"[{i + 1}/{len(runs)}] {run.label} ({run.id})", flush=True)
        cfg = run.config.model_copy(update={"output_dir": str(out / "runs" / run.id)})
        store.start(run.id, run.label, run.point, cfg.model_dump())
        try:
            final = run_strategy(cfg, progress=progress)
            eval_dir = Path(cfg.output_dir) / "eval"
            doc = evaluate(str(final), cfg.eval, eval_dir, cfg.template, cfg.data_dir, cfg.sources, cfg.seed,
                           training_ids(cfg), progress=progress)
            tokens, params = _train_tokens_and_params(Path(cfg.output_dir))
            store.finish(run.id, str(final), str(eval_dir), flatten_metrics(doc["tasks"]), tokens, params,
                         per_item_samples(eval_dir, doc["tasks"]), curve_rows(Path(cfg.output_dir)))
        except Exception as e:  # noqa: BLE001 - a failed run is recorded and the study goes on
            store.fail(run.id, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}")
            print(f"  failed: {type(e).__name__}: {e}", flush=True)
    return store


def status_rows(store: Store | None, runs: list[PlannedRun]) -> list[list[str]]:
    by_id = {r["id"]: r for r in store.runs()} if store else {}
    rows = []
    for r in runs:
        row = by_id.get(r.id)
        state = row["status"] if row else "pending"
        rows.append([r.id, r.label, state, (row or {}).get("error", "") and row["error"].splitlines()[0][:80]])
    return rows
