"""Helpers shared by the command groups: tables, argument types, output folders, run configs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sftmix.errors import SftmixError


def table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console().print(t)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def output_dir(path: str | os.PathLike, what: str) -> Path:
    """Check (and create) an output folder up front, so that a bad place fails before any work.

    Errors name the flag or field (``what``), the path and the reason: a file is in the way, a
    parent is a file, or the folder cannot be written.
    """
    p = Path(path).expanduser()
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == p else f"is under {parent}, which is"
            raise SftmixError(f"{what} {p}: {where} a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SftmixError(f"{what} {p}: cannot create the folder ({e.strerror})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise SftmixError(f"{what} {p}: the folder is not writable")
    probe = p / f".sftmix-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:  # read-only file systems pass os.access as root
        raise SftmixError(f"{what} {p}: the folder is not writable ({e.strerror})") from None
    return p


def load_run(args):
    """The run config of ``args.config`` with ``args.overrides`` applied, validated."""
    from sftmix.config import RunConfig, apply_overrides, read_yaml, validate

    data = apply_overrides(read_yaml(args.config), args.overrides, args.config)
    cfg = validate(RunConfig, data, args.config)
    from sftmix.train.strategies import run_dir

    output_dir(run_dir(cfg), "output_dir")
    return cfg
