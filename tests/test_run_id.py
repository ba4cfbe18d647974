"""A run's id covers its whole config: every field of the run config, walked recursively, changes
the id when it changes, except the named fields that cannot change what a run produces
(``strategies.NOT_IN_ID``). A field added later and forgotten by the id (two different runs in one
folder) fails here, naming it."""

from __future__ import annotations

import copy
import typing

import pytest
from pydantic import BaseModel

from sftmix.config import RunConfig
from sftmix.train.strategies import NOT_IN_ID, run_id

BASE = {"name": "r", "model": "tiny", "strategy": {"name": "dmt", "specialised": ["generated_math"], "general": "generated_code",
                                                   "k": "1/4"},
        "sources": {"generated_math": {"size": 48}}, "eval": {"tasks": ["loss", "gsm8k"]}}

# Values for fields whose type alone does not give a valid other value (what the field means decides).
OTHER = {
    "model": "smollm2", "template": "model", "data_dir": "/data", "sources": {"generated_math": {"size": 49}},
    "mixtures": None, "stages": None,
    "strategy.name": None, "strategy.specialised": ["generated_math", "sharegpt"], "strategy.general": "sharegpt",
    "strategy.fraction": {"generated_math": 0.5},
    "train.lora": {"r": 4}, "train.report_to": ["wandb"], "train.lr": 1e-4,
    "eval.tasks": ["loss"], "eval.mtbench.judge.model": "another-judge",
    "heldout.sources": ["generated_math"],
    "train.kernels": {"optimizer": "adamw_torch", "attention": "eager", "liger": "off", "compile": True},
    "eval.vllm_server.command": ["vllm", "serve"], "eval.vllm_server.extra_args": ["--seed", "1"],
}
SKIP = {"strategy.name", "mixtures", "stages"}  # the strategy's kind is its model; stages replace a strategy (own test below)


def leaves(model: type[BaseModel], value: BaseModel, prefix: str = ""):
    """(dotted path, field annotation, current value) of every field below ``value``."""
    for name, f in type(value).model_fields.items():
        path = prefix + name
        v = getattr(value, name)
        if isinstance(v, BaseModel):
            yield from leaves(type(v), v, path + ".")
        else:
            yield path, f.annotation, v


def other_value(path: str, annotation, v):
    if path in OTHER:
        return OTHER[path]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(a for a in args if a != v)
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v / 2 if v else 0.5
    if v is None:
        kinds = [a for a in args if a is not type(None)]
        if any(typing.get_origin(k) is typing.Literal for k in kinds):
            lit = next(k for k in kinds if typing.get_origin(k) is typing.Literal)
            return typing.get_args(lit)[0]
        kind = kinds[0]
        return {int: 7, float: 0.5, str: "x", bool: False}.get(kind, 7)
    if isinstance(v, str):
        return v + "x"
    raise AssertionError(f"{path}: give an other value in OTHER (a {type(v).__name__})")


def with_value(doc: dict, path: str, value) -> dict:
    d = copy.deepcopy(doc)
    *outer, last = path.split(".")
    cur = d
    for name in outer:
        cur = cur[name]
    cur[last] = value
    return d


def test_every_field_changes_the_run_id_but_the_named_ones():
    cfg = RunConfig.model_validate(BASE)
    doc = cfg.model_dump(mode="json")
    base = run_id(cfg)
    walked, unchanged = [], []
    for path, annotation, v in leaves(RunConfig, cfg):
        if path in SKIP:
            continue
        changed = RunConfig.model_validate(with_value(doc, path, other_value(path, annotation, v)))
        assert changed.model_dump(mode="json") != doc, path
        walked.append(path)
        if run_id(changed) == base and not any(path == n or path.startswith(n + ".") for n in NOT_IN_ID):
            unchanged.append(path)
    assert not unchanged, f"fields the run id leaves out: {unchanged}"
    assert len(walked) > 60 and "eval.vllm_server.dtype" in walked and "heldout.seed" in walked
    for path in NOT_IN_ID:  # and the named ones really are left out
        if path in ("name", "output_dir", "eval.openai"):
            continue  # where a run is written (tested below) and where a server you run is
        *outer, last = path.split(".")
        section = cfg
        for name in outer:
            section = getattr(section, name)
        annotation = type(section).model_fields[last].annotation
        assert run_id(RunConfig.model_validate(with_value(doc, path, other_value(path, annotation, getattr(section, last))))) == base, path


def test_stages_and_strategies_of_other_kinds_change_the_id():
    a = RunConfig.model_validate(BASE)
    b = RunConfig.model_validate({**BASE, "strategy": {"name": "mixed_sequential", "specialised": ["generated_math"],
                                                       "general": "generated_code"}})
    assert run_id(a) != run_id(b)


@pytest.mark.parametrize("field", ["name", "output_dir"])
def test_where_a_run_is_written_is_not_what_it_is(field):
    cfg = RunConfig.model_validate(BASE)
    assert run_id(RunConfig.model_validate({**BASE, field: "elsewhere"})) == run_id(cfg)
