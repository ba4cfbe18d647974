"""The paper's training strategies (Figure 1) as lists of stages, and running a strategy.

A strategy is a value: a list of ``StageConfig`` (a mixture plus training overrides). Each
stage starts from the previous stage's final checkpoint. DMT with k = 0 is mixed sequential.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel, ValidationError

from sftmix import layout
from sftmix.config import (
    MixtureConfig,
    PartConfig,
    RunConfig,
    StageConfig,
    TrainSettings,
    differing_fields,
    get_path,
    pop_path,
    validate,
)
from sftmix.data.compose import (
    Composed,
    Manifest,
    check_mixtures,
    compose,
    read_composed,
    write_composed,
)
from sftmix.data.heldout import HeldoutRows, choose, has_test_split, read_or_choose
from sftmix.data.sources import Pool, load_pool
from sftmix.errors import SftmixError, unknown
from sftmix.eval.tasks import resolve
from sftmix.io import read_record, stable_hash, write_json
from sftmix.models import resolve_model
from sftmix.train.meta import Parent, read_meta


def _part(source: str, fraction) -> PartConfig:
    f = fraction.get(source, 1.0) if isinstance(fraction, dict) else fraction
    return PartConfig(source=source, fraction=f)


def individual(source: str, fraction=1.0) -> list[StageConfig]:
    """One stage on one source."""
    return [StageConfig(name=source, mixture=MixtureConfig(name=source, parts=[_part(source, fraction)]))]


def multitask(sources: list[str], fraction=1.0) -> list[StageConfig]:
    """One stage on the union of the sources."""
    return [StageConfig(name="multitask", mixture=MixtureConfig(name="multitask", parts=[_part(s, fraction) for s in sources]))]


def sequential(order: list[str], fraction=1.0) -> list[StageConfig]:
    """One stage per source, in order (paper: code -> math -> general)."""
    return [StageConfig(name=f"{i + 1}_{s}", mixture=MixtureConfig(name=f"{i + 1}_{s}", parts=[_part(s, fraction)]))
            for i, s in enumerate(order)]


def mixed_sequential(specialised: list[str], general: str, fraction=1.0) -> list[StageConfig]:
    """(specialised union) -> general. Equal to ``dmt(..., k=0)``."""
    return dmt(specialised, general, 0.0, fraction)


def dmt(specialised: list[str], general: str, k: float, fraction=1.0) -> list[StageConfig]:
    """Dual-stage Mixed Fine-tuning: (specialised union) -> general + k x each stage-1 part.

    The replay is drawn from stage 1's manifest (a prefix of each part's sampling order), so the
    replayed rows are rows the model saw in stage 1, as in the paper.
    """
    s1 = MixtureConfig(name="specialised", parts=[_part(s, fraction) for s in specialised])
    parts = [_part(general, fraction)]
    if k > 0:
        parts.append(PartConfig(replay="specialised", k=k))
    s2 = MixtureConfig(name="general", parts=parts)
    return [StageConfig(name="1_specialised", mixture=s1), StageConfig(name="2_general", mixture=s2)]


# strategy name -> its stages; what each strategy's config may and must hold is its model's
# (``sftmix.config.run.STRATEGY_MODELS``), checked when the config is read
STRATEGIES = {
    "individual": lambda st: individual(st.sources[0], st.fraction),
    "multitask": lambda st: multitask(st.sources, st.fraction),
    "sequential": lambda st: sequential(st.sources, st.fraction),
    "mixed_sequential": lambda st: mixed_sequential(st.specialised, st.general, st.fraction),
    "dmt": lambda st: dmt(st.specialised, st.general, st.k, st.fraction),
}


def stages_from_strategy(st) -> list[StageConfig]:
    """The stages of a validated strategy config."""
    if st.name not in STRATEGIES:
        raise unknown("strategy", st.name, STRATEGIES)
    return STRATEGIES[st.name](st)


def configured_stages(cfg: RunConfig) -> list[StageConfig]:
    """A run's stages as configured: its explicit ``stages`` or its strategy's (unchecked: ``plan`` checks)."""
    return cfg.stages if cfg.stages is not None else stages_from_strategy(cfg.strategy)


def trained_sources(stages: list[StageConfig]) -> set[str]:
    """The sources the stages' mixtures draw from directly."""
    return {p.source for st in stages for p in st.mixture.parts if p.source is not None}


