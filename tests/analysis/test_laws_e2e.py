"""The loop closed on the tiny model: a small mixture study, `study fit`, `study propose`, the
proposal run as a study, and its report checking the predictions against what was observed."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import TINY_TRAIN
from sftmix.analysis.lawfit import load_fit
from sftmix.analysis.propose import load_proposal
from sftmix.cli import main

pytestmark = pytest.mark.e2e

# training pools: the sizes, less ShareGPT's 8 held-out rows (180 conversations split into 574 rows of <= 200 tokens)
POOL = {"generated_math": 200, "generated_code": 200, "sharegpt": 566}


def test_fit_propose_run_report_on_the_tiny_model(tmp_path, capsys):
    design = [(48, 0, 0), (0, 48, 0), (0, 0, 48), (16, 16, 16), (32, 8, 8), (8, 32, 8), (8, 8, 32), (8, 8, 8)]
    names = ["generated_math", "generated_code", "sharegpt"]
    z = {"_mix": [], "strategy.sources": [], "strategy.fraction": []}
    for counts in design:
        z["_mix"].append("-".join(map(str, counts)))
        z["strategy.sources"].append([n for n, c in zip(names, counts) if c])
        z["strategy.fraction"].append({n: f"{c}/{POOL[n]}" for n, c in zip(names, counts) if c})
    study = {"name": "tinylaw", "output_dir": str(tmp_path / "tinylaw"),
             "base": {"model": "tiny", "sources": {"generated_math": {"size": 200}, "generated_code": {"size": 200},
                                                   "sharegpt": {"limit": 180, "clean": {"max_tokens": 200}}},
                      "strategy": {"name": "multitask", "sources": names}, "train": TINY_TRAIN,
                      "eval": {"tasks": ["loss"]}, "heldout": {"sources": names, "samples": 8},
                      "curve": {"enabled": False}},
             "zip": z}
    f = tmp_path / "tinylaw.yaml"
    f.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main(["study", "run", str(f), "--quiet"]) == 0
    assert main(["study", "fit", str(f), "--draws", "40", "--quiet"]) == 0
    out = tmp_path / "tinylaw"
    fit = load_fit(out)
    assert len(fit.configurations) == len(design)
    # the amounts the fit saw are the amounts trained on (from the stages' manifests)
    ex = {c.label.split()[0]: c.examples for c in fit.configurations}
    assert ex["_mix=32-8-8"] == {"code": 8.0, "general": 8.0, "math": 32.0}
    fitted = sorted({r.ability for r in fit.targets.values() if r.selected})
    assert set(fitted) & {"math", "code"}, {n: r.why for n, r in fit.targets.items()}
    html = (out / "report" / "report.html").read_text()
    assert "<h2>Laws</h2>" in html and "LOO MAE" in html

    weights = ",".join(f"{a}=1" for a in fitted)
    assert main(["study", "propose", str(f), "--weights", weights, "--draws", "40", "--quiet"]) == 0
    prop = load_proposal(out / "proposal.json")
    assert prop.proposal.total <= 48
    capsys.readouterr()
    assert main(["study", "run", str(out / "proposal.yaml"), "--quiet"]) == 0
    rep = out / "proposal" / "report"
    preds = json.loads((rep / "predictions.json").read_text())
    assert len(preds) == len(prop.proposal.predicted) + 1
    for p in preds:
        assert p["verdict"] in ("inside the predicted interval", "below the predicted interval", "above the predicted interval")
        assert p["low"] < p["high"] and p["observed_low"] <= p["observed"] <= p["observed_high"]
        assert (p["low"] <= p["observed"] <= p["high"]) == (p["verdict"] == "inside the predicted interval")
    claims = json.loads((rep / "findings.json").read_text())
    assert claims[0]["metric"] == "weighted held-out loss" and claims[0]["verdict"] != "not tested"
    # the best tried configuration was rerun from scratch in the proposal study: the same config gives the same losses
    rerun = next(p for p in claims if p["b"].startswith("_config=best tried"))
    assert abs(rerun["b_value"] - prop.best_tried.weighted_observed) < 1e-4
    md = (rep / "report.md").read_text()
    assert "## Predictions" in md and "## Findings" in md
