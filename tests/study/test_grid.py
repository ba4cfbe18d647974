"""study/grid.py: a study file expanded into runs: product and zipped axes, replicates, profiles,
labels, ids that follow the resolved config, and the errors a user meets."""

import pytest
import yaml

import sftmix.study.grid as grid
from helpers import TINY_SOURCES
from sftmix import layout
from sftmix.config import StudyConfig
from sftmix.errors import SftmixError
from sftmix.study.grid import expand, group_label, read_decisions, set_path, write_decisions
from sftmix.study.runner import load_study, study_dir

BASE = {"model": "tiny", "sources": TINY_SOURCES, "strategy": {"name": "individual", "sources": ["generated_math"]}}


def study(**kw) -> StudyConfig:
    return StudyConfig(name="g", base=BASE, **kw)


def test_product_axes_times_replicates_in_grid_order():
    runs = expand(study(grid={"strategy.sources": [["generated_math"], ["generated_code"]], "strategy.fraction": ["1/2", 1]},
                        replicates=3))
    assert len(runs) == 2 * 2 * 3
    assert [r.point["seed"] for r in runs[:3]] == [0, 1, 2] and all(r.config.seed == r.point["seed"] for r in runs)
    assert runs[0].config.strategy.sources == ["generated_math"] and runs[0].config.strategy.fraction == 0.5
    # replicates are one configuration: the group label drops the seed, the run label keeps it
    assert len({r.group for r in runs}) == 4 and len({r.label for r in runs}) == 12
    assert group_label(runs[0].point) == runs[0].group and "seed" not in runs[0].group


def test_zipped_axes_move_together_and_underscore_axes_only_label():
    runs = expand(study(zip={"_mix": ["a", "b"], "strategy.fraction": [0.25, 0.5]}))
    assert [(r.point["_mix"], r.config.strategy.fraction) for r in runs] == [("a", 0.25), ("b", 0.5)]
    assert "_mix" not in runs[0].config.model_dump()
    with pytest.raises(ValueError, match="zipped axes must have equal lengths"):  # the study model refuses it when read
        study(zip={"strategy.fraction": [0.25, 0.5], "seed": [0]})


def test_ids_follow_the_resolved_config_and_duplicates_run_once():
    a = expand(study(grid={"strategy.fraction": [1, 1.0, "1/1"]}))
    assert len(a) == 1  # three spellings of one config: one run
    b = expand(study(grid={"strategy.fraction": [1, 0.5]}))
    assert a[0].id == b[0].id != b[1].id
    relabelled = expand(StudyConfig(name="other-name", base=BASE, grid={"strategy.fraction": [1]}))
    assert relabelled[0].id == a[0].id  # the study's name is not part of the run


def test_profiles_merge_over_the_base_and_replace_axes():
    s = study(grid={"strategy.fraction": [1, 0.5]},
              profiles={"small": {"train": {"epochs": 2}, "grid": {"strategy.fraction": [0.25]}}})
    (run,) = expand(s, "small")
    assert run.config.train.epochs == 2 and run.config.strategy.fraction == 0.25
    assert len(expand(s)) == 2
    with pytest.raises(SftmixError, match="unknown profile 'big'; valid: small"):
        expand(s, "big")


def test_bad_axes_name_the_axis_and_the_value():
    with pytest.raises(SftmixError, match="axis 'model.size': model is str 'tiny', not a mapping"):
        expand(study(grid={"model.size": [1]}))
    with pytest.raises(SftmixError, match=r"run 'name=dmtt': invalid config\n  strategy.name: .*got 'dmtt'"):
        expand(study(grid={"strategy.name": ["dmtt"]}))  # each run validated like any run config, named
    # points apart only outside the run's id would be folded into one run, silently: at any depth
    with pytest.raises(SftmixError, match=r"runs 'loss=full' and 'loss=chunked' differ only in "
                                          r"train.kernels.loss, .*not part of a run's id.*set it in base"):
        expand(study(grid={"train.kernels.loss": ["full", "chunked"]}))
    with pytest.raises(SftmixError, match=r"differ only in train.kernels.compile, train.kernels.loss, "):  # the axis two levels up
        expand(study(grid={"train": [{"kernels": {"loss": "full"}}, {"kernels": {"loss": "chunked", "compile": True}}]}))
    with pytest.raises(SftmixError, match=r"differ only in eval.vllm_server.concurrency, "):
        expand(study(zip={"strategy.fraction": [1, 1.0], "eval.vllm_server.concurrency": [4, 8]}))
    (one,) = expand(study(grid={"train.kernels.loss": ["chunked"]}))  # one value is a setting, not an axis
    assert one.config.train.kernels.loss == "chunked"
    d = {"a": 1}
    with pytest.raises(SftmixError, match="not a mapping"):
        set_path(d, "a.b", 2)


def test_read_only_commands_take_the_recorded_fallbacks_and_load_no_pool(tmp_path, monkeypatch):
    """`study run` decides which sources fall back by loading them and records it; status,
    report, fit, propose and export take the record and load no data pool (the same runs, ids
    and notes). A changed source or fallback config is decided again."""
    doc = {"name": "fb", "output_dir": str(tmp_path / "fb"),
           "base": {"model": "tiny", "data_dir": str(tmp_path / "nodata"), "sources": {"gsm8k": {"limit": 50}},
                    "strategy": {"name": "individual", "sources": ["gsm8k"]}},
           "fallbacks": {"gsm8k": {"builtin": "generated_math", "size": 50}}}
    f = tmp_path / "fb.yaml"
    f.write_text(yaml.safe_dump(doc))
    notes: list[str] = []
    study, runs = load_study(str(f), notes=notes)  # as `study run` does
    assert notes[0].startswith("gsm8k: FALLBACK") and study._fallback_decisions["gsm8k"].fallback is True
    write_decisions(layout.fallbacks_file(study_dir(study, None)), study._fallback_decisions)  # what run_study records

    def no_pools(*a, **k):
        raise AssertionError("a read-only command loaded a data pool")

    monkeypatch.setattr(grid, "load_pool", no_pools)
    again: list[str] = []
    _, read = load_study(str(f), notes=again, read_only=True)
    assert [r.id for r in read] == [r.id for r in runs] and again == notes
    doc["fallbacks"]["gsm8k"]["size"] = 60  # the study changed: decided again, by loading
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(AssertionError, match="loaded a data pool"):
        load_study(str(f), read_only=True)
    assert read_decisions(layout.fallbacks_file(tmp_path / "fb"))["gsm8k"].fallback is True
    layout.fallbacks_file(tmp_path / "fb").write_text('{"gsm8k": {"key": "k", "fallback": "perhaps"}}')
    assert read_decisions(layout.fallbacks_file(tmp_path / "fb")) == {}  # a damaged record: decided again, by loading
