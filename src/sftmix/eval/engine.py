"""A managed inference engine: ``vllm serve`` of one checkpoint, started, checked and stopped by
sftmix for one evaluation (``eval.backend: vllm_server``).

A study trains a new checkpoint in every run, so a server that a user starts by hand serves the
wrong model after the first run. Here every evaluation gets its own server, on that run's
resources::

    with ManagedServer(checkpoint, cfg.vllm_server, dtype, log) as server:
        ...  # OpenAI-compatible completions at server.url, model server.name

- **Start**: the server runs under a guard (``python -m sftmix.eval.engine --guard PARENT -- CMD``)
  that leads a process group of its own; the server and every process it starts (vLLM's engine
  core) belong to it. Its output goes to ``log`` (the evaluation folder's ``vllm_server.log``).
- **Ready**: ``GET /v1/models`` answers within ``start_timeout_s``; a server that exits or does not
  answer in time is an error showing the log's tail.
- **Stop**: ``close`` (on success, on an error, on Ctrl-C: the ``with`` block) sends SIGTERM to the
  group, then SIGKILL after a grace period. When the evaluating process itself is killed (SIGKILL
  leaves it no chance to clean up), the guard sees its parent gone within half a second and stops
  the group the same way: no server survives its evaluation.
- **LoRA**: sftmix's LoRA runs save merged weights, which serve as any checkpoint. A folder that
  holds a PEFT adapter (``adapter_config.json``) is served as its base model with
  ``--enable-lora`` and the adapter as the served model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from sftmix.config.run import VLLMServerConfig
from sftmix.errors import SftmixError

GRACE_S = 20.0  # SIGTERM to SIGKILL
POLL_S = 0.5  # how often the guard looks for its parent
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts
MARK = "SFTMIX_ENGINE"  # an environment variable every process of one server carries (its id)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a Python error as a traceback ends it: at the start of a line or after a logger's "[file.py:12] "
ERROR_LINE = re.compile(r"(?:^|\] )((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): .+)$")


def first_error(path: Path) -> str:
    """The first Python error a log reports (the root cause: what fails next comes after it), with
    the last one where it differs; '' if none."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [m.group(1).strip() for line in lines if (m := ERROR_LINE.search(line))]
    if not errors:
        return ""
    return errors[0] + (f" (and last: {errors[-1]})" if errors[-1] != errors[0] else "")


