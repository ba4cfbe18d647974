"""Resume after a real SIGKILL, and 2 processes (gloo) against 1 at the same global batch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from helpers import TINY_EVAL, TINY_SOURCES, TINY_TRAIN, losses, weights
from sftmix.train.checkpoints import checkpoint_complete


def write_cfg(tmp: Path, name: str, strategy: dict, **train) -> Path:
    cfg = {"name": name, "model": "tiny", "sources": TINY_SOURCES, "strategy": strategy,
           "train": {**TINY_TRAIN, **train}, "eval": TINY_EVAL, "output_dir": str(tmp / name)}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def sftmix(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sftmix.cli", *args], capture_output=True, text=True, **kw)


def test_sigkill_then_restart_resumes_stage_and_skips_finished_ones(tmp_path):
    strategy = {"name": "sequential", "sources": ["generated_code", "generated_math"]}
    train = {"epochs": 12, "save_steps": 4}
    ref = write_cfg(tmp_path, "ref", strategy, **train)
    assert sftmix("train", str(ref), "--quiet").returncode == 0
    cfg = write_cfg(tmp_path, "killed", strategy, **train)
    proc = subprocess.Popen([sys.executable, "-m", "sftmix.cli", "train", str(cfg), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage2 = tmp_path / "killed" / "stage2_2_generated_math"
    deadline = time.time() + 120
    while time.time() < deadline and not list((stage2 / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (stage2 / "final" / "meta.json").exists(), "the kill came too late to test resume"
    stage1_meta = tmp_path / "killed" / "stage1_1_generated_code" / "final" / "meta.json"
    before = stage1_meta.stat().st_mtime_ns
    r = sftmix("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert stage1_meta.stat().st_mtime_ns == before  # finished stage skipped
    meta = json.loads((stage2 / "final" / "meta.json").read_text())
    assert meta["resumed_from"] and "checkpoint-" in meta["resumed_from"]
    # The resumed run continues the same trajectory as the uninterrupted one.
    ref_losses = losses(tmp_path / "ref" / "stage2_2_generated_math" / "final")
    got = losses(stage2 / "final")
    assert abs(got[-1] - ref_losses[-1]) < 1e-3
    # the tokens trained on before the kill are counted on, not lost
    ref_meta = json.loads((tmp_path / "ref" / "stage2_2_generated_math" / "final" / "meta.json").read_text())
    assert meta["real_tokens"] == ref_meta["real_tokens"] > 0 and meta["run_tokens_end"] == ref_meta["run_tokens_end"]
    assert not (stage2 / "checkpoints").exists()  # resume state removed once the stage is done


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_gloo_match_one_process(tmp_path):
    strategy = {"name": "individual", "sources": ["generated_math"]}
    one = write_cfg(tmp_path, "one", strategy, per_device_batch_size=4, batch_size=8)
    two = write_cfg(tmp_path, "two", strategy, per_device_batch_size=4, batch_size=8)
    assert sftmix("train", str(one), "--quiet").returncode == 0
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "sftmix.cli", "train", str(two), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "two" / "stage1_generated_math" / "final" / "meta.json").read_text())
    assert meta["processes"] == 2
    # the tokens of both processes are counted (the forgetting curves' token axis)
    meta1 = json.loads((tmp_path / "one" / "stage1_generated_math" / "final" / "meta.json").read_text())
    assert meta["real_tokens"] == meta1["real_tokens"] > 0
    l1, l2 = losses(tmp_path / "one" / "stage1_generated_math" / "final"), losses(tmp_path / "two" / "stage1_generated_math" / "final")
    assert len(l1) == len(l2) > 3
    # Same global batch of 8 (1 x 4 x accumulation 2 vs 2 processes x 4): same trajectory
    # within float-reduction tolerance.
    assert max(abs(a - b) / abs(a) for a, b in zip(l1, l2)) < 2e-3


def launcher(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def accelerate_train(config: str, cfg: Path, port: int, *overrides: str, background: bool = False):
    """``sftmix train`` under ``accelerate launch`` with a shipped config on 2 CPU processes. The
    CPU override: ``--mixed_precision no`` (the shipped bf16 is for GPUs; the run is fp32)."""
    cmd = [launcher("accelerate"), "launch", "--config_file", f"configs/accelerate/{config}", "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(port), "-m", "sftmix.cli", "train", str(cfg), *overrides, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


FSDP_TOLERANCE = 1e-5  # relative, per-step loss and final weights; measured 7e-8 (gloo's float reductions)


@pytest.mark.skipif(not Path(launcher("accelerate")).exists(), reason="accelerate's launcher not installed")
def test_fsdp_on_two_cpu_processes_matches_one_process_saves_a_full_model_and_resumes(tmp_path):
    """The shipped FSDP config (FSDP2, full state dict, Llama decoder layers wrapped) on 2 CPU
    processes with gloo: the same per-step losses as one process at the same global batch, a final
    folder that is an ordinary model, and a run killed mid-stage that resumes from its newest
    complete checkpoint and ends where the uninterrupted FSDP run ends."""
    strategy = {"name": "individual", "sources": ["generated_math"]}
    train = {"per_device_batch_size": 4, "batch_size": 8, "epochs": 4, "save_steps": 4}
    one = write_cfg(tmp_path, "one", strategy, **train)
    assert sftmix("train", str(one), "--quiet").returncode == 0
    r = accelerate_train("fsdp.yaml", write_cfg(tmp_path, "fsdp", strategy, **train), 29531)
    assert r.returncode == 0, r.stderr[-3000:]
    final1, final2 = (tmp_path / n / "stage1_generated_math" / "final" for n in ("one", "fsdp"))
    meta1, meta2 = (json.loads((f / "meta.json").read_text()) for f in (final1, final2))
    assert (meta2["distributed_type"], meta2["processes"]) == ("FSDP", 2)  # sharded, not DDP under another name
    l1, l2 = losses(final1), losses(final2)
    assert len(l1) == len(l2) == 24
    assert max(abs(a - b) / abs(a) for a, b in zip(l1, l2)) < FSDP_TOLERANCE
    assert meta2["real_tokens"] == meta1["real_tokens"]
    # An ordinary model folder: the same tensors as one process's (the tied output layer once),
    # the plain architecture, loaded and measured by sftmix eval.
    w1, w2 = weights(final1), weights(final2)
    assert w1.keys() == w2.keys()
    assert max(((w1[k] - w2[k]).abs().max() / w1[k].abs().max()).item() for k in w1) < FSDP_TOLERANCE
    assert json.loads((final2 / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    measured = []
    for final in (final1, final2):
        r = sftmix("eval", str(final), "--tasks", "loss", "--loss-sources", "generated_math", "--loss-samples", "8",
                   "--out", str(final.parent / "eval"), "--quiet")
        assert r.returncode == 0, r.stderr[-3000:]
        measured.append(json.loads((final.parent / "eval" / "results.json").read_text())["tasks"]["loss"]["generated_math"]["loss"])
    assert abs(measured[0] - measured[1]) / measured[0] < FSDP_TOLERANCE

    # Killed after its first checkpoint, rerun: resumes there and ends where the uninterrupted run ends.
    killed = write_cfg(tmp_path, "killed", strategy, **train)
    proc = accelerate_train("fsdp.yaml", killed, 29533, background=True)
    stage = tmp_path / "killed" / "stage1_generated_math"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoint_complete(c) for c in (stage / "checkpoints").glob("checkpoint-*")):
        time.sleep(0.02)
    # The launcher and both ranks at once, as a lost machine: torch's elastic agent starts each rank
    # in a session of its own, so a kill of the launcher's group alone would leave them training.
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        p.kill()
    proc.wait()
    assert not (stage / "final" / "meta.json").exists(), "the kill came too late to test resume"
    r = accelerate_train("fsdp.yaml", killed, 29535)
    assert r.returncode == 0, r.stderr[-3000:]
    meta3 = json.loads((stage / "final" / "meta.json").read_text())
    assert meta3["resumed_from"] and Path(meta3["resumed_from"]).name.startswith("checkpoint-"), meta3["resumed_from"]
    assert meta3["distributed_type"] == "FSDP" and meta3["real_tokens"] == meta2["real_tokens"]
    l3 = losses(stage / "final")
    # the steps up to the checkpoint come from its log history, the rest were trained again
    assert len(l3) == 24 and max(abs(a - b) / abs(a) for a, b in zip(l2, l3)) < FSDP_TOLERANCE
    w3 = weights(stage / "final")
    assert max(((w2[k] - w3[k]).abs().max() / w2[k].abs().max()).item() for k in w2) < FSDP_TOLERANCE
