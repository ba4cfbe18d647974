"""Progress display (rich on stderr), switched off when asked."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (plain iteration when disabled)."""
    if not enabled:
        yield from items
        return
    # imported here: rich is only needed when something is printed
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(stderr=True))
