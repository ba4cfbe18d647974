"""Benchmark decontamination (``clean.decontaminate``): rows sharing 13 consecutive words with a
benchmark's items are left out and counted; checked on planted rows at the edges of the rule and
on the real GSM8K and Code Alpaca pools against a plain string search written apart."""

import re

import pytest
import yaml

from conftest import write_jsonl
from sftmix.cli import main
from sftmix.config import RunConfig, SourceConfig
from sftmix.data.compose import Manifest
from sftmix.data.contamination import NgramIndex, benchmark_texts
from sftmix.data.heldout import TEST_SPLIT, heldout
from sftmix.data.records import Conversation
from sftmix.data.sources import load_pool
from sftmix.errors import SftmixError
from sftmix.eval.humaneval import load_problems
from sftmix.io import read_jsonl, read_record
from sftmix.train.strategies import run_id

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
          "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
WORDS = QUESTION.replace(".", "").replace("?", "").split()
ANSWER_WORDS = re.findall(r"\w+", ANSWER.lower())


def data_folder(tmp):
    """A data folder whose GSM8K test split is one known problem (and a train split, unused)."""
    rows = [{"question": QUESTION, "answer": ANSWER}]
    for split in ("train", "test"):
        write_jsonl(tmp / "data" / "gsm8k" / f"{split}.jsonl", rows)
    return tmp / "data"


def pool(tmp, rows, **clean):
    src = write_jsonl(tmp / "mine.jsonl", rows)
    cfg = SourceConfig(path=str(src), format="messages", ability="math", clean={"decontaminate": ["gsm8k"], **clean})
    return load_pool("mine", cfg, str(data_folder(tmp)))


