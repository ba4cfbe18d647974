"""Helpers for tests that train the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sftmix.config import RunConfig, validate

TINY_TRAIN = {"epochs": 1, "batch_size": 8, "per_device_batch_size": 4, "max_length": 256, "lr": 1e-3,
              "precision": "fp32", "report_to": [], "logging_steps": 1, "group_by_length": False}
TINY_SOURCES = {"generated_math": {"size": 48}, "generated_code": {"size": 48},
                "sharegpt": {"limit": 200, "clean": {"max_tokens": 200}}}


def tiny_run(tmp: Path, name: str, **fields) -> RunConfig:
    train = {**TINY_TRAIN, **fields.pop("train", {})}
    data = {"name": name, "model": "tiny", "sources": TINY_SOURCES, "train": train, "output_dir": str(tmp / name), **fields}
    return validate(RunConfig, data, name)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def max_weight_diff(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def losses(final) -> list[float]:
    meta = json.loads((Path(final) / "meta.json").read_text())
    return [h["loss"] for h in meta["log_history"] if "loss" in h]
