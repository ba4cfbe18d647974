from pathlib import Path

import yaml

from sftmix.config import DataConfig, RunConfig, load_config


def test_accelerate_configs_parse():
    files = sorted(Path("configs/accelerate").glob("*.yaml"))
    assert {f.stem for f in files} >= {"single", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    for f in files:
        assert "distributed_type" in yaml.safe_load(f.read_text())


def test_example_configs_validate():
    for f in Path("configs/examples").glob("*.yaml"):
        load_config(f, DataConfig)
    for f in Path("configs/train").glob("*.yaml"):
        load_config(f, RunConfig)
