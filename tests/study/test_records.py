"""Contracts of the typed records a run folder is read through (``sftmix.study.ingest``): each is
written, read back, and a malformed one is refused with its file and field named."""

import json

import pytest

from sftmix import layout
from sftmix.data.compose import Manifest
from sftmix.errors import SftmixError
from sftmix.eval.runner import EvalResults, Item, TaskDone, items_file, read_items
from sftmix.io import read_record, write_jsonl
from sftmix.study.executors.slurm import JobRecord
from sftmix.study.ingest import curve_rows, data_rows, metric_rows, sample_rows
from sftmix.study.store import CurvePoint, DataPart, Sample
from sftmix.runlock import LockHolder
from sftmix.study.worker import DoneRecord, ErrorRecord
from sftmix.supervised import SavedHeldout
from sftmix.train.meta import StageMeta

GOOD = {
    DoneRecord: ({"checkpoint": "/r/stage1_x/final", "eval_dir": "/r/eval", "finished": 1.5}, {"checkpoint": "/r"}, "eval_dir"),
    ErrorRecord: ({"error": "ValueError: no", "traceback": "Traceback ..."}, {"traceback": "x"}, "error"),
    LockHolder: ({"pid": 12, "host": "n1", "since": 1.5}, {"pid": "twelve", "host": "n1", "since": 1.5}, "pid"),
    JobRecord: ({"executor": "slurm", "job_id": "5", "folder": "jobs", "submitted": 1.5}, {"executor": "slurm", "folder": "jobs",
                                                                                         "submitted": 1.5}, "job_id"),
    StageMeta: ({"stage": "stage1_x", "real_tokens": 120,
                 "curve": [{"stage": "1_x", "step": 0, "run_step": 0, "run_tokens": 0, "loss": {"math": 2.5}}]},
                {"stage": "stage1_x", "curve": [{"stage": "1_x", "step": "first", "run_step": 0, "run_tokens": 0, "loss": {}}]},
                "curve.0.step"),
    Manifest: ({"name": "m", "parts": [{"source": "gsm8k", "ability": "math", "count": 2, "ids": ["a", "b"], "pool_size": 10}]},
               {"name": "m", "parts": [{"source": "gsm8k", "count": 2, "ids": []}]}, "parts.0.ability"),
    EvalResults: ({"tasks": {"loss": {"gsm8k": {"loss": 1.0, "tokens": 4, "samples": 2, "heldout": "test split"}}}}, {"task": {}}, "tasks"),
    SavedHeldout: ({"key": "k1", "results": {"gsm8k": {"loss": 1.5, "tokens": 4, "samples": 2, "per_sample": [["a", 2.0, 1], ["b", 4.0, 3]]}}},
                   {"key": "k1", "results": {"gsm8k": {"loss": 1.5, "tokens": 4, "samples": 2, "per_sample": [["a", 2.0]]}}},
                   "results.gsm8k.per_sample.0"),
}


@pytest.mark.parametrize("model", list(GOOD), ids=[m.__name__ for m in GOOD])
def test_a_record_reads_back_and_a_malformed_one_is_named(model, tmp_path):
    good, bad, field = GOOD[model]
    p = tmp_path / "good.json"
    p.write_text(json.dumps(good))
    rec = read_record(p, model)
    assert json.loads(rec.model_dump_json(exclude_unset=True)) == json.loads(json.dumps(good))
    q = tmp_path / "bad.json"
    q.write_text(json.dumps(bad))
    article = "an" if model in (ErrorRecord, EvalResults) else "a"
    with pytest.raises(SftmixError, match=f"bad.json: not {article} {model.__name__} \\({field}"):
        read_record(q, model)
    q.write_text("{cut")
    with pytest.raises(SftmixError, match="bad.json: not readable JSON"):
        read_record(q, model)
    with pytest.raises(SftmixError, match="gone.json: missing"):
        read_record(tmp_path / "gone.json", model)


