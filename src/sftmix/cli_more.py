"""Subcommands of the later pipeline steps (train, eval, run, study, demo)."""

from __future__ import annotations

import json


def _load_run(args):
    from sftmix.config import RunConfig, apply_overrides, read_yaml, validate

    data = apply_overrides(read_yaml(args.config), args.overrides)
    return validate(RunConfig, data, args.config)


def cmd_train(args) -> None:
    from sftmix.train.strategies import plan, run_dir, run_strategy

    cfg = _load_run(args)
    stages = plan(cfg)
    print(f"run {cfg.name}: {len(stages)} stage(s): {' -> '.join(s.name for s in stages)}; output {run_dir(cfg)}")
    final = run_strategy(cfg, progress=not args.quiet)
    print(f"final checkpoint: {final}")


def cmd_eval(args) -> None:
    from sftmix.config import EvalConfig, validate
    from sftmix.eval.runner import evaluate
    from sftmix.train.models import resolve_model

    fields = {"tasks": [t.strip() for t in args.tasks.split(",") if t.strip()], "limit": args.limit,
              "data_dir": args.data_dir, "backend": args.backend, "batch_size": args.batch_size, "dtype": args.dtype,
              "mtbench_repeats": args.repeats, "humaneval_wrapper": args.humaneval_wrapper,
              "judge": {k: v for k, v in {"base_url": args.judge_base_url, "model": args.judge_model}.items() if v}}
    if args.max_new_tokens:
        for k in ("gsm8k_max_new_tokens", "humaneval_max_new_tokens", "mtbench_max_new_tokens"):
            fields[k] = args.max_new_tokens
    if args.loss_sources:
        fields["loss_sources"] = args.loss_sources.split(",")
    if args.loss_samples:
        fields["loss_samples"] = args.loss_samples
    cfg = validate(EvalConfig, {k: v for k, v in fields.items() if v is not None}, "sftmix eval arguments")
    model = resolve_model(args.model)
    doc = evaluate(model, cfg, args.out, template=args.template, progress=not args.quiet)
    print(json.dumps({t: _headline(t, m) for t, m in doc["tasks"].items()}, indent=1))
    print(f"results: {args.out}/results.json")


def _headline(task: str, m: dict):
    if task == "gsm8k":
        return {k: m[k] for k in ("accuracy", "flexible_accuracy", "invalid_rate", "n")}
    if task == "humaneval":
        return {k: m[k] for k in m if k.startswith("pass@") or k in ("n_problems", "isolated")}
    if task == "mtbench":
        return {k: m[k] for k in ("score", "score_sd", "turn1", "turn2", "failed_judgments", "repeats")}
    return {src: round(v["loss"], 4) for src, v in m.items() if isinstance(v, dict)}


def cmd_run(args) -> None:
    from sftmix.eval.runner import evaluate
    from sftmix.train.strategies import run_dir, run_strategy, training_ids

    cfg = _load_run(args)
    final = run_strategy(cfg, progress=not args.quiet)
    doc = evaluate(str(final), cfg.eval, run_dir(cfg) / "eval", cfg.template, cfg.data_dir, cfg.sources, cfg.seed,
                   training_ids(cfg), progress=not args.quiet)
    print(json.dumps({t: _headline(t, m) for t, m in doc["tasks"].items()}, indent=1))


def cmd_study(args) -> None:
    from sftmix.analysis.report import write_report
    from sftmix.cli import _table
    from sftmix.study.runner import load_study, run_study, status_rows, study_dir
    from sftmix.study.store import Store

    study, runs = load_study(args.file, args.profile)
    out = study_dir(study, args.profile)
    if args.study_command == "run":
        store = run_study(study, runs, args.profile, progress=not args.quiet)
        print(f"report: {write_report(store, out / 'report', study.name, study.model_dump())}")
    elif args.study_command == "status":
        db = out / "results.sqlite"
        rows = status_rows(Store(db) if db.exists() else None, runs)
        _table(f"study {study.name}{' (' + args.profile + ')' if args.profile else ''}: {len(runs)} runs",
               ["id", "run", "status", "error"], rows)
        counts = {s: sum(r[2] == s for r in rows) for s in ("done", "running", "failed", "pending")}
        print(counts)
    else:
        db = out / "results.sqlite"
        if not db.exists():
            from sftmix.errors import SftmixError

            raise SftmixError(f"{db}: no results yet (run `sftmix study run {args.file}` first)")
        print(f"report: {write_report(Store(db), out / 'report', study.name, study.model_dump())}")


