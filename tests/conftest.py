"""Shared fixtures: where the real data lives, and small data files the tests build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "gsm8k" / "train.jsonl").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repo on dev and CI machines)")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    """A data directory with small GSM8K-, alpaca- and ShareGPT-format files."""
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl",
                [{"question": f"What is {i} + {i}?", "answer": f"{i}+{i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"} for i in range(400)])
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl",
                [{"question": f"What is {i} * 3?", "answer": f"#### {3 * i}"} for i in range(20)])
    (tmp_path / "code_alpaca").mkdir()
    (tmp_path / "code_alpaca" / "code_alpaca_2k.json").write_text(json.dumps(
        [{"instruction": f"Write a function returning {i}.", "input": "", "output": f"def f():\n    return {i}"} for i in range(200)]))
    (tmp_path / "sharegpt").mkdir()
    (tmp_path / "sharegpt" / "sharegpt.json").write_text(json.dumps(
        [{"id": str(i), "conversations": [{"from": "human", "value": f"Tell me about topic {i}."},
                                          {"from": "gpt", "value": f"Topic {i} is interesting."}]} for i in range(300)]))
    return tmp_path
