"""Where everything lives: the one place that names run, stage and study folders and files.

A run (``runs/<name>/`` or its ``output_dir``)::

    stage<i>_<stage>/data/manifest.json     the composed mixture (``sftmix.data.compose``)
    stage<i>_<stage>/checkpoints/           resume checkpoints, removed when the stage is done
    stage<i>_<stage>/final/                 the stage's model; final/meta.json marks it done
    heldout.json                            the held-out rows, chosen once (``sftmix.data.heldout``)
    run.json                                the config that trains the folder (``sftmix.train.strategies``)
    eval/                                   the final evaluation (results.json, task_*.json, ...)

A study (``studies/<name>[/<profile>]/`` or its ``output_dir``)::

    results.sqlite                          the store (``sftmix.study.store``)
    runs/<run id>/                          each run's folder (as above), with .lock, done.json,
                                            error.json and, under Slurm, job.json
    trainings/<hash>.lock                   held by the run that trains that training (``runlock.TrainingClaim``)
    fallbacks.json                          which sources fell back (``study run`` decides)
    fit.json, proposal.json, proposal.yaml  ``study fit`` / ``study propose``
    optimize.json                           ``study optimize``: every step, resumable
    optimize_report/                        its report (every run of the store, and the design)
    report/                                 ``study report``

Everything else asks this module; nothing spells these names itself.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

RUNS, STUDIES, TRAININGS = "runs", "studies", "trainings"
DATA, CHECKPOINTS, FINAL, EVAL = "data", "checkpoints", "final", "eval"
MANIFEST, META, HELDOUT, RUN_RECORD = "manifest.json", "meta.json", "heldout.json", "run.json"
STORE, FIT, REPORT, FALLBACKS = "results.sqlite", "fit.json", "report", "fallbacks.json"
OPTIMIZE_REPORT = "optimize_report"
PROPOSAL_JSON, PROPOSAL_YAML, PROPOSAL_DIR = "proposal.json", "proposal.yaml", "proposal"
OPTIMIZE = "optimize.json"
LOCK, DONE, ERROR, JOB = ".lock", "done.json", "error.json", "job.json"


# ---------------------------------------------------------------- runs and stages

def run_dir(name: str, output_dir: str | None = None) -> Path:
    """A run's folder: its ``output_dir``, else ``runs/<name>``."""
    return Path(output_dir or Path(RUNS) / name)


def stage_dir(run_out: Path, index: int, name: str) -> Path:
    """The folder of stage ``index`` (1-based) named ``name``."""
    return Path(run_out) / f"stage{index}_{name}"


def stage_index(stage: Path) -> int:
    """The 1-based index of a stage folder (``stage2_general`` -> 2)."""
    return int(Path(stage).name[len("stage"):].split("_")[0])


def stages(run_out: Path) -> list[Path]:
    """A run's stage folders in training order (by index: stage10 comes after stage9)."""
    found = [p for p in Path(run_out).glob("stage*_*") if p.is_dir() and p.name[len("stage"):].split("_")[0].isdigit()]
    return sorted(found, key=stage_index)


def data_dir(stage: Path) -> Path:
    """A stage's composed data folder."""
    return Path(stage) / DATA


def manifest(folder: Path) -> Path:
    """The manifest of composed data in ``folder`` (a stage's ``data/`` or ``compose -o``'s)."""
    return Path(folder) / MANIFEST


def checkpoints_dir(stage: Path) -> Path:
    """A stage's resume checkpoints (removed once the stage is done)."""
    return Path(stage) / CHECKPOINTS


def final_dir(stage: Path) -> Path:
    """A stage's final model."""
    return Path(stage) / FINAL


def meta(final: Path) -> Path:
    """A final checkpoint's ``meta.json`` (written last: its presence marks the stage done)."""
    return Path(final) / META


def stage_manifests(run_out: Path) -> list[Path]:
    """The data manifests of a run's stages, in training order, where they exist."""
    return [manifest(data_dir(s)) for s in stages(run_out) if manifest(data_dir(s)).exists()]


def stage_metas(run_out: Path) -> list[Path]:
    """The ``meta.json`` of a run's finished stages, in training order."""
    return [meta(final_dir(s)) for s in stages(run_out) if meta(final_dir(s)).exists()]


def eval_dir(run_out: Path) -> Path:
    """A run's final evaluation folder."""
    return Path(run_out) / EVAL


def run_record(run_out: Path) -> Path:
    """The config a run folder was first trained under (its training refuses another)."""
    return Path(run_out) / RUN_RECORD


def heldout_file(run_out: Path) -> Path:
    """A run's held-out rows, chosen once: training leaves them out and measures them, evaluation scores them."""
    return Path(run_out) / HELDOUT


def param_count(model_dir: Path) -> float:
    """Parameters of a saved model, from its safetensors headers: one file or several shards."""
    # imported here: safetensors is only needed where weights are read
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            total += sum(math.prod(h.get_slice(k).get_shape()) for k in h.keys())
    return float(total)


def weight_files(model_dir: Path) -> list[Path]:
    """A local model's weight files (one or several shards)."""
    return sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []


def weights_fingerprint(model_path: str) -> list:
    """Name, size and modification time of a local model's weight files: what caches keyed by a
    model (the base-model curve point, generated answers) hold, so replaced weights never reuse
    an old entry. Empty for a hub id."""
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(Path(model_path)))


# ---------------------------------------------------------------- studies

def study_dir(name: str, output_dir: str | None = None, profile: str | None = None) -> Path:
    """A study's folder: its ``output_dir`` (else ``studies/<name>``), and a profile's below it."""
    base = Path(output_dir or Path(STUDIES) / name)
    return base / profile if profile else base


def store(study_out: Path) -> Path:
    """A study's results store."""
    return Path(study_out) / STORE


def fit_file(study_out: Path) -> Path:
    """A study's fitted laws (``study fit``)."""
    return Path(study_out) / FIT


def optimize_file(study_out: Path) -> Path:
    """A study's sequential design (``study optimize``): its settings and every step."""
    return Path(study_out) / OPTIMIZE


def optimize_report_dir(study_out: Path) -> Path:
    """The report of a study's sequential design: every run of its store, and the design's steps."""
    return Path(study_out) / OPTIMIZE_REPORT


def fallbacks_file(study_out: Path) -> Path:
    """Which sources ``study run`` found and which fell back (read-only commands reuse it)."""
    return Path(study_out) / FALLBACKS


def report_dir(study_out: Path) -> Path:
    """A study's report folder."""
    return Path(study_out) / REPORT


def study_run(study_out: Path, run_id: str) -> Path:
    """The folder of one run of a study."""
    return Path(study_out) / RUNS / run_id


def training_claim(run_out: Path, trained: str) -> Path:
    """The lock file that a study run (its folder ``run_out``, in the study's ``runs/``) holds
    while it trains ``trained`` (a ``trained_view`` hash); its twins wait on it. Beside ``runs/``,
    which holds run folders alone."""
    return Path(run_out).parent.parent / TRAININGS / f"{trained}.lock"


def safetensors_damage(path: Path) -> str | None:
    """Why a safetensors file is unreadable (a header that does not parse, or shorter than its
    header says: cut short), or None when it is whole."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError, IndexError) as e:
        return f"its header does not parse ({type(e).__name__})"
    size = path.stat().st_size
    if size < 8 + n + end:
        return f"cut short: {size} bytes of the {8 + n + end} its header describes"
    return None