def cmd_demo(args) -> None:
    from sftmix.demo import run_demo

    print(f"report: {run_demo(args.model, args.data_dir, args.out, args.quick, progress=not args.quiet)}")


def cmd_tsne(args) -> None:
    from sftmix.analysis.tsne import tsne
    from sftmix.train.models import resolve_model

    models = {"base": resolve_model(args.base), "tuned": resolve_model(args.tuned)}
    png = tsne(models, args.sources.split(","), args.out, args.n, args.layer, args.template, args.seed, args.data_dir)
    print(f"t-SNE: {png}")


def add_commands(sub) -> None:
    """Register the training, evaluation and study subcommands."""
    tr = sub.add_parser("train", help="train a run config (all its stages; resumes when restarted)")
    tr.add_argument("config")
    tr.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model: gsm8k, humaneval, mtbench, loss")
    ev.add_argument("model", help="smollm2, tiny, a checkpoint folder, a hub id or a .gguf file")
    ev.add_argument("--tasks", default="loss", help="comma-separated: gsm8k,humaneval,mtbench,loss")
    ev.add_argument("--limit", type=int, help="first N problems of each generation benchmark")
    ev.add_argument("--out", "-o", default="eval_out")
    ev.add_argument("--template", default="vicuna", choices=["vicuna", "model"])
    ev.add_argument("--data-dir", help="folder with gsm8k/ and mt_bench/ (else $SFTMIX_DATA_DIR)")
    ev.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"])
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="generation weights (bfloat16: ~2x faster with AMX, outputs depend on batching)")
    ev.add_argument("--repeats", type=int, default=1, help="MT-Bench full repeats (the paper: 3)")
    ev.add_argument("--humaneval-wrapper", default="complete", choices=["complete", "raw"])
    ev.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the MT-Bench judge")
    ev.add_argument("--judge-model", help="judge model name (default gpt-4-0613)")
    ev.add_argument("--max-new-tokens", type=int, help="override every task's generation budget (defaults 512/512/1024)")
    ev.add_argument("--loss-sources", help="comma-separated sources for held-out loss")
    ev.add_argument("--loss-samples", type=int)
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    rn = sub.add_parser("run", help="train a run config, then evaluate its final checkpoint")
    rn.add_argument("config")
    rn.add_argument("overrides", nargs="*", default=[])
    rn.add_argument("--quiet", action="store_true")
    rn.set_defaults(func=cmd_run)

    st = sub.add_parser("study", help="run, inspect or report a study (a grid of runs)").add_subparsers(dest="study_command", required=True)
    for name, help_ in (("run", "run every run of the study (skips done runs, resumes half-done ones)"),
                        ("status", "list the study's runs: done / running / failed / pending"),
                        ("report", "write the study's report (tables, figures, HTML)")):
        p = st.add_parser(name, help=help_)
        p.add_argument("file")
        p.add_argument("--profile", help="a profile of the study file, e.g. small")
        p.add_argument("--small", dest="profile", action="store_const", const="small", help="same as --profile small")
        p.add_argument("--quiet", action="store_true")
        p.set_defaults(func=cmd_study)

    ts = sub.add_parser("tsne", help="t-SNE of a layer's mean hidden states, base vs tuned model (paper Fig. 5a/b)")
    ts.add_argument("base")
    ts.add_argument("tuned")
    ts.add_argument("--sources", default="gsm8k,code_alpaca,sharegpt")
    ts.add_argument("--n", type=int, default=100, help="queries per source")
    ts.add_argument("--layer", type=int, default=15)
    ts.add_argument("--template", default="vicuna", choices=["vicuna", "model"])
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--data-dir")
    ts.add_argument("--out", default="tsne_out")
    ts.set_defaults(func=cmd_tsne)

    dm = sub.add_parser("demo", help="a small complete study of the paper's strategies on the embedded model, with a report")
    dm.add_argument("--model", default="smollm2")
    dm.add_argument("--data-dir", help="folder with gsm8k/ and code_alpaca/ (else generated math and code)")
    dm.add_argument("--out", default="demo_out")
    dm.add_argument("--quick", action="store_true", help="fewer examples, held-out loss only")
    dm.add_argument("--quiet", action="store_true")
    dm.set_defaults(func=cmd_demo)
