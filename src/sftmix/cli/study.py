"""``sftmix study`` and ``sftmix demo``: grids of runs, their status and report.

Each command imports its machinery inside its function: argument errors and ``--help`` answer
without loading scipy, matplotlib, torch or BoTorch (seconds of start-up)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, get_args

import yaml

from sftmix import layout
from sftmix.cli.common import output_dir, positive_int, seed, table
from sftmix.config import ExecutorConfig
from sftmix.errors import SftmixError
from sftmix.io import json_text, write_all

if TYPE_CHECKING:
    from sftmix.analysis.lawfit import Fit
    from sftmix.analysis.laws import Prediction
    from sftmix.analysis.propose import KProposal, MixtureProposal
    from sftmix.analysis.stats import Interval


def cmd_study(args) -> None:
    """``sftmix study run|status|report``: run a study's grid, show where it stands, or write its report."""
    # per command: see the module docstring
    from sftmix.analysis.findings import unmatched
    from sftmix.analysis.report import write_report
    from sftmix.study.runner import backfill_done, load_study, run_study, status_rows, study_dir
    from sftmix.study.store import Store

    notes: list[str] = []
    study, runs = load_study(args.file, args.profile, notes, read_only=args.study_command != "run")
    if args.study_command in ("run", "status"):  # before hours of runs, not in a report afterwards
        for line in unmatched(study, runs, args.profile):
            print(f"warning: {args.file}: {line}", file=sys.stderr)
    out = study_dir(study, args.profile)
    db = layout.store(out)
    doc = study_doc(study, args.profile)
    if args.study_command == "run":
        output_dir(out, "study output_dir")
        store = run_study(study, runs, args.profile, progress=not args.quiet, executor=args.executor, address=args.address)
        store = store.restricted(r.id for r in runs)
        print(f"report: {write_report(store, layout.report_dir(out), study.name, doc, top=notes)}")
        failed = [r for r in store.runs() if r.status == "failed"]
        if failed:
            raise SftmixError(f"{len(failed)} of {len(runs)} runs failed (see `sftmix study status {args.file}`): "
                              + "; ".join(f"{r.label}: {r.first_error_line[:120]}" for r in failed[:5]))
    elif args.study_command == "status":
        rows = status_rows(Store(db).restricted(r.id for r in runs) if db.exists() else None, runs, out)
        table(f"study {study.name}{' (' + args.profile + ')' if args.profile else ''}: {len(runs)} runs",
              ["id", "run", "status", "detail"], rows)
        counts = {s: sum(r[2] == s for r in rows) for s in ("done", "running", "queued", "interrupted", "failed", "pending")}
        print(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    else:
        if not db.exists():
            raise SftmixError(f"{db}: no results yet (run `sftmix study run {args.file}` first)")
        store = Store(db).restricted(r.id for r in runs)
        backfill_done(store, runs)
        print(f"report: {write_report(store, layout.report_dir(out), study.name, doc, top=notes)}")


def study_doc(study, profile: str | None) -> dict:
    """The study as the report shows it: the profile's zipped axes where it has its own (claims
    pair configurations along them)."""
    return {**study.model_dump(), "zip": study.zip_for(profile)}


def _results(args):
    """The study, its planned runs, output folder and store (which must exist; its done runs given
    their contamination rows where an older sftmix ingested them without: ``backfill_done``)."""
    # per command: see the module docstring
    from sftmix.study.runner import backfill_done, load_study, study_dir
    from sftmix.study.store import Store

    args.notes = []
    study, runs = load_study(args.file, args.profile, args.notes, read_only=True)
    out = study_dir(study, args.profile)
    db = layout.store(out)
    if not db.exists():
        raise SftmixError(f"{db}: no results yet (run `sftmix study run {args.file}"
                          f"{' --profile ' + args.profile if args.profile else ''}` first)")
    store = Store(db).restricted(r.id for r in runs)
    backfill_done(store, runs)
    return study, runs, out, store


def _counts(store, runs) -> dict:
    rows = {r.id: r.status for r in store.runs()}
    c = {s: sum(rows.get(r.id) == s for r in runs) for s in ("done", "failed", "running")}
    c["pending"] = sum(r.id not in rows for r in runs)
    c["planned"] = len(runs)
    return c


def _fit(args, study, runs, out, store, quiet: bool = False) -> Fit:
    """fit.json for the study's done runs: reused when it was made from the same runs and settings."""
    # per command: see the module docstring
    from sftmix.analysis.lawfit import fit_key, load_fit, run_fit

    counts = _counts(store, runs)
    others = {k: v for k, v in counts.items() if k in ("failed", "running", "pending") and v}
    print(f"fit: {counts['done']} of {counts['planned']} runs done"
          + (f" ({', '.join(f'{v} {k}' for k, v in others.items())}); fitting on the done ones" if others else ""), flush=True)
    doc = load_fit(out)
    if doc is not None and not getattr(args, "refit", False):
        if doc.key == fit_key(store, args.unit, args.draws, args.seed):
            if not quiet:
                print(f"fit: {out / 'fit.json'} is up to date with these runs; reused")
            return doc
        print(f"fit: {out / 'fit.json'} was fitted on other runs, configurations (labels, grid points) or settings; refitting",
              flush=True)
    return run_fit(store, out, args.unit, args.draws, args.seed, counts, progress=not args.quiet)


def cmd_fit(args) -> None:
    """``sftmix study fit``: fit the scaling and mixture laws to a study's done runs (fit.json) and report them."""
    # per command: see the module docstring
    from sftmix.analysis.lawfit import SUMMARY_COLUMNS, summary_rows
    from sftmix.analysis.report import write_report

    study, runs, out, store = _results(args)
    args.refit = True
    doc = _fit(args, study, runs, out, store)
    table(f"laws: {study.name} ({doc.unit}, {doc.draws} bootstrap draws)", SUMMARY_COLUMNS, summary_rows(doc))
    for n in doc.notes:
        print(f"note: {n}")
    for name, r in doc.targets.items():
        print(f"{name}: {r.why}")
    print(f"fit: {out / 'fit.json'}")
    print(f"report: {write_report(store, out / 'report', study.name, study_doc(study, args.profile), top=args.notes, laws=doc)}")


def cmd_propose(args) -> None:
    """``sftmix study propose``: a mixture (or a DMT k) from the fitted laws, written as a study to run."""
    # per command: see the module docstring
    from sftmix.analysis.propose import Evidence, proposal_study, propose_k, propose_mixture

    args.weights = _arg("--weights", _weights, args.weights)
    args.budget = _arg("--budget", _budget, args.budget)
    args.dmt_k = _arg("--dmt-k", _nonneg, args.dmt_k)
    args.max_loss = [_arg("--max-loss", _max_loss, v) for v in args.max_loss]
    if args.dmt_k is None and not args.weights:
        raise SftmixError("propose: give --weights ABILITY=W,... (a mixture) or --dmt-k EPS (DMT's replay k)")
    if args.dmt_k is not None:
        given = [f for f, v in (("--weights", args.weights), ("--budget", args.budget), ("--max-loss", args.max_loss)) if v]
        if given:
            raise SftmixError(f"propose: --dmt-k proposes DMT's replay k and takes no {', '.join(given)} (those are for a mixture)")
    max_loss = _max_losses(args.max_loss)
    study, runs, out, store = _results(args)
    if args.dmt_k is not None:
        prop = propose_k(Evidence(store), args.dmt_k, args.draws, args.seed)
    else:
        args.unit = "examples"
        doc = _fit(args, study, runs, out, store, quiet=True)
        prop = propose_mixture(Evidence(store, doc), args.weights, args.budget, max_loss)
    proposal_out = (out / layout.PROPOSAL_DIR).resolve()
    doc_yaml = proposal_study(prop, study.name, store, str(proposal_out))
    pj, py = out / layout.PROPOSAL_JSON, out / layout.PROPOSAL_YAML
    prop.study_file = str(py)
    text = ("# Written by `sftmix study propose`: run it with `sftmix study run` and read its report's Predictions.\n"
            + yaml.safe_dump(doc_yaml, sort_keys=False, width=120))
    write_all({pj: json_text(prop.model_dump()), py: text})  # both or neither
    _print_proposal(prop)
    print(f"proposal: {pj}")
    print(f"study file: {py} (run: sftmix study run {py})")


def cmd_optimize(args) -> None:
    """``sftmix study optimize``: a sequential design over the study's mixture (Bayesian optimisation)."""
    # per command: see the module docstring
    from sftmix.analysis.report import write_report
    from sftmix.study.optimize import design, optimize
    from sftmix.study.runner import load_study
    from sftmix.study.store import Store

    weights = _arg("--weights", _weights, args.weights)  # required by the parser
    budget = _arg("--budget", _budget, args.budget)
    if budget is not None and budget < 1:
        raise SftmixError(f"--budget {args.budget}: a mixture needs at least 1 example")
    max_loss = _max_losses([_arg("--max-loss", _max_loss, v) for v in args.max_loss])
    if args.stop_below is not None:
        args.stop_below = _arg("--stop-below", _nonneg, args.stop_below)
    notes: list[str] = []
    study, runs = load_study(args.file, args.profile, notes)
    out = layout.study_dir(study.name, study.output_dir, args.profile)
    settings, space = design(study, args.profile, runs, str(args.file), weights, args.runs, max_loss,
                             None if budget is None else int(budget), args.batch, args.initial, args.replicates, args.seed, args.stop_below)
    output_dir(out, "study output_dir")
    log = optimize(study, args.profile, settings, space, str(args.file), progress=not args.quiet, executor=args.executor,
                   address=args.address)
    rows = [[str(st.index), c.label, "initial" if c.acquisition is None else f"{c.acquisition:.3f}",
             f"{c.predicted.estimate:.4f} [{c.predicted.low:.4f}, {c.predicted.high:.4f}]" if c.predicted else "-",
             f"{c.observed.estimate:.4f} [{c.observed.low:.4f}, {c.observed.high:.4f}]" if c.observed else "-",
             st.incumbent or "-"] for st in log.steps for c in st.choices]
    table(f"optimize {study.name}: {log.runs_used()} runs", ["step", "configuration", "acquisition", "predicted", "observed",
                                                            "incumbent"], rows)
    print(f"stopped: {log.stopped}")
    r = log.recommendation
    if r is not None:
        print(f"recommendation: {r.label} (weighted held-out loss {r.observed.estimate:.4f} [{r.observed.low:.4f}, "
              f"{r.observed.high:.4f}])")
    else:
        print("recommendation: none (no configuration run met every --max-loss)")
    print(f"log: {layout.optimize_file(out)}")
    report = write_report(Store(layout.store(out)), layout.optimize_report_dir(out), f"{study.name}: optimize", top=notes,
                          optimization=log)
    print(f"report: {report}")


def _print_proposal(prop: MixtureProposal | KProposal) -> None:
    def iv(v: Prediction | Interval) -> str:
        return f"{v.estimate:.4f} [{v.low:.4f}, {v.high:.4f}]"

    if prop.mode == "mixture":
        p, b = prop.proposal, prop.best_tried
        print(f"proposal: {', '.join(f'{a} {n}' for a, n in p.examples.items())} examples (total {p.total}, budget "
              f"{prop.budget:g}); sources: {p.sources}")
        rows = [[n, iv(v), f"{v.law_low:.4f}..{v.law_high:.4f}",
                 iv(b.observed[n]) if n in b.observed else "-"] for n, v in p.predicted.items()]
        rows.append(["weighted", iv(p.weighted), f"{p.weighted.law_low:.4f}..{p.weighted.law_high:.4f}",
                     f"{b.weighted_observed:.4f}"])
        table(f"predicted for the proposal vs observed for the best tried ({b.label})",
              ["held-out loss", "proposal: predicted [95% predictive]", "law interval", "best tried: observed [95%]"], rows)
    else:
        b = prop.best_tried
        print(f"proposal: k = {prop.k:.4g} [{_k(prop.k_low)}, {_k(prop.k_high)}] keeps every specialised ability within "
              f"{prop.eps:g} of its stage-1 loss; best tried: {b.label} (k = {b.k:g}"
              f"{'' if b.meets_eps else ', the largest tried: none met EPS'})")
        rows = [[n, e.ability, e.fit.selected or "none", "-" if e.stage1_loss is None else f"{e.stage1_loss:.4f}",
                 f"{e.k:.4g} [{_k(e.k_low)}, {_k(e.k_high)}]" if e.k is not None else "-",
                 iv(e.predicted_at_k) if e.predicted_at_k is not None else "-"] for n, e in prop.targets.items()]
        table("DMT's k", ["held-out loss", "ability", "law", "stage-1 loss", "critical k [95%]", "predicted at k"], rows)
    for n in prop.notes:
        print(f"note: {n}")


def _k(v) -> str:
    return "above 1" if v is None else f"{v:.4g}"


def cmd_export(args) -> None:
    """``sftmix study export``: the study's mixtures and metrics as olmix CSV files."""
    # per command: see the module docstring
    from sftmix.analysis.lawfit import export_olmix

    study, runs, out, store = _results(args)
    ratios, metrics = export_olmix(store, output_dir(args.olmix, "--olmix"))
    print(f"olmix: {ratios} and {metrics}")


def _arg(flag: str, parse, text: str | None):
    """A propose argument parsed before any work: a bad one is an error naming the flag."""
    if text is None:
        return None
    try:
        return parse(text)
    except argparse.ArgumentTypeError as e:
        raise SftmixError(f"{flag}: {e}") from None


def _finite(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{what}: expected a finite number, got {text!r}")
    return v


def _pair(part: str, text: str, form: str) -> tuple[str, float]:
    name, eq, value = part.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
    return name.strip(), _finite(value.strip(), f"{name.strip()} in {text!r}")


def _weights(text: str) -> dict[str, float]:
    """--weights math=1,code=1,general=0.5: each ability once, each weight a finite number >= 0."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, w = _pair(part, text, "ABILITY=WEIGHT[,ABILITY=WEIGHT...]")
        if name in out:
            raise argparse.ArgumentTypeError(f"ability {name!r} is given twice in {text!r}; give each ability once")
        if w < 0:
            raise argparse.ArgumentTypeError(f"{name} in {text!r}: a weight must be >= 0, got {w:g}")
        out[name] = w
    if sum(out.values()) <= 0:
        raise argparse.ArgumentTypeError(f"the weights in {text!r} sum to 0; give at least one positive weight")
    return out


def _max_loss(text: str) -> tuple[str, float]:
    return _pair(text, text, "ABILITY=LOSS")


def _nonneg(text: str) -> float:
    v = _finite(text, "EPS")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def _budget(text: str) -> float:
    return _finite(text, "budget")  # at least 1 example: checked by the proposal, which says so


def _max_losses(pairs: list[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, v in pairs:
        if name in out:
            raise SftmixError(f"--max-loss: ability {name!r} is given twice ({out[name]:g} and {v:g}); give each ability once")
        out[name] = v
    return out


def cmd_demo(args) -> None:
    """``sftmix demo``: the paper's training strategies compared on real data, with a report."""
    # per command: see the module docstring
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
            p.add_argument("--executor", choices=list(get_args(ExecutorConfig.model_fields["name"].annotation)),
                           help="where runs execute (default: the study file's `executor`, else local)")
            p.add_argument("--address", help="ray: address of an existing cluster (host:port); none starts a local one")
        p.set_defaults(func=cmd_study)

    def common(p):
        p.add_argument("file")
        p.add_argument("--profile", help="a profile of the study file, e.g. small")
        p.add_argument("--small", dest="profile", action="store_const", const="small", help="same as --profile small")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--draws", type=positive_int, default=200, help="bootstrap draws for the intervals (default 200)")
        p.add_argument("--seed", type=seed, default=0, help="seed of the bootstrap and of the fits' random starts")

    p = st.add_parser("fit", help="fit amount, mixture and joint laws per ability to the study's held-out losses, with "
                                  "leave-one-out validation (fit.json, a Laws section in the report)")
    common(p)
    p.add_argument("--unit", choices=["examples", "tokens"], default="examples", help="amounts in examples or in tokens")
    p.set_defaults(func=cmd_fit)
    p = st.add_parser("propose", help="the mixture (or DMT's k) the fitted laws recommend, with intervals, and a study file "
                                      "that runs it beside the best tried configuration")
    common(p)
    p.add_argument("--weights", help="ability weights, e.g. math=1,code=1,general=1")
    p.add_argument("--budget", help="at most this many training examples in all (default: the largest total tried)")
    p.add_argument("--max-loss", action="append", default=[], metavar="ABILITY=VALUE",
                   help="keep this ability's predicted held-out loss at or below VALUE (repeatable)")
    p.add_argument("--dmt-k", metavar="EPS",
                   help="from a study over DMT's k: the smallest k keeping each specialised ability within EPS of its "
                        "stage-1 held-out loss")
    p.set_defaults(func=cmd_propose, unit="examples")
    p = st.add_parser("optimize", help="the best mixture of the study's sources in few runs: a sequential design (Bayesian "
                                       "optimisation on BoTorch) that chooses each next configuration from the runs so far")
    p.add_argument("file")
    p.add_argument("--profile", help="a profile of the study file, e.g. small")
    p.add_argument("--small", dest="profile", action="store_const", const="small", help="same as --profile small")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--runs", type=positive_int, required=True, help="at most this many runs (training runs: configurations "
                   "x replicates)")
    p.add_argument("--weights", required=True, help="ability weights of the objective, e.g. math=1,code=1,general=1")
    p.add_argument("--max-loss", action="append", default=[], metavar="ABILITY=VALUE",
                   help="keep this ability's held-out loss at or below VALUE (repeatable)")
    p.add_argument("--budget", help="at most this many training examples in all (default: the study's largest total)")
    p.add_argument("--batch", type=positive_int, default=1, help="configurations chosen (and run) at a time (default 1)")
    p.add_argument("--initial", type=positive_int, help="configurations of the initial design (default: sources + 1)")
    p.add_argument("--replicates", type=positive_int, default=1, help="seeds per configuration (default 1)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the design (the initial design and the acquisition)")
    p.add_argument("--stop-below", metavar="EI", help="stop when the largest expected improvement is below EI (default: "
                   "the half-width of the paired 95%% interval between the incumbent and the runner-up; 0: run every run of --runs)")
    p.add_argument("--executor", choices=list(get_args(ExecutorConfig.model_fields["name"].annotation)),
                   help="where runs execute (default: the study file's `executor`, else local)")
    p.add_argument("--address", help="ray: address of an existing cluster (host:port); none starts a local one")
    p.set_defaults(func=cmd_optimize)
    p = st.add_parser("export", help="write the runs' proportions and metrics for other tools")
    common(p)
    p.add_argument("--olmix", required=True, metavar="DIR", help="ratios.csv and metrics.csv in olmix's layout")
    p.set_defaults(func=cmd_export)

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
