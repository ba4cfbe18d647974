"""Held-out loss per ability: mean assistant-token loss (the training masks) on held-out rows.

Cheap and deterministic, so the demo and forgetting curves can use it where generation is slow.
Held-out rows of a source: its ``test`` split when one exists (GSM8K, generated sources);
otherwise the *last* ``n`` rows of the pool's seeded sampling order. Training parts take prefixes
of that same order, so they are disjoint unless a part uses nearly the whole pool; the overlap with
the run's manifests is reported (``overlap_with_training``) rather than assumed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sftmix.config import SourceConfig
from sftmix.data.compose import sampling_order
from sftmix.data.records import Conversation
from sftmix.data.sources import BUILTINS, load_pool
from sftmix.templates import IGNORE, MaskError, tokenize_with_mask

HAS_TEST_SPLIT = ("gsm8k", "generated_math", "generated_code")


def heldout(name: str, n: int, seed: int, cfg: SourceConfig | None, data_dir: str | None) -> tuple[list[Conversation], str]:
    """``n`` held-out conversations of a source and how they were chosen."""
    cfg = cfg or SourceConfig()
    builtin = cfg.builtin or (name if name in BUILTINS else None)
    if builtin in HAS_TEST_SPLIT:
        pool = load_pool(name, cfg.model_copy(update={"split": "test", "limit": None}), data_dir)
        return sampling_order(pool.conversations, seed)[:n], "test split"
    pool = load_pool(name, cfg, data_dir)
    return sampling_order(pool.conversations, seed)[-n:], "tail of the train pool's sampling order"


@torch.no_grad()
def mean_loss(model, tokenizer, convs: list[Conversation], template: str, max_length: int = 512, batch_size: int = 8) -> dict:
    """Token-weighted mean loss over the supervised tokens of ``convs``."""
    rows = []
    for c in convs:
        try:
            rows.append(tokenize_with_mask(c.messages, template, tokenizer, max_length))
        except MaskError:
            continue
    rows.sort(key=lambda r: len(r["input_ids"]))
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(rows), batch_size):
        batch = rows[i: i + batch_size]
        n = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), n), tokenizer.pad_token_id)
        labels = torch.full((len(batch), n), IGNORE)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for j, r in enumerate(batch):
            k = len(r["input_ids"])
            ids[j, :k], labels[j, :k], mask[j, :k] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=IGNORE, reduction="sum").item()
        count += int((tgt != IGNORE).sum())
    return {"loss": total / count if count else math.nan, "tokens": count, "samples": len(rows)}
