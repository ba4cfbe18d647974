"""Provenance recorded in every artefact: package versions, git revision, machine."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from sftmix import __version__

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "trl", "peft", "vllm")


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git revision of the sftmix checkout, with '+dirty' when it has local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict:
    """Versions of Python, sftmix and the packages behind a result."""
    out = {"sftmix": __version__, "python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance() -> dict:
    """What produced a result: versions, git revision, machine and platform."""
    return {"versions": versions(), "git_revision": git_revision(), "machine": platform.machine(), "platform": platform.platform()}
