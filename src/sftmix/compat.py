"""What differs between the transformers versions sftmix supports (``pyproject.toml``: 5.19 to 5.x).

vLLM 0.32-0.34 accepts transformers < 5.20, and sftmix must install beside it, so the suite runs
on 5.19 as well as on the newest release. Each difference is one function here, chosen by what the
installed library has (never by comparing version strings), so the rest of sftmix is written once.
"""

from __future__ import annotations

import dataclasses
from functools import cache

from transformers import TrainingArguments


@cache
def _training_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def checkpointing_argument(on: bool) -> dict:
    """TrainingArguments' switch for recomputing activations: ``activation_checkpointing`` since
    5.20, ``gradient_checkpointing`` before."""
    name = "activation_checkpointing" if "activation_checkpointing" in _training_fields() else "gradient_checkpointing"
    return {name: on}


def is_checkpointing(model) -> bool:
    """Whether the model recomputes activations (the attribute's name changed with the argument's)."""
    # the newer name first, and the older one only where it is missing: 5.25 warns when the older is read
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))
