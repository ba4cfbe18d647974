import hashlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from pydantic import BaseModel
from transformers import TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

import sftmix.config as config
from conftest import REPO
from sftmix.config import DataConfig, RunConfig, load_config, validate
from sftmix.config.run import MOVED, STRATEGY_MODELS, OpenAIBackendConfig, VLLMBackendConfig, upgrade
from sftmix.demo import demo_study
from sftmix.errors import SftmixError
from sftmix.study.grid import check_metrics, expand
from sftmix.study.runner import load_study
from sftmix.train.strategies import run_id


def test_accelerate_configs_parse():
    files = sorted((REPO / "configs/accelerate").glob("*.yaml"))
    assert {f.stem for f in files} >= {"single", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    for f in files:
        assert "distributed_type" in yaml.safe_load(f.read_text())


def test_example_configs_validate():
    examples, runs = sorted((REPO / "configs/examples").glob("*.yaml")), sorted((REPO / "configs/train").glob("*.yaml"))
    assert len(examples) >= 2 and len(runs) >= 2, (examples, runs)  # a glob that finds nothing checks nothing
    for f in examples:
        load_config(f, DataConfig)
    for f in runs:
        load_config(f, RunConfig)


# ---- the multi-process configs are read by accelerate's own launcher and built into its plugins,
# so that a typo cannot first show on a GPU cluster (test_train_resume_distributed runs them on CPU
# processes; what only GPUs exercise, bf16 and offload at scale, rests on these checks)

def launch_args(path):
    """What `accelerate launch --config_file PATH` makes of a config (its own parser and checks)."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    return _validate_launch_command(args)[0]


def unknown_keys(path) -> list[str]:
    """Keys of a config's fsdp_config / deepspeed_config that `accelerate launch` has no argument
    for (it would ignore them without a word), or values outside an argument's choices."""
    actions = {a.dest: a for a in launch_command_parser()._actions}
    doc = yaml.safe_load(Path(path).read_text())
    bad = []
    for section in ("fsdp_config", "deepspeed_config"):
        for key, value in (doc.get(section) or {}).items():
            if key not in actions:
                bad.append(f"{section}.{key}")
            elif actions[key].choices and str(value) not in map(str, actions[key].choices):
                bad.append(f"{section}.{key}={value!r} (choices {list(actions[key].choices)})")
    return bad


def test_every_key_of_the_shipped_multi_process_configs_is_one_accelerate_knows(tmp_path):
    for name in ("fsdp", "deepspeed_zero2", "deepspeed_zero3", "ddp"):
        assert unknown_keys(REPO / "configs/accelerate" / f"{name}.yaml") == [], name
    # the check sees a typo and a value out of range
    doc = yaml.safe_load((REPO / "configs/accelerate/fsdp.yaml").read_text())
    doc["fsdp_config"]["fsdp_state_dict_typ"] = doc["fsdp_config"].pop("fsdp_state_dict_type")
    doc["fsdp_config"]["fsdp_version"] = 3
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(doc))
    said = unknown_keys(typo)
    assert "fsdp_config.fsdp_state_dict_typ" in said and any(s.startswith("fsdp_config.fsdp_version=3") for s in said), said


def shipped_fsdp_plugin(monkeypatch, path=REPO / "configs/accelerate/fsdp.yaml"):
    """The FSDP plugin each process builds from the environment the launcher gives it."""
    args = launch_args(path)
    assert args.use_fsdp
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    return FullyShardedDataParallelPlugin()


def tiny_decoder(kind: str):
    """A 2-layer random model of an architecture, built from its config alone (no download)."""
    config = getattr(transformers, f"{kind}Config")(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2)
    return getattr(transformers, f"{kind}ForCausalLM")(config)


def wrapped_layers(plugin, model) -> list[str]:
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    return [type(m).__name__ for m in model.modules() if policy(m)]


