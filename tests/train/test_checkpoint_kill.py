"""A kill in the middle of a checkpoint save must leave a stage that resumes (incomplete
checkpoint-N folders made every rerun fail)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from helpers import TINY_MEASURE, TINY_SOURCES, TINY_TRAIN, max_weight_diff

# Runs `sftmix train` with TrainerState.save_to_json replaced by a SIGKILL on its Nth call: the
# weights and optimizer of that checkpoint are on disk, its trainer_state.json is not.
KILL_AT_SAVE = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerState
    n_kill = int(os.environ["KILL_AT_SAVE"])
    original, calls = TrainerState.save_to_json, [0]
    def save_to_json(self, path):
        calls[0] += 1
        if calls[0] == n_kill:
            if os.environ.get("KILL_EMPTY_CONFIG"):  # the other shape seen: a 0-byte config.json
                open(os.path.join(os.path.dirname(path), "config.json"), "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, path)
    TrainerState.save_to_json = save_to_json
    from sftmix.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def write_cfg(tmp, name):
    cfg = {"name": name, "model": "tiny", "sources": TINY_SOURCES,
           "strategy": {"name": "individual", "sources": ["generated_code"]},
           "train": {**TINY_TRAIN, "epochs": 3, "save_steps": 3}, **TINY_MEASURE, "output_dir": str(tmp / name)}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg, env=None, script=None):
    cmd = [sys.executable, "-c", script, "train", str(cfg), "--quiet"] if script else \
        [sys.executable, "-m", "sftmix.cli", "train", str(cfg), "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    r = train(write_cfg(tmp, "ref"))
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "ref" / "stage1_generated_code" / "final"


@pytest.mark.parametrize("kill_at,empty_config", [(1, False), (2, False), (2, True)])
def test_kill_inside_checkpoint_save_resumes_to_the_same_weights(tmp_path, reference, kill_at, empty_config):
    cfg = write_cfg(tmp_path, "killed")
    env = {"KILL_AT_SAVE": str(kill_at), **({"KILL_EMPTY_CONFIG": "1"} if empty_config else {})}
    r = train(cfg, env, KILL_AT_SAVE)
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])
    stage = tmp_path / "killed" / "stage1_generated_code"
    ckpts = sorted((stage / "checkpoints").glob("checkpoint-*"))
    assert ckpts and not (ckpts[-1] / "trainer_state.json").exists(), "the kill did not land inside a save"
    r = train(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((stage / "final" / "meta.json").read_text())
    if kill_at == 1:
        assert meta["resumed_from"] is None  # no complete checkpoint: the stage restarts
    else:
        assert meta["resumed_from"].endswith("checkpoint-3")  # the last complete one, not the torn checkpoint-6
    assert max_weight_diff(stage / "final", reference) < 1e-5
    assert meta["manifest"]["data_file"] == "data.jsonl"