def plan(cfg: RunConfig) -> list[StageConfig]:
    """The stages of a run, checked as a whole before any work: sources, replays, settings."""
    resolve(cfg.eval.tasks)  # a user task that cannot be imported fails now, not after training
    stages = configured_stages(cfg)
    check_mixtures([st.mixture for st in stages], cfg.sources, where="stages")
    for st in stages:
        stage_settings(cfg, st)
    return stages


def stage_settings(cfg: RunConfig, stage: StageConfig) -> TrainSettings:
    """A stage's training settings: the run's, with the stage's overrides, validated."""
    merged = {**cfg.train.model_dump(), **stage.train}
    s = validate(TrainSettings, merged, f"stage {stage.name!r} train")
    if s.batch_size % s.per_device_batch_size:  # the number of processes is checked when training starts
        raise SftmixError(f"stage {stage.name!r}: train.batch_size = {s.batch_size} is not a multiple of per_device_batch_size "
                          f"({s.per_device_batch_size})")
    return s


def run_dir(cfg: RunConfig) -> Path:
    """A run's folder."""
    return layout.run_dir(cfg.name, cfg.output_dir)


def run_strategy(cfg: RunConfig, progress: bool = True) -> Path:
    """Run every stage of ``cfg`` in order; return the final checkpoint of the last stage.

    Reads top to bottom: plan the stages and check that their kernels run here; pick the held-out
    rows the forgetting curves measure; for each stage, compose its mixture (replay parts draw from
    earlier stages' manifests), train it from the previous checkpoint while measuring the curves,
    record it. Finished stages are skipped and an interrupted stage resumes, so rerunning is always
    safe.
    """
    from sftmix.supervised import heldout_key  # torch and transformers: loaded when training starts
    from sftmix.train.curve import CurveSpec, HeldoutCurve
    from sftmix.train.stage import resolve_kernels, train_stage

    stages = plan(cfg)
    for stage in stages:  # a kernel asked for that cannot run on this machine fails before any stage trains
        settings = stage_settings(cfg, stage)
        try:
            resolve_kernels(settings.kernels, settings.packing)
        except SftmixError as e:
            raise SftmixError(f"stage {stage.name!r}: {e}") from None
    checkpoint = resolve_model(cfg.model)  # a model that is not there fails before any data is read
    out = run_dir(cfg)
    if not layout.run_record(out).exists():
        write_json(layout.run_record(out), RunRecord(config=cfg.model_dump(mode="json")).model_dump(mode="json"))
    pools: dict[str, Pool] = {}
    composed: dict[str, Composed] = {}
    held = heldout_rows(cfg, stages, pools)
    for i, stage in enumerate(stages):  # a pool the held-out rows leave empty fails before any stage trains
        if not layout.manifest(layout.data_dir(layout.stage_dir(out, i + 1, stage.name))).exists():
            for name in trained_sources([stage]):
                if held.excluded(name):
                    _pool(cfg, name, pools, held)
    heldout_sets = held.sets if "loss" in cfg.eval.tasks and cfg.curve.enabled else {}
    for name, why in held.errors.items() if heldout_sets else ():
        print(f"forgetting curves: held-out source {name!r} left out: {why.splitlines()[0]}", file=sys.stderr)
    parent, meta = None, None
    for i, stage in enumerate(stages):
        stage_dir = layout.stage_dir(out, i + 1, stage.name)
        mixture = _compose_stage(cfg, stage, pools, held, composed, stage_dir)
        settings = stage_settings(cfg, stage)
        callbacks = []
        if heldout_sets:
            start = meta.curve[-1].loss if meta is not None and meta.curve else None
            how = heldout_key(heldout_sets, cfg.template, cfg.heldout.max_length, cfg.eval.batch_size)
            key = stable_hash([checkpoint, layout.weights_fingerprint(checkpoint), how]) if not i else None
            callbacks.append(HeldoutCurve(CurveSpec(heldout_sets, cfg.template, cfg.heldout.max_length, cfg.eval.batch_size,
                                                    cfg.curve.points, start=start, cache_key=key,
                                                    run_step=meta.run_step_end if meta else 0,
                                                    run_tokens=meta.run_tokens_end if meta else 0)))
        checkpoint = str(train_stage(checkpoint, mixture, settings, cfg.template, stage_dir,
                                     seed=settings.seed if settings.seed is not None else cfg.seed,
                                     parent=parent, run_config=cfg.model_dump(), progress=progress, callbacks=callbacks))
        meta = read_meta(Path(checkpoint))
        parent = Parent(stage=stage_dir.name, checkpoint=checkpoint, content_sha256=mixture.manifest.content_sha256,
                        run_step=meta.run_step_end, run_tokens=meta.run_tokens_end)
    return Path(checkpoint)


