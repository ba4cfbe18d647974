"""User tasks that break the rules a task's results must keep (tests only)."""

import time

from sftmix.eval.metrics import TaskMetrics
from sftmix.eval.tasks import HIGHER, LOWER, Context, Task


def _nan_headline(ctx: Context):
    return {"accuracy": float("nan"), "n": 2}, [{"item": "q1", "accuracy": 100.0}, {"item": "q2", "accuracy": 0.0}]


def _nan_row(ctx: Context):
    return {"score": 0.5, "n": 2}, [{"item": "q1", "score": 1.0}, {"item": "q2", "score": float("nan")}]


def _inf_row(ctx: Context):
    return {"score": 0.5, "n": 1}, [{"item": "only", "score": float("inf")}]


def _fine(ctx: Context):
    return {"score": 0.5, "n": 2}, [{"item": "q1", "score": 1.0}, {"item": "q2", "score": 0.0}]


nan_headline = Task("nan_headline", _nan_headline, {"accuracy": HIGHER}, generates=False)
nan_row = Task("nan_row", _nan_row, {"score": LOWER}, generates=False)
inf_row = Task("inf_row", _inf_row, {"score": LOWER}, generates=False)
fine = Task("fine", _fine, {"score": HIGHER}, generates=False)


class ScoreMetrics(TaskMetrics):
    """A user task's own metrics type: its score and item count are fields, checked."""

    score: float
    n: int


typed_fine = Task("typed_fine", _fine, {"score": HIGHER}, generates=False, metrics_type=ScoreMetrics)
typed_nan_headline = Task("typed_nan_headline", lambda ctx: ({"score": 0.5, "n": "two"}, [{"item": "q1", "score": 1.0}]),
                          {"score": HIGHER}, generates=False, metrics_type=ScoreMetrics)
# a second task under the name of usertasks.exact:arithmetic
arithmetic_again = Task("arithmetic", _fine, {"score": HIGHER}, generates=False)


def _fails_after_generating(ctx: Context):
    ctx.generator.generate(["1 + 1 ="], max_new_tokens=4, desc="before the failure")
    raise RuntimeError("the task broke after its engine answered")


fails_after_generating = Task("fails_after_generating", _fails_after_generating, {"score": HIGHER})


def _keeps_generating(ctx: Context):
    end = time.monotonic() + 120  # long enough to be killed or interrupted in the middle
    i = 0
    while time.monotonic() < end:
        ctx.generator.generate([f"{i} + {i} ="], max_new_tokens=4, desc="generating for a while")
        i += 1
    return {"score": 1.0, "n": 1}, [{"item": "only", "score": 1.0}]


keeps_generating = Task("keeps_generating", _keeps_generating, {"score": HIGHER})
