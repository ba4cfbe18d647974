"""Loss on the supervised (assistant) tokens, shared by training and evaluation from below both.

Training's loss and the held-out loss evaluation compute logits only at supervised positions
(``SelectSupervised``); the forgetting curves measured during training and the final evaluation
call the same ``mean_loss`` on the same rows, and ``heldout_key`` names such a measurement so
that one can stand for the other.

``mean_loss`` returns the token-weighted mean and, per sample, the summed token loss and the
token count, from which intervals and paired differences are computed (``sftmix.analysis.stats``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from sftmix.data.records import Conversation
from sftmix.io import read_record, stable_hash
from sftmix.templates import IGNORE, MASK_VERSION, MaskError, tokenize_with_mask

# A trained checkpoint's held-out loss at its last step, written by the forgetting curve and
# reused by the final evaluation when its key matches (``SavedHeldout``).
HELDOUT_FILE = "heldout_loss.json"


class HeldoutLoss(BaseModel):
    """One source's held-out measurement: the token-weighted mean loss over its supervised tokens,
    the tokens and samples counted, and per sample ``(id, summed token loss, tokens)``."""

    model_config = ConfigDict(extra="forbid")

    loss: float
    tokens: int
    samples: int
    per_sample: list[tuple[str, float, int]]


class SavedHeldout(BaseModel):
    """``heldout_loss.json`` of a trained checkpoint: its held-out losses at the last step, per
    source, under the ``heldout_key`` of the rows and settings measured. Written by the forgetting
    curve (``sftmix.train.curve``), read by the held-out loss evaluation (``sftmix.eval.loss``)."""

    model_config = ConfigDict(extra="forbid")

    key: str
    results: dict[str, HeldoutLoss]


def read_saved_heldout(checkpoint: str | Path) -> SavedHeldout | None:
    """The checkpoint's saved held-out losses, None where it has none; a damaged file names itself."""
    path = Path(checkpoint) / HELDOUT_FILE
    return read_record(path, SavedHeldout) if path.exists() else None

# Part of every key under which a held-out measurement is reused: 2 = measured through the
# model's own forward, never through a trainer's mixed-precision autocast (see plain_forward).
LOSS_VERSION = 2


def heldout_key(sets: dict[str, list[Conversation]], template: str, max_length: int, batch_size: int) -> str:
    """Identity of a held-out measurement: the rows per source and how they were scored."""
    rows = {n: [c.id for c in v] for n, v in sorted(sets.items())}
    return stable_hash([rows, template, max_length, batch_size, MASK_VERSION, LOSS_VERSION], 24)


class SelectSupervised:
    """Forward pre-hook on the output layer: keep only the hidden states at ``self.mask`` (the
    positions whose next token is supervised), so the (batch x length x vocabulary) logits are never
    built. Passes everything through while ``mask`` is None. Training and held-out loss share it.

    With ``capture``, the selected hidden states are kept in ``hidden`` and the output layer gets
    none of them: a fused linear cross-entropy then computes the loss from them and the layer's
    weight, chunk by chunk, without the (supervised x vocabulary) logits either."""

    def __init__(self):
        self.mask: torch.Tensor | None = None
        self.capture = False
        self.hidden: torch.Tensor | None = None

    def __call__(self, module, args):
        if self.mask is None:
            return None
        selected = args[0][self.mask]
        if self.capture:
            self.hidden = selected
            return (selected[:0],)
        return (selected,)


def plain_forward(model):
    """The model's own forward. While a trainer holds a model for mixed precision, accelerate
    wraps its ``forward`` in place in a bf16/fp16 autocast (keeping the original as
    ``_original_forward``); a held-out measurement taken through that wrapper would differ from the
    final evaluation of the saved weights, which runs in the model's own dtype."""
    return getattr(model, "_original_forward", None) or model


@torch.no_grad()
def mean_loss(model, tokenizer, convs: list[Conversation], template: str, max_length: int = 512, batch_size: int = 8) -> HeldoutLoss:
    """Token-weighted mean loss over the supervised tokens of ``convs``, with ``(id, summed loss,
    tokens)`` for each conversation that has supervised tokens. The model's train/eval mode is restored.
    """
    rows = []
    for c in convs:
        try:
            rows.append({**tokenize_with_mask(c.messages, template, tokenizer, max_length), "id": c.id})
        except MaskError:
            continue
    rows.sort(key=lambda r: len(r["input_ids"]))
    total, count, per_sample = 0.0, 0, []
    was_training = model.training
    model.eval()
    # Logits only at supervised positions, as the trainer computes them
    select = SelectSupervised()
    hook = model.get_output_embeddings().register_forward_pre_hook(select)
    forward = plain_forward(model)
    try:
        for i in range(0, len(rows), batch_size):
            batch = rows[i: i + batch_size]
            n = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), n), tokenizer.pad_token_id)
            labels = torch.full((len(batch), n), IGNORE)
            mask = torch.zeros((len(batch), n), dtype=torch.long)
            for j, r in enumerate(batch):
                k = len(r["input_ids"])
                ids[j, :k], labels[j, :k], mask[j, :k] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
            dev = next(model.parameters()).device
            ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
            tgt = labels[:, 1:]
            sel = torch.zeros_like(labels, dtype=torch.bool)
            sel[:, :-1] = tgt != IGNORE
            select.mask = sel
            logits = forward(input_ids=ids, attention_mask=mask).logits.float()  # (supervised positions, vocab)
            token_loss = F.cross_entropy(logits, tgt[tgt != IGNORE], reduction="none")
            row = sel.nonzero()[:, 0]
            sums = torch.zeros(len(batch), dtype=token_loss.dtype, device=dev).index_add_(0, row, token_loss).tolist()
            counts = (tgt != IGNORE).sum(1).tolist()
            for r, s, k in zip(batch, sums, counts):
                per_sample.append((r["id"], s, int(k)))
            total += sum(sums)
            count += sum(counts)
    finally:
        hook.remove()
        model.train(was_training)
    per_sample.sort()
    return HeldoutLoss(loss=total / count if count else math.nan, tokens=count, samples=len(rows), per_sample=per_sample)