class RunRecord(BaseModel):
    """A run folder's ``run.json``: the config its training was first started under, as written
    (read as a ``RunConfig`` by ``_started_under``, so that a later sftmix whose config has changed
    can still read the file and skip the comparison rather than fail on it), and the folder whose
    training it reuses, if any (``adopt_training``)."""

    config: dict
    trained_in: str | None = None


# Fields that do not change what a run trains: where it is written, which kernels compute it (the
# same loss up to rounding), what its evaluation measures (a finished task is measured again when
# its settings change: sftmix.eval.runner.task_key) and where the forgetting curves are measured.
# Of ``heldout``, only what chooses the rows left out of a trained source's pool counts
# (``_held_out_of_trained``): measuring another source's held-out loss does not change the training.
NOT_TRAINED = ("name", "output_dir", "train.kernels", "eval", "curve", "heldout")


def check_run_folder(cfg: RunConfig) -> None:
    """A run folder holds one training. Where it was started under a config whose training differs
    from ``cfg``'s (any field but ``NOT_TRAINED``), its stages would be skipped or resumed as if
    they were ``cfg``'s: refuse, naming the fields."""
    out = run_dir(cfg)
    found = _started_under(out)
    if found is None:
        return
    started, path = found
    if started is None:
        print(f"warning: {path} holds a config this sftmix cannot read (an earlier version's): {out} is not compared "
              "with this run's config, and its finished stages are reused as they are", file=sys.stderr)
        return
    # what trains, as one view of each config: the fields, with heldout as the rows it leaves out
    then = {**started.model_dump(mode="json"), "heldout": _held_out_of_trained(started)}
    now = {**cfg.model_dump(mode="json"), "heldout": _held_out_of_trained(cfg)}
    apart = [f for f in differing_fields(then, now)
             if f.startswith("heldout.") or not any(f == n or f.startswith(n + ".") for n in NOT_TRAINED)]
    if apart:
        shown = "; ".join(f"{f}: {get_path(then, f)!r} there, {get_path(now, f)!r} now" for f in apart[:4])
        more = f" (and {len(apart) - 4} more)" if len(apart) > 4 else ""
        raise SftmixError(f"{out} was trained under another config ({path}): {shown}{more}. Its stages would be reused or "
                          f"resumed as this run's; give the run another name or output_dir, or delete {out} to train it anew")


def _started_under(out: Path) -> tuple[RunConfig | None, Path] | None:
    """The config a run folder's training started under and the file that says so: its
    ``run.json``, else (a folder of an earlier sftmix) its first finished stage's meta. None
    where neither is there; (None, file) where the config is one this sftmix no longer reads."""
    path = layout.run_record(out)
    if path.exists():
        try:
            recorded = read_record(path, RunRecord).config
        except SftmixError as e:
            raise SftmixError(f"{e}; it keeps the config {out} was trained under: restore it, or delete {out} to train "
                              "the run anew") from None
    else:
        metas = layout.stage_metas(out)
        path, recorded = (metas[0], read_meta(metas[0].parent).run_config) if metas else (path, None)
        if recorded is None:
            return None
    try:
        return RunConfig.model_validate(recorded), path
    except ValidationError:  # written by an sftmix whose config this one no longer reads
        return None, path


def trained_view(cfg: RunConfig) -> dict:
    """What a run's stages (their weights and their forgetting curves) follow: its config but for
    where it is written, its kernels and the evaluation settings the curves do not read."""
    d = cfg.model_dump(mode="json")
    for name in ("name", "output_dir", "eval"):
        d.pop(name)
    d["train"].pop("kernels")
    d["curves_measured"] = {"loss": "loss" in cfg.eval.tasks, "batch_size": cfg.eval.batch_size, "data_dir": cfg.eval.data_dir}
    return d


