"""Helpers for tests that train the tiny model."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from sftmix.config import RunConfig, validate
from sftmix.train.meta import read_meta

TINY_TRAIN = {"epochs": 1, "batch_size": 8, "per_device_batch_size": 4, "max_length": 256, "lr": 1e-3,
              "precision": "fp32", "report_to": [], "logging_steps": 1, "group_by_length": False}
TINY_SOURCES = {"generated_math": {"size": 48}, "generated_code": {"size": 48},
                "sharegpt": {"limit": 200, "clean": {"max_tokens": 200}}}
# Held-out loss (and the forgetting curves) on the generated sources: no data folder, no hub, no
# ShareGPT file read per test. A test that measures something else says so.
TINY_EVAL = {"tasks": ["loss"]}
TINY_HELDOUT = {"sources": ["generated_math", "generated_code"], "samples": 8}
TINY_CURVE = {"points": 1}
TINY_MEASURE = {"eval": TINY_EVAL, "heldout": TINY_HELDOUT, "curve": TINY_CURVE}  # a run config's measuring sections


def tiny_run(tmp: Path, name: str, **fields) -> RunConfig:
    train = {**TINY_TRAIN, **fields.pop("train", {})}
    ev = {**TINY_EVAL, **fields.pop("eval", {})}
    held = {**TINY_HELDOUT, **fields.pop("heldout", {})}
    curve = {**TINY_CURVE, **fields.pop("curve", {})}
    data = {"name": name, "model": "tiny", "sources": TINY_SOURCES, "train": train, "eval": ev, "heldout": held, "curve": curve,
            "output_dir": str(tmp / name), **fields}
    return validate(RunConfig, data, name)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def max_weight_diff(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def losses(final) -> list[float]:
    return [h["loss"] for h in read_meta(Path(final)).log_history if "loss" in h]


def study_file(tmp: Path, name: str, **extra) -> Path:
    """The suite's one tiny study: 2 sources x 2 fractions, 4 runs of the tiny model, held-out
    loss of both sources. The local run of it (``mini_study``) is the reference the executors'
    runs are compared with."""
    study = {
        "name": name, "output_dir": str(tmp / name),
        "base": {"model": "tiny", "sources": TINY_SOURCES, "strategy": {"name": "individual", "sources": ["generated_math"]},
                 "train": {**TINY_TRAIN, "epochs": 2},
                 "eval": {"tasks": ["loss"]}, "heldout": {"sources": ["generated_math", "generated_code"], "samples": 8},
                 "curve": {"points": 1}},
        "grid": {"strategy.sources": [["generated_math"], ["generated_code"]], "strategy.fraction": ["1/2", 1]},
        "resources": {"cpus": 1},
        **extra,
    }
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump(study))
    return f


def study_metrics(db: Path) -> dict:
    """(run label, metric) -> value of every held-out loss in a study's database."""
    con = sqlite3.connect(db)
    return {(label, metric): v for label, metric, v in con.execute(
        "SELECT runs.label, metrics.metric, metrics.value FROM metrics JOIN runs ON runs.id = metrics.run_id "
        "WHERE task = 'loss' AND metric NOT IN ('wall_s')")}
