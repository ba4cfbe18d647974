import json
import os
import signal
import subprocess
import sys

import pytest

from sftmix.config import DataConfig, MixtureConfig, PartConfig, load_config, validate
from sftmix.data.compose import (
    Manifest,
    compose,
    compose_all,
    manifest_hash,
    read_composed,
    round_half_up,
    sampling_order,
    write_composed,
)
from sftmix.data.records import Conversation
from sftmix.data.sources import Pool, load_pool
from sftmix.errors import SftmixError
from sftmix.io import read_record

FRACTIONS = [1, 1 / 4, 1 / 16, 1 / 64, 1 / 256]


def pool(name, n, ability="x"):
    convs = [Conversation([{"role": "user", "content": f"{name} q{i}"}, {"role": "assistant", "content": f"a{i}"}], name, ability)
             for i in range(n)]
    return Pool(name, ability, convs, {"kind": "test"}, {})


def mix(*parts, name="m"):
    return MixtureConfig(name=name, parts=[PartConfig(**p) for p in parts])


def test_k_arithmetic_on_the_papers_full_sizes():
    sizes = {"gsm8k_rft": 110_142, "code_alpaca": 20_022, "sharegpt": 86_060}
    assert [round_half_up(n / 256) for n in sizes.values()] == [430, 78, 336]
    pools = {k: pool(k, n) for k, n in sizes.items()}
    out = compose(mix({"source": "sharegpt", "fraction": 1}, {"source": "gsm8k_rft", "k": "1/256", "relative_to": "sharegpt"},
                      {"source": "code_alpaca", "k": "1/256", "relative_to": "sharegpt"}), pools, seed=0)
    assert [p.count for p in out.manifest.parts] == [86_060, 430, 78]


def test_normalised_ratio_relative_to_a_partial_anchor():
    pools = {"g": pool("g", 1000), "s": pool("s", 400)}
    out = compose(mix({"source": "g", "fraction": "1/4"}, {"source": "s", "k": 1, "relative_to": "g"}), pools, 0)
    # k = 1 keeps the natural ratio: s_used / g_used == s_all / g_all
    assert [p.count for p in out.manifest.parts] == [250, 100]


def test_nested_subsets_for_every_source(toy_dir):
    cfg = DataConfig(data_dir=str(toy_dir), mixtures=[mix({"source": "gsm8k", "fraction": 1})],
                     sources={"sharegpt": {"tagger": "none"}})
    pools = {n: load_pool(n, cfg.sources.get(n), cfg.data_dir) for n in ("gsm8k", "code_alpaca", "sharegpt")}
    for name in pools:
        for seed in (0, 1):
            sets = [set(compose(mix({"source": name, "fraction": f}), pools, seed).manifest.parts[0].ids) for f in FRACTIONS]
            for small, big in zip(sets[1:], sets[:-1]):
                assert small < big, (name, seed)
            assert len(sets[-1]) >= 1


def test_same_seed_same_manifest_other_seed_other_subset():
    pools = {"a": pool("a", 500), "b": pool("b", 300)}
    m = mix({"source": "a", "fraction": "1/4"}, {"source": "b", "count": 20})
    h1 = manifest_hash(compose(m, pools, 7).manifest)
    # rows in another file order: same subset, same manifest
    shuffled = {k: Pool(v.name, v.ability, list(reversed(v.conversations)), v.origin, v.stats) for k, v in pools.items()}
    assert manifest_hash(compose(m, shuffled, 7).manifest) == h1
    assert manifest_hash(compose(m, pools, 8).manifest) != h1


def test_one_part_mixture_equals_its_source_subset():
    pools = {"a": pool("a", 100)}
    out = compose(MixtureConfig(name="one", parts=[PartConfig(source="a", fraction=0.3)], shuffle=False), pools, 3)
    assert [c.id for c in out.conversations] == [c.id for c in sampling_order(pools["a"].conversations, 3)[:30]]


def test_replay_draws_k_of_each_earlier_part():
    pools = {"math": pool("math", 512, "math"), "code": pool("code", 256, "code"), "gen": pool("gen", 100, "general")}
    s1 = compose(mix({"source": "math", "fraction": 1}, {"source": "code", "fraction": 1}, name="s1"), pools, 0)
    s2 = compose(mix({"source": "gen", "fraction": 1}, {"replay": "s1", "k": "1/16"}, name="s2"), pools, 0, {"s1": s1})
    parts = s2.manifest.parts
    assert [(p.source, p.count) for p in parts] == [("gen", 100), ("math", 32), ("code", 16)]
    s1_ids = {p.source: p.ids for p in s1.manifest.parts}
    assert parts[1].ids == s1_ids["math"][:32]  # a prefix of stage 1's sampling order
    s2k0 = compose(mix({"source": "gen", "fraction": 1}, {"replay": "s1", "k": 0}, name="s2"), pools, 0, {"s1": s1})
    assert s2k0.manifest.total == 100


