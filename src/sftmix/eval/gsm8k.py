"""GSM8K (Cobbe et al. 2021), scored as the paper's reference (gsm8k-ScRel, RFT) does.

One raw test example::

    {"question": "Janet’s ducks lay 16 eggs per day. ...", "answer": "... #### 18"}

Prompt: the configured chat template with the question verbatim (default Vicuna v1.1), greedy,
stop at EOS. Headline ``accuracy``: the RFT rule (``eval.py`` of OFA-Sys/gsm8k-ScRel): the first
``#### N``, commas removed, parsed as a float, correct when |pred - gold| < 1e-4; no match is
wrong. Reported beside it: ``flexible_accuracy`` (the last number in the output, after removing
``$`` and commas) and ``invalid_rate`` (outputs without a valid ``#### N``). See
evaluation-protocol.md §1.
"""

from __future__ import annotations

import re

from sftmix.templates import generation_prompt

RFT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _to_float(s: str) -> float | None:
    s = s.strip().replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def extract_rft(text: str) -> float | None:
    """The RFT rule: first ``#### N``, commas removed, ``float()``; None when invalid."""
    text = text.split("\u0000")[0]
    m = RFT_PATTERN.search(text)
    return _to_float(m.group(1)) if m else None


def extract_flexible(text: str) -> float | None:
    """The last number-like token after removing ``$`` and thousands commas."""
    found = NUMBER.findall(text.replace("$", ""))
    for tok in reversed(found):
        v = _to_float(tok)
        if v is not None:
            return v
    return None


def correct(pred: float | None, gold: float | None) -> bool:
    """Whether a predicted number equals the gold one (to 1e-4); None on either side is wrong."""
    return pred is not None and gold is not None and abs(pred - gold) < 1e-4


def score(outputs: list[str], golds: list[str]) -> tuple[dict, list[dict]]:
    """Metrics and per-sample verdicts for model outputs against gold solutions."""
    rows = []
    for out, gold_text in zip(outputs, golds, strict=True):
        gold = extract_rft(gold_text)
        pred, flex = extract_rft(out), extract_flexible(out)
        rows.append({"output": out, "gold": gold, "pred": pred, "pred_flexible": flex,
                     "correct": correct(pred, gold), "correct_flexible": correct(flex, gold), "invalid": pred is None})
    n = max(1, len(rows))
    metrics = {
        "accuracy": 100.0 * sum(r["correct"] for r in rows) / n,
        "flexible_accuracy": 100.0 * sum(r["correct_flexible"] for r in rows) / n,
        "invalid_rate": 100.0 * sum(r["invalid"] for r in rows) / n,
        "n": len(rows),
    }
    return metrics, rows


def run(generator, template: str, problems: list[dict], max_new_tokens: int = 512) -> tuple[dict, list[dict]]:
    """Generate answers for ``problems`` (dicts with question/answer) and score them."""
    prompts = [generation_prompt([{"role": "user", "content": p["question"]}], template, generator.tokenizer) for p in problems]
    outputs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, desc="gsm8k")
    metrics, rows = score(outputs, [p["answer"] for p in problems])
    for i, (r, p, prompt) in enumerate(zip(rows, problems, prompts)):
        r.update(item=i, question=p["question"], prompt=prompt)
    return metrics, rows
