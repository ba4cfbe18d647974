"""Study files: the grid over run configs, the claims the report tests, the predictions it checks,
and where the runs execute. Expanded into runs by ``sftmix.study.grid``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from sftmix.config.executor import ExecutorConfig, Resources
from sftmix.config.run import Strict


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

    a: str | dict[str, Any]
    b: str | dict[str, Any]
    metric: str | list[str]
    expect: Literal["better", "worse"] = "better"
    claim: str = Field("", description="the paper's statement, in words")
    weights: dict[str, float] = Field(default_factory=dict, description="compare the weighted mean of these metrics "
                                      "(metric -> weight); `metric` then only names it, e.g. 'weighted held-out loss'")
    source: Literal["paper", "own"] = Field("paper", description="whose claim: the paper's (verdicts 'as in the paper' / "
                                            "'the opposite of the paper') or the study's own, e.g. a proposal's "
                                            "('holds' / 'the opposite holds')")


class Prediction(Strict):
    """What a fitted law predicted for a configuration of this study (``sftmix study propose``
    writes these): the report shows the observed value beside it and whether it lies in the
    predictive interval ``[low, high]`` (the law's uncertainty plus one configuration's
    measurement noise; ``law_low``/``law_high`` is the law's alone)."""

    a: str | dict[str, Any]
    metric: str
    weights: dict[str, float] = Field(default_factory=dict, description="a weighted mean of these metrics, as in claims")
    estimate: float
    low: float
    high: float
    law_low: float | None = None
    law_high: float | None = None
    law: str = ""


class StudyConfig(Strict):
    name: str
    description: str = ""
    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    replicates: int = Field(1, ge=1, description="seeds 0..n-1 for every configuration (adds a `seed` grid axis)")
    compare: list[Claim] = Field(default_factory=list)
    predictions: list[Prediction] = Field(default_factory=list, description="laws' predictions the report checks")
    executor: Annotated[ExecutorConfig, BeforeValidator(lambda v: {"name": v} if isinstance(v, str) else v)] = Field(
        default_factory=ExecutorConfig, description="where runs execute: local, ray, slurm, slurm-local (or {name, address})")
    resources: Resources = Field(default_factory=Resources, description="what one run needs (cpus, gpus, nodes, time, ...)")
    fallbacks: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "source name -> the source config used instead when that source cannot be loaded (no data directory, no hub); "
        "the report says so at the top. A profile may carry its own."))
    output_dir: str | None = None
