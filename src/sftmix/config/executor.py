"""Where a study's runs execute and what one run needs: ``executor`` and ``resources`` in a study file."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from sftmix.config.run import Strict


class Resources(Strict):
    """What one run needs (each run of the study gets the same)."""

    gpus: int = Field(0, ge=0, description="GPUs per node")
    cpus: int = Field(1, ge=1, description="CPU cores (per node); torch threads are limited to these")
    nodes: int = Field(1, ge=1, description="machines one run spans (Slurm)")
    time: str = Field("12h", description="wall-clock limit of one job: 90m, 12h, 2d or H:MM:SS")
    partition: str | None = Field(None, description="Slurm partition")
    parallel: int | None = Field(None, ge=1, description="at most this many runs at once (default: as resources allow)")
    slurm: dict = Field(default_factory=dict, description="extra submitit/Slurm parameters, e.g. {account: x, qos: y}")

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        minutes(v)
        return v


def minutes(text: str) -> int:
    """'90m' / '12h' / '2d' / 'H:MM:SS' -> minutes (rounded up)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", text)
    if m:
        return max(1, int(-(-float(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)] // 1)))
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2})\s*", text)
    if m:
        h, mi, s = (int(x) for x in m.groups())
        return max(1, h * 60 + mi + (1 if s else 0))
    raise ValueError(f"expected a duration like 90m, 12h, 2d or 1:30:00, got {text!r}")


class ExecutorConfig(Strict):
    """``executor`` in a study file: the engine and its connection."""

    name: Literal["local", "ray", "slurm", "slurm-local"] = Field("local",
        description="where runs execute: local, ray, slurm or slurm-local")
    address: str | None = Field(None, description="ray: host:port of an existing cluster (else a local one is started)")
