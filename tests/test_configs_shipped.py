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