@pytest.mark.parametrize("kind", ["Llama", "Qwen2", "Mistral"])
def test_the_shipped_fsdp_config_wraps_each_decoder_layer_of_any_architecture(monkeypatch, kind):
    plugin = shipped_fsdp_plugin(monkeypatch)
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading and plugin.reshard_after_forward
    model = tiny_decoder(kind)
    # the model's own decoder layer, once per layer (SmolLM2 and the tiny model are Llamas)
    assert wrapped_layers(plugin, model) == [f"{kind}DecoderLayer"] * 2
    assert set(model._no_split_modules) == {f"{kind}DecoderLayer"}


def test_a_layer_class_named_in_the_config_fits_one_architecture_only(monkeypatch, tmp_path):
    """Why the shipped config names no class: LlamaDecoderLayer (as it used to) stops a Qwen2 run."""
    doc = yaml.safe_load((REPO / "configs/accelerate/fsdp.yaml").read_text())
    doc["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] = "LlamaDecoderLayer"
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump(doc))
    plugin = shipped_fsdp_plugin(monkeypatch, named)
    assert wrapped_layers(plugin, tiny_decoder("Llama")) == ["LlamaDecoderLayer"] * 2
    with pytest.raises(ValueError, match="Could not find the transformer layer class LlamaDecoderLayer"):
        wrapped_layers(plugin, tiny_decoder("Qwen2"))


def test_the_shipped_deepspeed_configs_build_accelerates_deepspeed_plugin():
    for name, stage in (("deepspeed_zero2", 2), ("deepspeed_zero3", 3)):
        path = REPO / "configs/accelerate" / f"{name}.yaml"
        assert launch_args(path).use_deepspeed
        ds = DeepSpeedPlugin(**yaml.safe_load(path.read_text())["deepspeed_config"]).deepspeed_config
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
        # clipping and accumulation are the run's: the trainer fills them from train.max_grad_norm and
        # the batch (a number in the config would contradict a run that sets another and stop it)
        filled = HfTrainerDeepSpeedConfig(ds)
        filled.trainer_config_process(TrainingArguments("out", max_grad_norm=0.3, gradient_accumulation_steps=4, use_cpu=True))
        assert (filled.config["gradient_clipping"], filled.config["gradient_accumulation_steps"]) == (0.3, 4)
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)


def test_the_config_package_imports_nothing_above_it():
    """config/ is the bottom layer: reading a config loads no task registry, no data or training code
    (it imported the eval registry, closing an import circle back to config)."""
    code = "import sys, sftmix.config; print(sorted(m for m in sys.modules if m.startswith('sftmix.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(loaded) == ["sftmix.config", "sftmix.config.executor", "sftmix.config.run", "sftmix.config.study", "sftmix.errors"]


