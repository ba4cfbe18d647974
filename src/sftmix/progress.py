"""Progress display (rich on stderr), switched off when asked."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Set by ``--quiet`` (``sftmix.cli.quiet_libraries``) for the command and every process it starts
# (an ``accelerate launch`` of the training, a study's workers): nothing is printed but results,
# warnings and errors. Without it, a run with its bars off (a Slurm job's log) still prints the
# trainer's loss lines.
QUIET = "SFTMIX_QUIET"


def quiet() -> bool:
    """Whether ``--quiet`` was asked of this command or of the one that started this process."""
    return os.environ.get(QUIET, "") not in ("", "0")


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (plain iteration when disabled)."""
    if not enabled:
        yield from items
        return
    # imported here: rich is only needed when something is printed
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(stderr=True))
