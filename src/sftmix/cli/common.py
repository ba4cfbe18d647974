"""Helpers shared by the command groups: tables, argument types, output folders, run configs."""

from __future__ import annotations

import argparse
import os
import typing
from pathlib import Path

from sftmix.errors import SftmixError


def table(title: str, columns: list[str], rows: list[list]) -> None:
    """Print a titled table (rich) to the terminal."""
    # imported here: rich is only needed when something is printed
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console().print(t)


def comma_list(text: str) -> list[str]:
    """argparse type: ``a,b,c`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _field(model, path: str):
    """The pydantic field at a dotted path (``judge.model``) of ``model``."""
    *outer, last = path.split(".")
    for name in outer:
        model = model.model_fields[name].annotation
    return model.model_fields[last]


def field_choices(field) -> tuple | None:
    """The allowed values of a ``Literal`` field (or of a list of them), else None."""

    ann = field.annotation
    if typing.get_origin(ann) is list:
        (ann,) = typing.get_args(ann)
    return typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None


def add_config_flags(parser, model, flags: dict[str, str]) -> None:
    """One flag per config field (``flags``: dotted field path -> flag): its help, default and
    choices are the field's own, so the command line and the config file cannot drift apart. An
    unset flag leaves the field to the config's default (argparse's default is None)."""
    # imported here: pydantic_core is only needed to show defaults
    from pydantic_core import PydanticUndefined

    for path, flag in flags.items():
        f = _field(model, path)
        kw: dict = {"dest": path.replace(".", "__"), "default": None, "metavar": flag.lstrip("-").upper().replace("-", "_")}
        default = f.get_default(call_default_factory=True) if f.default is not PydanticUndefined or f.default_factory else None
        choices = field_choices(f)
        if typing.get_origin(f.annotation) is list:
            kw["type"] = comma_list
            shown = ",".join(map(str, default)) if default else None
        else:
            shown = default
            if choices:
                kw["choices"] = list(choices)
                kw.pop("metavar")
            elif f.annotation is int or f.annotation == (int | None):
                kw["type"] = positive_int if any(getattr(m, "gt", None) == 0 for m in f.metadata) else int
        words = f.description or ""
        if typing.get_origin(f.annotation) is list:
            words = f"comma-separated{' (' + ', '.join(map(str, choices)) + ')' if choices else ''}" + (f"; {words}" if words else "")
        kw["help"] = (words + (f" (default: {shown})" if shown is not None else "")).strip() or None
        parser.add_argument(flag, **kw)


def config_values(args, flags: dict[str, str]) -> dict:
    """The fields given on the command line, as a nested mapping for the config model."""
    out: dict = {}
    for path in flags:
        value = getattr(args, path.replace(".", "__"))
        if value is None:
            continue
        *outer, last = path.split(".")
        d = out
        for name in outer:
            d = d.setdefault(name, {})
        d[last] = value
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def seed(text: str) -> int:
    """argparse type: a seed, a whole number in [0, 2**32) as numpy's and torch's generators take."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 2**32), got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 2**32), got {value}")
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
    # imported here, as the commands import their machinery: `--help` and argument errors answer
    # without loading pydantic, the data modules or the model modules
    from sftmix.config import RunConfig, apply_overrides, read_yaml, validate
    from sftmix.train.strategies import run_dir

    data = apply_overrides(read_yaml(args.config), args.overrides, args.config)
    cfg = validate(RunConfig, data, args.config)
    output_dir(run_dir(cfg), "output_dir")
    return cfg