def log_tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log (for an error message)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def server_command(model_path: str, cfg: VLLMServerConfig, dtype: str, port: int, name: str) -> list[str]:
    """The ``vllm serve`` command line for ``model_path`` (an adapter folder: its base, with the adapter)."""
    prefix = cfg.command or [cfg.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    args = ["--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--tensor-parallel-size", str(cfg.tensor_parallel_size),
            "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    adapter = Path(model_path) / "adapter_config.json"
    if adapter.exists():
        try:
            meta = json.loads(adapter.read_text())
            base, rank = meta["base_model_name_or_path"], int(meta.get("r", 16))
        except (ValueError, KeyError, TypeError) as e:
            raise SftmixError(f"{adapter}: not a PEFT adapter config ({e})") from None
        max_rank = next((r for r in LORA_RANKS if r >= rank), rank)  # vLLM takes one of these
        args += ["--enable-lora", "--max-lora-rank", str(max_rank), "--lora-modules", f"{name}={model_path}"]
        served = ["--served-model-name", f"{name}-base"]
        model = base
    else:
        served = ["--served-model-name", name]
        model = model_path
    if cfg.max_model_len:
        args += ["--max-model-len", str(cfg.max_model_len)]
    if not (cfg.compile if cfg.compile is not None else _cuda()):
        args += ["-O0", "--enforce-eager"]
    head = [*prefix, model] if cfg.command else [*prefix, "--model", model]
    return [*head, *served, *args, *cfg.extra_args]


def _cuda() -> bool:
    import torch  # heavy: only when the default compile setting is asked for

    return torch.cuda.is_available()


class ManagedServer:
    """One ``vllm serve`` of one checkpoint, for one evaluation (see the module docstring)."""

    def __init__(self, model_path: str, cfg: VLLMServerConfig, dtype: str, log: Path, name: str = "sftmix-eval"):
        self.model_path, self.cfg, self.dtype, self.log, self.name = model_path, cfg, dtype, Path(log), name
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self.id = uuid.uuid4().hex

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> ManagedServer:
        """Start the server and wait until it answers; an error (with the log's tail) if it does not."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cmd = server_command(self.model_path, self.cfg, self.dtype, self.port, self.name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, MARK: self.id, "VLLM_CPU_KVCACHE_SPACE": str(self.cfg.cpu_kv_cache_gb),
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if self.cfg.python or self.cfg.command:
            env.pop("PYTHONPATH", None)  # another environment: none of this one's packages
        guard = [sys.executable, "-m", "sftmix.eval.engine", "--guard", str(os.getpid()), "--"]
        with open(self.log, "w") as logf:
            logf.write("$ " + " ".join(cmd) + "\n")
            logf.flush()
            self.proc = subprocess.Popen([*guard, *cmd], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)  # its own group: Ctrl-C reaches sftmix, which stops it
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise SftmixError(f"eval.vllm_server: the server exited with status {self.proc.returncode} before it answered; "
                                  f"log {self.log}{self._first_error()}, last lines:\n{log_tail(self.log)}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise SftmixError(f"eval.vllm_server: the server did not answer within {self.cfg.start_timeout_s:.0f} s "
                                  f"(eval.vllm_server.start_timeout_s); log {self.log}{self._first_error()}, last lines:\n"
                                  f"{log_tail(self.log)}")
            time.sleep(1.0)

    def _first_error(self) -> str:
        error = first_error(self.log)
        return f", its first error: {error}" if error else ""

    def failure(self, wait_s: float = 10.0) -> str:
        """Why the server stopped answering, as far as it says: whether it exited (waiting up to
        ``wait_s`` for a server that is going down) and the first error its log reports."""
        if self.proc is None:
            return ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait_s)
        status = self.proc.poll()
        state = f"exited with status {status}" if status is not None else "is still running"
        return f"the managed server {state}; log {self.log}{self._first_error() or ', which reports no error'}"

    def served_model(self) -> str:
        """The model name requests must use (the adapter's name for an adapter folder)."""
        return self.name

    def version(self) -> str:
        """The engine's version as the server reports it (``GET /version``); '' where it does not say."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/version", timeout=5) as r:
                return str(json.loads(r.read()).get("version", ""))
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        """Stop the server and every process it started (SIGTERM, then SIGKILL after a grace period)."""
        if self.proc is None:
            return
        _stop_group(self.proc.pid, lambda t: self.proc.wait(t))
        self.proc = None


def _stop_group(pgid: int, wait) -> None:
    """SIGTERM to process group ``pgid``, ``wait(timeout)`` for its leader, then SIGKILL to what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        wait(GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
        wait(5)


def guard(parent: int, cmd: list[str]) -> int:
    """Run ``cmd`` in this process's group and stop the whole group when ``parent`` is gone or this
    guard is told to stop; the command's exit status otherwise."""
    child = subprocess.Popen(cmd)
    stopping = False

    def stop(*_) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM must not end the guard before the rest
        with contextlib.suppress(ProcessLookupError):
            os.killpg(0, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(GRACE_S)
        os.killpg(0, signal.SIGKILL)  # whatever is left, the guard included

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    while True:
        try:
            return child.wait(POLL_S)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:  # the evaluating process died (its orphans go to init or a subreaper)
                stop()


if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:
    sep = sys.argv.index("--")
    sys.exit(guard(int(sys.argv[2]), sys.argv[sep + 1:]))
