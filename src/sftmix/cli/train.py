"""``sftmix train`` and ``sftmix run``: train a run config (then evaluate it).

Each command imports its machinery inside its function, as every command group does: argument
errors and ``--help`` answer without loading transformers or torch."""

from __future__ import annotations

import argparse
import json

from sftmix.cli.common import load_run


def cmd_train(args) -> None:
    """``sftmix train``: train every stage of a run config (no evaluation)."""
    # per command: see the module docstring
    from sftmix import pipeline
    from sftmix.runlock import TrainingLock

    p = pipeline.plan(load_run(args))
    print(f"run {p.cfg.name}: {len(p.stages)} stage(s): {' -> '.join(s.name for s in p.stages)}; output {p.out}")
    with TrainingLock(p.out):  # one training of a folder at a time
        final = pipeline.train(p, progress=not (args.quiet or args.no_progress))
    print(f"final checkpoint: {final}")


def cmd_run(args) -> None:
    """``sftmix run``: train and evaluate a run config, then print its headline metrics."""
    # per command: see the module docstring
    from sftmix import pipeline
    from sftmix.cli.eval import headline
    from sftmix.eval import contamination
    from sftmix.runlock import TrainingLock
    from sftmix.train.strategies import run_dir

    cfg = load_run(args)
    with TrainingLock(run_dir(cfg)):  # one training of a folder at a time
        p, doc = pipeline.run(cfg, progress=not args.quiet)
    print(json.dumps({t: headline(doc.spec(t), m) for t, m in doc.tasks.items()}, indent=1))
    held = contamination.read(p.eval_dir)
    for task, c in (held.tasks if held else {}).items():
        print(contamination.describe(task, c))


def add_commands(sub) -> None:
    """Register ``sftmix train`` and ``sftmix run``."""
    tr = sub.add_parser("train", help="train a run config (all its stages; resumes when restarted)")
    tr.add_argument("config")
    tr.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    tr.add_argument("--quiet", action="store_true", help="print nothing but results, warnings and errors")
    # bars off, the trainer's log lines kept: how `sftmix run` with a launcher starts its processes
    tr.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    tr.set_defaults(func=cmd_train)

    rn = sub.add_parser("run", help="train a run config, then evaluate its final checkpoint")
    rn.add_argument("config")
    rn.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    rn.add_argument("--quiet", action="store_true")
    rn.set_defaults(func=cmd_run)
