"""``sftmix eval`` and ``sftmix tsne``: measure a model's abilities, look at its hidden states."""

from __future__ import annotations

import json

from sftmix.cli.common import output_dir, positive_int
from sftmix.errors import SftmixError

TASKS = ("gsm8k", "humaneval", "mtbench", "loss")


def cmd_eval(args) -> None:
    from sftmix.config import EvalConfig, validate
    from sftmix.errors import unknown
    from sftmix.eval.runner import evaluate
    from sftmix.models import resolve_model

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise SftmixError(f"--tasks {args.tasks!r}: name at least one of {', '.join(TASKS)}")
    for t in tasks:
        if t not in TASKS:
            raise unknown("task (--tasks)", t, TASKS)
    fields = {"tasks": tasks, "limit": args.limit,
              "data_dir": args.data_dir, "backend": args.backend, "batch_size": args.batch_size, "dtype": args.dtype,
              "mtbench_repeats": args.repeats, "humaneval_wrapper": args.humaneval_wrapper,
              "judge": {k: v for k, v in {"base_url": args.judge_base_url, "model": args.judge_model}.items() if v}}
    if args.max_new_tokens is not None:
        for k in ("gsm8k_max_new_tokens", "humaneval_max_new_tokens", "mtbench_max_new_tokens"):
            fields[k] = args.max_new_tokens
    if args.loss_sources:
        fields["loss_sources"] = [s.strip() for s in args.loss_sources.split(",") if s.strip()]
    if args.loss_samples is not None:
        fields["loss_samples"] = args.loss_samples
    cfg = validate(EvalConfig, {k: v for k, v in fields.items() if v is not None}, "sftmix eval arguments")
    out = output_dir(args.out, "--out")
    model = resolve_model(args.model)
    doc = evaluate(model, cfg, out, template=args.template, progress=not args.quiet)
    print(json.dumps({t: headline(t, m) for t, m in doc["tasks"].items()}, indent=1))
    print(f"results: {out}/results.json")


def headline(task: str, m: dict):
    """The few numbers of a task's metrics worth printing."""
    if task == "gsm8k":
        return {k: m[k] for k in ("accuracy", "flexible_accuracy", "invalid_rate", "n")}
    if task == "humaneval":
        return {k: m[k] for k in m if k.startswith("pass@") or k in ("n_problems", "isolation")}
    if task == "mtbench":
        return {k: m[k] for k in ("score", "score_sd", "turn1", "turn2", "failed_judgments", "repeats")}
    return {src: round(v["loss"], 4) for src, v in m.items() if isinstance(v, dict)}


def cmd_tsne(args) -> None:
    from sftmix.analysis.tsne import tsne
    from sftmix.models import resolve_model

    models = {"base": resolve_model(args.base), "tuned": resolve_model(args.tuned)}
    out = output_dir(args.out, "--out")
    png = tsne(models, args.sources.split(","), out, args.n, args.layer, args.template, args.seed, args.data_dir)
    print(f"t-SNE: {png}")


def add_commands(sub) -> None:
    """Register ``sftmix eval`` and ``sftmix tsne``."""
    ev = sub.add_parser("eval", help="evaluate a model: gsm8k, humaneval, mtbench, loss")
    ev.add_argument("model", help="smollm2, tiny, a checkpoint folder, a hub id or a .gguf file")
    ev.add_argument("--tasks", default="loss", help="comma-separated: gsm8k,humaneval,mtbench,loss")
    ev.add_argument("--limit", type=positive_int, help="first N problems of each generation benchmark")
    ev.add_argument("--out", "-o", default="eval_out")
    ev.add_argument("--template", default="vicuna", choices=["vicuna", "model"])
    ev.add_argument("--data-dir", help="folder with gsm8k/ and mt_bench/ (else $SFTMIX_DATA_DIR)")
    ev.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"])
    ev.add_argument("--batch-size", type=positive_int, default=8)
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="generation weights (bfloat16: ~2x faster with AMX, outputs depend on batching)")
    ev.add_argument("--repeats", type=positive_int, default=1, help="MT-Bench full repeats (the paper: 3)")
    ev.add_argument("--humaneval-wrapper", default="complete", choices=["complete", "raw"])
    ev.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the MT-Bench judge")
    ev.add_argument("--judge-model", help="judge model name (default gpt-4-0613)")
    ev.add_argument("--max-new-tokens", type=positive_int, help="override every task's generation budget (defaults 512/512/1024)")
    ev.add_argument("--loss-sources", help="comma-separated sources for held-out loss")
    ev.add_argument("--loss-samples", type=positive_int)
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    ts = sub.add_parser("tsne", help="t-SNE of a layer's mean hidden states, base vs tuned model (paper Fig. 5a/b)")
    ts.add_argument("base")
    ts.add_argument("tuned")
    ts.add_argument("--sources", default="gsm8k,code_alpaca,sharegpt")
    ts.add_argument("--n", type=positive_int, default=100, help="queries per source")
    ts.add_argument("--layer", type=int, default=15)
    ts.add_argument("--template", default="vicuna", choices=["vicuna", "model"])
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--data-dir")
    ts.add_argument("--out", default="tsne_out")
    ts.set_defaults(func=cmd_tsne)
