"""Training throughput: sftmix's stage trainer against a plain TRL SFTTrainer, in one run.

SmolLM2-135M-Instruct (the embedded default), GSM8K train examples from ../shared/data, max
length 512, batch 8, the same tokenised rows and labels for both. The baseline is TRL's
SFTTrainer in fp32 without packing (its defaults otherwise); sftmix runs its defaults (bf16
autocast where the CPU has it, length-grouped batches, supervised-positions-only logits).

Prints real (non-pad) tokens/s of both, the ratio, MFU against a matmul peak measured in the same
run, peak RSS of each (each trainer runs in its own process), and both trainers' loss on the same
fixed batch at the initial weights (same loss semantics => same number).

    python benchmarks/train_throughput.py [--examples 256] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def dataset(n: int):
    from sftmix.config import SourceConfig
    from sftmix.data.sources import load_pool
    from sftmix.io import stable_hash
    from sftmix.models import load_tokenizer, resolve_model
    from sftmix.train.tokenize import tokenize_mixture

    path = resolve_model("smollm2")
    tok = load_tokenizer(path)
    pool = load_pool("gsm8k", SourceConfig(limit=n, tagger="none"), str(DATA))
    ds, _ = tokenize_mixture(pool.conversations, stable_hash([c.id for c in pool.conversations]), tok, "model", 512,
                             progress=False)
    return path, tok, ds


def run_one(kind: str, n: int, steps: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    path, tok, ds = dataset(n)
    real_tokens_per_epoch = sum(ds["length"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    common = dict(output_dir=f"/tmp/sftmix-bench-{kind}", per_device_train_batch_size=8, num_train_epochs=1,
                  max_steps=steps or -1, learning_rate=2e-5, lr_scheduler_type="cosine", warmup_steps=0.03,
                  logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True, use_cpu=True)
    if kind == "trl":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(max_length=512, packing=False, bf16=False, **common),
                             train_dataset=ds.remove_columns(["length"]), processing_class=tok)
    else:
        from sftmix.config import TrainSettings
        from sftmix.train.stage import StageTrainer, training_arguments
        from sftmix.train.tokenize import Collator

        s = TrainSettings(epochs=1, max_steps=steps, batch_size=8, per_device_batch_size=8, max_length=512, report_to=[],
                          logging_steps=1, save_steps=10 ** 6)
        args = training_arguments(s, Path(common["output_dir"]), 0, 1, progress=False)
        trainer = StageTrainer(model=model, args=args, train_dataset=ds, data_collator=Collator(tok.pad_token_id), processing_class=tok)
    # Loss semantics: both trainers' loss on the same fixed batch (first 8 rows) at the initial weights.
    from sftmix.train.tokenize import Collator

    batch = Collator(tok.pad_token_id)([ds[i] for i in range(8)])
    batch.pop("num_real_tokens")
    n_items = (batch["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items))
    t = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t
    done_steps = out.global_step
    total_steps = -(-len(ds) // 8)
    real_tokens = real_tokens_per_epoch * done_steps / total_steps  # approx. when stopped early
    if kind == "sftmix":
        real_tokens = trainer.real_tokens()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"kind": kind, "steps": done_steps, "wall_s": wall, "real_tokens": real_tokens, "tokens_per_s": real_tokens / wall,
            "loss_fixed_batch": first_loss, "losses": losses[:5], "bf16": bool(getattr(trainer.args, "bf16", False)),
            "params": sum(p.numel() for p in model.parameters()),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="stop each trainer after N steps (default: one epoch)")
    ap.add_argument("--only", choices=["trl", "sftmix"])
    args = ap.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_one(args.only, args.examples, args.steps)))
        return 0
    if not (DATA / "gsm8k" / "train.jsonl").exists():
        print(f"skip: no GSM8K under {DATA}")
        return 0
    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    res = {}
    for kind in ("trl", "sftmix"):
        cmd = [sys.executable, __file__, "--only", kind, "--examples", str(args.examples)] + (["--steps", str(args.steps)] if args.steps else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(out.stderr[-3000:])
            return 1
        res[kind] = json.loads(line[0][7:])
        r = res[kind]
        peak = peak16 if r["bf16"] else peak32
        mfu = 6 * r["params"] * r["tokens_per_s"] / (peak * 1e9)
        print(f"{kind:7s}: {r['steps']} steps, {r['tokens_per_s']:.1f} real tokens/s, MFU {mfu:.1%} of {'bf16' if r['bf16'] else 'fp32'} peak, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB, loss on the fixed batch {r['loss_fixed_batch']:.4f}, first losses {[round(x, 3) for x in r['losses']]}")
    ratio = res["sftmix"]["tokens_per_s"] / res["trl"]["tokens_per_s"]
    print(f"RATIO sftmix / TRL SFTTrainer (fp32) real tokens/s: {ratio:.2f}x (target >= 2.5)")
    print(f"loss semantics: |loss_sftmix - loss_trl| on the same batch = {abs(res['sftmix']['loss_fixed_batch'] - res['trl']['loss_fixed_batch']):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
