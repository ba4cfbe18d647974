"""Where a study's runs execute: here one after another (``local``, this module), as Ray tasks
(``ray``, ``ray_tasks``), or as Slurm jobs through submitit (``slurm``; submitit's local mode,
``slurm-local``, runs the same path as subprocess jobs on this machine; ``slurm``). Each executor
only starts ``worker.execute`` for a run and reports when it has ended; what a run produced is
read from its folder by the driver."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sftmix.config import Resources
from sftmix.errors import SftmixError
from sftmix.study import worker


@dataclass
class Handle:
    """A submitted run: its id, folder and the engine's reference to it."""

    run_id: str
    run_out: Path
    ref: object = None


class Executor:
    """Start runs and tell when they end. ``check`` raises before any run starts."""

    name = "local"

    def __init__(self, resources: Resources, progress: bool = True):
        self.resources = resources
        self.progress = progress

    def check(self) -> None:
        """Raise, before any run starts, when the resources asked for are not there."""
        want = self.resources.gpus
        if want:
            # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
            import torch

            have = torch.cuda.device_count()
            if want > have:
                raise SftmixError(f"resources.gpus = {want} but this machine has {have} GPU(s)")
        if self.resources.nodes > 1:
            raise SftmixError(f"resources.nodes = {self.resources.nodes}: the {self.name} executor runs on one machine; "
                              "use executor slurm for runs over several nodes")
        if self.resources.cpus > (os.cpu_count() or 1):
            raise SftmixError(f"resources.cpus = {self.resources.cpus} but this machine has {os.cpu_count()} CPU(s)")

    @property
    def parallel(self) -> int:
        """How many runs may be in flight at once."""
        return self.resources.parallel or 1

    def submit(self, run_id: str, config: dict, run_out: Path) -> Handle:
        """Start a run (here: run it to the end in this process); return its handle."""
        h = Handle(run_id, run_out)
        h.ref = worker.execute(config, str(run_out), None, self.progress, self._launcher())
        return h

    def _launcher(self) -> list[str] | None:
        return worker.launch_command(self.resources.gpus, self.resources.nodes) if self.resources.gpus > 1 else None

    def finished(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, str | None]]:
        """Handles whose run has ended, each with an engine error message (None when the worker
        itself returned; its outcome is then in the run folder)."""
        return [(h, None) for h in handles]

    def describe(self) -> str:
        """Where runs go, in words (for the progress line)."""
        return self.name

    def close(self) -> None:
        """Release what the executor holds (a cluster it started)."""
        pass
