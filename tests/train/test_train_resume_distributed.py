"""Resume after a real SIGKILL, and 2 processes (gloo) against 1 at the same global batch."""

import importlib.util
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

from helpers import TINY_MEASURE, TINY_SOURCES, TINY_TRAIN, losses, max_weight_diff, weights
from sftmix.eval.runner import EvalResults
from sftmix.io import read_record
from sftmix.supervised import HELDOUT_FILE
from sftmix.train.checkpoints import checkpoint_complete
from sftmix.train.meta import StageMeta, read_meta


def write_cfg(tmp: Path, name: str, strategy: dict, **train) -> Path:
    cfg = {"name": name, "model": "tiny", "sources": TINY_SOURCES, "strategy": strategy,
           "train": {**TINY_TRAIN, **train}, **TINY_MEASURE, "output_dir": str(tmp / name)}
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
    meta = read_meta(stage2 / "final")
    assert meta.resumed_from and "checkpoint-" in meta.resumed_from
    # The resumed run continues the same trajectory as the uninterrupted one.
    ref_losses = losses(tmp_path / "ref" / "stage2_2_generated_math" / "final")
    got = losses(stage2 / "final")
    # every logged step, not the last alone (a resume that replayed or skipped batches can end near
    # the same loss), and at float32's precision, not 1e-3
    assert len(got) == len(ref_losses) and max(abs(a - b) for a, b in zip(got, ref_losses)) < 1e-5, (got, ref_losses)
    assert max_weight_diff(stage2 / "final", tmp_path / "ref" / "stage2_2_generated_math" / "final") < 1e-5
    # the tokens trained on before the kill are counted on, not lost
    ref_meta = read_meta(tmp_path / "ref" / "stage2_2_generated_math" / "final")
    assert meta.real_tokens == ref_meta.real_tokens > 0 and meta.run_tokens_end == ref_meta.run_tokens_end
    assert not (stage2 / "checkpoints").exists()  # resume state removed once the stage is done


@pytest.mark.slow  # CI runs the same DDP path through accelerate's launcher in test_executors' two Slurm nodes
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
    meta = read_meta(tmp_path / "two" / "stage1_generated_math" / "final")
    assert meta.processes == 2
    # the tokens of both processes are counted (the forgetting curves' token axis)
    meta1 = read_meta(tmp_path / "one" / "stage1_generated_math" / "final")
    assert meta.real_tokens == meta1.real_tokens > 0
    l1, l2 = losses(tmp_path / "one" / "stage1_generated_math" / "final"), losses(tmp_path / "two" / "stage1_generated_math" / "final")
    assert len(l1) == len(l2) > 3
    # Same global batch of 8 (1 x 4 x accumulation 2 vs 2 processes x 4): same trajectory
    # within float-reduction tolerance.
    assert max(abs(a - b) / abs(a) for a, b in zip(l1, l2)) < 2e-3


