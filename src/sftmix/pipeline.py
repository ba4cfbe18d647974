"""One run, top to bottom: plan it, train it, evaluate it. ``sftmix run``, a study's worker and
``sftmix train`` all go through here, so what a run does is written once::

    p = plan(cfg)          # stages, sources, settings and tasks checked; nothing trained yet
    final = train(p)       # every stage in order (finished ones skipped, an interrupted one resumed)
    doc = evaluate(p)      # the final checkpoint on the run's eval tasks, into the run's eval folder

``launcher`` (a command prefix such as ``accelerate launch ...``) trains in separate processes,
for runs over several GPUs or nodes; evaluation then runs in this process.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from sftmix import layout
from sftmix.config import RunConfig, StageConfig
from sftmix.errors import SftmixError
from sftmix.eval import contamination
from sftmix.eval.runner import EvalResults
from sftmix.eval.runner import evaluate as run_tasks
from sftmix.train.strategies import check_run_folder, heldout_rows, run_strategy, training_ids
from sftmix.train.strategies import plan as stages_of


@dataclass(frozen=True)
class Plan:
    """A checked run: its config, its stages and where everything goes."""

    cfg: RunConfig
    stages: list[StageConfig]

    @property
    def out(self) -> Path:
        """The run's folder."""
        return layout.run_dir(self.cfg.name, self.cfg.output_dir)

    @property
    def final(self) -> Path:
        """The last stage's final checkpoint (there once training is done)."""
        return layout.final_dir(layout.stage_dir(self.out, len(self.stages), self.stages[-1].name))

    @property
    def eval_dir(self) -> Path:
        """Where the final evaluation writes."""
        return layout.eval_dir(self.out)


def plan(cfg: RunConfig) -> Plan:
    """The run's stages, checked as a whole before any work (``sftmix.train.strategies.plan``),
    and its folder: one trained under another config is refused (``check_run_folder``)."""
    p = Plan(cfg, stages_of(cfg))
    check_run_folder(cfg)
    return p


def train(p: Plan, progress: bool = True, launcher: list[str] | None = None) -> Path:
    """Train every stage; return the final checkpoint."""
    if not launcher:
        return run_strategy(p.cfg, progress=progress)
    p.out.mkdir(parents=True, exist_ok=True)  # a node other than the first may get here before it
    path = p.out / "run.yaml"
    path.write_text(yaml.safe_dump(p.cfg.model_dump(mode="json")))
    # bars off in the launched processes, log lines on (off too where this command is --quiet: its environment says so)
    subprocess.run([*launcher, "-m", "sftmix.cli", "train", str(path), "--no-progress"], check=True)
    return p.final


def evaluate(p: Plan, progress: bool = True) -> EvalResults:
    """Evaluate the final checkpoint with the run's ``eval`` section. The held-out loss scores the
    rows training chose and left out (the run's ``heldout.json``), and counts any row a stage
    trained on. The benchmarks' scores are then also given without the items the training rows
    hold (``sftmix.eval.contamination``): a warning, not a failure, where that cannot be measured."""
    cfg = p.cfg
    held = heldout_rows(cfg, p.stages, {}) if "loss" in cfg.eval.tasks else None
    doc = run_tasks(str(p.final), cfg.eval, p.eval_dir, cfg.template, cfg.data_dir, cfg.sources, cfg.seed, training_ids(cfg),
                    progress=progress, heldout=held, heldout_cfg=cfg.heldout)
    try:
        contamination.measure(p.out, p.eval_dir, list(doc.tasks), cfg.eval.data_dir or cfg.data_dir)
    except SftmixError as e:
        print(f"warning: the scores without the items training holds were not measured: {e}", file=sys.stderr)
    return doc


def run(cfg: RunConfig, progress: bool = True, launcher: list[str] | None = None) -> tuple[Plan, EvalResults]:
    """Plan, train and evaluate one run; return the plan and the evaluation."""
    p = plan(cfg)
    train(p, progress, launcher)
    return p, evaluate(p, progress)
