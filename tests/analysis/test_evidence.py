"""Evidence: forgetting curves, bootstrap intervals, paired comparisons, McNemar, Findings."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import sftmix
import sftmix.supervised as loss_mod
import sftmix.train.curve as curve_mod
import sftmix.train.stage as stage_mod
from helpers import TINY_SOURCES, TINY_TRAIN, tiny_run
from sftmix import layout, pipeline
from sftmix.analysis import stats
from sftmix.analysis.findings import NOT_MEASURED, Finding, check_claims, finding_sentence, pairs, unmatched
from sftmix.analysis.report import write_report
from sftmix.analysis.results import Group
from sftmix.data.heldout import POOL_TAIL, HeldoutRows, heldout
from sftmix.data.sources import load_pool
from sftmix.io import read_jsonl, read_record, write_json
from sftmix.layout import weights_fingerprint
from sftmix.models import load_model, load_tokenizer
from sftmix.config import Claim
from sftmix.study.runner import load_study, run_study, study_dir
from sftmix.study.store import Contamination, Metric, Sample, Store
from sftmix.supervised import mean_loss
from sftmix.train.curve import BaseLosses
from sftmix.train.meta import read_meta
from sftmix.train.strategies import run_dir, run_strategy

LOSS_EVAL = {"tasks": ["loss"]}
HELDOUT = {"sources": ["generated_code", "generated_math", "sharegpt"], "samples": 12}
CURVE = {"points": 2}


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    # sharegpt has no test split: its held-out rows come from the same pool it trains on (all of it)
    cfg = tiny_run(tmp, "seq", strategy={"name": "sequential", "sources": ["generated_code", "sharegpt"]}, eval=LOSS_EVAL,
                   heldout=HELDOUT, curve=CURVE)
    _, doc = pipeline.run(cfg, progress=False)
    metas = [read_meta(m.parent) for m in sorted(run_dir(cfg).glob("stage*/final/meta.json"))]
    return cfg, metas, doc


def fresh_losses(cfg, folder) -> dict:
    """Held-out losses of a checkpoint measured here, independently of anything training saved."""
    model, tok = load_model(folder), load_tokenizer(folder)
    out = {}
    for source in HELDOUT["sources"]:
        rows, _ = heldout(source, cfg.heldout.samples, cfg.heldout.seed, cfg.sources.get(source), None)
        out[source] = mean_loss(model, tok, rows, cfg.template, cfg.heldout.max_length, cfg.eval.batch_size).loss
    return out


def test_the_curve_ends_at_the_final_heldout_loss(sequential_run):
    cfg, metas, doc = sequential_run
    last = metas[-1].curve[-1]
    assert last.run_step == metas[-1].run_step_end  # the stage's end point
    fresh = fresh_losses(cfg, doc.model)
    for source in HELDOUT["sources"]:
        assert abs(last.loss[source] - fresh[source]) < 1e-5, source
        assert abs(doc.tasks["loss"].per_source[source].loss - fresh[source]) < 1e-5, source


def test_the_curve_spans_stages(sequential_run):
    _, (first, second), _ = sequential_run
    assert [p.step for p in first.curve][0] == 0 and len(first.curve) >= 4  # start, 2 between, end
    assert second.curve[0].step == 0
    assert second.curve[0].run_step == first.curve[-1].run_step > 0
    assert second.curve[0].run_tokens == first.curve[-1].run_tokens > 0
    # the second stage starts from the first stage's final weights: measure them afresh, they must
    # give the point the curve carries over (it is not measured twice during training)
    cfg = sequential_run[0]
    fresh = fresh_losses(cfg, first.run_config["output_dir"] + "/stage1_1_generated_code/final")
    for source in HELDOUT["sources"]:
        assert abs(second.curve[0].loss[source] - fresh[source]) < 1e-5
        assert abs(first.curve[-1].loss[source] - fresh[source]) < 1e-5
    # forgetting is visible: stage 2 (general) moves code loss up from where stage 1 left it
    code = [p.loss["generated_code"] for p in second.curve]
    assert code[-1] > code[0]


def test_heldout_rows_are_never_trained_on(sequential_run):
    _, _, doc = sequential_run
    cfg, metas, doc = sequential_run
    losses = doc.tasks["loss"].per_source
    assert set(losses) == set(HELDOUT["sources"])
    for source, m in losses.items():
        assert m.overlap_with_training == 0, source
    sharegpt_part = metas[1].manifest.parts[0]
    assert sharegpt_part.pool_stats["heldout_excluded"] == HELDOUT["samples"]


def test_training_and_evaluation_use_the_rows_kept_in_heldout_json(sequential_run, tmp_path):
    """The rows are chosen once: training excludes and measures those in ``heldout.json``, and the
    evaluation scores those, not rows it chooses again (shown by editing the file)."""
    cfg, metas, doc = sequential_run
    run = layout.run_dir(cfg.name, cfg.output_dir)
    held = HeldoutRows.from_json(json.loads(layout.heldout_file(run).read_text()), "heldout.json")
    assert list(held.sets) == HELDOUT["sources"] and held.how["sharegpt"] == POOL_TAIL
    scored = {}
    for r in read_jsonl(layout.eval_dir(run) / "samples_loss.jsonl"):
        scored.setdefault(r["source"], []).append(r["id"])
    assert {n: sorted(v) for n, v in scored.items()} == {n: sorted(c.id for c in v) for n, v in held.sets.items()}
    # the sharegpt rows training left out of its pool are exactly the file's
    pool = {c.id for c in load_pool("sharegpt", cfg.sources["sharegpt"], cfg.data_dir).conversations}
    trained = {i for p in metas[1].manifest.parts for i in p.ids}
    assert pool - trained == {c.id for c in held.sets["sharegpt"]}

    # a copy of the run whose file keeps only 3 sharegpt rows: its evaluation scores those 3
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    kept = json.loads(layout.heldout_file(copy).read_text())
    kept["sets"]["sharegpt"] = kept["sets"]["sharegpt"][:3]
    layout.heldout_file(copy).write_text(json.dumps(kept))
    moved = cfg.model_copy(update={"output_dir": str(copy)})
    again = pipeline.evaluate(pipeline.plan(moved), progress=False)
    rows = [r["id"] for r in read_jsonl(layout.eval_dir(copy) / "samples_loss.jsonl") if r["source"] == "sharegpt"]
    assert sorted(rows) == sorted(c["id"] for c in kept["sets"]["sharegpt"])
    assert again.tasks["loss"].per_source["sharegpt"].loss != doc.tasks["loss"].per_source["sharegpt"].loss


def test_bootstrap_covers_a_known_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    true_ratio, hits, trials = 2.0, 0, 300
    for t in range(trials):
        w = rng.integers(5, 50, size=60).astype(float)  # token counts
        v = w * true_ratio + rng.normal(0, 1.5, size=60) * np.sqrt(w)  # summed losses around the ratio
        _, lo, hi = stats.interval(stats.Items(v[None], w[None], [0], [str(i) for i in range(60)]), n_boot=800, seed=t)
        hits += lo <= true_ratio <= hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_replicates_widen_the_interval_with_seed_variance():
    rng = np.random.default_rng(0)
    w = np.ones((3, 50))
    base = rng.normal(0, 1, size=50)
    one = stats.Items(base[None].copy(), w[:1], [0], [str(i) for i in range(50)])
    many = stats.Items(np.stack([base + s for s in (0.0, 1.5, -1.5)]), w, [0, 1, 2], [str(i) for i in range(50)])
    _, lo1, hi1 = stats.interval(one)
    _, lo3, hi3 = stats.interval(many)
    assert hi3 - lo3 > hi1 - lo1


def test_a_run_against_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(1)
    x = stats.Items(rng.normal(size=(2, 40)), rng.integers(1, 9, size=(2, 40)).astype(float), [0, 1], [str(i) for i in range(40)])
    diff, lo, hi, n = stats.paired_difference(x, x)
    assert (diff, lo, hi, n) == (0.0, 0.0, 0.0, 40)


def test_mcnemar_on_a_hand_computed_table():
    # 10 items: A passes 8 that B fails, B passes 2 that A fails, both pass 5, both fail 5
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    ids = [str(i) for i in range(20)]
    ia = stats.Items(np.array([a], float) * 100, np.ones((1, 20)), [0], ids)
    ib = stats.Items(np.array([b], float) * 100, np.ones((1, 20)), [0], ids)
    only_a, only_b, p = stats.mcnemar(ia, ib)
    assert (only_a, only_b) == (8, 2)
    assert p == pytest.approx(2 * (1 + 10 + 45) / 1024)  # two-sided exact binomial, n = 10, k <= 2
    assert stats.verdict(float("nan"), float("nan"), True, p, 0.3) == stats.UNCLEAR  # p = 0.109: not below 0.05


def test_verdicts():
    assert stats.verdict(0.1, 0.3, True) == stats.AS_PAPER
    assert stats.verdict(-0.3, -0.1, True) == stats.OPPOSITE
    assert stats.verdict(-0.1, 0.3, True) == stats.UNCLEAR
    assert stats.verdict(-0.3, -0.1, False) == stats.AS_PAPER


def test_a_replicated_study_reports_findings_from_the_database_alone(tmp_path):
    study = {
        "name": "evidence", "output_dir": str(tmp_path / "st"), "replicates": 2,
        "base": {"model": "tiny", "sources": TINY_SOURCES, "strategy": {"name": "sequential", "sources": ["generated_code", "generated_math"]},
                 "train": TINY_TRAIN, "eval": LOSS_EVAL,
                 "heldout": {**HELDOUT, "sources": ["generated_code", "generated_math"]}, "curve": CURVE},
        "grid": {"strategy": [{"name": "sequential", "sources": ["generated_code", "generated_math"]},
                              {"name": "dmt", "specialised": ["generated_code"], "general": "generated_math", "k": 0.5}]},
        "compare": [{"a": "dmt", "b": "sequential", "metric": "loss/generated_code", "claim": "DMT keeps more code"},
                    {"a": "dmt", "b": "sequential", "metric": "loss/generated_math", "expect": "worse", "claim": "a second claim"},
                    {"a": "multitask", "b": "sequential", "metric": "loss/generated_code", "claim": "a claim with no runs"}],
    }
    f = tmp_path / "evidence.yaml"
    f.write_text(yaml.safe_dump(study))
    cfg, runs = load_study(str(f))
    assert len(runs) == 4 and {r.config.seed for r in runs} == {0, 1} and len({r.group for r in runs}) == 2
    store = run_study(cfg, runs, progress=False)
    shutil.rmtree(study_dir(cfg, None) / "runs")  # the report needs nothing but results.sqlite
    page = write_report(store, tmp_path / "report", "evidence", cfg.model_dump())
    found = json.loads((tmp_path / "report" / "findings.json").read_text())
    # the file is a list of Findings, each row with every field (None where it does not apply)
    typed = [Finding.model_validate(x) for x in found]
    assert all(set(x) == set(Finding.model_fields) for x in found) and [f.tested for f in typed] == [True, True, False]
    assert typed[2].diff is None and typed[2].note and typed[0].mcnemar is None  # held-out loss is not pass/fail
    assert [x["verdict"] != "not tested" for x in found] == [True, True, False]
    for x, expect in zip(found[:2], ["better", "worse"]):
        # held-out loss: lower is better, so "A is better" claims A - B < 0. The verdict must follow
        # from the interval and that direction: any other verdict (a flipped direction) fails here
        a_lower, a_higher = x["high"] < 0, x["low"] > 0
        holds, opposite = (a_lower, a_higher) if expect == "better" else (a_higher, a_lower)
        assert x["verdict"] == (stats.AS_PAPER if holds else stats.OPPOSITE if opposite else stats.UNCLEAR), x
        assert x["seeds_a"] == x["seeds_b"] == 2 and x["low"] <= x["diff"] <= x["high"]
    assert "no configuration matches 'multitask'" in found[2]["note"]
    html = page.read_text()
    assert "<h2>Findings</h2>" in html and "<h2>Forgetting curves</h2>" in html and "95%" in html
    table = (tmp_path / "report" / "table.csv").read_text().splitlines()
    assert table[0].startswith("run,seeds,loss/generated_code,loss/generated_code low,loss/generated_code high")
    assert len(table) == 3 and all(",2," in row for row in table[1:])  # one row per configuration, 2 seeds each


def test_a_claim_is_tested_again_without_the_benchmark_items_training_held(tmp_path):
    """A wins on GSM8K only on the 20 test problems its training rows hold: the claim holds over
    all items (McNemar), and is not distinguishable without them; a metric whose items no run
    holds gets no second comparison, and one whose holdings were not measured says so. The ids
    join the store's items to the benchmark's."""
    store = Store(tmp_path / "results.sqlite")
    mixed = [100.0 * (i % 2) for i in range(20, 40)]
    per_item = {"a": [100.0] * 20 + mixed, "b": [0.0] * 20 + mixed}
    for rid, values in per_item.items():
        store.start(rid, f"x={rid}", {"x": rid}, {"strategy": {"name": "dmt" if rid == "a" else "sequential"}})
        held = [f"gsm8k/test/{i}" for i in range(20)] if rid == "a" else []
        store.finish(rid, "", "", [Metric(rid, "gsm8k", "accuracy", sum(values) / 40), Metric(rid, "humaneval", "pass@1", 50.0)], 1e6, 1e8,
                     [Sample(rid, "gsm8k", "accuracy", str(i), v, 1.0) for i, v in enumerate(values)]
                     + [Sample(rid, "humaneval", "pass@1", f"HumanEval/{i}", 100.0 * (i < 30), 1.0) for i in range(40)],
                     contamination=[Contamination(rid, "gsm8k", "accuracy", 13, 40, json.dumps(held), len(held), sum(values) / 40,
                                                  sum(values[20:]) / 20),
                                    Contamination(rid, "humaneval", "pass@1", 13, 40, "[]", 0, 75.0, 75.0)])
    found = check_claims(store, [Claim(a={"x": "a"}, b={"x": "b"}, metric=["gsm8k/accuracy", "humaneval/pass@1"], claim="A better")])
    gsm8k, humaneval = found
    assert gsm8k.verdict == stats.AS_PAPER and gsm8k.diff == pytest.approx(50.0) and gsm8k.items == 40
    assert (gsm8k.held_items, gsm8k.clean_diff, gsm8k.clean_verdict) == (20, 0.0, stats.UNCLEAR)
    assert gsm8k.clean_low <= 0 <= gsm8k.clean_high
    assert "Without the 20 items their training rows hold: +0 [95% CI" in finding_sentence(gsm8k)
    assert humaneval.held_items is None and humaneval.clean_verdict is None and "Without" not in finding_sentence(humaneval)
    (weighted,) = check_claims(store, [Claim(a={"x": "a"}, b={"x": "b"}, metric="both",
                                             weights={"gsm8k/accuracy": 1, "humaneval/pass@1": 1})])
    assert weighted.verdict == stats.AS_PAPER and weighted.diff == pytest.approx(25.0)
    assert (weighted.held_items, weighted.clean_diff, weighted.clean_verdict) == (20, 0.0, stats.UNCLEAR)
    # a run whose holdings were not measured: unknown, said so, never taken for "none held"
    with store.conn:
        store.conn.execute("DELETE FROM contamination WHERE run_id = 'b' AND task = 'humaneval'")
    _, humaneval = check_claims(store, [Claim(a={"x": "a"}, b={"x": "b"}, metric=["gsm8k/accuracy", "humaneval/pass@1"])])
    assert (humaneval.held_items, humaneval.clean_diff, humaneval.clean_verdict) == (None, None, NOT_MEASURED)
    assert "Which of these items their training rows hold was not measured." in finding_sentence(humaneval)
    (weighted,) = check_claims(store, [Claim(a={"x": "a"}, b={"x": "b"}, metric="both",
                                             weights={"gsm8k/accuracy": 1, "humaneval/pass@1": 1})])
    assert (weighted.held_items, weighted.clean_verdict) == (None, NOT_MEASURED)


@pytest.mark.parametrize("profile", [None, "small"])
def test_every_shipped_claim_names_configurations_of_its_study(profile):
    """Without training: each claim of each shipped study pairs up configurations of that study."""
    for f in sorted(Path("configs/studies").glob("*.yaml")):
        study, runs = load_study(str(f), profile)
        assert study.compare, f"{f} names no claim"
        gs = {}
        for r in runs:
            gs.setdefault(r.group, Group(r.group, {k: v for k, v in r.point.items() if k != "seed"}, r.config.model_dump()))
        for c in study.compare:
            found, why = pairs(list(gs.values()), c, tuple(study.zip_for(profile)))
            assert found, (f.name, c.claim, why)
            assert all(a is not b for a, b, _ in found)
        assert unmatched(study, runs, profile) == [], f  # `study run` and `status` warn of nothing


def test_the_base_curve_cache_key_follows_the_weights(tmp_path):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"a" * 10)
    first = weights_fingerprint(str(tmp_path))
    w.write_bytes(b"b" * 11)
    os.utime(w, ns=(1, 1))
    assert weights_fingerprint(str(tmp_path)) != first and weights_fingerprint("smollm2-hub-id") == []


def test_a_first_stage_reads_its_start_point_from_the_base_cache_and_remeasures_a_damaged_one(tmp_path, monkeypatch):
    """The base model's held-out losses are measured once per (model, weights, rows) and kept as a
    ``BaseLosses``: a later first stage starts its curve at the kept values (shown by planting
    values no measurement gives), and a cache that is not a ``BaseLosses`` is measured again and
    rewritten rather than failing the run or being trusted."""
    monkeypatch.setattr(curve_mod, "cache_dir", lambda: tmp_path / "cache")
    kw = {"strategy": {"name": "individual", "sources": ["generated_code"]}, "eval": LOSS_EVAL, "heldout": HELDOUT,
          "curve": {"points": 0}}
    first = read_meta(run_strategy(tiny_run(tmp_path, "a", **kw), progress=False))
    (cached,) = (tmp_path / "cache" / "curves").glob("*.json")
    measured = first.curve[0].loss
    assert read_record(cached, BaseLosses).loss == measured and set(measured) == set(HELDOUT["sources"])

    planted = {source: 100.0 + i for i, source in enumerate(measured)}
    write_json(cached, BaseLosses(loss=planted).model_dump(mode="json"))
    second = read_meta(run_strategy(tiny_run(tmp_path, "b", **kw), progress=False))
    assert second.curve[0].loss == planted and second.curve[-1].loss != planted

    write_json(cached, measured)  # the bare mapping an earlier sftmix wrote
    third = read_meta(run_strategy(tiny_run(tmp_path, "c", **kw), progress=False))
    assert all(abs(third.curve[0].loss[s] - v) < 1e-6 for s, v in measured.items())
    assert read_record(cached, BaseLosses).loss == third.curve[0].loss


def test_mixed_precision_training_measures_the_curve_as_the_final_evaluation_does(tmp_path, monkeypatch):
    """With bf16, accelerate wraps the trained model's forward in an autocast in place. A curve
    measured through that wrapper ends 1e-4 away from the fp32 evaluation of the saved weights,
    and the final evaluation, which reuses the curve's last measurement, would report it. This
    CPU has no native bf16, so bf16 is forced; torch emulates it, and the wrapper is the same."""
    monkeypatch.setattr(stage_mod, "cpu_has_bf16", lambda: True)
    wrapped_seen = []
    real_plain = loss_mod.plain_forward

    def spy(model):
        wrapped_seen.append(hasattr(model, "_original_forward"))
        return real_plain(model)

    monkeypatch.setattr(loss_mod, "plain_forward", spy)
    cfg = tiny_run(tmp_path, "bf16", strategy={"name": "individual", "sources": ["generated_code"]},
                   eval=LOSS_EVAL, heldout=HELDOUT, curve={"points": 1},
                   train={"precision": "bf16"})
    final = run_strategy(cfg, progress=False)
    meta = read_meta(final)
    assert meta.bf16 and any(wrapped_seen)  # the curve really was measured on an autocast-wrapped model
    doc = pipeline.evaluate(pipeline.plan(cfg), progress=False)
    fresh = fresh_losses(cfg, str(final))
    for source in HELDOUT["sources"]:
        assert abs(meta.curve[-1].loss[source] - fresh[source]) < 1e-6, source
        assert abs(doc.tasks["loss"].per_source[source].loss - fresh[source]) < 1e-6, source


def test_every_interval_is_cut_by_the_one_bootstrap_helper():
    """One rule for the reported intervals: ``stats.percentile_interval`` is the only place that
    takes quantiles of draws, and ``stats`` the only module that draws resamples."""
    root = Path(sftmix.__file__).parent
    for f in root.rglob("*.py"):
        if f.name != "stats.py":  # numpy's quantile/percentile under any spelling, or a resampling draw
            assert not re.search(r"\b(nan)?(quantile|percentile)\(|multinomial\(", f.read_text()), f
    lo, hi = stats.percentile_interval(np.arange(101.0))
    assert np.allclose([lo, hi], [2.5, 97.5])
    lo, hi = stats.percentile_interval(np.arange(202.0).reshape(101, 2), axis=0)
    assert np.allclose(lo, [5.0, 6.0]) and np.allclose(hi, [195.0, 196.0])
    assert np.allclose(stats.percentile_interval(np.arange(101.0), level=0.5), [25.0, 75.0])
