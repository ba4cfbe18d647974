"""A task's metrics as one typed value: what ``task_<name>.json`` and ``results.json`` keep of a
task (``sftmix.eval.runner`` writes both) and what the CLI, the study store and the report read.

Every task's metrics hold what the runner adds (which engine answered, the tokens it processed,
the wall time) beside the task's own numbers. A built-in task's numbers are fields, checked when a
file is read (``Gsm8kMetrics``, ``HumanEvalMetrics``, ``MtBenchMetrics``, ``LossMetrics``): a
damaged or foreign file is an error naming its field, not a ``KeyError`` later. A user task's are
kept as it returned them (``TaskMetrics``; its headline metrics are checked by
``sftmix.eval.tasks.check_rows`` when it runs). Names on disk are the tasks' own (``pass@1``),
so files written before these types are read as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RUNNER_FIELDS = frozenset({"engine", "tokens_processed", "wall_s"})


def _none(value) -> bool:
    return value is None


class Engine(BaseModel):
    """Which engine answered an evaluation's generation tasks (``Generator.engine``)."""

    model_config = ConfigDict(extra="allow")  # the fields readers rely on are checked; others are kept

    backend: str
    engine: str
    dtype: str | None = None

    def describe(self) -> str:
        """One line: backend, engine and version, dtype."""
        return f"{self.backend}: {self.engine}" + (f", {self.dtype}" if self.dtype else "")


def numbers(values: dict[str, Any]) -> list[tuple[str, float]]:
    """Every number of a mapping, as (name, value) (a flag is not a number)."""
    return [(k, float(v)) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


class TaskMetrics(BaseModel):
    """A task's metrics: the task's own (a user task's as it returned them, kept as extra fields)
    and what the runner adds. The base of the built-in tasks' types, and the type of a user task's."""

    model_config = ConfigDict(extra="allow", serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    # what the runner adds; left out of the file where it has none (a task that generates nothing)
    engine: Engine | None = Field(None, exclude_if=_none)  # None: no generation (or measured before engines were recorded)
    tokens_processed: int | None = Field(None, exclude_if=_none)  # prompt and generated tokens this task added
    wall_s: float | None = Field(None, exclude_if=_none)

    def own(self) -> dict[str, Any]:
        """The task's own metrics under their names, without what the runner adds."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RUNNER_FIELDS}

    def headline(self, names) -> dict[str, Any]:
        """The few numbers worth printing: the headline metrics ``names`` (the task's
        ``Task.metrics``) and its item count."""
        return {k: v for k, v in self.own().items() if k in names or k in ("n", "n_items")}

    def stored(self) -> list[tuple[str, float]]:
        """The (metric, value) rows the study store keeps: every number, the runner's included
        (the report's evaluation FLOPs read ``tokens_processed``)."""
        return numbers(self.model_dump(mode="json"))


class Gsm8kMetrics(TaskMetrics):
    """GSM8K: exact match of the final number (strict and flexible extraction), in percent."""

    accuracy: float
    n: int
    flexible_accuracy: float | None = None  # the secondary numbers: None in a file that lacks them
    invalid_rate: float | None = None  # answers with no number in the expected place

    def headline(self, names=()) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "flexible_accuracy": self.flexible_accuracy, "invalid_rate": self.invalid_rate,
                "n": self.n}


class HumanEvalMetrics(TaskMetrics):
    """HumanEval: pass@1 in percent of the program as completed, with its syntax salvaged and
    verbatim (pass@k for larger k, where sampled, are extra fields under their names)."""

    pass_at_1: float = Field(alias="pass@1")
    n_problems: int
    isolation: str  # the sandbox that ran the programs
    pass_at_1_salvaged: float | None = Field(None, alias="pass@1_salvaged")  # None in a file that lacks them
    pass_at_1_verbatim: float | None = Field(None, alias="pass@1_verbatim")
    proxy_fallback_problems: int = 0
    proxy_fallback_task_ids: list[str] = []
    wrapper: str | None = None  # the prompt wrapper (None: scored without generating)

    def headline(self, names=()) -> dict[str, Any]:
        own = self.own()
        return {k: v for k, v in own.items() if k.startswith("pass@") and v is not None} | {"n_problems": self.n_problems,
                                                                                            "isolation": self.isolation}


class MtBenchMetrics(TaskMetrics):
    """MT-Bench: the judge's 1-10 score pooled over turns and repeats (None: no valid judgment),
    its standard deviation over repeats, per turn and category, and the judge's bookkeeping."""

    score: float | None
    score_sd: float
    turn1: float | None
    turn2: float | None
    failed_judgments: int
    n_judgments: int
    per_category: dict[str, float | None] = {}
    repeats: int
    score_per_repeat: list[float | None] = []
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_stats: dict[str, int] = {}

    def headline(self, names=()) -> dict[str, Any]:
        return {"score": self.score, "score_sd": self.score_sd, "turn1": self.turn1, "turn2": self.turn2,
                "failed_judgments": self.failed_judgments, "repeats": self.repeats}


class SourceLoss(BaseModel):
    """One source's held-out loss: the token-weighted mean over its supervised tokens, the
    tokens and samples counted, how its rows were chosen, and how many of them the run trained on."""

    model_config = ConfigDict(extra="allow")

    loss: float
    tokens: int
    samples: int
    heldout: str  # sftmix.data.heldout's rule: the source's test split or its pool's tail
    overlap_with_training: int | None = Field(None, exclude_if=_none)  # None: measured without the run's training rows


class LossMetrics(TaskMetrics):
    """The held-out loss: one ``SourceLoss`` per source, under the source's name."""

    __pydantic_extra__: dict[str, SourceLoss] = Field(init=False)

    @property
    def per_source(self) -> dict[str, SourceLoss]:
        """Each source's held-out loss, by source name."""
        return dict(self.model_extra or {})

    def headline(self, names=()) -> dict[str, Any]:
        return {source: round(m.loss, 4) for source, m in self.per_source.items()}

    def stored(self) -> list[tuple[str, float]]:
        return [(source, float(m.loss)) for source, m in self.per_source.items()]


def typed(kind: type[TaskMetrics], doc: Any, *where: str | int) -> TaskMetrics | Any:
    """``doc`` (a task's metrics as a file keeps them) read as ``kind``, for the validator of the
    file's own type: an error keeps its place in the file (``where``, e.g. ``tasks``, ``gsm8k``).
    Anything but a mapping is left for the file's type to refuse."""
    if not isinstance(doc, dict):
        return doc
    try:
        return kind.model_validate(doc)
    except ValidationError as e:
        raise ValidationError.from_exception_data(e.title, [
            {"type": d["type"], "loc": (*where, *d["loc"]), "input": d["input"], **({"ctx": d["ctx"]} if "ctx" in d else {})}
            for d in e.errors()]) from None
