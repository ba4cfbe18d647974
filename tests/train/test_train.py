"""Training on the tiny model: strategies end to end, invariants, errors."""

import json
import math
import re
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO
from helpers import TINY_MEASURE, losses, max_weight_diff, tiny_run, weights
from sftmix import pipeline
from sftmix.cli import main
from sftmix.compat import is_checkpointing
from sftmix.config import RunConfig, validate
from sftmix.config.run import STRATEGY_MODELS
from sftmix.data.compose import Manifest
from sftmix.errors import SftmixError
from sftmix.io import read_record
from sftmix.models import load_tokenizer, resolve_model
from sftmix.runlock import RunLock
from sftmix.templates import render_model
from sftmix.train import stage
from sftmix.train.meta import StageMeta, read_meta
from sftmix.train.strategies import STRATEGIES as BUILDERS
from sftmix.train.strategies import RunRecord, dmt, mixed_sequential, plan, run_strategy, trained_view, training_pools
from sftmix.train.tokenize import pack

STRATEGIES = {
    "individual": {"name": "individual", "sources": ["generated_math"]},
    "multitask": {"name": "multitask", "sources": ["generated_math", "generated_code", "sharegpt"]},
    "sequential": {"name": "sequential", "sources": ["generated_code", "generated_math", "sharegpt"]},
    "mixed_sequential": {"name": "mixed_sequential", "specialised": ["generated_math", "generated_code"], "general": "sharegpt"},
    "dmt": {"name": "dmt", "specialised": ["generated_math", "generated_code"], "general": "sharegpt", "k": "1/4"},
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_paper_strategy_trains_end_to_end(name, tmp_path, monkeypatch):
    chunked = name == "sequential"  # one strategy computes its loss in chunks, through the whole stage machinery
    cfg = tiny_run(tmp_path, name, strategy={**STRATEGIES[name], "fraction": "1/2"},
                   **({"train": {"kernels": {"loss": "chunked"}}} if chunked else {}))
    calls = []  # the loss each stage computes with: a chunked loss recorded but not used would pass otherwise
    chosen = stage.linear_loss

    def counted(kernels):
        fn = chosen(kernels)
        return None if fn is None else lambda *a: calls.append(kernels.loss) or fn(*a)

    monkeypatch.setattr(stage, "linear_loss", counted)
    final = run_strategy(cfg, progress=False)
    meta = json.loads((final / "meta.json").read_text())
    n_stages = len(plan(cfg))
    assert meta["stage"].startswith(f"stage{n_stages}_")
    ls = losses(final)
    assert ls and all(math.isfinite(x) for x in ls)  # finite (no nan, no inf), logged every step
    assert meta["manifest"]["total"] > 0 and meta["tokenize"]["rows"] > 0 and meta["tokenize"]["cache"] in ("hit", "miss")
    assert meta["trainable_params"] == meta["total_params"] > 0 and meta["gradient_checkpointing"] is False
    assert meta["git_revision"] == checkout_revision()
    typed = read_meta(final)  # the file is one typed value: every field written is one the reader knows
    assert set(meta) == set(StageMeta.model_fields) and typed.model_dump(mode="json") == meta
    if not torch.cuda.is_available():  # what the fast paths resolved to here, recorded
        assert meta["kernels"] == {"optimizer": "adamw_torch_fused", "attention": "sdpa", "liger": False, "compile": False,
                                   "loss": "chunked" if chunked else "full"}
        assert set(calls) == ({"chunked"} if chunked else set())
    if n_stages > 1:
        assert meta["parent"]["stage"].startswith(f"stage{n_stages - 1}_")
    if name == "dmt":
        replay = [p for p in meta["manifest"]["parts"] if p.get("replay_of")]
        s1 = read_record(tmp_path / name / "stage1_1_specialised" / "data" / "manifest.json", Manifest)
        assert [p["count"] for p in replay] == [round(p.count / 4) for p in s1.parts]
        s1_ids = {p.source: p.ids for p in s1.parts}
        assert all(set(p["ids"]) <= set(s1_ids[p["source"]]) for p in replay)


def test_dmt_with_k0_equals_mixed_sequential(tmp_path):
    assert dmt(["a", "b"], "g", 0.0) == mixed_sequential(["a", "b"], "g")
    spec = {"specialised": ["generated_math", "generated_code"], "general": "sharegpt", "fraction": "1/2"}
    a = run_strategy(tiny_run(tmp_path, "dmt0", strategy={"name": "dmt", "k": 0, **spec}), progress=False)
    b = run_strategy(tiny_run(tmp_path, "mixseq", strategy={"name": "mixed_sequential", **spec}), progress=False)
    assert max_weight_diff(a, b) == 0.0


def test_multitask_on_one_source_equals_individual(tmp_path):
    a = run_strategy(tiny_run(tmp_path, "mt", strategy={"name": "multitask", "sources": ["generated_math"]}), progress=False)
    b = run_strategy(tiny_run(tmp_path, "ind", strategy={"name": "individual", "sources": ["generated_math"]}), progress=False)
    assert max_weight_diff(a, b) == 0.0


def test_batch_8x1_equals_4x2(tmp_path):
    st = {"name": "individual", "sources": ["generated_math"]}
    a = run_strategy(tiny_run(tmp_path, "b8", strategy=st, train={"per_device_batch_size": 8}), progress=False)
    b = run_strategy(tiny_run(tmp_path, "b4", strategy=st, train={"per_device_batch_size": 4}), progress=False)
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 3
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4
    assert max_weight_diff(a, b) < 1e-4


def checkout_revision() -> str | None:
    """What provenance must record: this checkout's git revision (None only outside a git checkout)."""
    root = REPO
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if rev.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def test_bf16_and_lora_and_packing_options_train(tmp_path):
    st = {"name": "individual", "sources": ["generated_code"]}
    cfg = tiny_run(tmp_path, "opts", strategy=st, train={"precision": "auto", "packing": True, "lora": {"r": 4, "alpha": 8},
                                                          "gradient_checkpointing": True})
    final = run_strategy(cfg, progress=False)
    meta = read_meta(final)
    assert meta.tokenize.packed_rows < meta.tokenize.rows
    assert meta.gradient_checkpointing is True  # the trainer had it on, not only the config
    assert 0 < meta.trainable_params < meta.total_params / 10  # only the adapters trained
    # LoRA on all linear layers, merged into the saved weights: the projections moved, nothing else did
    base, tuned = weights(cfg_base_model()), weights(final)
    assert base.keys() == tuned.keys()
    moved = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert moved and all(k.endswith("proj.weight") for k in moved), sorted(moved)
    assert any("embed" in k for k in base) and any("norm" in k for k in base)


def cfg_base_model():
    return resolve_model("tiny")


def test_tokenisation_is_cached(tmp_path):
    st = {"name": "individual", "sources": ["generated_math"]}
    a = run_strategy(tiny_run(tmp_path, "c1", strategy=st), progress=False)
    b = run_strategy(tiny_run(tmp_path, "c2", strategy=st), progress=False)
    ma, mb = read_meta(a).tokenize, read_meta(b).tokenize
    assert mb.cache == "hit" and ma.key == mb.key


def test_packing_keeps_samples_apart():
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    (p,) = pack(rows, 8)
    assert p["position_ids"] == [0, 1, 2, 0, 1]
    assert p["labels"] == [-100, 2, 3, -100, 5]


@pytest.mark.parametrize("patch,msg", [
    ({"model": "/nonexistent/model"}, "does not exist"),
    ({"strategy": {"name": "dmt", "specialised": ["generated_math"]}}, r"strategy.general: Field required"),
    ({"strategy": {"name": "individual", "sources": ["gsm9k"]}}, "did you mean 'gsm8k'"),
    ({"train": {"batch_size": 10, "per_device_batch_size": 4}}, "not a multiple"),
    ({"strategy": None, "stages": []}, "`stages` is empty"),
])
def test_bad_configs_are_clear_errors(patch, msg, tmp_path):
    base = {"name": "x", "model": "tiny", "strategy": {"name": "individual", "sources": ["generated_math"]},
            "output_dir": str(tmp_path / "x"), "train": {"report_to": []}, **TINY_MEASURE}
    for k, v in patch.items():
        if v is None:
            base.pop(k)
        elif isinstance(v, dict) and k == "train":
            base["train"] = {**base["train"], **v}
        else:
            base[k] = v
    with pytest.raises(SftmixError, match=msg):
        run_strategy(validate(RunConfig, base, "x.yaml"), progress=False)


def test_a_diverged_stage_stops_with_the_step_instead_of_training_on_nan_weights(tmp_path):
    """lr 1e30 turns the tiny model's weights to nan within a few steps. The Trainer's default
    (logging_nan_inf_filter) logged the window's mean in place of a nan loss, so the run trained
    to the end, wrote a stage of nan weights as done and evaluated it; now the stage stops at the
    first nan log and is not marked done."""
    st = {"name": "individual", "sources": ["generated_math"]}
    cfg = tiny_run(tmp_path, "nan", strategy=st, train={"lr": 1e30, "warmup_ratio": 0}, curve={"enabled": False})
    with pytest.raises(stage.TrainingDiverged, match=r"stage stage1_generated_math: the training loss is nan at step \d+ "
                                                     r"\(gradient norm .*\): training diverged.*Lower train.lr \(1e\+30 here\)"):
        run_strategy(cfg, progress=False)
    assert not list(tmp_path.rglob("meta.json")), "a diverged stage was marked done"


def test_held_out_rows_that_take_most_of_a_trained_pool_are_said(tmp_path, capsys):
    """A source without a test split gives its held-out rows from its pool: taking more than half
    of it is a warning that says how many rows are left to train on; taking all of it is an error
    (before, the stage trained on the other sources alone without a word)."""
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "input": "", "output": str(i)}) + "\n" for i in range(6)))
    fields = {"sources": {"mine": {"path": str(data), "format": "alpaca", "ability": "code"}},
              "strategy": {"name": "individual", "sources": ["mine"]}}
    assert len(training_pools(tiny_run(tmp_path, "few", heldout={"sources": ["mine"], "samples": 2}, **fields), ["mine"])["mine"]) == 4
    assert "warning" not in capsys.readouterr().err
    assert len(training_pools(tiny_run(tmp_path, "most", heldout={"sources": ["mine"], "samples": 4}, **fields), ["mine"])["mine"]) == 2
    assert "the held-out rows take 4 of the 6 rows of source 'mine' (heldout.samples = 4); it trains on the other 2" in capsys.readouterr().err
    with pytest.raises(SftmixError, match="heldout.samples = 6 takes all 6 rows of source 'mine', which the run trains on"):
        training_pools(tiny_run(tmp_path, "all", heldout={"sources": ["mine"], "samples": 6}, **fields), ["mine"])


