"""Study files: the grid over run configs, the claims the report tests, the predictions it checks,
and where the runs execute. Expanded into runs by ``sftmix.study.grid``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError, field_validator, model_validator

from sftmix.config.executor import ExecutorConfig, Resources
from sftmix.config.run import FolderName, RunConfig, SourceConfig, Strict
from sftmix.errors import closest

# a grid or zip axis: a dotted run-config path (or a "_name" label axis) -> its values, at least one
Axes = dict[str, Annotated[list[Any], Field(min_length=1)]]


def _check_weights(weights: dict[str, float]) -> dict[str, float]:
    for k, w in weights.items():  # finite: every Strict model refuses nan and inf
        if w < 0:
            raise ValueError(f"weights.{k} must be >= 0, got {w}")
    if weights and sum(weights.values()) <= 0:
        raise ValueError("weights must have a positive sum")
    return weights


def _check_fallbacks(fallbacks: dict[str, dict[str, Any]], where: str) -> None:
    """Each fallback is a source config: checked on every machine, not only where it is used."""
    for name, fb in fallbacks.items():
        try:
            SourceConfig.model_validate(fb)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}.{name}{'.' + loc if loc else ''}: {first['msg']}") from None


def _check_zip(zips: dict[str, list], where: str) -> None:
    lengths = {k: len(v) for k, v in zips.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{where}: zipped axes must have equal lengths, got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()))


def _check_axes(axes: Any, where: str) -> None:
    if not isinstance(axes, dict):
        raise ValueError(f"{where}: expected a mapping of axis -> list of values, got {type(axes).__name__}")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{where}.{k}: expected a non-empty list of values, got {v!r}")


def _check_grid(grid: dict[str, list], where: str) -> None:
    """A product axis lists each value once: a repeat (``seed: [0, 0]`` for ``[0, 1]``) would be
    one run where two were meant, folded without a word. Spellings of one value (``1`` and
    ``"1/1"``) are one run, as their configs are one. (A zipped axis may repeat values.)"""
    for k, values in grid.items():
        written = [repr(v) for v in values]
        for i, v in enumerate(written):
            if v in written[:i]:
                raise ValueError(f"{where}.{k}: lists {values[i]!r} twice (at {written.index(v)} and {i}); "
                                 "each value of a grid axis is one set of runs")


class Claim(Strict):
    """A comparison the report tests: group ``a`` against group ``b`` on ``metric``.

    A selector (``a``, ``b``) is a group's label, a strategy name, or a mapping of run-config
    paths (or grid axis names) to values, e.g. ``{strategy.name: dmt, strategy.fraction: 1}``.
    When a selector matches several configurations (a study over three model sizes, say), the
    claim is tested once per setting of the other axes, pairing ``a`` and ``b`` configurations
    that agree on them. ``metric``: ``loss/<source>``, ``gsm8k/accuracy``, ``humaneval/pass@1``
    or ``mtbench/score``, or a list of them (each one the study measured is tested, so one claim
    serves a full profile with benchmarks and a small one with held-out loss). ``expect: better``
    claims that ``a`` is better than ``b`` (lower loss, higher accuracy or score); ``worse`` the
    opposite.
    """

    a: str | dict[str, Any] = Field(...,
        description="group A: a configuration's label, a strategy name, or {run-config path or axis: value}")
    b: str | dict[str, Any] = Field(..., description="group B, selected as A is")
    metric: str | list[str] = Field(...,
        description="task/metric compared (loss/<source>, gsm8k/accuracy, ...), or a list: each one the study measured is tested")
    expect: Literal["better", "worse"] = Field("better",
        description="better: A is better than B (lower loss, higher accuracy or score); worse: the opposite")
    claim: str = Field("", description="the paper's statement, in words")
    weights: dict[str, float] = Field(default_factory=dict, description="compare the weighted mean of these metrics "
                                      "(metric -> weight); `metric` then only names it, e.g. 'weighted held-out loss'")
    source: Literal["paper", "own"] = Field("paper", description="whose claim: the paper's (verdicts 'as in the paper' / "
                                            "'the opposite of the paper') or the study's own, e.g. a proposal's "
                                            "('holds' / 'the opposite holds')")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v)


class Prediction(Strict):
    """What a fitted law predicted for a configuration of this study (``sftmix study propose``
    writes these): the report shows the observed value beside it and whether it lies in the
    predictive interval ``[low, high]`` (the law's uncertainty plus one configuration's
    measurement noise; ``law_low``/``law_high`` is the law's alone)."""

    a: str | dict[str, Any] = Field(..., description="the configuration predicted, selected as a claim's group")
    metric: str = Field(..., description="task/metric predicted (or the weighted mean's label, with weights)")
    weights: dict[str, float] = Field(default_factory=dict, description="a weighted mean of these metrics, as in claims")
    estimate: float = Field(..., description="the law's predicted value")
    low: float = Field(..., description="lower end of the 95% predictive interval")
    high: float = Field(..., description="upper end of the 95% predictive interval")
    law_low: float | None = Field(None, description="lower end of the law's own 95% band")
    law_high: float | None = Field(None, description="upper end of the law's own 95% band")
    law: str = Field("", description="the law that predicted it")

    @model_validator(mode="after")
    def _interval(self) -> Prediction:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.law_low is not None and self.law_high is not None and self.law_low > self.law_high:
            raise ValueError(f"law_low ({self.law_low:g}) is above law_high ({self.law_high:g})")
        _check_weights(self.weights)
        return self


PROFILE_AXES = ("grid", "zip", "fallbacks")


class StudyConfig(Strict):
    """A study file: a base run config, the axes its runs vary, profiles, claims and predictions."""

    name: FolderName = Field(..., description="the study's name (its folder under studies/ by default)")
    description: str = Field("", description="what the study asks, in words (the report's first line)")
    base: dict[str, Any] = Field(..., description="the run config every run starts from")
    grid: Axes = Field(default_factory=dict, description="product axes: dotted run-config path -> values")
    zip: Axes = Field(default_factory=dict, description="zipped axes (equal lengths), combined with the product")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "name -> run-config fields deep-merged over base, and its own grid (replacing axes of the same name), zip "
        "(replacing the zipped axes) and fallbacks"))
    replicates: int = Field(1, ge=1, description="seeds 0..n-1 for every configuration (adds a `seed` grid axis)")
    compare: list[Claim] = Field(default_factory=list, description="claims the report tests (Findings)")
    predictions: list[Prediction] = Field(default_factory=list, description="laws' predictions the report checks")
    executor: Annotated[ExecutorConfig, BeforeValidator(lambda v: {"name": v} if isinstance(v, str) else v)] = Field(
        default_factory=ExecutorConfig, description="where runs execute: local, ray, slurm, slurm-local (or {name, address})")
    resources: Resources = Field(default_factory=Resources, description="what one run needs (cpus, gpus, nodes, time, ...)")
    fallbacks: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "source name -> the source config used instead when that source cannot be loaded (no data directory, no hub); "
        "the report says so at the top. A profile may carry its own."))
    output_dir: str | None = Field(None, description="defaults to studies/<name>")
    # which fallback sources were used, as loading them decided (``sftmix.study.runner.load_study``)
    _fallback_decisions: dict = PrivateAttr(default_factory=dict)  # source -> study.grid.FallbackDecision

    def zip_for(self, profile: str | None) -> dict[str, list]:
        """The zipped axes of a profile's runs: its own ``zip`` where it has one (it replaces the
        study's as a whole), else the study's. Claims pair configurations along them."""
        return dict(self.profiles.get(profile or "", {}).get("zip") or self.zip)

    @model_validator(mode="after")
    def _check_parts(self) -> StudyConfig:
        _check_zip(self.zip, "zip")
        _check_grid(self.grid, "grid")
        _check_fallbacks(self.fallbacks, "fallbacks")
        run_fields = set(RunConfig.model_fields)
        for pname, prof in self.profiles.items():
            where = f"profiles.{pname}"
            if not isinstance(prof, dict):
                raise ValueError(f"{where}: expected a mapping of run-config fields, grid, zip and fallbacks, got {type(prof).__name__}")
            for key, value in prof.items():
                if key in ("grid", "zip"):
                    _check_axes(value, f"{where}.{key}")
                elif key == "fallbacks":
                    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                        raise ValueError(f"{where}.fallbacks: expected a mapping of source name -> source config, got {value!r}")
                    _check_fallbacks(value, f"{where}.fallbacks")
                elif key not in run_fields:
                    valid = [*PROFILE_AXES, *run_fields]
                    raise ValueError(f"{where}.{key}: unknown field{closest(str(key), valid)}; a profile holds run-config fields "
                                     f"({', '.join(sorted(run_fields))}) and grid, zip, fallbacks")
            if "zip" in prof:
                _check_zip(prof["zip"], f"{where}.zip")
            if "grid" in prof:
                _check_grid(prof["grid"], f"{where}.grid")
        return self
