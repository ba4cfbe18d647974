"""Study files and their expansion into runs.

A study file::

    name: rq1_scaling
    base: {...}                     # a run config (model, sources, strategy, train, eval)
    grid:                           # product axes: dotted run-config paths -> values
      strategy.sources: [[gsm8k], [code_alpaca], [sharegpt]]
      strategy.fraction: [1, 1/4, 1/16, 1/64, 1/256]
    zip: {}                         # zipped axes (same length), combined with the product;
                                    # an axis named "_x" sets nothing and only labels runs
    profiles:
      small: {...}                  # deep-merged over base with --profile small (or --small);
                                    # its own `grid:` replaces axes of the same name, its own
                                    # `zip:` replaces the zipped axes as a whole
    replicates: 3                   # each configuration with seeds 0, 1, 2 (data sampling and
                                    # training); replicates are one configuration in the report
    compare:                        # the paper's claims this study tests (report: Findings)
      - {a: dmt, b: sequential, metric: loss/code_alpaca, expect: better,
         claim: "DMT forgets less code than sequential training"}

Each run's config is the base deep-merged with one point of the grid; its id is a hash of the
resolved config, so editing the study never confuses results of different configs.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from sftmix.config import RunConfig, SourceConfig, StudyConfig, differing_fields, validate
from sftmix.data.sources import BUILTINS, SourceNotFound, load_pool
from sftmix.errors import SftmixError, unknown
from sftmix.eval.tasks import BUILTIN, resolve
from sftmix.io import stable_hash, write_json
from sftmix.train.strategies import plan, run_id

REPLICATE_AXIS = "seed"
# Each run is a fine-tuning: a grid past this many is a typo (replicates: 1000000), and expanding it
# would take the machine's memory before anything said so
MAX_RUNS = 10_000


@dataclass
class PlannedRun:
    """One run of a study: its id (a hash of its config), label, grid point and validated config."""

    id: str
    label: str
    point: dict[str, Any]
    config: RunConfig

    @property
    def group(self) -> str:
        """The label of its configuration (the seed axis removed)."""
        return group_label(self.point)


def group_label(point: dict) -> str:
    """The label of a run's configuration: its point without the replicate (seed) axis."""
    return _label({k: v for k, v in point.items() if k != REPLICATE_AXIS})