def test_one_training_of_a_folder_at_a_time(tmp_path, capsys):
    """`sftmix train` twice on one folder wrote the same checkpoints from two processes. Now the
    second is refused, told who trains it; a process the holder started (a launched training)
    trains under the holder's lock; and a killed holder leaves no stale lock."""
    run_out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    data = tiny_run(tmp_path, "one", strategy={"name": "individual", "sources": ["generated_math"]}, output_dir=str(run_out))
    cfg.write_text(yaml.safe_dump(data.model_dump(mode="json")))
    hold = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom sftmix.runlock import RunLock\n"
                             "with RunLock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)", str(run_out)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        assert main(["train", str(cfg), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{run_out} is being trained by process {hold.pid} on " in err and "two trainings of one folder" in err, err
        assert not list(run_out.glob("stage*"))
    finally:
        hold.kill()
        hold.wait()
    with RunLock(run_out):  # as a study's worker holds it when it launches `sftmix train` in other processes
        assert main(["train", str(cfg), "--quiet"]) == 0
    assert stage.stage_done(run_out / "stage1_generated_math")


def test_quiet_prints_no_trainer_log_lines_and_keeps_them_in_meta(tmp_path, capsys, monkeypatch):
    """With its bars off (a launched process, a Slurm job's log) a training still prints the
    trainer's loss lines; `--quiet` prints none, in this process and in those it starts, and the
    losses are in meta.json either way. The command leaves its caller's environment as it was."""
    monkeypatch.delenv("SFTMIX_QUIET", raising=False)
    printed = {}
    for flag in ("--no-progress", "--quiet"):
        out = tmp_path / flag.strip("-")
        cfg = tmp_path / f"{flag.strip('-')}.yaml"
        data = tiny_run(tmp_path, "q", strategy={"name": "individual", "sources": ["generated_math"]}, output_dir=str(out))
        cfg.write_text(yaml.safe_dump(data.model_dump(mode="json")))
        assert main(["train", str(cfg), flag]) == 0
        captured = capsys.readouterr()
        printed[flag] = captured.out + captured.err
        assert losses(out / "stage1_generated_math" / "final")  # logged whether printed or not
        assert "SFTMIX_QUIET" not in os.environ
    assert "'loss':" in printed["--no-progress"], printed["--no-progress"]
    assert "'loss':" not in printed["--quiet"] and "'train_runtime':" not in printed["--quiet"], printed["--quiet"]
    assert "final checkpoint:" in printed["--quiet"]  # the result is still said


def test_a_quiet_run_prints_its_results_alone(tmp_path):
    """`sftmix run --quiet` prints the results' JSON and nothing else on stdout (DeepSpeed, which
    accelerate imports where it is installed, had announced its CPU accelerator there), and no
    library's progress bar on stderr (datasets' "Saving the dataset" had stayed)."""
    cfg = tmp_path / "q.yaml"
    data = tiny_run(tmp_path, "q", strategy={"name": "individual", "sources": ["generated_math"]})
    cfg.write_text(yaml.safe_dump(data.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    env["SFTMIX_CACHE"] = str(tmp_path / "cache")  # rows tokenised afresh: the bar of their saving is one to silence
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "run", str(cfg), "--quiet"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(json.loads(r.stdout)) == set(data.eval.tasks), r.stdout  # the whole of stdout is the results
    assert not re.search(r"it/s\]|examples/s\]|\d+%\|", r.stderr), r.stderr[-3000:]


def test_template_the_tokenizer_cannot_render(tmp_path):
    tok = load_tokenizer(cfg_base_model())
    tok.chat_template = None
    with pytest.raises(SftmixError, match="no chat template"):
        render_model([{"role": "user", "content": "x"}], tok)


def test_cli_train_reports_bad_config_without_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny\nstrategy: {name: dmtt}\n")
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "train", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and "strategy.name" in r.stderr and "Traceback" not in r.stderr


def test_a_run_folder_trained_under_another_config_is_refused_not_reused(tmp_path, capsys):
    """Before: a finished stage was skipped whatever the config now said, so a rerun with another
    learning rate reported the old model as the new run's. Now the folder's ``run.json`` (else
    its first stage's meta, for a folder of an earlier sftmix) names what differs, before any
    work; what does not change the training (eval, curves, kernels, name) reuses it."""
    kw = {"strategy": {"name": "individual", "sources": ["generated_code"]}, "output_dir": str(tmp_path / "out")}
    first = run_strategy(tiny_run(tmp_path, "r", **kw), progress=False)
    meta_before = (first / "meta.json").read_bytes()
    assert read_record(tmp_path / "out" / "run.json", RunRecord).config["train"]["lr"] == 1e-3
    again = tiny_run(tmp_path, "renamed", eval={"tasks": ["loss", "gsm8k"], "batch_size": 2}, curve={"points": 3},
                     train={"kernels": {"optimizer": "adamw_torch"}}, heldout={"sources": ["generated_code", "sharegpt"]}, **kw)
    assert pipeline.train(pipeline.plan(again), progress=False) == first  # another source's held-out rows: not trained on
    with pytest.raises(SftmixError, match="heldout.generated_code.samples: 8 there, 7 now"):
        pipeline.plan(tiny_run(tmp_path, "r", heldout={"samples": 7}, **kw))  # the rows left out of the trained pool
    other = tiny_run(tmp_path, "r", train={"lr": 5e-4}, **kw)
    with pytest.raises(SftmixError, match=r"was trained under another config \(.*run.json\): train.lr: 0.001 there, 0.0005 now\. "):
        pipeline.plan(other)
    with pytest.raises(SftmixError, match="train.lr: 0.001 there, 0.0005 now"):
        pipeline.train(pipeline.plan(other), progress=False)
    (tmp_path / "out" / "run.json").write_text('{"config": 3}')
    with pytest.raises(SftmixError, match=r"run.json: not a RunRecord \(config: .*\); it keeps the config .* was trained under"):
        pipeline.plan(other)
    (tmp_path / "out" / "run.json").write_text('{"config": {"unknown_field": 1}}')  # a config this sftmix cannot read
    pipeline.plan(other)  # not refused, but said: a comparison skipped without a word would pass for one that found nothing
    assert "run.json holds a config this sftmix cannot read" in capsys.readouterr().err
    (tmp_path / "out" / "run.json").unlink()  # a folder of an earlier sftmix: its first stage's meta says
    with pytest.raises(SftmixError, match=r"meta.json\): train.lr: 0.001 there"):
        pipeline.plan(other)
    assert (first / "meta.json").read_bytes() == meta_before
    cli = tmp_path / "other.yaml"
    cli.write_text(yaml.safe_dump(tiny_run(tmp_path, "r", strategy={"name": "individual", "sources": ["generated_math"]},
                                           output_dir=str(tmp_path / "out")).model_dump(mode="json")))
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "train", str(cli)], capture_output=True, text=True)
    assert r.returncode == 2 and "strategy.sources: ['generated_code'] there, ['generated_math'] now" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and (first / "meta.json").read_bytes() == meta_before


@pytest.mark.parametrize("change,same", [
    ({"eval": {"limit": 3}}, True), ({"eval": {"tasks": ["loss", "gsm8k"]}}, True), ({"name": "other"}, True),
    ({"train": {"kernels": {"optimizer": "adamw_torch"}}}, True),
    ({"eval": {"tasks": ["gsm8k"]}}, False),  # no loss task: no forgetting curves measured during training
    ({"eval": {"batch_size": 2}}, False),  # the curves' batches
    ({"seed": 1}, False), ({"curve": {"points": 3}}, False), ({"heldout": {"samples": 7}}, False), ({"train": {"lr": 5e-4}}, False),
])
def test_what_a_reused_training_must_share(change, same, tmp_path):
    """A study run takes another run's finished training only where its stages (weights and
    forgetting curves) would be the same: ``trained_view`` leaves out where a run is written,
    its kernels, and what its final evaluation measures beyond what the curves read."""
    kw = {"strategy": STRATEGIES["individual"]}
    base = tiny_run(tmp_path, "r", eval={"tasks": ["loss"]}, **kw)
    other = tiny_run(tmp_path, change.pop("name", "r"), eval={"tasks": ["loss"], **change.pop("eval", {})}, **change, **kw)
    assert (trained_view(base) == trained_view(other)) == same


def test_every_strategy_the_config_accepts_has_a_builder():
    assert set(STRATEGY_MODELS) == set(BUILDERS) == set(STRATEGIES)


def test_checkpointing_is_read_under_the_newer_name_without_touching_the_older():
    """transformers 5.25 warns (FutureWarning, removal in v6) whenever ``is_gradient_checkpointing``
    is read; ``compat.is_checkpointing`` reads it only where ``is_activation_checkpointing`` is
    missing (5.19), so a training on 5.25 warns nothing."""
    class Newer:
        is_activation_checkpointing = True

        @property
        def is_gradient_checkpointing(self):
            raise AssertionError("the deprecated name was read")

    class Older:
        is_gradient_checkpointing = True

    assert is_checkpointing(Newer()) and is_checkpointing(Older()) and not is_checkpointing(object())