def adopt_training(cfg: RunConfig, beside: Path) -> Path | None:
    """A study run whose configuration differs from a finished run's only in what its evaluation
    measures (``trained_view`` equal, seed included) need not train again: that run's stages are
    copied in (the weights hard-linked where the file system allows, else copied; resume
    checkpoints left out), with its held-out rows, and only the evaluation runs. Return the run
    folder whose training was taken; None where this run has begun training itself or no folder
    in ``beside`` holds such a training. Each stage lands in one rename, so a kill midway leaves
    whole stages, from which training resumes as ever."""
    out = run_dir(cfg)
    if layout.stages(out):  # this run has begun a training of its own: it goes on with it
        return None
    want, n_stages = trained_view(cfg), len(configured_stages(cfg))
    for other in sorted(p for p in Path(beside).iterdir() if p.is_dir() and p.resolve() != out.resolve()):
        if len(layout.stage_metas(other)) != n_stages:  # not a finished training (a glob: before any file is read)
            continue
        try:
            found = _started_under(other)
        except SftmixError:  # a damaged record beside us is that run's matter, not this one's
            continue
        if found is None or found[0] is None or trained_view(found[0]) != want:
            continue
        staging = out / ".adopting"
        shutil.rmtree(staging, ignore_errors=True)  # a copy a kill left unfinished
        for stage in layout.stages(other):
            shutil.copytree(stage, staging / stage.name, ignore=shutil.ignore_patterns(layout.CHECKPOINTS),
                            copy_function=_link_or_copy)
        if layout.heldout_file(other).exists():
            shutil.copy2(layout.heldout_file(other), staging / layout.HELDOUT)
        write_json(layout.run_record(out), RunRecord(config=cfg.model_dump(mode="json"), trained_in=str(other)).model_dump(mode="json"))
        for item in sorted(staging.iterdir()):
            os.replace(item, out / item.name)
        staging.rmdir()
        return other
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def _held_out_of_trained(cfg: RunConfig) -> dict:
    """Per source the run trains on and measures: the held-out rows' count and seed (those rows
    are left out of its pool)."""
    trained = trained_sources(configured_stages(cfg))
    return {s: {"samples": cfg.heldout.samples, "seed": cfg.heldout.seed} for s in cfg.heldout.sources if s in trained}


def heldout_rows(cfg: RunConfig, stages: list[StageConfig], pools: dict[str, Pool]) -> HeldoutRows:
    """The run's held-out rows (``heldout.json``), chosen once: of every loss source when the run
    measures the loss, else of the loss sources it trains on (their rows are still kept out of
    training, so that a later loss evaluation of the checkpoint is fair). The forgetting curves
    measure them, the training pools leave them out and the final evaluation scores them. A
    source that cannot be loaded is left out of the curves with a warning (evaluating it fails
    with the reason)."""
    return read_or_choose(layout.heldout_file(run_dir(cfg)), _heldout_names(cfg, stages), cfg.heldout.samples,
                          cfg.heldout.seed, cfg.sources, cfg.eval.data_dir or cfg.data_dir, pool=lambda n: _pool(cfg, n, pools))


def _heldout_names(cfg: RunConfig, stages: list[StageConfig]) -> list[str]:
    """The sources whose held-out rows a run chooses: every loss source when it measures the loss,
    else the loss sources it trains on."""
    trained = trained_sources(stages)
    return [s for s in cfg.heldout.sources if "loss" in cfg.eval.tasks or s in trained]


def training_pools(cfg: RunConfig, names: list[str]) -> dict[str, Pool]:
    """The pools a run of ``cfg`` would train ``names`` from (its held-out rows left out, chosen
    by the same rule as ``heldout_rows``), without writing anything: what a search over amounts
    needs to know before any run."""
    pools: dict = {}
    held = choose(_heldout_names(cfg, plan(cfg)), cfg.heldout.samples, cfg.heldout.seed, cfg.sources, cfg.eval.data_dir or cfg.data_dir,
                  pool=lambda n: _pool(cfg, n, pools))
    return {n: _pool(cfg, n, pools, held) for n in names}


