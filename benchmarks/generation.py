"""Generation benchmark: SmolLM2-135M-Instruct greedy on 32 GSM8K questions, batch 1 vs 8 vs 32.

Prints useful tokens/s per batch size (fp32 by default; ``--dtype bfloat16`` for bf16 weights), the ratios against batch 1 (target: batch 32 >= 8x), and
whether all outputs are identical to batch 1's.

    python benchmarks/generation.py [--n 32] [--max-new-tokens 256]
"""

import argparse
import time
from pathlib import Path

from sftmix.eval.generate import HFGenerator
from sftmix.io import read_jsonl
from sftmix.models import resolve_model
from sftmix.templates import generation_prompt

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=32)
ap.add_argument("--max-new-tokens", type=int, default=256)
ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
args = ap.parse_args()
data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
questions = [r["question"] for r in read_jsonl(data)[: args.n]]
path = resolve_model("smollm2")
base, rates = None, {}
for bs in (1, 8, 32):
    g = HFGenerator(path, batch_size=bs, dtype=args.dtype, progress=False)
    prompts = [generation_prompt([{"role": "user", "content": q}], "vicuna", g.tokenizer) for q in questions]
    t = time.perf_counter()
    outs = g.generate(prompts, max_new_tokens=args.max_new_tokens)
    wall = time.perf_counter() - t
    toks = sum(len(g.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs)
    rates[bs] = toks / wall
    same = "reference" if base is None else ("identical" if outs == base else f"{sum(a != b for a, b in zip(outs, base))} differ")
    base = base or outs
    print(f"batch {bs:2d}: {rates[bs]:.1f} useful tokens/s ({wall:.0f} s), outputs {same}")
print(f"RATIO batch 8 / 1: {rates[8] / rates[1]:.2f}x; batch 32 / 1: {rates[32] / rates[1]:.2f}x (target >= 8x)")
