"""Bad input as a new user would give it: every case exits 2 with one message that names the
file, line or field and what was expected, without a traceback, and leaves nothing half-written.

Cases are a table: (id, function building argv in a temp dir, expected text in the message).
They run ``sftmix.cli.main`` in-process (argparse's usage errors included), which is what the
console script calls.
"""

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import TINY_MEASURE, TINY_SOURCES, TINY_TRAIN
from sftmix.cli import main
from sftmix.data.compose import Manifest
from sftmix.io import read_record
from sftmix.models import resolve_model

ROWS = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(5)]


def compose_cfg(tmp: Path, **extra) -> Path:
    cfg = {"seed": 0, "mixtures": [{"name": "m", "parts": [{"source": "generated_math", "count": 5}]}],
           "sources": {"generated_math": {"size": 20}}, **extra}
    p = tmp / "compose.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def user_source_cfg(tmp: Path, data: Path, fmt: str = "alpaca") -> Path:
    cfg = {"sources": {"mine": {"path": str(data), "format": fmt, "ability": "code"}},
           "mixtures": [{"name": "m", "parts": [{"source": "mine", "fraction": 1}]}]}
    p = tmp / "user.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run_cfg(tmp: Path, **fields) -> Path:
    cfg = {"name": "r", "model": "tiny", "sources": TINY_SOURCES, "train": TINY_TRAIN, **TINY_MEASURE,
           "output_dir": str(tmp / "run"), "strategy": {"name": "individual", "sources": ["generated_math"]}, **fields}
    p = tmp / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def study_cfg(tmp: Path, **fields) -> Path:
    base = yaml.safe_load(run_cfg(tmp).read_text())
    base.pop("output_dir")
    cfg = {"name": "s", "base": base, "grid": {"seed": [0]}, "output_dir": str(tmp / "study"), **fields}
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def a_file(tmp: Path) -> Path:
    p = tmp / "occupied"
    p.write_text("x")
    return p


def show(path: Path, fmt: str = "alpaca") -> list[str]:
    return ["data", "show", "mine", "--path", str(path), "--format", fmt, "--ability", "code"]


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


LATIN1_ROW = json.dumps({"instruction": "Caf\u00e9", "input": "", "output": "ok"}, ensure_ascii=False).encode("latin-1")


def cut_checkpoint(tmp: Path) -> list[str]:
    ck = tmp / "ckpt"
    shutil.copytree(resolve_model("tiny"), ck)
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    return ["eval", str(ck), "--tasks", "loss", "--loss-sources", "generated_math", "--out", str(tmp / "ev")]


def garbled_checkpoint(tmp: Path) -> list[str]:
    ck = tmp / "ckpt"
    shutil.copytree(resolve_model("tiny"), ck)
    w = ck / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:40] = b"\xff" * 32  # the header no longer parses
    w.write_bytes(bytes(data))
    return ["eval", str(ck), "--tasks", "loss", "--loss-sources", "generated_math", "--out", str(tmp / "ev")]


def garbage_store(tmp: Path) -> list[str]:
    cfg = study_cfg(tmp)
    (tmp / "study").mkdir()
    (tmp / "study" / "results.sqlite").write_bytes(b"this is not a database" * 100)
    return ["study", "status", str(cfg)]


def replay_missing(tmp: Path) -> list[str]:
    stages = [{"name": "one", "mixture": {"name": "one", "parts": [{"source": "generated_math", "count": 8}]}},
              {"name": "two", "mixture": {"name": "two", "parts": [{"replay": "nothing", "k": 0.5}]}}]
    return ["train", str(run_cfg(tmp, strategy=None, stages=stages))]


