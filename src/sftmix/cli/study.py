"""``sftmix study`` and ``sftmix demo``: grids of runs, their status and report."""

from __future__ import annotations

from sftmix.cli.common import output_dir, positive_int, table
from sftmix.errors import SftmixError


def cmd_study(args) -> None:
    from sftmix.analysis.report import write_report
    from sftmix.study.runner import load_study, run_study, status_rows, study_dir
    from sftmix.study.store import Store

    study, runs = load_study(args.file, args.profile)
    out = study_dir(study, args.profile)
    db = out / "results.sqlite"
    if args.study_command == "run":
        output_dir(out, "study output_dir")
        store = run_study(study, runs, args.profile, progress=not args.quiet, executor=args.executor, address=args.address)
        print(f"report: {write_report(store, out / 'report', study.name, study.model_dump())}")
        failed = [r for r in store.runs() if r["status"] == "failed"]
        if failed:
            raise SftmixError(f"{len(failed)} of {len(runs)} runs failed (see `sftmix study status {args.file}`): "
                              + "; ".join(f"{r['label']}: {(r['error'] or '').splitlines()[0][:120]}" for r in failed[:5]))
    elif args.study_command == "status":
        rows = status_rows(Store(db) if db.exists() else None, runs, out)
        table(f"study {study.name}{' (' + args.profile + ')' if args.profile else ''}: {len(runs)} runs",
              ["id", "run", "status", "detail"], rows)
        counts = {s: sum(r[2] == s for r in rows) for s in ("done", "running", "queued", "interrupted", "failed", "pending")}
        print(counts)
    else:
        if not db.exists():
            raise SftmixError(f"{db}: no results yet (run `sftmix study run {args.file}` first)")
        print(f"report: {write_report(Store(db), out / 'report', study.name, study.model_dump())}")


def cmd_demo(args) -> None:
    from sftmix.demo import run_demo

    out = output_dir(args.out, "--out")
    print(f"report: {run_demo(args.model, args.data_dir, str(out), args.quick, progress=not args.quiet, benchmarks=args.benchmarks)}")


def add_commands(sub) -> None:
    """Register ``sftmix study run | status | report`` and ``sftmix demo``."""
    st = sub.add_parser("study", help="run, inspect or report a study (a grid of runs)").add_subparsers(dest="study_command", required=True)
    for name, help_ in (("run", "run every run of the study (skips done runs, resumes half-done ones)"),
                        ("status", "list the study's runs: done / running / failed / pending"),
                        ("report", "write the study's report (tables, figures, HTML)")):
        p = st.add_parser(name, help=help_)
        p.add_argument("file")
        p.add_argument("--profile", help="a profile of the study file, e.g. small")
        p.add_argument("--small", dest="profile", action="store_const", const="small", help="same as --profile small")
        p.add_argument("--quiet", action="store_true")
        if name == "run":
            p.add_argument("--executor", choices=["local", "ray", "slurm", "slurm-local"],
                           help="where runs execute (default: the study file's `executor`, else local)")
            p.add_argument("--address", help="ray: address of an existing cluster (host:port); none starts a local one")
        p.set_defaults(func=cmd_study)

    dm = sub.add_parser("demo", help="a small complete study of the paper's strategies on the embedded model, with a report")
    dm.add_argument("--model", default="smollm2")
    dm.add_argument("--data-dir", help="folder with gsm8k/ and code_alpaca/ (else $SFTMIX_DATA_DIR, the hub, and only then "
                    "the generated sources)")
    dm.add_argument("--out", default="demo_out")
    dm.add_argument("--quick", action="store_true", help="fewer examples, one seed, held-out loss only")
    dm.add_argument("--benchmarks", type=positive_int, default=None,
                    help="also GSM8K and HumanEval on the first N problems (off by default: a handful of problems is noise)")
    dm.add_argument("--quiet", action="store_true")
    dm.set_defaults(func=cmd_demo)
