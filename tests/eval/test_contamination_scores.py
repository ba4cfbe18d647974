"""A run's benchmark scores without the items its training rows hold (``eval/contamination.json``):
a run trained on a GSM8K test problem says which, and gives the score over the other items."""

import json
import shutil
import sqlite3

import yaml

from conftest import write_jsonl
from helpers import tiny_run
from sftmix import pipeline
from sftmix.cli import main
from sftmix.data.compose import read_composed
from sftmix.eval import contamination
from sftmix.eval.runner import Item, items_file
from sftmix.io import write_jsonl as write_rows
from sftmix.io import write_json
from sftmix.layout import DONE, data_dir, stages, study_run
from sftmix.study.grid import PlannedRun
from sftmix.study.runner import ingest, load_study
from sftmix.study.store import Store
from sftmix.study.worker import DoneRecord

PROBLEMS = [
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did "
     "Natalia sell altogether in April and May?", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
     "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10"),
    ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. How much more "
     "money does Betty need to buy the wallet?", "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n#### 5"),
]


def test_a_run_trained_on_a_test_problem_reports_its_score_without_it(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    rows = [{"question": q, "answer": a} for q, a in PROBLEMS]
    write_jsonl(data / "gsm8k" / "test.jsonl", rows)
    write_jsonl(data / "gsm8k" / "train.jsonl", rows)
    train = [{"messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
                           {"role": "assistant", "content": str(2 * i)}]} for i in range(14)]
    train.append({"messages": [{"role": "user", "content": PROBLEMS[0][0]}, {"role": "assistant", "content": "72"}]})
    src = write_jsonl(tmp_path / "mine.jsonl", train)
    cfg = tiny_run(tmp_path, "r", sources={"mine": {"path": str(src), "format": "messages", "ability": "math"},
                                           "generated_math": {"size": 48}},
                   strategy=None, stages=[  # the second stage replays the first: its rows are counted once
                       {"name": "one", "mixture": {"name": "one", "parts": [{"source": "mine", "fraction": 1}]}},
                       {"name": "two", "mixture": {"name": "two", "parts": [{"source": "generated_math", "count": 8},
                                                                         {"replay": "one", "k": 1}]}}],
                   eval={"tasks": ["gsm8k"], "limit": 3, "data_dir": str(data), "gsm8k": {"max_new_tokens": 4}},
                   heldout={"sources": ["generated_math"]})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k: training rows hold 1 of the 3 items evaluated (1 rows); accuracy " in out, out
    eval_dir = tmp_path / "r" / "eval"
    assert sum("72" in json.dumps(c.messages) for c in contamination.training_rows(tmp_path / "r")) == 1
    assert all(any(c.messages[-1]["content"] == "72" for c in read_composed(data_dir(s)).conversations)
               for s in stages(tmp_path / "r"))  # the held row is trained on in both stages
    c = contamination.read(eval_dir).tasks["gsm8k"]
    assert (c.hit, c.items, c.rows, c.metric) == (["gsm8k/test/0"], 3, 1, "accuracy")
    # the arithmetic, on values a 2-layer random model does not give: item 0 (held) right, 1 wrong, 2 right
    write_rows(items_file(eval_dir, "gsm8k"), [Item(metric="accuracy", item=str(i), value=v, weight=1.0).model_dump()
                                                for i, v in enumerate((100.0, 0.0, 100.0))])
    c = contamination.measure(tmp_path / "r", eval_dir, ["gsm8k"], str(data)).tasks["gsm8k"]
    assert (round(c.value, 2), c.clean_value) == (66.67, 50.0)
    assert json.loads((eval_dir / contamination.FILE).read_text())["tasks"]["gsm8k"]["clean_value"] == 50.0
    # a study ingests it with the run: the store's row is the file's
    study_out = tmp_path / "study"
    folder = study_run(study_out, "r1")
    shutil.copytree(tmp_path / "r", folder)
    write_json(folder / DONE, DoneRecord(checkpoint=str(folder), eval_dir=str(folder / "eval"), finished=1.0).model_dump())
    store = Store(tmp_path / "results.sqlite")
    assert ingest(store, PlannedRun("r1", "x=1", {"x": 1}, cfg), study_out)
    (row,) = store.contamination()
    assert (row.run_id, row.task, row.held, row.items, row.ngram, round(row.value, 2), row.clean_value) == (
        "r1", "gsm8k", ["gsm8k/test/0"], 3, 13, 66.67, 50.0)
    # a run ingested before the store kept these rows gets them on the next `study run`
    with store.conn:
        store.conn.execute("DELETE FROM contamination")
    assert ingest(store, PlannedRun("r1", "x=1", {"x": 1}, cfg), study_out) and store.contamination() == [row]
    with store.conn:
        store.conn.execute("DELETE FROM contamination")
    (folder / "eval" / contamination.FILE).write_text("{cut")  # a damaged record: the done run stands, with a warning
    assert ingest(store, PlannedRun("r1", "x=1", {"x": 1}, cfg), study_out) and store.contamination() == []
    assert "contamination.json: not readable JSON" in capsys.readouterr().err
    # a study whose store lost the rows (ingested by an sftmix without the table) shows them in its next
    # report, without a `study run` first
    study_file = tmp_path / "s.yaml"
    base = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "output_dir"}
    study_file.write_text(yaml.safe_dump({"name": "s", "output_dir": str(tmp_path / "s"), "base": base,
                                          "grid": {"seed": [cfg.seed]}}))
    (planned,) = load_study(str(study_file))[1]
    folder = study_run(tmp_path / "s", planned.id)
    shutil.copytree(tmp_path / "r", folder)
    write_json(folder / DONE, DoneRecord(checkpoint=str(folder), eval_dir=str(folder / "eval"), finished=1.0).model_dump())
    assert main(["study", "run", str(study_file), "--quiet"]) == 0  # done already: ingested, nothing trained
    study_store = Store(tmp_path / "s" / "results.sqlite")
    assert [r.held for r in study_store.contamination()] == [["gsm8k/test/0"]]
    with study_store.conn:
        study_store.conn.execute("DELETE FROM contamination")
    assert main(["study", "report", str(study_file)]) == 0
    assert [r.held for r in study_store.contamination()] == [["gsm8k/test/0"]]
    assert "| gsm8k | 1 of 3 | 1 | 13 | accuracy |" in (tmp_path / "s" / "report" / "report.md").read_text()
    # a store its reader may not write (a colleague's copy): the report is made without those rows, with a warning
    with study_store.conn:
        study_store.conn.execute("DELETE FROM contamination")
    capsys.readouterr()

    def read_only(self, *a):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Store, "keep_contamination", read_only)
    assert main(["study", "report", str(study_file)]) == 0
    assert "the contamination rows of its earlier runs were not added (attempt to write a readonly database)" in (
        capsys.readouterr().err)
    assert "| gsm8k | 1 of 3 |" not in (tmp_path / "s" / "report" / "report.md").read_text()
    monkeypatch.undo()
    # where it cannot be measured (a stage's data gone), the evaluation warns and still returns its results
    shutil.rmtree(data_dir(stages(tmp_path / "r")[0]))
    assert pipeline.evaluate(pipeline.plan(cfg), progress=False).tasks["gsm8k"].n == 3
    assert "warning: the scores without the items training holds were not measured: " in capsys.readouterr().err
    assert contamination.read(eval_dir) is None  # the earlier measurement is not left to stand for this one
    # an evaluation of other tasks in the same folder leaves no stale file behind
    write_rows(eval_dir / contamination.FILE, [])
    assert contamination.measure(tmp_path / "r", eval_dir, ["loss"], str(data)) is None
    assert contamination.read(eval_dir) is None


