"""Subcommands of the later pipeline steps (train, eval, run, study, demo)."""

from __future__ import annotations

import json


def _load_run(args):
    from sftmix.config import RunConfig, apply_overrides, read_yaml, validate

    data = apply_overrides(read_yaml(args.config), args.override)
    return validate(RunConfig, data, args.config)


def cmd_train(args) -> None:
    from sftmix.train.strategies import plan, run_dir, run_strategy

    cfg = _load_run(args)
    stages = plan(cfg)
    print(f"run {cfg.name}: {len(stages)} stage(s): {' -> '.join(s.name for s in stages)}; output {run_dir(cfg)}")
    final = run_strategy(cfg, progress=not args.quiet)
    print(f"final checkpoint: {final}")


def add_commands(sub) -> None:
    """Register the training, evaluation and study subcommands."""
    tr = sub.add_parser("train", help="train a run config (all its stages; resumes when restarted)")
    tr.add_argument("config")
    tr.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train, override=None)
    tr.set_defaults(func=lambda a: cmd_train(_merge_overrides(a)))


def _merge_overrides(args):
    args.override = list(args.overrides)
    return args
