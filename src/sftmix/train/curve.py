"""Forgetting curves: held-out loss of every ability measured during a stage, through the
trainer's own log (so the points are saved in checkpoints and survive a resume)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from transformers import TrainerCallback

from sftmix.errors import SftmixError
from sftmix.io import read_record, write_json
from sftmix.models import cache_dir
from sftmix.supervised import HELDOUT_FILE, HeldoutLoss, SavedHeldout, heldout_key, mean_loss
from sftmix.train.meta import HeldoutPoint


@dataclass
class CurveSpec:
    """What a stage measures for the forgetting curves: held-out rows per ability, how they are
    rendered (as the final held-out evaluation renders them), how many points between the stage's start and end, and
    where the stage starts on the run's cumulative axes (optimizer steps, real tokens)."""

    sets: dict[str, list]
    template: str
    max_length: int
    batch_size: int
    points: int
    run_step: int = 0
    run_tokens: int = 0
    start: dict[str, float] | None = None  # the previous stage's last point: the same weights, so not measured again
    cache_key: str | None = None  # a first stage's start point is the base model's: measured once per key


CURVE_KEY = "heldout_loss/"


class BaseLosses(BaseModel):
    """A cached start point (``<cache>/curves/<key>.json``): the base model's held-out loss per
    source, for a first stage whose model, weights and held-out rows hash to ``key``."""

    loss: dict[str, float]


class HeldoutCurve(TrainerCallback):
    """Held-out loss of every ability at the stage's start, at ``points`` evenly spaced optimizer
    steps, and at its end, logged through ``Trainer.log`` (so the points live in the trainer
    state's log history, are saved in checkpoints and survive a resume).

    It calls ``sftmix.supervised.mean_loss``, the final evaluation's own function, on the same rows:
    the last point of the last stage is the run's final held-out loss. (``Trainer.evaluate`` with
    a dict of eval sets would average per-batch means weighted by batch size, not per token, and
    so would not match that number.)
    """

    def __init__(self, spec: CurveSpec):
        self.spec = spec
        self.trainer = self.tokenizer = None  # the stage's, given by bind()
        self.logged_at: set[int] = set()
        self.last: dict[str, HeldoutLoss] | None = None  # full results (per sample too) of the latest measurement
        self.last_step = -1

    def bind(self, trainer, tokenizer) -> None:
        """Called by the stage with its trainer (whose model it measures and whose log it writes)."""
        self.trainer, self.tokenizer = trainer, tokenizer

    def final_results(self, state) -> dict[str, HeldoutLoss] | None:
        """The measurement at the stage's last step, as ``mean_loss`` results: saved with
        the checkpoint so that its final evaluation need not measure the same rows again."""
        return self.last if self.last is not None and self.last_step == state.global_step else None

    def record(self, final: Path, stands_in: bool, tokens: int) -> dict:
        """At the end of the stage, on the main process: what the stage's ``meta.json`` takes from
        the curve (where the stage ends on the run's axes, after ``tokens`` real tokens of
        training), and, where ``stands_in`` (the measurement was of the saved weights as the
        evaluation measures them), the last point saved in ``final`` as the result the final
        held-out evaluation reuses."""
        measured = self.final_results(self.trainer.state) if stands_in else None
        if measured:
            key = heldout_key(self.spec.sets, self.spec.template, self.spec.max_length, self.spec.batch_size)
            write_json(Path(final) / HELDOUT_FILE, SavedHeldout(key=key, results=measured).model_dump(mode="json"))
        return {"run_step_end": self.spec.run_step + self.trainer.state.global_step,
                "run_tokens_end": self.spec.run_tokens + tokens}

    def measure(self, state, known: dict[str, float] | None = None) -> None:
        """Measure the held-out losses at this step (once per step) and log them."""
        if state.global_step in self.logged_at:
            return
        self.logged_at.add(state.global_step)
        if known is None:
            self.last = {name: mean_loss(self.trainer.model, self.tokenizer, convs, self.spec.template, self.spec.max_length,
                                         self.spec.batch_size) for name, convs in self.spec.sets.items()}
            self.last_step = state.global_step
            known = {name: m.loss for name, m in self.last.items()}
        logs = {CURVE_KEY + name: v for name, v in known.items()}
        logs["run_step"] = self.spec.run_step + state.global_step
        logs["run_tokens"] = self.spec.run_tokens + self.trainer.real_tokens()
        # Trainer.log ends in on_log, which clears control.should_log: measured at the end of a
        # step, the point would swallow that step's training-loss log (its loss then merged into
        # the next step's). Keep the flag as it was.
        should_log = self.trainer.control.should_log
        self.trainer.log(logs)
        self.trainer.control.should_log = should_log

    def on_train_begin(self, args, state, control, **kwargs):
        self.logged_at |= {h["step"] for h in state.log_history if any(k.startswith(CURVE_KEY) for k in h)}
        if state.global_step:  # resumed: the points before the checkpoint are in its log history
            return
        if self.spec.start is not None and set(self.spec.start) == set(self.spec.sets):
            return self.measure(state, self.spec.start)
        cache = cache_dir() / "curves" / f"{self.spec.cache_key}.json" if self.spec.cache_key else None
        if cache is not None and cache.exists():
            try:
                return self.measure(state, read_record(cache, BaseLosses).loss)
            except SftmixError:  # damaged, or written by an earlier sftmix: measured again and rewritten
                pass
        self.measure(state)
        if cache is not None and state.is_world_process_zero:
            write_json(cache, BaseLosses(loss=curve_points(state.log_history, "")[-1].loss).model_dump(mode="json"))

    def on_step_end(self, args, state, control, **kwargs):
        every = max(1, -(-state.max_steps // (self.spec.points + 1)))
        if self.spec.points and state.global_step % every == 0 and state.global_step < state.max_steps:
            self.measure(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.measure(state)


def curve_points(log_history: list[dict], stage: str) -> list[HeldoutPoint]:
    """The curve points of a stage's log history (the trainer's: a list of dicts as it logged them)."""
    return [HeldoutPoint(stage=stage, step=h["step"], run_step=h["run_step"], run_tokens=h["run_tokens"],
                         loss={k[len(CURVE_KEY):]: v for k, v in h.items() if k.startswith(CURVE_KEY)})
            for h in log_history if any(k.startswith(CURVE_KEY) for k in h)]
