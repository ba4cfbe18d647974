from pathlib import Path

import yaml

from conftest import REPO
from sftmix.config import DataConfig, RunConfig, load_config


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


# ---- the multi-process configs that cannot run here (FSDP needs accelerator devices in
# accelerate; DeepSpeed is not installed) are read by accelerate's own launcher and built into
# accelerate's plugins, so that a typo cannot first show on a GPU cluster

def launch_args(path):
    """What `accelerate launch --config_file PATH` makes of a config (its own parser and checks)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    return _validate_launch_command(args)[0]


def unknown_keys(path) -> list[str]:
    """Keys of a config's fsdp_config / deepspeed_config that `accelerate launch` has no argument
    for (it would ignore them without a word), or values outside an argument's choices."""
    from accelerate.commands.launch import launch_command_parser

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


def test_the_shipped_fsdp_config_builds_accelerates_fsdp2_plugin_for_the_llama_layers(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import LlamaForCausalLM

    args = launch_args(REPO / "configs/accelerate/fsdp.yaml")
    assert args.use_fsdp and args.num_processes == 8
    for key, value in prepare_multi_gpu_env(args).items():  # the environment the launcher gives each process
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading and plugin.reshard_after_forward
    # the wrapped layer is the decoder layer of the models sftmix trains here (SmolLM2 and tiny are Llamas)
    assert plugin.transformer_cls_names_to_wrap == LlamaForCausalLM._no_split_modules == ["LlamaDecoderLayer"]


def test_the_shipped_deepspeed_configs_build_accelerates_deepspeed_plugin():
    from accelerate.utils import DeepSpeedPlugin

    for name, stage in (("deepspeed_zero2", 2), ("deepspeed_zero3", 3)):
        path = REPO / "configs/accelerate" / f"{name}.yaml"
        assert launch_args(path).use_deepspeed
        ds = DeepSpeedPlugin(**yaml.safe_load(path.read_text())["deepspeed_config"]).deepspeed_config
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none" and ds["gradient_clipping"] == 1.0
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)
