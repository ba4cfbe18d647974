"""A pinned reference run: the tiny model trained on the generated math source, its per-step
losses, learning rates, gradient norms and token counts, and its held-out losses at the end, are
committed in ``reference/tiny_run.json`` and compared here. Any silent change to masking, loss
normalisation, data sampling, batching or the schedule moves them and fails this test.

Tolerance: 1e-4 relative on losses and gradient norms (fp32 on CPU; other CPUs may sum in
another order, which moves the sixth digit), exact on token counts and learning rates. The test
also checks that the tolerance can see a change: the same run with a constant schedule instead of
the cosine one must differ from the reference by more than it.

To re-pin after an intended change (say why in the commit): ``python tests/test_reference.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from helpers import tiny_run
from sftmix.train.strategies import run_strategy

PINNED = Path(__file__).parent / "reference" / "tiny_run.json"
RTOL = 1e-4


def measure(tmp: Path, name: str = "ref", **train) -> dict:
    cfg = tiny_run(tmp, name, strategy={"name": "individual", "sources": ["generated_math"]},
                   train={"epochs": 2, **train}, heldout={"sources": ["generated_math", "generated_code"], "samples": 8})
    meta = json.loads((run_strategy(cfg, progress=False) / "meta.json").read_text())
    steps = [h for h in meta["log_history"] if "loss" in h]
    curve = meta["curve"]
    return {
        "what": "tests/test_reference.py: tiny model, generated_math (48 rows), 2 epochs, batch 8 (4 x 2 accumulation), "
                "lr 1e-3 cosine with 3% warmup, fp32; held-out loss of generated_math and generated_code (8 rows each)",
        "steps": [{k: h[k] for k in ("step", "loss", "learning_rate", "grad_norm", "real_tokens")} for h in steps],
        "heldout_start": curve[0]["loss"],
        "heldout_end": curve[-1]["loss"],
        "tokenize": {k: meta["tokenize"][k] for k in ("rows", "truncated", "dropped_no_labels", "mask_failed") if k in meta["tokenize"]},
        "manifest_sha256": meta["manifest"]["content_sha256"],
    }


def differences(got: dict, want: dict) -> list[str]:
    """Every value of ``got`` that is off ``want`` by more than the tolerance, said in words."""
    out = []
    if got["manifest_sha256"] != want["manifest_sha256"]:
        out.append("the composed data differ (sampling)")
    if got["tokenize"] != want["tokenize"]:
        out.append(f"tokenisation {got['tokenize']} != {want['tokenize']}")
    if len(got["steps"]) != len(want["steps"]):
        return out + [f"{len(got['steps'])} logged steps != {len(want['steps'])}"]
    for g, w in zip(got["steps"], want["steps"]):
        for k in ("step", "real_tokens", "learning_rate"):
            if g[k] != w[k]:
                out.append(f"step {w['step']}: {k} {g[k]} != {w[k]}")
        for k in ("loss", "grad_norm"):
            if not math.isclose(g[k], w[k], rel_tol=RTOL):
                out.append(f"step {w['step']}: {k} {g[k]:.7g} != {w[k]:.7g}")
    for when in ("heldout_start", "heldout_end"):
        for source, v in want[when].items():
            if not math.isclose(got[when].get(source, math.nan), v, rel_tol=RTOL):
                out.append(f"{when} {source}: {got[when].get(source)} != {v:.7g}")
    return out


def test_the_tiny_run_matches_its_pinned_reference(tmp_path):
    if not PINNED.exists():
        pytest.fail(f"{PINNED} is missing: run `python tests/test_reference.py` and commit it")
    want = json.loads(PINNED.read_text())
    assert len(want["steps"]) == 12 and want["heldout_end"]["generated_math"] < want["heldout_start"]["generated_math"]
    got = measure(tmp_path)
    assert differences(got, want) == []
    # the tolerance sees a change of schedule (and so of everything after the first step)
    constant = measure(tmp_path, "constant", schedule="constant")
    said = differences(constant, want)
    assert any("learning_rate" in d for d in said) and any("loss" in d for d in said), said


if __name__ == "__main__":  # re-pin: python tests/test_reference.py
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        doc = measure(Path(tmp))
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {PINNED}: {len(doc['steps'])} steps, held-out end {doc['heldout_end']}")