def test_items_map_to_the_benchmarks_ids():
    assert contamination.benchmark_item("gsm8k", "12") == "gsm8k/test/12"
    assert contamination.benchmark_item("humaneval", "HumanEval/3") == "HumanEval/3"
    assert contamination.benchmark_item("mtbench", "81:2:1") == "mtbench/81"


class EchoGenerator:
    """Answers each prompt with the prompt itself: a training row made of an answer then holds,
    word for word, what the model was asked for that item."""

    def __init__(self):
        from sftmix.models import load_tokenizer, resolve_model  # after conftest set HF_HUB_OFFLINE

        self.tokenizer = load_tokenizer(resolve_model("tiny"))

    def generate(self, prompts, **kw):
        return list(prompts)


def test_each_benchmark_s_item_ids_name_the_texts_the_model_was_asked(shared_data, tmp_path, monkeypatch):
    """The chain that ``measure`` relies on, for all three benchmarks, from what a task really asked:
    a training row holding the prompt of one evaluated item is found by the n-gram index under the
    benchmark id its item row maps to (``benchmark_item``), and under no other item's id. A task
    that numbered its items otherwise than the index (a GSM8K index off by one, HumanEval's ids
    without their prefix, MT-Bench's turns as questions) would make every run look clean."""
    from openai_server import OpenAIServer

    from sftmix.config import EvalConfig
    from sftmix.data.contamination import index
    from sftmix.data.records import Conversation
    from sftmix.eval import tasks

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    judge = OpenAIServer()
    gen = EchoGenerator()
    try:
        cfg = EvalConfig.model_validate({"limit": 3, "mtbench": {"judge": {"base_url": judge.url}}, "humaneval": {"workers": 1}})
        ctx = tasks.Context(model_path="m", cfg=cfg, template="vicuna", data_dir=shared_data, out=tmp_path, progress=False,
                            get_generator=lambda: gen)
        asked = {}  # (task, item id of its row) -> the text the model was asked
        for name in ("gsm8k", "humaneval", "mtbench"):
            task = tasks.BUILTIN[name]
            _, rows = task.run(ctx)
            items = [i for _, i, _, _ in task.item_rows(rows)]
            texts = [r["prompt"] if name != "mtbench" else r["answers"][r["turn"] - 1] for r in rows]
            if name == "humaneval":  # one item per problem, in the rows' order
                texts = list({r["task_id"]: r["prompt"] for r in rows}.values())
            assert len(items) == len(texts) >= 3, (name, items)
            asked.update({(name, i): t for i, t in zip(items, texts)})
    finally:
        judge.close()
    idx = index(["gsm8k", "humaneval", "mtbench"], 13, str(shared_data))
    for (name, item), text in asked.items():
        row = Conversation([{"role": "user", "content": "Repeat this."}, {"role": "assistant", "content": text}], "s", "x")
        held = idx.search([row])[name].items
        assert contamination.benchmark_item(name, item) in held, (name, item, sorted(held))
        others = {contamination.benchmark_item(n, i) for n, i in asked if n == name} - {contamination.benchmark_item(name, item)}
        assert not held & others, (name, item, sorted(held & others))
