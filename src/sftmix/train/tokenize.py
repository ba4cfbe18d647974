"""Tokenising a composed mixture into training rows, with an on-disk cache, and batching.

The cache key is (tokenizer identity, template, max length, packing, mixture content hash): a
second run with the same inputs reads the Arrow file instead of tokenising again.

Truncation policy: a conversation longer than ``max_length`` tokens keeps its first
``max_length`` tokens (counted as ``truncated``); one left with no supervised token is dropped and
counted (``dropped_no_labels``). A conversation whose supervised spans cannot be located is never
trained on with all labels masked: it is dropped and counted (``mask_failed``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftmix.data.records import Conversation
from sftmix.errors import SftmixError
from sftmix.io import building, read_record, stable_hash, write_json
from sftmix.progress import track
from sftmix.templates import IGNORE, MASK_VERSION, MaskError, tokenize_with_mask


class TokenizeStats(BaseModel):
    """What tokenising a stage's conversations gave (the counts of the module docstring): kept with
    the cached rows (``stats.json``) and in the stage's ``meta.json`` (``tokenize``), with whether
    the cache held the rows (``cache``: hit or miss) and under which key."""

    model_config = ConfigDict(extra="ignore")  # a stage of an earlier sftmix may have counted more

    conversations: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    mask_failed: int = 0
    rows: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    packed_rows: int | None = None  # rows after packing (None: not packed)
    cache: str = ""
    key: str = ""


def tokenizer_fingerprint(tokenizer) -> str:
    """What identifies a tokenizer for the tokenisation cache."""
    return stable_hash([tokenizer.name_or_path, type(tokenizer).__name__, len(tokenizer),
                        tokenizer.eos_token, tokenizer.pad_token, getattr(tokenizer, "chat_template", None)])


def pack(rows: list[dict], max_length: int) -> list[dict]:
    """Greedy first-fit packing of tokenised rows into rows of at most ``max_length`` tokens.

    Each packed row carries ``position_ids`` that restart at 0 for every sample; with no
    attention mask, transformers detects the restarts and keeps attention inside each sample.
    """
    packed: list[dict] = []
    cur: dict = {"input_ids": [], "labels": [], "position_ids": []}
    for r in rows:
        n = len(r["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > max_length:
            packed.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += r["input_ids"]
        # The first label of a sample must not be predicted from the previous sample's last token.
        cur["labels"] += [IGNORE] + r["labels"][1:]
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        packed.append(cur)
    return packed


def tokenize_mixture(convs: list[Conversation], content_sha: str, tokenizer, template: str, max_length: int,
                     packing: bool = False, cache_root: Path | None = None, progress: bool = True) -> tuple[object, TokenizeStats]:
    """Tokenised rows as a ``datasets.Dataset`` and what tokenising them gave; cached by the key above."""
    # imported here: datasets is heavy and only needed where rows are tokenised or fetched
    import datasets

    key = stable_hash([MASK_VERSION, tokenizer_fingerprint(tokenizer), template, max_length, packing, content_sha])
    if cache_root is None:
        return _tokenize(convs, tokenizer, template, max_length, packing, key, progress)
    cache, how = cache_root / key, "hit"
    if not (cache / "stats.json").exists():
        # another process may want the same rows now: one tokenises and saves them, the others wait and read
        with building(cache, "stats.json") as tmp:
            if tmp is not None:
                ds, stats = _tokenize(convs, tokenizer, template, max_length, packing, key, progress)
                ds.save_to_disk(str(tmp / "data"))
                write_json(tmp / "stats.json", stats.model_dump(mode="json", exclude={"cache"}))
                how = "miss"
    kept = read_record(cache / "stats.json", TokenizeStats)
    return datasets.load_from_disk(str(cache / "data")), kept.model_copy(update={"cache": how, "key": key})


def _tokenize(convs: list[Conversation], tokenizer, template: str, max_length: int, packing: bool, key: str,
              progress: bool) -> tuple[object, TokenizeStats]:
    """Tokenise (and pack) ``convs`` into an in-memory ``datasets.Dataset``, counting as the module docstring says."""
    # imported here: datasets is heavy and only needed where rows are tokenised or fetched
    import datasets

    rows, stats = [], TokenizeStats(conversations=len(convs), key=key)
    for c in track(convs, "tokenising", enabled=progress):
        try:
            r = tokenize_with_mask(c.messages, template, tokenizer, max_length)
        except MaskError as e:
            if "no supervised" in str(e):
                stats.dropped_no_labels += 1
            else:
                stats.mask_failed += 1
            continue
        stats.truncated += r.pop("truncated")
        rows.append(r)
    stats.rows = len(rows)
    stats.tokens = sum(len(r["input_ids"]) for r in rows)
    stats.supervised_tokens = sum(sum(x != IGNORE for x in r["labels"]) for r in rows)
    if packing:
        rows = pack(rows, max_length)
        stats.packed_rows = len(rows)
    for r in rows:
        r["length"] = len(r["input_ids"])  # read by the length-grouped sampler
    if not rows:
        raise SftmixError(f"no trainable rows after tokenising {len(convs)} conversations "
                          f"(max_length {max_length}; {stats})")
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}), stats.model_copy(update={"cache": "miss"})


class Collator:
    """Pads a batch to its longest row (right padding); labels padded with -100.

    Packed rows carry ``position_ids`` and get no attention mask, so that transformers builds
    the per-sample block mask from the position restarts.
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 8):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            n = -(-n // self.multiple) * self.multiple
        # imported here: a study's driver reads TokenizeStats (a stage's meta.json) and loads no torch for it
        import torch

        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        packed = "position_ids" in batch[0]
        pos = torch.zeros((len(batch), n), dtype=torch.long) if packed else None
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
            if packed:
                pos[i, :k] = torch.tensor(b["position_ids"])
                pos[i, k:] = torch.arange(n - k)  # padding forms its own (ignored) segment
        # per row, so that a batch split across processes (accelerate's dispatch) splits the count too
        out = {"input_ids": ids, "labels": labels, "num_real_tokens": mask.sum(1)}
        if packed:
            out["position_ids"] = pos
        else:
            out["attention_mask"] = mask
        return out
