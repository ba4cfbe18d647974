"""Slow checks on the real embedded model; run with `python -m pytest -m slow` (not in CI)."""

import subprocess
import sys

import pytest

from sftmix.eval.runner import EvalResults
from sftmix.io import read_record

pytestmark = pytest.mark.slow


def test_smollm2_dmt_run_lowers_heldout_loss_of_trained_abilities(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "run", "configs/train/smollm2_dmt.yaml", f"output_dir={tmp_path}/run",
                        "--quiet"], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_record(tmp_path / "run" / "eval" / "results.json", EvalResults).tasks["loss"]
    assert res.per_source["generated_math"].loss < 1.0 and res.per_source["generated_code"].loss < 1.0


def test_demo_quick_on_smollm2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sftmix.cli", "demo", "--quick", "--out", str(tmp_path / "d"), "--quiet"],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "d" / "report" / "report.html").exists()
