"""Subcommands of the later pipeline steps (train, eval, run, study, demo)."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Register the training, evaluation and study subcommands."""
