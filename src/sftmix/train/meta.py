"""A finished stage's ``final/meta.json`` as one typed value, ``StageMeta``: written by
``train.stage.train_stage`` (its presence marks the stage done), read as that value by the run's
next stage (where the run's step and token axes continue) and by a study's ingest (real tokens,
forgetting curves).

Fields a stage of an earlier sftmix did not write have defaults; fields it wrote that this one no
longer knows are ignored, so a study keeps reading its older run folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from sftmix import layout
from sftmix.config import TrainSettings
from sftmix.data.compose import Manifest
from sftmix.io import read_record
from sftmix.train.tokenize import TokenizeStats


class _Value(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Kernels(_Value):
    """What a stage's ``train.kernels`` resolved to on the machine that trained it."""

    optimizer: str
    attention: str
    liger: bool
    compile: bool
    loss: Literal["liger", "chunked", "full"] = "full"  # a stage of an earlier sftmix computed it in full


class HeldoutPoint(_Value):
    """A point of a stage's forgetting curve: held-out loss per held-out source at a step, with
    where that step lies on the run's axes (steps and real tokens over all stages)."""

    stage: str
    step: int
    run_step: int
    run_tokens: float
    loss: dict[str, float]


class Parent(_Value):
    """The stage a stage continued from, and where the run's axes stood at its end."""

    stage: str
    checkpoint: str
    content_sha256: str
    run_step: int = 0
    run_tokens: float = 0.0


class StageMeta(_Value):
    """What a stage trained, on what, how, and what came of it."""

    stage: str
    base_model: str = ""
    template: str = ""
    seed: int = 0
    train: TrainSettings | None = None
    effective_batch: int = 0
    processes: int = 1
    distributed_type: str = ""
    weights_held: float | None = None  # by the main process, as a fraction of the model: sharding observed
    bf16: bool = False
    trainable_params: int = 0  # observed: with LoRA only the adapter is trainable
    total_params: int = 0
    gradient_checkpointing: bool = False  # as the Trainer turned it on, not only as asked
    kernels: Kernels | None = None
    manifest: Manifest | None = None  # the stage's data manifest
    tokenize: TokenizeStats | None = None
    parent: Parent | None = None
    run_config: dict | None = None
    resumed_from: str | None = None
    metrics: dict = {}
    wall_s: float = 0.0
    real_tokens: float = 0.0
    run_step_end: int = 0
    run_tokens_end: float = 0.0
    curve: list[HeldoutPoint] = []
    log_history: list[dict] = []
    versions: dict = {}
    git_revision: str | None = None
    machine: str = ""
    platform: str = ""


def read_meta(final: Path) -> StageMeta:
    """A finished stage's ``meta.json`` (a malformed one is an error naming it and its field)."""
    return read_record(layout.meta(final), StageMeta)
