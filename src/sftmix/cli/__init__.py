"""The ``sftmix`` command: data | train | eval | run | study | demo | tsne.

Each command group lives in its own module (``data``, ``train``, ``eval``, ``study``) and
registers its subcommands here. A subcommand is a thin wrapper: parse arguments, load a typed
config, call one public function, print a summary. Any ``SftmixError`` is printed without a
traceback and exits with status 2; so do file-system errors that escape the checks.

``key.path=value`` overrides may stand anywhere after the command, also after options
(``sftmix data compose c.yaml -o out seed=1``).
"""

from __future__ import annotations

import argparse
import os
import sys

from sftmix.cli import data, eval, study, train
from sftmix.errors import SftmixError
from sftmix.progress import QUIET


def build_parser() -> argparse.ArgumentParser:
    """The ``sftmix`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="sftmix", description="SFT data composition: mixtures, strategies (DMT), evaluation, studies.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (data, train, eval, study):
        group.add_commands(sub)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, keeping ``key=value`` overrides given after options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a nargs="*" positional at the first option, so overrides given
    # after options arrive here; anything else left over is a usage error as usual.
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for bad input, with a one-line error)."""
    args = parse(argv)
    quiet_before = os.environ.get(QUIET)
    if getattr(args, "quiet", False):
        quiet_libraries()
    try:
        args.func(args)
    except SftmixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a path the user gave or the disk it is on: a fault to show whole
            raise
        # a folder that is a file, no permission, a name too long, a full or read-only disk: the path and why
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    finally:  # a command called in-process (tests, notebooks) leaves the caller's environment as it was
        if quiet_before is None:
            os.environ.pop(QUIET, None)
        else:
            os.environ[QUIET] = quiet_before
    release_process_group()
    return 0


def quiet_libraries() -> None:
    """``--quiet`` silences the libraries' progress bars too (transformers' "Loading weights" and
    "Writing model shards", the hub's) and the trainer's log lines (``QUIET``), in this process and
    in the processes it starts."""
    os.environ[QUIET] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by transformers and the hub when first imported
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets' "Saving the dataset" (a stage's tokenized rows)
    logging = sys.modules.get("transformers.utils.logging")  # never imports transformers; an import already made is told
    if logging is not None:
        logging.disable_progress_bar()
    datasets = sys.modules.get("datasets")
    if datasets is not None:
        datasets.disable_progress_bars()


def release_process_group() -> None:
    """Destroy the process group that a launched run (``accelerate launch -m sftmix.cli train``)
    made, while the interpreter is still whole. Left to the interpreter's finalisation, gloo's
    worker threads can abort a rank whose work has all succeeded ("terminate called without an
    active exception", SIGABRT), and the launcher then fails the whole run. Only after success:
    after an error the other ranks may still wait in a collective, and the process exits anyway."""
    dist = sys.modules.get("torch.distributed")  # never imports torch: a command that did not load it made no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