@pytest.mark.parametrize("part,msg", [
    ({"source": "a", "fraction": 0}, "fraction must be in"),
    ({"source": "a", "fraction": 1.5}, "fraction must be in"),
    ({"source": "a", "k": -1}, "k must be >= 0"),
    ({"source": "a"}, "exactly one of fraction, count, k"),
    ({"source": "a", "fraction": "abc"}, "fraction like"),
])
def test_bad_amounts_are_rejected_with_the_field(part, msg, tmp_path):
    with pytest.raises(SftmixError, match=msg) as e:
        validate(DataConfig, {"mixtures": [{"parts": [part]}]}, "cfg.yaml")
    assert "cfg.yaml" in str(e.value) and "mixtures.0.parts.0" in str(e.value)


def test_count_larger_than_pool_and_empty_mixture():
    pools = {"a": pool("a", 10)}
    with pytest.raises(SftmixError, match="asks for 11 rows but the pool has only 10"):
        compose(mix({"source": "a", "count": 11}), pools, 0)
    out = compose(mix({"source": "a", "count": 25, "allow_repeat": True}), pools, 0)
    assert out.manifest.total == 25
    with pytest.raises(SftmixError, match="empty"):
        compose(mix({"source": "a", "k": 0}), pools, 0)


def test_yaml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("seed: 0\nmixtures:\n  - name: [unclosed\n")
    with pytest.raises(SftmixError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_config(p, DataConfig)
    p.write_text("seed: 0\nmixturez: []\n")
    with pytest.raises(SftmixError, match="mixturez"):
        load_config(p, DataConfig)


def test_write_and_read_back_jsonl_and_arrow(tmp_path):
    pools = {"a": pool("a", 50)}
    out = compose(mix({"source": "a", "fraction": 0.5}), pools, 0)
    for fmt in ("jsonl", "arrow"):
        write_composed(out, tmp_path / fmt, fmt)
        back = read_composed(tmp_path / fmt)
        assert [c.to_dict() for c in back.conversations] == [c.to_dict() for c in out.conversations]
    with pytest.raises(SftmixError, match="no manifest.json"):
        read_composed(tmp_path / "nothing")


def test_example_configs_compose_identically_twice(tmp_path):
    cfg = load_config("configs/examples/compose_generated.yaml", DataConfig)
    compose_all(cfg, tmp_path / "a", progress=False)
    compose_all(cfg, tmp_path / "b", progress=False)
    for name in ("specialised", "general_replay"):
        a = (tmp_path / "a" / name / "manifest.json").read_bytes()
        assert a == (tmp_path / "b" / name / "manifest.json").read_bytes()
        m = json.loads(a)
        assert all(p["origin"].get("generated") for p in m["parts"] if p["source"].startswith("generated_"))


def test_cli_compose_and_errors(tmp_path, toy_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {toy_dir}\nmixtures:\n  - name: m\n    parts:\n      - {{source: gsm8k, fraction: 1/4}}\n      - {{source: code_alpaca, count: 10}}\n")
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "data", "compose", str(cfg), "-o", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_record(tmp_path / "o" / "m" / "manifest.json", Manifest).total == 110
    cfg.write_text("mixtures:\n  - parts:\n      - {source: gsm8kk, fraction: 1}\n")
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "data", "compose", str(cfg), "-o", str(tmp_path / "o2")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "did you mean 'gsm8k'" in r.stderr and "Traceback" not in r.stderr


# Runs `sftmix data compose` with os.replace turned into a SIGKILL when it would put FILE in
# place: the compose dies exactly there, with everything before it on disk.
KILL_AT_REPLACE = """
import os, signal, sys
target = os.environ["KILL_AT_REPLACE"]
original = os.replace
def replace(src, dst, *a, **kw):
    if os.path.basename(str(dst)) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(src, dst, *a, **kw)
os.replace = replace
from sftmix.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("target", ["data.jsonl", "manifest.json"])
def test_interrupted_compose_leaves_no_manifest(tmp_path, target):
    """A compose killed while it puts its data file or its manifest in place leaves no manifest
    (finished or half), the folder reads as unfinished, and the rerun completes it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mixtures:\n  - name: m\n    parts:\n      - {source: generated_math, fraction: 1}\n")
    args = ["data", "compose", str(cfg), "-o", str(tmp_path / "o"), "--quiet"]
    r = subprocess.run([sys.executable, "-c", KILL_AT_REPLACE, *args], capture_output=True, text=True,
                       env={**os.environ, "KILL_AT_REPLACE": target})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])  # the kill landed, at that file
    out = tmp_path / "o" / "m"
    temps = list(out.glob(f".{target}.*.tmp"))
    assert temps and temps[0].stat().st_size > 0, "the kill did not land while the file was being put in place"
    if target == "manifest.json":
        assert (out / "data.jsonl").stat().st_size > 0  # killed mid-compose: the data was already written
    assert not (out / "manifest.json").exists()
    with pytest.raises(SftmixError, match="no manifest.json"):
        read_composed(out)
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_composed(out).manifest.total == 2000 and not list(out.glob("*.tmp"))


def test_manifest_is_the_same_whether_composed_now_or_read_back(tmp_path):
    pools = {"generated_math": load_pool("generated_math", None)}
    c = compose(MixtureConfig(name="m", parts=[PartConfig(source="generated_math", count=10)]), pools, 0)
    write_composed(c, tmp_path / "m")
    assert read_composed(tmp_path / "m").manifest == c.manifest