def deep_merge(a: dict, b: dict) -> dict:
    """``a`` with ``b`` merged in, recursively for mappings (``a`` is not changed)."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_path(d: dict, path: str, value: Any, where: str = "grid") -> None:
    """Set a dotted run-config path; a step into a value that is not a mapping is an error."""
    keys = path.split(".")
    for depth, k in enumerate(keys[:-1]):
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise SftmixError(f"{where}: axis {path!r}: {'.'.join(keys[:depth + 1])} is {type(nxt).__name__} {nxt!r}, "
                              f"not a mapping, so it has no field {keys[depth + 1]!r}")
        d = nxt
    d[keys[-1]] = copy.deepcopy(value)


def short_value(v: Any) -> str:
    """A short label for one grid value (a strategy shows its name and what distinguishes it)."""
    if isinstance(v, dict):
        if "name" in v:
            extra = v.get("sources") or ([f"k={v['k']}"] if "k" in v else [])
            return v["name"] + (f"({'+'.join(map(str, extra))})" if extra else "")
        return ",".join(f"{k}={short_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "+".join(map(short_value, v))
    return str(v)


def _label(point: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={short_value(v)}" for k, v in point.items()) or "base"


class FallbackDecision(BaseModel):
    """Whether a source with a fallback used it, decided by loading the source: under ``key`` (its
    config, its fallback and the data directory), with the note the report shows."""

    model_config = ConfigDict(extra="forbid")

    key: str
    fallback: bool
    note: str


DECISIONS = TypeAdapter(dict[str, FallbackDecision])  # the study folder's fallbacks.json: source -> decision


def read_decisions(path: Path) -> dict[str, FallbackDecision]:
    """The decisions ``study run`` recorded at ``path``; none where there is no readable record
    (the sources are then loaded and decided again)."""
    try:
        return DECISIONS.validate_json(Path(path).read_bytes())
    except (OSError, ValidationError):
        return {}


def write_decisions(path: Path, decided: dict[str, FallbackDecision]) -> None:
    """Record the decisions in the study folder (atomically)."""
    write_json(path, DECISIONS.dump_python(decided, mode="json"))


def apply_fallbacks(base: dict, fallbacks: dict, notes: list[str] | None,
                    decided: dict[str, FallbackDecision] | None = None) -> dict:
    """Each source named in ``fallbacks`` is loaded as the base config says (path, data
    directory, hub, package); one that none of them holds is replaced by its fallback config,
    and ``notes`` says which data each used and why.

    ``decided``: decisions made before (by ``study run``, recorded in the study folder); a source
    decided there under the same key is not loaded again, so that commands that only read the
    study need no data. Decisions made here are added to it."""
    if not fallbacks:
        return base
    base = copy.deepcopy(base)
    data_dir = base.get("data_dir") or os.environ.get("SFTMIX_DATA_DIR")
    for name, fb in fallbacks.items():
        cfg = (base.get("sources") or {}).get(name) or {}
        key = stable_hash([cfg, fb, data_dir])
        known = (decided or {}).get(name)
        if known is not None and known.key == key:
            use, line = known.fallback, known.note
        else:
            try:
                pool = load_pool(name, SourceConfig(**cfg), data_dir)
                where = pool.origin.get("path") or pool.origin.get("hub") or pool.origin.get("package") or pool.origin.get("kind")
                use, line = False, f"{name}: {pool.ability} data from {where}"
            except SourceNotFound as e:  # found but broken (a bad file, a typo) stays an error
                reason = " ".join(str(e).split())
                use, line = True, (f"{name}: FALLBACK to {fb.get('builtin', fb)} because {reason}. Generated data is a toy: treat its "
                                   "numbers as a pipeline check, not evidence.")
            if decided is not None:
                decided[name] = FallbackDecision(key=key, fallback=use, note=line)
        if use:
            base.setdefault("sources", {})[name] = copy.deepcopy(fb)
        if notes is not None and line not in notes:
            notes.append(line)
    return base


def expand(study: StudyConfig, profile: str | None = None, where: str = "study", notes: list[str] | None = None,
           decided: dict[str, FallbackDecision] | None = None) -> list[PlannedRun]:
    """All runs of a study (validated), in grid order. ``notes`` receives where sources with a
    fallback took their data from; ``decided``: fallback decisions recorded before, and where
    the new ones go (``apply_fallbacks``)."""
    base, grid, zips, fallbacks = study.base, dict(study.grid), study.zip_for(profile), dict(study.fallbacks)
    if profile:
        if profile not in study.profiles:
            raise SftmixError(f"{where}: unknown profile {profile!r}; valid: {', '.join(study.profiles) or 'none'}")
        prof = dict(study.profiles[profile])
        grid.update(prof.pop("grid", {}))  # a profile may replace grid axes (e.g. one small model)
        prof.pop("zip", None)  # ... or the zipped axes as a whole (zip_for; amounts sized to its pools)
        fallbacks = prof.pop("fallbacks", None) or fallbacks
        base = deep_merge(base, prof)
    base = apply_fallbacks(base, fallbacks, notes, decided)
    zlens = {len(v) for v in zips.values()}
    if len(zlens) > 1:  # the study model checks each zip; a profile's grid may still meet the study's zip
        raise SftmixError(f"{where}: zip axes must have equal lengths, got {sorted(zlens)}")
    if study.replicates > 1 and (REPLICATE_AXIS in grid or REPLICATE_AXIS in zips):
        raise SftmixError(f"{where}: replicates: {study.replicates} and a {REPLICATE_AXIS!r} axis in "
                          f"{'grid' if REPLICATE_AXIS in grid else 'zip'} both set the seeds, and the axis would win without a word; "
                          "give one of them")
    replicate = study.replicates > 1
    sizes = {**{k: len(v) for k, v in grid.items()}, **({"replicates": study.replicates} if replicate else {}),
             **({"zip": zlens.pop()} if zips else {})}
    if math.prod(sizes.values()) > MAX_RUNS:
        raise SftmixError(f"{where}: the grid makes {math.prod(sizes.values()):,} runs "
                          f"({' x '.join(f'{k}: {n:,}' for k, n in sizes.items())}); a study holds at most {MAX_RUNS:,}")
    if replicate:
        grid[REPLICATE_AXIS] = list(range(study.replicates))
    zipped = [dict(zip(zips, vals)) for vals in zip(*zips.values())] if zips else [{}]
    product = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    runs, seen = [], {}
    for p in product:
        for z in zipped:
            point = {**p, **z}
            data = copy.deepcopy(base)
            for k, v in point.items():
                if not k.startswith("_"):  # "_name" axes only label runs (for tables and figures)
                    set_path(data, k, v, where)
            data.setdefault("name", study.name)
            cfg = validate(RunConfig, data, f"{where} run {_label(point)!r}")
            try:  # what a run checks before it trains (sources, replays, stage settings), for every run now
                plan(cfg)
            except SftmixError as e:
                raise SftmixError(f"{where} run {_label(point)!r}: {e}") from None
            rid = run_id(cfg)
            if rid in seen:  # one config spelt twice (fraction 1 and "1/1") is one run ...
                first = seen[rid]
                apart = differing_fields(first.config.model_dump(), cfg.model_dump())
                if apart:  # ... but points apart only where the id does not look would be folded without a word
                    raise SftmixError(f"{where}: runs {first.label!r} and {_label(point)!r} differ only in {', '.join(apart)}, which "
                                      "says how a run is named, placed or computed, not what it trains (not part of a run's id): they "
                                      "would be one run; set it in base or in a profile")
                continue
            seen[rid] = PlannedRun(rid, _label(point), point, cfg)
            runs.append(seen[rid])
    return runs


def measured_metrics(runs: list[PlannedRun]) -> tuple[set[str], dict]:
    """Every ``task/metric`` key the runs measure, and their tasks by name (user tasks imported
    and checked here, before any run starts)."""
    keys: set[str] = set()
    found = dict(BUILTIN)
    seen: dict[tuple, list] = {}
    for r in runs:
        ev = r.config.eval
        specs = tuple(ev.tasks)
        if specs not in seen:
            seen[specs] = resolve(list(specs), f"run {r.label!r}: eval.tasks")
        for t in seen[specs]:
            found[t.name] = t
            keys |= {f"{t.name}/{s}" for s in r.config.heldout.sources} if "*" in t.metrics else {f"{t.name}/{m}" for m in t.metrics}
    return keys, found


def check_metrics(study: StudyConfig, runs: list[PlannedRun], where: str = "study") -> None:
    """Claims name metrics of known tasks (``task/metric``, a headline metric; for held-out loss
    a source); predictions name metrics these runs measure. Checked when the study is read, so a
    typo never reaches a half-written report."""
    measured, found = measured_metrics(runs)
    sources = set(BUILTINS) | {s for r in runs for s in (*r.config.sources, *r.config.heldout.sources)}

    def known(metric: str, at: str) -> None:
        task, slash, name = str(metric).partition("/")
        if not slash or not task or not name:
            raise SftmixError(f"{where}: {at}: metric {metric!r} is not task/metric (e.g. loss/gsm8k, gsm8k/accuracy)")
        if task not in found:
            raise unknown_in(where, at, "task", task, found)
        t = found[task]
        if "*" in t.metrics:
            if name not in sources:
                raise unknown_in(where, at, f"{task} source", name, sources)
        elif name not in t.metrics:
            raise unknown_in(where, at, f"headline metric of {task}", name, t.metrics)

    for i, c in enumerate(study.compare):
        names = list(c.weights) if c.weights else ([c.metric] if isinstance(c.metric, str) else list(c.metric))
        if not names:
            raise SftmixError(f"{where}: compare.{i}.metric: name at least one metric")
        for m in names:
            known(m, f"compare.{i}.{'weights' if c.weights else 'metric'}")
    for i, p in enumerate(study.predictions):
        for m in (list(p.weights) if p.weights else [p.metric]):
            at = f"predictions.{i}.{'weights' if p.weights else 'metric'}"
            known(m, at)
            if m not in measured:
                raise SftmixError(f"{where}: {at}: {m!r} is not measured by this study's runs; they measure "
                                  f"{', '.join(sorted(measured)) or 'nothing'}")


def unknown_in(where: str, at: str, kind: str, name: str, valid) -> SftmixError:
    """An error for an unknown name at ``where``: ``at``, with the valid names."""
    return SftmixError(f"{where}: {at}: {unknown(kind, name, valid)}")
