"""Where a study's runs execute: ``local`` (one after another, here), ``ray`` (Ray tasks),
``slurm`` (Slurm jobs through submitit) and ``slurm-local`` (submitit's local mode: the Slurm
path as subprocess jobs on this machine). One module each; this one maps the names to them."""

from __future__ import annotations

from pathlib import Path

from sftmix.config import ExecutorConfig, Resources
from sftmix.study.executors.local import Executor, Handle
from sftmix.study.executors.slurm import SubmititExecutor, queued_job, read_job


def _ray(cfg: ExecutorConfig, resources: Resources, out: Path, progress: bool) -> Executor:
    from sftmix.study.executors.ray_tasks import RayExecutor  # Ray is an optional extra

    return RayExecutor(resources, progress, cfg.address)


def _submitit(cfg: ExecutorConfig, resources: Resources, out: Path, progress: bool) -> Executor:
    return SubmititExecutor(resources, progress, out / "jobs", local=cfg.name == "slurm-local")


EXECUTORS = {
    "local": lambda cfg, resources, out, progress: Executor(resources, progress),
    "ray": _ray,
    "slurm": _submitit,
    "slurm-local": _submitit,
}


def make_executor(cfg: ExecutorConfig, resources: Resources, out: Path, progress: bool = True) -> Executor:
    """The executor named in ``cfg`` (the names are checked when the study file is read)."""
    return EXECUTORS[cfg.name](cfg, resources, out, progress)


__all__ = ["EXECUTORS", "Executor", "Handle", "make_executor", "queued_job", "read_job"]
