"""``sftmix eval`` and ``sftmix tsne``: measure a model's abilities, look at its hidden states.

Each command imports its machinery inside its function, as every command group does: argument
errors and ``--help`` answer without loading transformers, torch or scikit-learn."""

from __future__ import annotations

import json

from sftmix.cli.common import (
    add_config_flags,
    config_values,
    output_dir,
    positive_int,
    seed,
)
from sftmix.config import EvalConfig, HeldoutConfig
from sftmix.errors import SftmixError
from sftmix.eval import tasks
from sftmix.eval.metrics import TaskMetrics

# The flags of `sftmix eval` that set an eval config field: help, default and choices come from
# the field (sftmix.config.run.EvalConfig).
EVAL_FLAGS = {"tasks": "--tasks", "limit": "--limit", "data_dir": "--data-dir", "backend": "--backend",
              "batch_size": "--batch-size", "dtype": "--dtype", "mtbench.repeats": "--repeats",
              "humaneval.wrapper": "--humaneval-wrapper", "mtbench.judge.base_url": "--judge-base-url",
              "mtbench.judge.model": "--judge-model", "openai.base_url": "--base-url", "openai.served_model": "--served-model",
              "openai.concurrency": "--concurrency", "vllm_server.python": "--vllm-python", "vllm.dtype": "--vllm-dtype",
              "vllm_server.start_timeout_s": "--vllm-start-timeout"}
# ... and the held-out rows the loss task scores (sftmix.config.run.HeldoutConfig)
HELDOUT_FLAGS = {"sources": "--loss-sources", "samples": "--loss-samples"}
GENERATING = ("gsm8k", "humaneval", "mtbench")  # the benchmarks --max-new-tokens sets


def cmd_eval(args) -> None:
    """``sftmix eval``: evaluate a model on the given tasks and print the headline metrics."""
    # per command: see the module docstring
    from sftmix.config import validate
    from sftmix.eval.runner import evaluate
    from sftmix.models import resolve_model

    fields = config_values(args, EVAL_FLAGS)
    if "tasks" in fields:
        if not fields["tasks"]:
            raise SftmixError(f"--tasks: name at least one of {', '.join(tasks.BUILTIN)} (or package.module:attribute)")
        for t in fields["tasks"]:
            try:
                tasks.check_name(t)
            except SftmixError as e:
                raise SftmixError(f"--tasks: {e}") from None
    if args.max_new_tokens is not None:
        for k in GENERATING:
            fields.setdefault(k, {})["max_new_tokens"] = args.max_new_tokens
    cfg = validate(EvalConfig, fields, "sftmix eval arguments")
    held = validate(HeldoutConfig, config_values(args, HELDOUT_FLAGS), "sftmix eval arguments")
    out = output_dir(args.out, "--out")
    model = resolve_model(args.model)
    doc = evaluate(model, cfg, out, template=args.template, progress=not args.quiet, heldout_cfg=held)
    print(json.dumps({t: headline(doc.spec(t), m) for t, m in doc.tasks.items()}, indent=1))
    if doc.engine:
        print(f"engine: {doc.engine.describe()}")
    print(f"results: {out}/results.json")


def headline(spec: str, m: TaskMetrics) -> dict:
    """The few numbers of a task's metrics worth printing (``spec``: the task as configured)."""
    return m.headline(tasks.get(spec).metrics)


def cmd_tsne(args) -> None:
    """``sftmix tsne``: the t-SNE figure of two models' hidden states on the same queries."""
    # per command: see the module docstring
    from sftmix.analysis.tsne import tsne
    from sftmix.models import resolve_model

    models = {"base": resolve_model(args.base), "tuned": resolve_model(args.tuned)}
    out = output_dir(args.out, "--out")
    png = tsne(models, args.sources.split(","), out, args.n, args.layer, args.template, args.seed, args.data_dir)
    print(f"t-SNE: {png}")


def add_commands(sub) -> None:
    """Register ``sftmix eval`` and ``sftmix tsne``."""
    ev = sub.add_parser("eval", help="evaluate a model: gsm8k, humaneval, mtbench, loss, or your own task (package.module:attribute)")
    ev.add_argument("model", help="smollm2, tiny, a checkpoint folder, a hub id or a .gguf file")
    add_config_flags(ev, EvalConfig, EVAL_FLAGS)
    add_config_flags(ev, HeldoutConfig, HELDOUT_FLAGS)
    ev.add_argument("--out", "-o", default="eval_out")
    ev.add_argument("--template", default="vicuna", choices=["vicuna", "model"])
    ev.add_argument("--max-new-tokens", type=positive_int, help="override every task's generation budget (defaults 512/512/1024)")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    ts = sub.add_parser("tsne", help="t-SNE of a layer's mean hidden states, base vs tuned model (paper Fig. 5a/b)")
    ts.add_argument("base")
    ts.add_argument("tuned")
    ts.add_argument("--sources", default="gsm8k,code_alpaca,sharegpt")
    ts.add_argument("--n", type=positive_int, default=100, help="queries per source")
    ts.add_argument("--layer", type=int, default=15)
    ts.add_argument("--template", default="vicuna", choices=["vicuna", "model"])
    ts.add_argument("--seed", type=seed, default=0)
    ts.add_argument("--data-dir")
    ts.add_argument("--out", default="tsne_out")
    ts.set_defaults(func=cmd_tsne)