def chat(user, answer="ok"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_rows_sharing_13_words_with_a_test_problem_are_left_out_and_counted(tmp_path):
    rows = [
        chat("Solve this: " + QUESTION.upper().replace(",", " ;")),     # 0 the question, other case and punctuation: out
        chat("Tell me a story", "So " + " ".join(WORDS[5:18]) + " then"),  # 1 13 words of it in an answer: out
        chat(" ".join(WORDS[:12]) + " something else entirely"),        # 2 12 words only: kept
        {"messages": [{"role": "user", "content": " ".join(WORDS[:7])},  # 3 13 words across two messages: kept
                      {"role": "assistant", "content": " ".join(WORDS[7:14])}]},
        chat("What is 2 + 2?", "4"),                                    # 4 unrelated: kept
        chat("Check: " + " ".join(ANSWER_WORDS[:12]) + "!"),              # 5 12 words of the answer: kept
    ]
    p = pool(tmp_path, rows)
    kept = {c.messages[0]["content"] for c in p.conversations}
    assert kept == {rows[i]["messages"][0]["content"] for i in (2, 3, 4, 5)}
    c = p.stats["contamination"]["gsm8k"]
    assert (c["rows"], c["items"]) == (2, 1) and p.stats["cleaning"]["contaminated"] == 2
    assert all(e["items"] == ["gsm8k/test/0"] for e in c["examples"]) and len(c["examples"]) == 2
    # a shorter n-gram finds the 12-word row too; without decontamination nothing is left out
    assert pool(tmp_path, rows, ngram=12).stats["contamination"]["gsm8k"]["rows"] == 4
    plain = load_pool("mine", SourceConfig(path=str(tmp_path / "mine.jsonl"), format="messages", ability="math"))
    assert len(plain) == len(rows) and "contamination" not in plain.stats and "contaminated" not in plain.stats["cleaning"]


def test_the_answer_of_a_test_problem_is_contamination_too(tmp_path):
    p = pool(tmp_path, [chat("q", "Here: " + " ".join(ANSWER_WORDS[4:17]) + "."), chat("q2", "fine")])
    assert p.stats["contamination"]["gsm8k"]["rows"] == 1 and len(p) == 1


def test_only_the_configured_run_ids_change(tmp_path):
    base = {"name": "r", "model": "tiny", "strategy": {"name": "individual", "sources": ["gsm8k"]}}
    plain = RunConfig(**base, sources={"gsm8k": {"clean": {"max_tokens": 100}}})
    asked = RunConfig(**base, sources={"gsm8k": {"clean": {"max_tokens": 100, "decontaminate": ["gsm8k"]}}})
    # unset, the new fields are not in what ids hash: every earlier run keeps its id (the shipped
    # studies' pinned ids check that too); set, they are
    assert plain.legacy_dump()["sources"]["gsm8k"]["clean"] == {"max_tokens": 100, "dedup": True}
    assert run_id(asked) != run_id(plain)
    assert run_id(RunConfig(**base, sources={"gsm8k": {"clean": {"max_tokens": 100, "decontaminate": ["gsm8k"], "ngram": 8}}})) \
        != run_id(asked)


def test_a_benchmark_without_its_data_is_an_error_that_says_where(tmp_path, monkeypatch):
    monkeypatch.delenv("SFTMIX_DATA_DIR", raising=False)
    with pytest.raises(SftmixError, match=r"contamination check: MT-Bench's questions are needed: expected .*mt_bench/question.jsonl"):
        benchmark_texts("mtbench", str(tmp_path))
    # its questions are all it needs: not the judge's prompts or reference answers the evaluation reads
    write_jsonl(tmp_path / "mt_bench" / "question.jsonl", [{"question_id": 81, "turns": ["Write a travel blog post.", "Rewrite it."]}])
    assert benchmark_texts("mtbench", str(tmp_path)) == [("mtbench/81", "Write a travel blog post."), ("mtbench/81", "Rewrite it.")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SftmixError, match=r"contamination check: GSM8K's test problems are needed: source 'gsm8k' \(test\) could not"):
        benchmark_texts("gsm8k", str(tmp_path))


def plain_search(convs, texts, n=13):
    """The rows (content ids) holding n consecutive words of a text, by string sets, written apart
    from the module's numpy search."""
    def norm(t):
        return re.findall(r"\w+", t.lower())

    grams = set()
    for t in texts:
        w = norm(t)
        grams.update(" ".join(w[i: i + n]) for i in range(len(w) - n + 1))
    hit = set()
    for c in convs:
        for m in c.messages:
            w = norm(m["content"])
            if any(" ".join(w[i: i + n]) in grams for i in range(len(w) - n + 1)):
                hit.add(c.id)
    return hit


def test_real_pools_against_a_plain_string_search(shared_data):
    """GSM8K's train split against its test split, Code Alpaca against MT-Bench: the rows left out
    are exactly those a plain search finds, and there are some (a search that finds nothing would
    pass otherwise)."""
    # the benchmarks' texts read here from their files, not through the module's benchmark_texts
    tests = [r[k] for r in read_jsonl(shared_data / "gsm8k" / "test.jsonl") for k in ("question", "answer")]
    mtbench = [t for q in read_jsonl(shared_data / "mt_bench" / "question.jsonl") for t in q["turns"]]
    for source, bench, texts in (("gsm8k", "gsm8k", tests), ("code_alpaca", "mtbench", mtbench)):
        plain = load_pool(source, SourceConfig(), str(shared_data))
        cleaned = load_pool(source, SourceConfig(clean={"decontaminate": [bench]}), str(shared_data))
        dropped = {c.id for c in plain.conversations} - {c.id for c in cleaned.conversations}
        assert dropped == plain_search(plain.conversations, texts) and dropped, source
        assert cleaned.stats["contamination"][bench]["rows"] == len(dropped) == len(plain) - len(cleaned)


def test_the_index_keeps_every_item_an_ngram_stands_in():
    index = NgramIndex({"b": [("one", "a b c d e"), ("two", "x a b c d e y")]}, 4)
    hits = index.search([Conversation([{"role": "user", "content": "A, B; C D!"}], "s", "x"),
                         Conversation([{"role": "user", "content": "b c d e"}], "s", "x")])["b"]
    assert hits.rows == {0: {"one", "two"}, 1: {"one", "two"}}


def test_a_humaneval_prompt_asked_in_other_words_around_it_is_found(tmp_path):
    problem = load_problems()[0]  # HumanEval/0, has_close_elements
    docstring = problem["prompt"].split('"""')[1]
    rows = [chat("Please implement this:\n" + docstring, "def f(): pass"), chat("Write a function that adds two numbers.")]
    src = write_jsonl(tmp_path / "code.jsonl", rows)
    p = load_pool("code", SourceConfig(path=str(src), format="messages", ability="code", clean={"decontaminate": ["humaneval"]}))
    assert [c.messages[0]["content"] for c in p.conversations] == [rows[1]["messages"][0]["content"]]
    assert p.stats["contamination"]["humaneval"]["examples"][0]["items"] == ["HumanEval/0"]


def test_a_decontaminated_source_keeps_its_test_split_as_held_out_rows(tmp_path):
    """GSM8K's train rows checked against GSM8K's test problems: its held-out rows are still its
    test problems (checked against themselves, every one would be left out)."""
    cfg = SourceConfig(clean={"decontaminate": ["gsm8k"]})
    rows, how = heldout("gsm8k", 1, 0, cfg, str(data_folder(tmp_path)))
    assert how == TEST_SPLIT and rows[0].messages[0]["content"] == QUESTION


def test_data_compose_says_what_it_left_out(tmp_path, capsys):
    rows = [chat("Solve: " + QUESTION), chat("What is 2 + 2?", "4"), chat("What is 3 + 3?", "6")]
    src = write_jsonl(tmp_path / "mine.jsonl", rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data_folder(tmp_path)), "sources": {"mine": {
        "path": str(src), "format": "messages", "ability": "math", "clean": {"decontaminate": ["gsm8k"]}}},
        "mixtures": [{"name": "m", "parts": [{"source": "mine", "fraction": 1}]}]}))
    assert main(["data", "compose", str(cfg), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "m: mine: left out of its pool as contaminated: 1 rows holding 1 gsm8k items" in capsys.readouterr().out
    manifest = read_record(tmp_path / "out" / "m" / "manifest.json", Manifest)
    assert manifest.total == 2 and manifest.parts[0].pool_stats["contamination"]["gsm8k"]["rows"] == 1
