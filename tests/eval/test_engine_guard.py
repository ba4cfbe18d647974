"""The managed server's command line and its guard, where vLLM need not be installed: the guard
stops a whole process group (a command and the processes it starts) when its parent dies or when
it is told to, and the command line serves a checkpoint, an adapter folder and another environment
as vLLM expects. (The real server under the guard: ``test_engines.py``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

from sftmix.config.run import VLLMServerConfig
from sftmix.eval.engine import server_command
from vllm_server import engine_processes

TAG = "SFTMIX_GUARD_TEST"


def wait_gone(tag: str, seconds: float, keep: frozenset = frozenset()) -> list[int]:
    """The tagged processes besides ``keep`` still alive after waiting up to ``seconds`` for them to end."""
    deadline = time.time() + seconds
    while time.time() < deadline and set(engine_processes(tag, key=TAG)) - keep:
        time.sleep(0.2)
    return sorted(set(engine_processes(tag, key=TAG)) - keep)


PARENT = """
import os, subprocess, sys, time
cmd = [sys.executable, "-m", "sftmix.eval.engine", "--guard", str(os.getpid()), "--", "sh", "-c", "sleep 300 & sleep 300"]
guard = subprocess.Popen(cmd, start_new_session=True)
print(guard.pid, flush=True)
time.sleep(300)
"""


def _start_parent(tag: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env={**os.environ, TAG: tag})
    guard = int(parent.stdout.readline())
    deadline = time.time() + 30
    while time.time() < deadline and len(engine_processes(tag, key=TAG)) < 5:  # parent, guard, sh and its two sleeps
        time.sleep(0.2)
    assert len(engine_processes(tag, key=TAG)) == 5, engine_processes(tag, key=TAG)
    return parent, guard


def test_the_guard_stops_its_group_when_the_parent_is_killed():
    tag = uuid.uuid4().hex
    parent, _ = _start_parent(tag)
    parent.kill()  # SIGKILL: the parent cleans nothing up
    parent.wait()
    assert wait_gone(tag, 10) == []  # the guard, sh and both sleeps


def test_the_guard_stops_its_group_when_told_to():
    tag = uuid.uuid4().hex
    parent, guard = _start_parent(tag)
    try:
        os.killpg(guard, signal.SIGTERM)  # what ManagedServer.close sends
        assert wait_gone(tag, 10, keep=frozenset({parent.pid})) == []  # all but the parent, which lives on
        assert parent.poll() is None
    finally:
        parent.kill()
        parent.wait()


def test_the_command_line_serves_a_checkpoint_an_adapter_and_another_environment(tmp_path):
    cmd = server_command("/ckpt", VLLMServerConfig(compile=False, max_model_len=1024), "float32", 1234, "run")
    assert cmd[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"] and cmd[4] == "/ckpt"
    assert cmd[cmd.index("--served-model-name") + 1] == "run" and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--dtype") + 1] == "float32" and cmd[cmd.index("--max-model-len") + 1] == "1024"
    assert "-O0" in cmd and "--enforce-eager" in cmd
    other = server_command("/ckpt", VLLMServerConfig(python="/opt/vllm/bin/python", compile=True, extra_args=["--seed", "3"]),
                           "bfloat16", 1, "run")
    assert other[0] == "/opt/vllm/bin/python" and "-O0" not in other and other[-2:] == ["--seed", "3"]
    assert server_command("/ckpt", VLLMServerConfig(command=["vllm", "serve"]), "float32", 1, "run")[:3] == ["vllm", "serve", "/ckpt"]
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/base", "r": 12}))
    lora = server_command(str(tmp_path), VLLMServerConfig(), "float32", 1, "run")
    assert lora[lora.index("--model") + 1] == "/base" and "--enable-lora" in lora
    assert lora[lora.index("--lora-modules") + 1] == f"run={tmp_path}" and lora[lora.index("--max-lora-rank") + 1] == "16"
    assert lora[lora.index("--served-model-name") + 1] == "run-base"  # requests name the adapter, "run"
