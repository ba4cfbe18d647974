"""``sftmix train`` and ``sftmix run``: train a run config (then evaluate it)."""

from __future__ import annotations

import json

from sftmix import layout
from sftmix.cli.common import load_run


def cmd_train(args) -> None:
    from sftmix.train.strategies import plan, run_dir, run_strategy

    cfg = load_run(args)
    stages = plan(cfg)
    print(f"run {cfg.name}: {len(stages)} stage(s): {' -> '.join(s.name for s in stages)}; output {run_dir(cfg)}")
    final = run_strategy(cfg, progress=not args.quiet)
    print(f"final checkpoint: {final}")


def cmd_run(args) -> None:
    from sftmix.cli.eval import headline
    from sftmix.eval.runner import evaluate
    from sftmix.train.strategies import plan, run_dir, run_strategy, training_ids

    cfg = load_run(args)
    plan(cfg)
    final = run_strategy(cfg, progress=not args.quiet)
    doc = evaluate(str(final), cfg.eval, layout.eval_dir(run_dir(cfg)), cfg.template, cfg.data_dir, cfg.sources, cfg.seed,
                   training_ids(cfg), progress=not args.quiet)
    print(json.dumps({t: headline(t, m, doc.get("task_info")) for t, m in doc["tasks"].items()}, indent=1))


def add_commands(sub) -> None:
    """Register ``sftmix train`` and ``sftmix run``."""
    tr = sub.add_parser("train", help="train a run config (all its stages; resumes when restarted)")
    tr.add_argument("config")
    tr.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    rn = sub.add_parser("run", help="train a run config, then evaluate its final checkpoint")
    rn.add_argument("config")
    rn.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    rn.add_argument("--quiet", action="store_true")
    rn.set_defaults(func=cmd_run)