METRICS = {
    "gsm8k": {"accuracy": 50.0, "flexible_accuracy": 75.0, "invalid_rate": 0.0, "n": 4, "wall_s": 2.5, "tokens_processed": 900,
              "engine": {"backend": "hf", "engine": "transformers 5", "dtype": "bfloat16"}},
    "humaneval": {"pass@1": 25.0, "pass@1_salvaged": 50.0, "pass@1_verbatim": 25.0, "n_problems": 4, "isolation": "bwrap",
                  "proxy_fallback_problems": 0, "proxy_fallback_task_ids": [], "wrapper": "complete", "wall_s": 3.0},
    "mtbench": {"score": 6.5, "score_sd": 0.0, "turn1": 7.0, "turn2": 6.0, "failed_judgments": 1, "n_judgments": 5,
                "per_category": {"math": None, "writing": 6.5}, "repeats": 1, "score_per_repeat": [6.5], "judge_model": "gpt-4",
                "judge_base_url": None, "judge_stats": {"requests": 5}},
    "loss": {"gsm8k": {"loss": 1.25, "tokens": 40, "samples": 2, "heldout": "test split", "overlap_with_training": 0}, "wall_s": 1.0},
    "sql": {"accuracy": 12.5, "note": "a user task's own values are kept as returned", "wall_s": 0.5},
}


def test_each_task_s_metrics_are_read_as_its_type_and_written_back_under_their_own_names(tmp_path):
    """``results.json`` keeps a task's metrics under the names the task gives them (``pass@1``);
    a built-in's are read as its type and checked field by field, a user task's kept as returned;
    the store's rows are the numbers the report reads (the held-out loss: one per source)."""
    p = tmp_path / "results.json"
    p.write_text(json.dumps({"tasks": METRICS}))
    doc = read_record(p, EvalResults)
    assert json.loads(doc.model_dump_json(exclude_unset=True))["tasks"] == METRICS
    assert doc.tasks["humaneval"].pass_at_1 == 25.0 and doc.tasks["gsm8k"].engine.describe() == "hf: transformers 5, bfloat16"
    assert doc.tasks["loss"].per_source["gsm8k"].loss == 1.25 and doc.tasks["mtbench"].per_category["math"] is None
    assert doc.tasks["sql"].own() == {"accuracy": 12.5, "note": "a user task's own values are kept as returned"}
    rows = {(m.task, m.metric): m.value for m in metric_rows("r", doc.tasks)}
    assert rows[("gsm8k", "accuracy")] == 50.0 and rows[("gsm8k", "tokens_processed")] == 900.0
    assert rows[("humaneval", "pass@1")] == 25.0 and ("humaneval", "pass_at_1") not in rows
    assert [k for k in rows if k[0] == "loss"] == [("loss", "gsm8k")] and rows[("loss", "gsm8k")] == 1.25
    assert ("mtbench", "per_category") not in rows and rows[("sql", "accuracy")] == 12.5 and ("sql", "note") not in rows
    assert doc.tasks["gsm8k"].headline(()) == {"accuracy": 50.0, "flexible_accuracy": 75.0, "invalid_rate": 0.0, "n": 4}
    assert doc.tasks["humaneval"].headline(()) == {"pass@1": 25.0, "pass@1_salvaged": 50.0, "pass@1_verbatim": 25.0,
                                                   "n_problems": 4, "isolation": "bwrap"}
    assert doc.tasks["sql"].headline({"accuracy": "higher"}) == {"accuracy": 12.5}
    for task, field, bad in (("gsm8k", "accuracy", None), ("humaneval", "pass@1", None), ("mtbench", "score_sd", "high"),
                             ("loss", "gsm8k.tokens", None)):
        m = json.loads(json.dumps(METRICS[task]))
        *path, last = field.split(".") if task == "loss" else [field]
        inner = m[path[0]] if path else m
        inner.pop(last) if bad is None else inner.update({last: bad})
        p.write_text(json.dumps({"tasks": {**METRICS, task: m}}))
        with pytest.raises(SftmixError, match=rf"results.json: not an EvalResults \(tasks\.{task}\.{field}: "):
            read_record(p, EvalResults)
    # a file without the secondary numbers (an earlier evaluation's) reads, with None for them
    older = {"humaneval": {k: v for k, v in METRICS["humaneval"].items() if not k.startswith("pass@1_")},
             "gsm8k": {k: METRICS["gsm8k"][k] for k in ("accuracy", "n")}}
    p.write_text(json.dumps({"tasks": older}))
    doc = read_record(p, EvalResults)
    assert doc.tasks["humaneval"].pass_at_1_verbatim is None and doc.tasks["gsm8k"].flexible_accuracy is None
    assert doc.tasks["humaneval"].headline(()) == {"pass@1": 25.0, "n_problems": 4, "isolation": "bwrap"}
    assert {m.metric for m in metric_rows("r", doc.tasks)} == {"pass@1", "n_problems", "proxy_fallback_problems", "wall_s",
                                                              "accuracy", "n"}
    p.write_text(json.dumps({"spec": "gsm8k", "key": "k", "metrics": {**METRICS["gsm8k"], "n": "four"}}))
    with pytest.raises(SftmixError, match=r"not a TaskDone \(metrics\.n: "):
        read_record(p, TaskDone)


