"""Training at GPU speed: sftmix's training paths against TRL's SFTTrainer on the same rows.

A model built from a config (random weights: speed and memory, not quality): SmolLM2-1.7B's shape
by default, a 2-layer one with ``--smoke`` (the CPU size CI can run). The SmolLM2 tokenizer
(the embedded model's, or ``--tokenizer DIR``), its chat template, assistant-only labels; GSM8K
train and Code Alpaca rows from the data folder (``--data``, default ../shared/data).

Paths, each in a process of its own (its peak memory is its own):

- ``sftmix``: sftmix's default (``train.kernels`` auto: fused AdamW, sdpa, Liger where installed
  on CUDA; length-grouped batches of ``--batch`` rows);
- ``sftmix_unfused``: the same with every kernel plain (AdamW per tensor, sdpa, no Liger);
- ``sftmix_loss_full``, ``sftmix_loss_chunked``: the default without Liger, the loss over all
  supervised positions' logits at once, or 2,048 positions at a time (the CUDA default without
  Liger): what the loss's logits cost in memory and speed;
- ``sftmix_packed``: packed rows (``--pack-rows`` x ``--pack-len``; flex_attention on CUDA: no
  dense mask), ``sftmix_packed_sdpa`` the same through sdpa's dense block-diagonal mask;
- ``sftmix_ckpt``: the default with gradient checkpointing, TRL's default setting: the memory
  comparison at equal settings;
- ``sftmix_compile``: the default with ``torch.compile`` (CUDA only unless ``--paths`` names it);
- ``trl``: SFTTrainer's defaults (gradient checkpointing on), ``trl_nockpt`` without it,
  ``trl_packed`` packing without it; the same rows and labels (a ``labels`` column).

For each: real (non-pad) tokens/s over the timed steps (the first ``--warmup`` steps not timed),
MFU = 6·N·tokens/s over the bf16 matmul peak measured in the same run (fp32 where the path trains
in fp32), peak memory (CUDA: max allocated; CPU: the process's peak RSS), whether the model recomputed its
activations (read from the model after training, not from the config asked for), and the loss on
one fixed batch at the initial weights (the same loss semantics give the same number in every path). Then
what the length-grouped sampler does to the largest batch, from the rows alone.

    python benchmarks/gpu_train.py --smoke                  # CPU, about a minute
    python benchmarks/gpu_train.py --out gpu_train.json     # one GPU: no path starts after --budget-s
    python benchmarks/gpu_train.py --markdown gpu_train.json  # its results as the README's table

Each path's result is printed and written to ``--out`` as soon as it is measured, so a run cut
short keeps what it measured; the paths run in the order of ``PATHS`` (the goals' comparisons first).
A lent GPU gives one call: where an sftmix path that trains with Liger fails (say, a Triton build
the image's torch does not take: its error need not name Liger), the path is measured again with
Liger off, and its row says that it failed with Liger and how, rather than leaving the defaults
unmeasured.
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
SHAPES = {  # SmolLM2's configs (vocabulary 49152, tied embeddings)
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32},
    "smoke": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4},
}
# in the order they run: the goals' comparisons first (the defaults, then each trainer's packed path),
# so that a spent time budget skips the side measurements, the compiled path (minutes of compiling) last
PATHS = ("sftmix", "trl", "sftmix_packed", "trl_packed", "sftmix_ckpt", "trl_nockpt", "sftmix_packed_sdpa", "sftmix_unfused",
         "sftmix_loss_full", "sftmix_loss_chunked", "sftmix_compile")
FIXED = 8  # rows of the fixed batch


def matmul_peak(dtype_name: str, device: str) -> float:
    """Achieved dense matmul FLOP/s in ``dtype`` (the chip's practical peak)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, dtype=getattr(torch, dtype_name), device=device)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    reps = 20 if device == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def rows(args):
    """The tokenizer and the tokenised rows (sftmix's tokenisation: the model's chat template,
    assistant-only labels), unpacked and packed."""
    from sftmix.config import SourceConfig
    from sftmix.data.sources import load_pool
    from sftmix.io import stable_hash
    from sftmix.models import load_tokenizer, resolve_model
    from sftmix.train.tokenize import tokenize_mixture

    tok = load_tokenizer(args.tokenizer or resolve_model("smollm2"))
    half = args.rows // 2
    convs = [c for name in ("gsm8k", "code_alpaca")
             for c in load_pool(name, SourceConfig(limit=half, tagger="none"), str(args.data)).conversations]
    sha = stable_hash([c.id for c in convs])
    plain, _ = tokenize_mixture(convs, sha, tok, "model", args.max_length, progress=False)
    packed, _ = tokenize_mixture(convs, sha, tok, "model", args.pack_len, packing=True, progress=False)
    return tok, plain, packed


class Clock:
    """Per optimizer step: its end time, and the real tokens of the batch it trained on."""

    def __init__(self, collate):
        self.collate, self.tokens, self.ends = collate, [], []

    def __call__(self, batch):
        self.tokens.append(sum(len(b["input_ids"]) for b in batch))
        return self.collate(batch)

    def callback(self):
        import torch
        from transformers import TrainerCallback

        clock = self

        class StepEnd(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.ends.append(time.perf_counter())

        return StepEnd()


def path_kernels(path: str, liger: str):
    """An sftmix path's ``train.kernels``; those that leave Liger to the machine take ``liger``."""
    from sftmix.config import KernelSettings

    kernels = {"sftmix_unfused": KernelSettings(optimizer="adamw_torch", attention="sdpa", liger="off"),
               "sftmix_loss_full": KernelSettings(liger="off", loss="full"),
               "sftmix_loss_chunked": KernelSettings(liger="off", loss="chunked"),
               "sftmix_packed_sdpa": KernelSettings(attention="sdpa"),
               "sftmix_compile": KernelSettings(compile=True)}.get(path, KernelSettings())
    return kernels.model_copy(update={"liger": liger}) if kernels.liger == "auto" else kernels


def failed_with_liger(r: dict, liger: str) -> bool:
    """Whether a path's failure may be Liger's: it resolved its kernels with Liger on (what sftmix's
    ``resolve_kernels`` chose in the path's process, ``resolved``), or asked for Liger where sftmix
    refused it before resolving anything."""
    if "failed" not in r or not r["path"].startswith("sftmix"):
        return False
    return r["resolved"]["liger"] if "resolved" in r else path_kernels(r["path"], liger).liger == "on"


def run_path(path: str, args) -> dict:
    """Train one path for ``--steps`` steps; its throughput, memory and fixed-batch loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftmix.compat import is_checkpointing
    from sftmix.config import TrainSettings
    from sftmix.train.stage import StageTrainer, linear_loss, resolve_kernels, training_arguments
    from sftmix.train.tokenize import Collator

    cuda = torch.cuda.is_available()
    if path == "sftmix_compile" and not cuda and path not in (args.paths or []):
        return {"path": path, "skipped": "torch.compile is measured on CUDA (name it in --paths to measure it here)"}
    tok, plain, packed = rows(args)
    bf16 = cuda or args.bf16
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, max_position_embeddings=max(args.pack_len, args.max_length),
                      rope_theta=130000, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **SHAPES["smoke" if args.smoke else "1.7b"])
    device = "cuda" if cuda else "cpu"

    def build(attention: str) -> LlamaForCausalLM:
        """The same random weights in every path: one seed, one device, one order of creation
        (built on the device itself: 1.7 B parameters initialised on a CPU take tens of seconds)."""
        torch.manual_seed(0)
        with torch.device(device):
            return LlamaForCausalLM._from_config(cfg, attn_implementation=attention)
    is_packed = path in ("sftmix_packed", "sftmix_packed_sdpa", "trl_packed")
    ds = packed if is_packed and path != "trl_packed" else plain
    batch_rows = args.pack_rows if is_packed else args.batch
    out_dir = Path(args.work) / path
    fixed = Collator(tok.pad_token_id)([plain[i] for i in range(FIXED)])
    fixed.pop("num_real_tokens")
    n_fixed = (fixed["labels"][:, 1:] != -100).sum()
    if path.startswith("sftmix"):
        kernels = path_kernels(path, args.liger)
        s = TrainSettings(epochs=1, max_steps=args.steps, batch_size=batch_rows, per_device_batch_size=batch_rows,
                          max_length=args.pack_len if is_packed else args.max_length, lr=2e-5, precision="bf16" if bf16 else "fp32",
                          report_to=[], logging_steps=1, save_steps=10 ** 6, packing=is_packed, kernels=kernels,
                          gradient_checkpointing=path == "sftmix_ckpt")
        k = resolve_kernels(kernels, is_packed)
        print("KERNELS " + k.model_dump_json(), flush=True)  # what the parent reads should this path fail
        model = build(k.attention)
        clock = Clock(Collator(tok.pad_token_id))
        trainer = StageTrainer(model=model, args=training_arguments(s, out_dir, 0, 1, progress=False, kernels=k), train_dataset=ds,
                               data_collator=clock, processing_class=tok, linear_loss=linear_loss(k))
        how = {"kernels": k.model_dump()}
    else:
        from trl import SFTConfig, SFTTrainer

        model = build("sdpa")  # what LlamaForCausalLM chooses by default
        conf = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=batch_rows, max_steps=args.steps, learning_rate=2e-5,
                         logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True, use_cpu=not cuda,
                         bf16=bf16, max_length=args.pack_len if is_packed else args.max_length, packing=is_packed,
                         **({} if path == "trl" else {"gradient_checkpointing": False}))
        trainer = SFTTrainer(model=model, args=conf, train_dataset=ds.remove_columns(["length"]), processing_class=tok)
        clock = Clock(trainer.data_collator)
        trainer.data_collator = clock
        how = {"packing": is_packed}
    with torch.no_grad():
        batch = {k: v.to(device) for k, v in fixed.items()}
        loss_fixed = float(trainer.compute_loss(trainer.model.to(device), batch, num_items_in_batch=n_fixed.to(device)))
    trainer.add_callback(clock.callback())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    steps = len(clock.ends)
    w = min(args.warmup, steps - 1)
    timed = clock.ends[-1] - (clock.ends[w - 1] if w else t0)
    tokens = sum(clock.tokens[w:steps])
    n_params = sum(p.numel() for p in model.parameters())
    how["gradient_checkpointing"] = is_checkpointing(trainer.model)  # what ran, not what the config asked for
    return {"path": path, "steps": steps, "timed_steps": steps - w, "tokens_per_s": tokens / timed, "params": n_params, "bf16": bf16,
            "peak_memory_gb": (torch.cuda.max_memory_allocated() if cuda else
                               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9,
            "memory_kind": "CUDA max allocated" if cuda else "peak RSS", "loss_fixed_batch": loss_fixed,
            "rows_per_batch": batch_rows, "packed_row_tokens": args.pack_len if is_packed else None, **how}


def batch_shapes(args) -> dict:
    """The largest batch when rows are grouped by length (HF's sampler, sftmix's default) and when
    they are drawn at random (mean over 20 orders): in padded tokens (what activations scale with)
    and in supervised tokens (what the loss's logits scale with: supervised positions x vocabulary);
    the grouped sampler puts its largest batch first, so that a batch too large fails at once."""
    import numpy as np
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    _, plain, _ = rows(args)
    lengths = list(plain["length"])
    supervised = [sum(x != -100 for x in labels) for labels in plain["labels"]]
    B = args.batch

    def largest(order):
        batches = [order[j:j + B] for j in range(0, len(order) - B + 1, B)]
        return max(B * max(lengths[i] for i in b) for b in batches), max(sum(supervised[i] for i in b) for b in batches)

    grouped = list(LengthGroupedSampler(B, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    rng = np.random.default_rng(0)
    random = np.array([largest(list(rng.permutation(len(lengths)))) for _ in range(20)]).mean(0)
    (g_pad, g_sup), first_sup = largest(grouped), sum(supervised[i] for i in grouped[:B])
    return {"batch_rows": B, "grouped_padded": g_pad, "grouped_supervised": g_sup, "grouped_first_supervised": first_sup,
            "random_padded": float(random[0]), "random_supervised": float(random[1]), "packed_padded": args.pack_rows * args.pack_len,
            "mean_row": float(np.mean(lengths)), "longest_row": max(lengths)}


def how_of(r: dict) -> dict:
    """What a measured path ran with: sftmix's resolved kernels or TRL's packing, and whether the
    model recomputed its activations."""
    how = {**(r.get("kernels") or {"packing": r["packing"]})}
    if "liger_failed" in r:  # measured again with Liger off: how it failed with Liger on
        how["liger_failed"] = r["liger_failed"]
    if "gradient_checkpointing" in r:  # a results file of an earlier version has it for TRL's paths only
        how["gradient_checkpointing"] = r["gradient_checkpointing"]
    return how


def not_measured(r: dict, tail: int) -> str:
    """Why a path has no result: skipped (and why), or failed with the end of its error."""
    return "skipped: " + r["skipped"] if "skipped" in r else "FAILED: " + r["failed"][-tail:]


def row_text(r: dict) -> str:
    """One path's line of the table."""
    if "tokens_per_s" not in r:
        return f"{r['path']:20s} {not_measured(r, 400)}"
    how = how_of(r)
    return f"{r['path']:20s} {r['tokens_per_s']:10.1f} {r['mfu']:7.1%} {r['peak_memory_gb']:10.2f} {r['loss_fixed_batch']:17.5f}  {how}"


def markdown(doc: dict) -> str:
    """A results file as the README's table: one row a path, measured or not."""
    lines = [f"{doc.get('device_name', doc['device'])}, bf16 matmul peak {doc['peaks']['bf16'] / 1e12:.3g} TFLOP/s measured in the "
             "same run", "",
             "| path | batch | real tokens/s | MFU | peak memory GB | fixed-batch loss | how |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["results"]:
        if "tokens_per_s" not in r:
            last = {**r, "failed": (r.get("failed", "").strip().splitlines() or ["no output"])[-1]}  # its error's last line
            lines.append(f"| {r['path']} | | | | | | {not_measured(last, 200).replace('|', '/')} |")
            continue
        how = ", ".join(f"{k} {v}" for k, v in how_of(r).items()).replace("|", "/")
        batch = f"{r['rows_per_batch']} x {r['packed_row_tokens']}" if r.get("packed_row_tokens") else f"{r['rows_per_batch']} rows"
        lines.append(f"| {r['path']} | {batch} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_memory_gb']:.1f} "
                     f"| {r['loss_fixed_batch']:.5f} | {how} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a 2-layer model and few rows and steps: the CPU size CI runs")
    ap.add_argument("--paths", type=lambda s: s.split(","), help=f"comma-separated, of {', '.join(PATHS)}")
    ap.add_argument("--rows", type=int, default=None, help="rows (half GSM8K, half Code Alpaca; default 3200, smoke 48)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per path (default 35, smoke 4)")
    ap.add_argument("--warmup", type=int, default=None, help="steps not timed (default 5, smoke 1)")
    ap.add_argument("--batch", type=int, default=None, help="rows per batch, unpacked (default 32, smoke 8)")
    ap.add_argument("--pack-rows", type=int, default=None, help="packed rows per batch (default 4, smoke 2)")
    ap.add_argument("--pack-len", type=int, default=None, help="tokens per packed row (default 2048, smoke 512)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (CUDA always)")
    ap.add_argument("--liger", choices=("auto", "on", "off"), default="auto",
                    help="train.kernels.liger for the paths that do not set it (default auto: on where it can run)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tokenizer", help="a folder with SmolLM2's tokenizer files (default: the embedded model's)")
    ap.add_argument("--work", default="/tmp/sftmix-gpu-train")
    ap.add_argument("--out", type=Path, help="write every result as JSON here")
    ap.add_argument("--budget-s", type=int, default=280, help="start no path after this many seconds")
    ap.add_argument("--path-limit-s", type=int, default=180, help="stop a path that runs longer than this")
    ap.add_argument("--only", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", type=Path, help="print a results file (--out of an earlier run) as a Markdown table, and stop")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    small = {"rows": 48, "steps": 4, "warmup": 1, "batch": 8, "pack_rows": 2, "pack_len": 512}
    full = {"rows": 3200, "steps": 35, "warmup": 5, "batch": 32, "pack_rows": 4, "pack_len": 2048}
    for k, v in (small if args.smoke else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.only:
        print("RESULT " + json.dumps(run_path(args.only, args)), flush=True)
        return 0
    if not (args.data / "gsm8k" / "train.jsonl").exists():
        print(f"skip: no GSM8K under {args.data} (give --data)")
        return 0
    import torch  # here, as in each function: `--help` and a missing data folder answer without loading torch

    from sftmix.io import write_json

    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peaks = {"bf16": matmul_peak("bfloat16", device), "fp32": matmul_peak("float32", device)}
    print(f"{device}: {device_name}; matmul peak bf16 {peaks['bf16'] / 1e12:.1f} "
          f"TFLOP/s, fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s")
    shapes = batch_shapes(args)
    print(f"largest batch of {shapes['batch_rows']} rows: length-grouped {shapes['grouped_padded']} padded / "
          f"{shapes['grouped_supervised']} supervised tokens (the first batch: {shapes['grouped_first_supervised']} supervised), "
          f"random order {shapes['random_padded']:.0f} / {shapes['random_supervised']:.0f}, packed {shapes['packed_padded']} padded; "
          f"rows {shapes['mean_row']:.0f} tokens on average, the longest {shapes['longest_row']}")
    results, start = [], time.perf_counter()
    argv = list(sys.argv[1:])
    if "--out" in argv:  # the parent writes the results
        i = argv.index("--out")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--out=")]

    def save():  # after every path, whole or not at all: a run cut short keeps what it measured
        if args.out:
            write_json(args.out, {"device": device, "device_name": device_name, "peaks": peaks, "batch_shapes": shapes, "results": results})

    header = f"{'path':20s} {'tokens/s':>10s} {'MFU':>7s} {'memory GB':>10s} {'fixed-batch loss':>17s}  how"
    print(header, flush=True)

    def measure(path: str, extra: list[str]) -> dict:
        """One path in a process of its own: its result, or why it has none (with the kernels it
        resolved, where it got that far)."""
        try:
            out = subprocess.run([sys.executable, __file__, *argv, *extra, "--only", path], capture_output=True, text=True,
                                 timeout=max(60, args.path_limit_s))
            stdout, failed = out.stdout, out.stderr[-1500:]
        except subprocess.TimeoutExpired as e:
            stdout, failed = e.stdout or "", f"ran past {max(60, args.path_limit_s)} s"
            stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
        said = {x.split(" ", 1)[0]: x.split(" ", 1)[1] for x in stdout.splitlines() if x.startswith(("RESULT ", "KERNELS "))}
        if "RESULT" in said:
            return json.loads(said["RESULT"])
        return {"path": path, "failed": failed, **({"resolved": json.loads(said["KERNELS"])} if "KERNELS" in said else {})}

    for path in args.paths or PATHS:
        if time.perf_counter() - start > args.budget_s:
            r = {"path": path, "skipped": f"the {args.budget_s}-second budget was spent"}
        else:
            r = measure(path, [])
            if failed_with_liger(r, args.liger):
                why = (r["failed"].strip().splitlines() or ["no output"])[-1]
                print(f"{path}: failed with Liger on ({why}); measuring it again with Liger off", flush=True)
                r = {**measure(path, ["--liger", "off"]), "liger_failed": why}
        if "tokens_per_s" in r:
            r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peaks["bf16" if r["bf16"] else "fp32"]
        results.append(r)
        print(row_text(r), flush=True)
        save()
    print(header)
    for r in results:
        print(row_text(r))
    done = {r["path"]: r for r in results if "tokens_per_s" in r}
    ours = [r for p, r in done.items() if p.startswith("sftmix")]
    theirs = [r for p, r in done.items() if p.startswith("trl")]
    if ours and theirs:
        best, best_trl = max(ours, key=lambda r: r["tokens_per_s"]), max(theirs, key=lambda r: r["tokens_per_s"])
        print(f"RATIO sftmix best ({best['path']}) / TRL best ({best_trl['path']}) real tokens/s: "
              f"{best['tokens_per_s'] / best_trl['tokens_per_s']:.2f}x; sftmix best MFU {best['mfu']:.1%} (goals: 2x, 40 % on one H200)")
        losses = [r["loss_fixed_batch"] for r in done.values()]
        print(f"fixed-batch loss spread over every path: {max(losses) - min(losses):.2e} (same loss semantics: ~0)")
    if "sftmix" in done and "trl" in done:
        ours_gb, theirs_gb = done["sftmix"]["peak_memory_gb"], done["trl"]["peak_memory_gb"]
        print(f"memory, defaults at equal batch: sftmix {ours_gb:.2f} GB, TRL {theirs_gb:.2f} GB "
              f"({done['sftmix']['memory_kind']})")
    if "sftmix_ckpt" in done and "trl" in done:
        ours_gb, theirs_gb = done["sftmix_ckpt"]["peak_memory_gb"], done["trl"]["peak_memory_gb"]
        print(f"RATIO memory at equal settings (gradient checkpointing, as TRL's default): sftmix / TRL {ours_gb / theirs_gb:.2f}x "
              f"({ours_gb:.2f} / {theirs_gb:.2f} GB), real tokens/s {done['sftmix_ckpt']['tokens_per_s'] / done['trl']['tokens_per_s']:.2f}x")
    if "sftmix_loss_full" in done and "sftmix_loss_chunked" in done:
        full, chunked = done["sftmix_loss_full"], done["sftmix_loss_chunked"]
        print(f"RATIO the loss 2,048 positions at a time / all at once: memory {chunked['peak_memory_gb'] / full['peak_memory_gb']:.2f}x "
              f"({chunked['peak_memory_gb']:.2f} / {full['peak_memory_gb']:.2f} GB), real tokens/s "
              f"{chunked['tokens_per_s'] / full['tokens_per_s']:.2f}x")
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
