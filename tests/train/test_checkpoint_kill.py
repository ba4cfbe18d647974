"""A kill in the middle of a checkpoint save must leave a stage that resumes (incomplete
checkpoint-N folders made every rerun fail)."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from helpers import TINY_MEASURE, TINY_SOURCES, TINY_TRAIN, max_weight_diff
from sftmix.config import TrainSettings
from sftmix.models import load_model, load_tokenizer, resolve_model
from sftmix.train.checkpoints import checkpoint_complete, last_complete_checkpoint
from sftmix.train.meta import read_meta
from sftmix.train.stage import Kernels, StageTrainer, training_arguments
from sftmix.train.tokenize import Collator

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
    meta = read_meta(stage / "final")
    if kill_at == 1:
        assert meta.resumed_from is None  # no complete checkpoint: the stage restarts
    else:
        assert meta.resumed_from.endswith("checkpoint-3")  # the last complete one, not the torn checkpoint-6
    assert max_weight_diff(stage / "final", reference) < 1e-5
    assert meta.manifest.data_file == "data.jsonl"


def whole_checkpoint(folder: Path, world: int) -> Path:
    """A checkpoint folder as Trainer leaves it with ``world`` processes, written by the libraries
    that write the real one (safetensors, torch.save)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    for rank in range(world):
        torch.save({"cpu": torch.random.get_rng_state(), "python": random.getstate()}, folder / f"rng_state_{rank}.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    return folder


def test_a_checkpoint_whose_rng_state_of_one_process_is_cut_short_is_incomplete(tmp_path):
    """Seen after a kill under FSDP on 2 processes: trainer_state.json written, rng_state_1.pth of
    0 bytes; taken as complete, the resume crashed on it."""
    older, torn = whole_checkpoint(tmp_path / "checkpoint-2", 2), whole_checkpoint(tmp_path / "checkpoint-4", 2)
    assert checkpoint_complete(torn)
    rng = torn / "rng_state_1.pth"
    whole = rng.read_bytes()
    for cut in (0, len(whole) // 2, len(whole) - 1):
        rng.write_bytes(whole[:cut])
        assert not checkpoint_complete(torn), cut
    assert last_complete_checkpoint(tmp_path) == str(older) and not torn.exists() and checkpoint_complete(older)


def test_every_process_has_written_its_rng_state_before_the_checkpoint_is_marked(tmp_path):
    """Trainer's own save waits for no one between each process's RNG file and process 0's
    trainer_state.json; sftmix's trainer waits there. A real save of the tiny model, watching what
    is on disk at each wait."""
    s = TrainSettings(epochs=1, max_steps=1, batch_size=4, per_device_batch_size=4, max_length=128, precision="fp32",
                      report_to=[], save_steps=1, group_by_length=False)
    kernels = Kernels(optimizer="adamw_torch", attention="eager", liger=False, compile=False)
    path = resolve_model("tiny")
    tok = load_tokenizer(path)
    trainer = StageTrainer(model=load_model(path), args=training_arguments(s, tmp_path, 0, 1, progress=False, kernels=kernels),
                           data_collator=Collator(tok.pad_token_id), processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    ckpt = tmp_path / "checkpoints" / "checkpoint-0"
    seen = []
    trainer.accelerator.wait_for_everyone = lambda: seen.append(((ckpt / "rng_state.pth").exists(),
                                                                 (ckpt / "trainer_state.json").exists()))
    trainer._save_checkpoint(trainer.model, None)
    assert checkpoint_complete(ckpt)
    assert (True, False) in seen, seen  # a wait after the RNG file and before the marker
