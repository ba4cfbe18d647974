"""Checkpoints of a stage: which are complete, and the newest to resume from."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

from sftmix.layout import safetensors_damage

# Where Trainer puts the optimizer state: one process or DDP; FSDP with a full state dict; FSDP
# with a sharded state dict (a torch.distributed.checkpoint folder, whose .metadata is written last).
OPTIMIZER_STATES = ("optimizer.pt", "optimizer.bin", "optimizer_0/.metadata")
SHARDED_MODEL = "pytorch_model_fsdp_0/.metadata"  # FSDP's sharded weights, in place of safetensors


def deepspeed_state_complete(folder: Path) -> bool:
    """DeepSpeed keeps model and optimizer state in a ``global_stepN`` folder and writes the
    ``latest`` file naming it once that folder is finished."""
    try:
        tag = (folder / "latest").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return bool(tag) and any((folder / tag).glob("*optim_states.pt"))


def checkpoint_complete(folder: Path) -> bool:
    """Whether a ``checkpoint-N`` folder was written to the end.

    ``Trainer`` writes a checkpoint in place: weights, then optimizer, scheduler and RNG state,
    then ``trainer_state.json``, then it deletes older checkpoints. A kill in between leaves a
    folder that ``get_last_checkpoint`` would still pick (it only looks at the number). Complete
    means: ``trainer_state.json`` parses, the optimizer state exists (as one process, DDP, FSDP or
    DeepSpeed write it), and the weights were finished: FSDP's sharded weights (a sharded state
    dict; such a checkpoint holds no config.json), or a model folder whose ``config.json`` parses
    (an adapter config with LoRA) and whose every safetensors file is as long as its header says.
    Each process's RNG state file present must be whole, too (one cut short crashes the resume).
    """
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not any((folder / name).exists() for name in OPTIMIZER_STATES) and not deepspeed_state_complete(folder):
        return False
    if not all(zipfile.is_zipfile(f) for f in folder.glob("rng_state*.pth")):  # torch.save's zip ends with its directory
        return False
    if (folder / SHARDED_MODEL).exists():
        return True
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if not (folder / "adapter_config.json").exists():  # LoRA checkpoints hold an adapter config instead
            return False
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        return False
    if any(safetensors_damage(w) for w in weights):
        return False
    return True


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint; incomplete ones (a kill during a save) are removed so that
    later saves and rotation never meet their leftovers."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    best = None
    for _, folder in found:
        if checkpoint_complete(folder):
            best = folder
    for _, folder in found:
        if folder != best and not checkpoint_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
    return str(best) if best else None