def test_the_study_driver_and_the_report_load_no_torch():
    """A study's driver (status, ingest, the store) and its report read the typed records of run
    folders (stage meta with its tokenisation counts, results, fits): none of them needs torch or
    transformers, whose import costs seconds on every `study status`."""
    code = ("import sys, sftmix.cli, sftmix.study.runner, sftmix.study.ingest, sftmix.analysis.report, sftmix.train.meta; "
            "print([m for m in ('torch', 'transformers', 'datasets') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(loaded) == []


def test_every_config_field_says_what_it_is_for():
    """The field descriptions are what `--help` and the README's YAML reference show."""
    models = {m for m in vars(config).values() if inspect.isclass(m) and issubclass(m, BaseModel)}
    models |= {*STRATEGY_MODELS.values(), OpenAIBackendConfig, VLLMBackendConfig}
    missing = [f"{m.__name__}.{f}" for m in models for f, info in m.model_fields.items() if not (info.description or "").strip()]
    assert not missing, missing


@pytest.mark.parametrize("quick", [True, False])
def test_the_demo_study_validates_without_training(quick, tmp_path, monkeypatch):
    """The demo builds its study in code: it must pass the same checks as a study file (its
    strategies once carried every source's fraction, which the strategy models refuse)."""
    monkeypatch.delenv("SFTMIX_DATA_DIR", raising=False)
    study, _ = demo_study("tiny", str(tmp_path / "no-data"), str(tmp_path / "d"), quick=quick, benchmarks=None if quick else 5)
    runs = expand(study, notes=[])
    check_metrics(study, runs, "demo")
    assert len({r.group for r in runs}) == 7
    # the figure reads the DMT run's config back from the store (stored as JSON of model_dump())
    dmt = [r for r in runs if r.label.startswith("strategy=dmt")]
    assert dmt and all(RunConfig.model_validate(json.loads(json.dumps(r.config.model_dump()))) == r.config for r in runs)


# The run ids of the shipped configs (md5 over a study's sorted run ids), as sftmix computed them
# before the held-out rows, the curves and each benchmark got config sections of their own: the
# move must not change what a run is called, or a study's stored results stop matching its runs.
PINNED_IDS = {("dmt_k.yaml", None): "24056945d1", ("mixture_law.yaml", "small"): "c559b09f54",
              ("rq4_strategies.yaml", None): "6ab094e817", ("ablation_sharegpt.yaml", "small"): "6c274339f7"}
PINNED_RUN = {"smollm2_dmt.yaml": "7707d57afcf9", "tiny_dmt.yaml": "a4a9b2117361"}


def test_run_ids_are_those_of_the_flat_eval_section(monkeypatch, shared_data):
    monkeypatch.setenv("SFTMIX_DATA_DIR", str(shared_data))  # the ids of runs on the real data, not on fallbacks
    for (name, profile), want in PINNED_IDS.items():
        _, runs = load_study(str(REPO / "configs" / "studies" / name), profile, read_only=True)
        assert hashlib.md5(" ".join(sorted(r.id for r in runs)).encode()).hexdigest()[:10] == want, (name, profile)
    for name, want in PINNED_RUN.items():
        assert run_id(load_config(REPO / "configs" / "train" / name, RunConfig)) == want, name


def test_a_flat_eval_key_of_earlier_versions_names_its_new_place(tmp_path):
    for old, new in MOVED.items():
        with pytest.raises(SftmixError, match=f"eval.{old} is now {new}"):
            validate(RunConfig, {"strategy": {"name": "individual", "sources": ["gsm8k"]}, "eval": {old: 1}}, "run.yaml")
    # every new place exists: setting it there validates
    cfg = validate(RunConfig, {"strategy": {"name": "individual", "sources": ["gsm8k"]}, "heldout": {"samples": 3, "seed": 2},
                               "curve": {"enabled": False, "points": 0},
                               "eval": {"mtbench": {"repeats": 3, "judge": {"model": "j"}}, "humaneval": {"workers": 2}}}, "x")
    assert (cfg.heldout.samples, cfg.heldout.seed, cfg.curve.enabled, cfg.eval.mtbench.repeats, cfg.eval.mtbench.judge.model,
            cfg.eval.humaneval.workers) == (3, 2, False, 3, "j", 2)


def test_a_config_stored_flat_by_an_earlier_version_upgrades_to_the_same_run():
    """A study's store keeps each run's config as it was run: an earlier version's flat eval
    section, upgraded, is the same run (same config, same id) as today's form of it."""
    cfg = validate(RunConfig, {"strategy": {"name": "dmt", "specialised": ["gsm8k"], "general": "sharegpt", "k": "1/4"},
                               "heldout": {"sources": ["gsm8k"], "samples": 7, "max_length": 99, "seed": 3},
                               "curve": {"enabled": False, "points": 2},
                               "eval": {"tasks": ["loss", "mtbench"], "gsm8k": {"max_new_tokens": 11},
                                        "humaneval": {"max_new_tokens": 12, "wrapper": "raw", "workers": 2},
                                        "mtbench": {"max_new_tokens": 13, "repeats": 3, "judge": {"model": "j"}}}}, "x")
    flat = {**cfg.legacy_dump(), "strategy": cfg.strategy.model_dump(), "name": cfg.name, "output_dir": None}
    assert "loss_samples" in flat["eval"] and "heldout" not in flat
    again = validate(RunConfig, upgrade(flat), "stored")
    assert again == cfg and run_id(again) == run_id(cfg)
    assert "loss_samples" in flat["eval"]  # the stored document itself is left as it was