def test_rows_come_from_the_stages_in_training_order(tmp_path):
    for i, name in ((2, "general"), (10, "late"), (1, "specialised")):
        stage = layout.stage_dir(tmp_path, i, name)
        layout.final_dir(stage).mkdir(parents=True)
        layout.data_dir(stage).mkdir()
        layout.meta(layout.final_dir(stage)).write_text(json.dumps(
            {"stage": stage.name, "curve": [{"stage": name, "step": 4, "run_step": 4 * i, "run_tokens": 10.0 * i, "loss": {"math": 1.0 / i}}]}))
        layout.manifest(layout.data_dir(stage)).write_text(json.dumps(
            {"name": name, "parts": [{"source": "gsm8k", "ability": "math", "count": i, "ids": [], "approx_tokens": 7, "pool_size": 9,
                        "origin": {"kind": "generated"}, **({"replay_of": "specialised"} if i == 2 else {})}]}))
    assert curve_rows("r", tmp_path) == [CurvePoint("r", "specialised", 1, 4, 4, 10.0, "math", 1.0),
                                         CurvePoint("r", "general", 2, 4, 8, 20.0, "math", 0.5),
                                         CurvePoint("r", "late", 10, 4, 40, 100.0, "math", 0.1)]
    assert data_rows("r", tmp_path)[1] == DataPart("r", 2, "stage2_general", "gsm8k", "math", 1, 2.0, 7.0, 9.0, "generated")
    assert [d.stage_index for d in data_rows("r", tmp_path)] == [1, 2, 10]


def test_an_evaluation_s_items_read_back_and_a_bad_line_is_named(tmp_path):
    """``items_<task>.jsonl`` is written and read as ``Item`` lines; the store's samples come from
    them, and a malformed line stops the ingest with its file and line number."""
    items = [Item(metric="pass@1", item="HumanEval/0", value=100.0, weight=1.0), Item(metric="pass@1", item="HumanEval/1", value=0, weight=1)]
    write_jsonl(items_file(tmp_path, "humaneval"), [i.model_dump() for i in items])
    assert read_items(tmp_path, "humaneval") == items
    assert sample_rows("r", tmp_path, {"humaneval": {}}) == [Sample("r", "humaneval", "pass@1", "HumanEval/0", 100.0, 1.0),
                                                            Sample("r", "humaneval", "pass@1", "HumanEval/1", 0.0, 1.0)]
    with items_file(tmp_path, "humaneval").open("a") as f:
        f.write("\n" + json.dumps({"metric": "pass@1", "item": "HumanEval/2", "value": "passed", "weight": 1}) + "\n")
    with pytest.raises(SftmixError, match=r"items_humaneval.jsonl:4: not an Item \(value: "):
        sample_rows("r", tmp_path, {"humaneval": {}})
    items_file(tmp_path, "humaneval").write_text('{"metric": "pass@1", "item": "x", "value": 1, "weight": 1, "extra": 2}\n')
    with pytest.raises(SftmixError, match=r"items_humaneval.jsonl:1: not an Item \(extra"):
        read_items(tmp_path, "humaneval")
    with pytest.raises(SftmixError, match="items_loss.jsonl: missing; the evaluation of task 'loss' wrote no per-item"):
        sample_rows("r", tmp_path, {"loss": {}})