def fake_gsm8k(tmp: Path) -> Path:
    """A data folder with a two-question GSM8K test split in its format (no real data needed here)."""
    (tmp / "data" / "gsm8k").mkdir(parents=True)
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"} for i in (1, 2)]
    for split in ("train", "test"):
        (tmp / "data" / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp / "data"


def held_out_everything(tmp: Path) -> list[str]:
    """A source without a test split gives its held-out rows from its pool: 10 of 5 rows is all of them."""
    data = write(tmp, "mine.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in ROWS))
    return ["train", str(run_cfg(tmp, sources={"mine": {"path": str(data), "format": "alpaca", "ability": "code"}},
                                 strategy={"name": "individual", "sources": ["mine"]}, heldout={"sources": ["mine"], "samples": 10}))]


CASES = [
    # encodings and containers
    ("latin1 jsonl", lambda t: show(write(t, "l.jsonl", LATIN1_ROW + b"\n")), "not UTF-8"),
    ("latin1 json", lambda t: show(write(t, "l.json", b"[" + LATIN1_ROW + b"]")), "not UTF-8"),
    ("latin1 config", lambda t: ["data", "compose", str(write(t, "c.yaml", "seed: 0 # caf\u00e9\n".encode("latin-1"))), "-o",
                                 str(t / "o")], "not UTF-8"),
    ("empty json", lambda t: show(write(t, "e.json", b"")), "is empty"),
    ("train/test object", lambda t: show(write(t, "tt.json", json.dumps({"train": ROWS, "test": ROWS}).encode())),
     "keys test, train"),
    ("object with [ in text", lambda t: show(write(t, "o.json", b'{"note": "see [1]", "n": 3}')), "got an object"),
    ("not gzip", lambda t: show(write(t, "n.jsonl.gz", b"plain text, not gzip\n")), "not a complete gzip"),
    ("gzip cut short", lambda t: show(write(t, "c.jsonl.gz", gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS * 50))[:60])),
     "not a complete gzip"),
    ("data path is a folder", lambda t: show(t), "is a folder"),
    ("config path is a folder", lambda t: ["data", "compose", str(t), "-o", str(t / "o")], "is a folder"),
    # output places
    ("compose -o a file", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", str(a_file(t))], "is a file"),
    ("compose -o under a file", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", str(a_file(t) / "sub")], "is under"),
    ("compose -o unwritable", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", "/proc/sftmix-out"], "/proc/sftmix-out"),
    ("train output_dir a file", lambda t: ["train", str(run_cfg(t, output_dir=str(a_file(t))))], "is a file"),
    ("eval --out a file", lambda t: ["eval", "tiny", "--out", str(a_file(t))], "is a file"),
    ("study output_dir a file", lambda t: ["study", "run", str(study_cfg(t, output_dir=str(a_file(t))))], "is a file"),
    ("demo --out under a file", lambda t: ["demo", "--model", "tiny", "--quick", "--out", str(a_file(t) / "d")], "is under"),
    # overrides
    ("override into a scalar", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", str(t / "o"), "seed.x=1"], "seed holds the int value 0"),
    ("override index out of range", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", str(t / "o"), "mixtures.5.name=x"],
     "out of range"),
    ("override non-index", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", str(t / "o"), "mixtures.first.name=x"],
     "not an index"),
    ("study axis into a scalar", lambda t: ["study", "status", str(study_cfg(t, grid={"model.x": [1]}))], "not a mapping"),
    # values
    ("show --limit 0", lambda t: ["data", "show", "generated_math", "--limit", "0"], "--limit"),
    ("eval --max-new-tokens -5", lambda t: ["eval", "tiny", "--max-new-tokens", "-5", "--out", str(t / "e")], "--max-new-tokens"),
    ("eval --max-new-tokens past the context", lambda t: ["eval", "tiny", "--tasks", "gsm8k", "--limit", "1", "--max-new-tokens", "2048",
                                                         "--data-dir", str(fake_gsm8k(t)), "--out", str(t / "e")],
     "gsm8k: max_new_tokens = 2048 is not below the model's context of 2,048 positions"),
    ("eval --loss-samples 0", lambda t: ["eval", "tiny", "--loss-samples", "0", "--out", str(t / "e")], "--loss-samples"),
    ("eval --tasks ,", lambda t: ["eval", "tiny", "--tasks", ",", "--out", str(t / "e")], "at least one"),
    # damaged state
    ("garbage results.sqlite", garbage_store, "not a readable sftmix results database"),
    ("checkpoint weights cut short", cut_checkpoint, "ckpt/model.safetensors is damaged (cut short: "),
    ("checkpoint weights garbled", garbled_checkpoint, "ckpt/model.safetensors is damaged (its header does not parse"),
    # silent acceptance
    ("truncated user json", lambda t: show(write(t, "t.json", json.dumps(ROWS).encode()[:-30])), "cut short"),
    ("every study run failed", lambda t: ["study", "run", str(study_cfg(t, base={**yaml.safe_load(run_cfg(t).read_text()),
                                                                                 "output_dir": None, "sources": {
                                                                                     "mine": {"path": str(t / "gone.jsonl"), "format": "alpaca", "ability": "code"}},
                                                                                 "strategy": {"name": "individual", "sources": ["mine"]}}))],
     "1 of 1 runs failed"),
    # misleading messages
    ("alpaca row without output", lambda t: show(write(t, "a.jsonl", b'{"instruction": "x"}\n')), "missing field 'output'"),
    ("empty user file", lambda t: ["data", "compose", str(user_source_cfg(t, write(t, "empty.jsonl", b""))), "-o", str(t / "o")],
     "empty.jsonl"),
    ("all-empty sharegpt turns", lambda t: ["data", "compose", str(user_source_cfg(t, write(t, "s.json", json.dumps(
        [{"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]}] * 3).encode()), "sharegpt")),
        "-o", str(t / "o")], "no conversations left"),
    # checked before any work
    ("dmt k 2", lambda t: ["train", str(run_cfg(t, strategy={"name": "dmt", "specialised": ["generated_math"],
                                                             "general": "generated_code", "k": 2}))], "strategy.k"),
    ("replay of a missing stage", replay_missing, "'nothing' is not an earlier mixture"),
    # values that failed only when training started (a traceback), or trained in silence
    ("negative seed", lambda t: ["train", str(run_cfg(t, seed=-1))], "seed: Input should be greater than or equal to 0 (got -1)"),
    ("seed past 2**32", lambda t: ["train", str(run_cfg(t, train={**TINY_TRAIN, "seed": 2**32}))],
     "train.seed: Input should be less than 4294967296"),
    ("infinite lr", lambda t: ["train", str(run_cfg(t, train={**TINY_TRAIN, "lr": float("inf")}))],
     "train.lr: Input should be a finite number (got inf)"),
    ("nan warmup", lambda t: ["train", str(run_cfg(t, train={**TINY_TRAIN, "warmup_ratio": float("nan")}))],
     "train.warmup_ratio: Input should be a finite number"),
    ("mixture name out of -o", lambda t: ["data", "compose", str(compose_cfg(t, mixtures=[{"name": "../../out", "parts": [
        {"source": "generated_math", "count": 5}]}])), "-o", str(t / "o" / "p")], "mixtures.0.name: Value error, a name must be one folder name"),
    ("run name out of runs/", lambda t: ["train", str(run_cfg(t, name="../elsewhere"))], "name: Value error, a name must be a folder name"),
    ("run name too long for a folder", lambda t: ["train", str(run_cfg(t, name="a" * 201))],
     "name: Value error, a name's folder is at most 200 bytes long (UTF-8); got one of 201 bytes"),
    ("stage name too long for a folder", lambda t: ["train", str(run_cfg(t, strategy=None, stages=[
        {"name": "\u00e9" * 101, "mixture": {"parts": [{"source": "generated_math", "count": 8}]}}]))], "got one of 202 bytes"),
    ("compose -o name too long", lambda t: ["data", "compose", str(compose_cfg(t)), "-o", str(t / ("o" * 300))], "File name too long"),
    ("study name out of studies/", lambda t: ["study", "status", str(study_cfg(t, name="/abs"))], "name: Value error, a name must be a folder name"),
    ("study fit --seed -3", lambda t: ["study", "fit", str(study_cfg(t)), "--seed", "-3"], "--seed: expected a whole number in [0, 2**32), got -3"),
    # a key written twice: PyYAML keeps the last in silence
    ("run key written twice", lambda t: ["train", str(write(t, "r.yaml", run_cfg(t).read_bytes() + b"name: again\n"))],
     "key 'name' is written twice in one mapping (first on line"),
    ("train.lr written twice", lambda t: ["train", str(write(t, "r.yaml", b"name: r\nmodel: tiny\ntrain:\n  lr: 1.0e-3\n  epochs: 1\n"
                                                                        b"  lr: 2.0e-3\n"))],
     "r.yaml:6:3: invalid YAML: key 'lr' is written twice in one mapping (first on line 4)"),
    ("study key written twice", lambda t: ["study", "status", str(write(t, "s.yaml", study_cfg(t).read_bytes() + b"name: t\n"))],
     "key 'name' is written twice in one mapping (first on line"),
    ("override given twice", lambda t: ["train", str(run_cfg(t)), "train.lr=1e-3", "train.lr=2e-3"],
     "override 'train.lr=2e-3': train.lr is set twice among the overrides (also 'train.lr=1e-3')"),
    ("held-out rows take a trained pool whole", held_out_everything, "heldout.samples = 10 takes all 5 rows of source 'mine', which the run"),
]


@pytest.mark.parametrize("case,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_message(case, build, expected, tmp_path, capsys):
    argv = build(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert expected in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.tmp")), "a temp file was left behind"
    assert not list(tmp_path.rglob("stage*")), "work started before the input was checked"


def test_overrides_after_options_as_the_readme_writes_them(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert main(["data", "compose", str(cfg), "-o", str(tmp_path / "o"), "seed=1", "--quiet"]) == 0
    assert read_record(tmp_path / "o" / "m" / "manifest.json", Manifest).seed == 1


def test_a_kernel_a_later_stage_cannot_run_here_fails_before_the_first_stage(tmp_path, capsys):
    """Stage two asks for FlexAttention, which has no backward pass on the CPU: the run stops with
    the stage and field named before stage one composes or trains anything."""
    import torch  # only to know whether this machine can run it

    if torch.cuda.is_available():
        pytest.skip("on CUDA FlexAttention trains: nothing to refuse")
    stages = [{"name": "one", "mixture": {"name": "one", "parts": [{"source": "generated_math", "count": 8}]}},
              {"name": "two", "mixture": {"name": "two", "parts": [{"source": "generated_code", "count": 8}]},
               "train": {"kernels": {"attention": "flex_attention"}}}]
    assert main(["train", str(run_cfg(tmp_path, strategy=None, stages=stages))]) == 2
    err = capsys.readouterr().err
    assert "stage 'two': train.kernels.attention: flex_attention has no backward pass on the CPU" in err, err
    assert not list(tmp_path.rglob("stage*")), "stage one started before the kernels were checked"


@pytest.mark.parametrize("fields,line", [
    # the validator's message names the value: it is not repeated
    ({"strategy": {"name": "dmt", "specialised": ["generated_math"], "general": "generated_code", "k": "1/0"}},
     "  strategy.k: Value error, expected a number or a fraction like '1/256', got '1/0'"),
    # an unknown field is reported on the mapping that holds it: the mapping is not dumped
    ({"nosuch": 1}, "  (top level): Value error, unknown field 'nosuch'; valid fields: name, model,"),
    # a bare type or range error shows the value it got
    ({"sources": ["a", "b"]}, "  sources: Input should be a valid dictionary (got ['a', 'b'])"),
    ({"sources": {"gsm8k": {"clean": {"decontaminate": ["gsm8k", "mtbench", "gsm8k"]}}}},
     "  sources.gsm8k.clean.decontaminate: Value error, lists gsm8k more than once; give each benchmark once "
     "(got ['gsm8k', 'mtbench', 'gsm8k'])"),
])
def test_a_config_error_line_shows_the_bad_value_once(fields, line, tmp_path, capsys):
    assert main(["train", str(run_cfg(tmp_path, **fields))]) == 2
    err = capsys.readouterr().err
    bad = [x for x in err.splitlines() if x.startswith(line)]
    assert len(bad) == 1, err
    assert bad[0].count("got") <= 1 and "{'" not in bad[0], bad[0]