def _pool(cfg: RunConfig, name: str, pools: dict, held: HeldoutRows | None = None) -> Pool | None:
    """A source's pool, loaded once. For training (``held`` given) the run's held-out rows drawn
    from that pool are removed, so no run trains on the rows it is measured on; without ``held``
    the whole pool (None for a source with a test split: its held-out rows come from there)."""
    key = (name, held is not None)
    if key not in pools:
        if held is None:
            if has_test_split(name, cfg.sources.get(name)):
                return None
            pools[key] = load_pool(name, cfg.sources.get(name), cfg.data_dir)
        else:
            pool = _pool(cfg, name, pools) or load_pool(name, cfg.sources.get(name), cfg.data_dir)
            ids = held.excluded(name)
            if ids:
                kept = [c for c in pool.conversations if c.id not in ids]
                if not kept:
                    raise SftmixError(f"heldout.samples = {cfg.heldout.samples} takes all {len(pool)} rows of source {name!r}, which the "
                                      f"run trains on, as held-out rows: none is left to train on. Lower "
                                      f"heldout.samples, or give {name!r} more rows (sources.{name}.limit)")
                if len(kept) < len(pool) - len(kept):
                    print(f"warning: the held-out rows take {len(pool) - len(kept)} of the {len(pool)} rows of source {name!r} "
                          f"(heldout.samples = {cfg.heldout.samples}); it trains on the other {len(kept)}", file=sys.stderr)
                pool = Pool(pool.name, pool.ability, kept, pool.origin, {**pool.stats, "heldout_excluded": len(pool) - len(kept)})
            pools[key] = pool
    return pools[key]


def _compose_stage(cfg: RunConfig, stage: StageConfig, pools: dict, held: HeldoutRows, composed: dict,
                   stage_dir: Path) -> Composed:
    data_dir = layout.data_dir(stage_dir)
    if layout.manifest(data_dir).exists():
        mixture = read_composed(data_dir)
    else:
        names = list(dict.fromkeys(p.source for p in stage.mixture.parts if p.source is not None))
        mixture = compose(stage.mixture, {n: _pool(cfg, n, pools, held) for n in names}, cfg.seed, composed)
        write_composed(mixture, data_dir)
    composed[stage.mixture.name] = mixture
    return mixture


# Fields that cannot change what a run produces: where it is written, which kernels compute it (the
# same loss up to rounding: tests/train/test_kernels.py), and where or how fast its answers are
# fetched. Every other field changes the run's id (tests/test_run_id.py walks them all).
NOT_IN_ID = ("name", "output_dir", "train.kernels", "eval.openai", "eval.vllm.cpu_kv_cache_gb", "eval.vllm_server.python",
             "eval.vllm_server.command", "eval.vllm_server.start_timeout_s", "eval.vllm_server.concurrency",
             "eval.vllm_server.cpu_kv_cache_gb", "eval.vllm_server.gpu_memory_utilization")
# Sections added after run ids were fixed: in the id only when set, so that earlier runs keep theirs
ONLY_WHEN_SET = ("eval.vllm", "eval.vllm_server")


def run_id(cfg: RunConfig) -> str:
    """Stable id of a run's resolved config: every field but ``NOT_IN_ID``, hashed in the flat
    shape ids have had since the first stores (``RunConfig.legacy_dump``)."""
    d = cfg.legacy_dump()
    for path in NOT_IN_ID:
        pop_path(d, path)
    for path in ONLY_WHEN_SET:
        default = type(getattr(cfg.eval, path.rsplit(".", 1)[1]))().model_dump()
        for dropped in NOT_IN_ID:
            if dropped.startswith(path + "."):
                default.pop(dropped.rsplit(".", 1)[1], None)
        if get_path(d, path) == default:
            pop_path(d, path)
    return stable_hash(d, 12)


def training_ids(cfg: RunConfig) -> set[str]:
    """Ids of every row any stage of the run trained on (from the stages' manifests)."""
    ids: set[str] = set()
    for m in layout.stage_manifests(run_dir(cfg)):
        for part in read_record(m, Manifest).parts:
            ids.update(part.ids)
    return ids