def launcher(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def accelerate_train(config: str | Path, cfg: Path, port: int, background: bool = False, launch: tuple[str, ...] = ()):
    """``sftmix train`` under ``accelerate launch`` with an accelerate config (a shipped one by name)
    on 2 CPU processes. The CPU override: ``--mixed_precision no`` (the shipped bf16 is for GPUs;
    the runs are fp32)."""
    config = config if isinstance(config, Path) else Path("configs/accelerate") / config
    cmd = [launcher("accelerate"), "launch", "--config_file", str(config), *launch, "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(port), "-m", "sftmix.cli", "train", str(cfg), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


SHARDED_TOLERANCE = 1e-5  # relative, per-step losses and final weights; measured below 2e-7 (gloo's float reductions)
STRATEGY = {"name": "individual", "sources": ["generated_math"]}
SHARDED_TRAIN = {"per_device_batch_size": 4, "batch_size": 8, "epochs": 4, "save_steps": 4}  # 24 steps


def final_of(tmp: Path, name: str) -> Path:
    return tmp / name / "stage1_generated_math" / "final"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The single-process run the multi-process ones must equal: same data, same global batch."""
    tmp = tmp_path_factory.mktemp("one")
    r = sftmix("train", str(write_cfg(tmp, "one", STRATEGY, **SHARDED_TRAIN)), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return final_of(tmp, "one")


def assert_trains_as_one_process(final: Path, one: Path, distributed_type: str) -> StageMeta:
    """Per-step losses, real tokens and the saved tensors equal the single-process run's; the final
    folder is an ordinary model (plain architecture, the tied output layer stored once)."""
    meta, meta1 = (read_meta(f) for f in (final, one))
    assert (meta.distributed_type, meta.processes) == (distributed_type, 2)  # not DDP under another name
    l1, l2 = losses(one), losses(final)
    assert len(l1) == len(l2) == 24
    assert max(abs(a - b) / abs(a) for a, b in zip(l1, l2)) < SHARDED_TOLERANCE
    assert meta.real_tokens == meta1.real_tokens > 0
    w1, w2 = weights(one), weights(final)
    assert w1.keys() == w2.keys()
    assert max(((w1[k] - w2[k]).abs().max() / w1[k].abs().max()).item() for k in w1) < SHARDED_TOLERANCE
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    return meta


def killed_and_resumed(tmp: Path, config: str | Path, port: int, launch: tuple[str, ...] = ()) -> Path:
    """A run killed after its first complete checkpoint, then rerun; its final folder. The rerun
    must resume from that checkpoint (a run that restarted from scratch would end the same)."""
    killed = write_cfg(tmp, "killed", STRATEGY, **SHARDED_TRAIN)
    proc = accelerate_train(config, killed, port, background=True, launch=launch)
    stage = tmp / "killed" / "stage1_generated_math"
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoint_complete(c) for c in (stage / "checkpoints").glob("checkpoint-*")):
        time.sleep(0.02)
    # The launcher and both ranks at once, as a lost machine: torch's elastic agent starts each rank
    # in a session of its own, so a kill of the launcher's group alone would leave them training.
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        p.kill()
    proc.wait()
    assert not (stage / "final" / "meta.json").exists(), "the kill came too late to test resume"
    r = accelerate_train(config, killed, port + 1, launch=launch)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = read_meta(stage / "final")
    assert meta.resumed_from and Path(meta.resumed_from).name.startswith("checkpoint-"), meta.resumed_from
    return stage / "final"


needs_launcher = pytest.mark.skipif(not Path(launcher("accelerate")).exists(), reason="accelerate's launcher not installed")


@needs_launcher
@pytest.mark.parametrize("state_dict", ["FULL_STATE_DICT", "SHARDED_STATE_DICT"])
def test_fsdp_on_two_cpu_processes_matches_one_process_saves_a_full_model_and_resumes(tmp_path, one_process, state_dict):
    """The shipped FSDP config (FSDP2, full state dict, each decoder layer its own unit) on 2 CPU
    processes with gloo, killed after its first checkpoint and resumed: every step's loss (those
    before the kill from the checkpoint's history, the rest trained again) and the final weights
    equal one process's; the final folder is measured by sftmix eval like the one-process model.
    (Optimizer or scheduler state lost in the resume would change the losses after it.) With a
    sharded state dict too: its checkpoints hold sharded weights and no config.json, and were
    taken for incomplete, deleted, and the stage restarted."""
    port = 29531 if state_dict == "FULL_STATE_DICT" else 29535
    final = killed_and_resumed(tmp_path, "fsdp.yaml", port, launch=("--fsdp_state_dict_type", state_dict))
    meta = assert_trains_as_one_process(final, one_process, "FSDP")
    assert 0.5 <= meta.weights_held < 0.51  # each process held half (the odd vocabulary row on rank 0)
    if state_dict != "FULL_STATE_DICT":
        return
    measured = []
    for model in (one_process, final):
        out = tmp_path / f"eval_{model.parent.parent.name}"
        r = sftmix("eval", str(model), "--tasks", "loss", "--loss-sources", "generated_math", "--loss-samples", "8",
                   "--out", str(out), "--quiet")
        assert r.returncode == 0, r.stderr[-3000:]
        measured.append(read_record(out / "results.json", EvalResults).tasks["loss"].per_source["generated_math"].loss)
    assert abs(measured[0] - measured[1]) / measured[0] < SHARDED_TOLERANCE


def partitioned_zero3(tmp: Path, **zero_optimization) -> Path:
    """An accelerate config with the shipped ZeRO-3 settings but every parameter partitioned (the
    tiny model's are all below DeepSpeed's default persistence threshold of 1e5 elements)."""
    shipped = yaml.safe_load(Path("configs/accelerate/deepspeed_zero3.yaml").read_text())
    ds = shipped.pop("deepspeed_config")
    (tmp / "ds_zero3.json").write_text(json.dumps({
        "zero_optimization": {"stage": ds["zero_stage"], "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": ds["zero3_save_16bit_model"],
                              "offload_optimizer": {"device": ds["offload_optimizer_device"]},
                              "offload_param": {"device": ds["offload_param_device"]}, **zero_optimization},
        "gradient_accumulation_steps": ds["gradient_accumulation_steps"], "gradient_clipping": "auto",
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}))
    zero3 = tmp / "accelerate_zero3.yaml"  # not zero3.yaml: a run config may take that name
    zero3.write_text(yaml.safe_dump({**shipped, "deepspeed_config": {"deepspeed_config_file": str(tmp / "ds_zero3.json"),
                                                                     "zero3_init_flag": ds["zero3_init_flag"]}}))
    return zero3


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed (the deepspeed extra)")


@needs_launcher
@needs_deepspeed
def test_zero3_that_cannot_save_the_model_stops_before_training(tmp_path):
    """Without stage3_gather_16bit_weights_on_model_save, ZeRO-3 trained to the end and then failed
    to save the model (accelerate's get_state_dict refuses): the whole stage's work lost."""
    zero3 = partitioned_zero3(tmp_path, stage3_gather_16bit_weights_on_model_save=False)
    r = accelerate_train(zero3, write_cfg(tmp_path, "nosave", STRATEGY, **SHARDED_TRAIN), 29551)
    assert r.returncode != 0
    assert "cannot save the trained model as a model folder" in r.stderr, r.stderr[-3000:]
    stage = tmp_path / "nosave" / "stage1_generated_math"
    assert not list(stage.glob("checkpoints/checkpoint-*")) and not (stage / "final").exists()


@needs_launcher
def test_a_chunked_loss_under_fsdp_stops_before_training(tmp_path):
    """The chunked loss reads the output layer's weight outside its forward; under FSDP each process
    holds a shard of it. Asked for there, it is refused before the first step, the field named;
    ``auto`` computes the loss in full there (tests/train/test_kernels.py)."""
    cfg = write_cfg(tmp_path, "chunked", STRATEGY, **SHARDED_TRAIN, kernels={"loss": "chunked"})
    r = accelerate_train("fsdp.yaml", cfg, 29557)
    assert r.returncode != 0
    assert "train.kernels.loss: chunked computes the loss from the output layer's weight" in r.stderr, r.stderr[-3000:]
    stage = tmp_path / "chunked" / "stage1_generated_math"
    assert not list(stage.glob("checkpoints/checkpoint-*")) and not (stage / "final").exists()


@needs_launcher
@needs_deepspeed
def test_deepspeed_zero2_and_zero3_on_two_cpu_processes_match_one_process_and_zero3_resumes(tmp_path, one_process):
    """DeepSpeed runs on CPU processes (its CPU accelerator, gloo). ZeRO-2 with the shipped config.
    ZeRO-3 with the shipped config's settings but every parameter partitioned: DeepSpeed keeps a
    parameter whole below stage3_param_persistence_threshold (1e5 elements by default), which is
    every parameter of the tiny model, so the shipped config alone would not shard it at all.
    ZeRO-3 is killed after its first checkpoint and resumed, as FSDP is."""
    r = accelerate_train("deepspeed_zero2.yaml", write_cfg(tmp_path, "zero2", STRATEGY, **SHARDED_TRAIN), 29541)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = assert_trains_as_one_process(final_of(tmp_path, "zero2"), one_process, "DEEPSPEED")
    assert meta.weights_held == 1.0  # ZeRO-2 shards optimizer state and gradients, not weights

    zero3 = partitioned_zero3(tmp_path)
    meta = assert_trains_as_one_process(killed_and_resumed(tmp_path, zero3, 29543), one_process, "DEEPSPEED")
    assert meta.weights_held < 0.51  # partitioned: each process held about half


BF16_TRAIN = """
import sys
import sftmix.train.stage as stage
stage.cpu_has_bf16 = lambda: True  # this CPU emulates bf16; FSDP's mixed-precision policy is the same
from sftmix.cli import main
sys.exit(main(sys.argv[1:]))
"""


@needs_launcher
def test_fsdp_in_bf16_leaves_the_final_heldout_loss_to_the_evaluation(tmp_path):
    """Under FSDP with bf16 the curve runs the forward on bf16 copies of the weights: its last point
    is 1e-4 away from the fp32 evaluation of the saved weights (measured), so it must not be saved
    as the final held-out result that the evaluation reuses."""
    script = tmp_path / "bf16_train.py"
    script.write_text(BF16_TRAIN)
    cfg = write_cfg(tmp_path, "bf16", STRATEGY, per_device_batch_size=4, batch_size=8, precision="bf16")
    cmd = [launcher("accelerate"), "launch", "--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "2",
           "--mixed_precision", "bf16", "--main_process_port", "29561", str(script), "train", str(cfg), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    final = final_of(tmp_path, "bf16")
    meta = read_meta(final)
    assert (meta.distributed_type, meta.bf16) == ("FSDP", True) and len(meta.curve) >= 2
    assert not (final / HELDOUT_FILE).exists()


GROUP_THEN_COMMAND = """
import sys
import torch.distributed as dist
from sftmix.cli import main
dist.init_process_group("gloo", rank=0, world_size=1, init_method="file://" + sys.argv[1])
status = main(sys.argv[2:])
print(status, dist.is_initialized())
"""


@pytest.mark.parametrize("ok", [True, False], ids=["succeeded", "failed"])
def test_a_launched_command_destroys_its_process_group_before_the_interpreter_exits(tmp_path, ok):
    """Left to the interpreter's finalisation, gloo's worker threads abort a rank now and then
    ("terminate called without an active exception", SIGABRT) after its work has succeeded, and
    the launcher fails the run: seen in the FSDP resume test under load. ``main`` destroys the
    group after a command succeeds; after an error it leaves it (other ranks may still wait in a
    collective)."""
    cfg = tmp_path / "compose.yaml"
    mixture = {"name": "m", "parts": [{"source": "generated_math", "count": 5 if ok else 50}]}
    cfg.write_text(yaml.safe_dump({"seed": 0, "mixtures": [mixture], "sources": {"generated_math": {"size": 20}}}))
    r = subprocess.run([sys.executable, "-c", GROUP_THEN_COMMAND, str(tmp_path / "rendezvous"), "data", "compose", str(cfg), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-1] == ("0 False" if ok else "2 True")
