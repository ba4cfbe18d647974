"""Cleaning, with FastChat's ShareGPT preparation (``fastchat/data/clean_sharegpt.py``,
``split_long_conversation.py``, ``filter_wrong_format``) as the reference.

Rules, applied in order; every dropped or changed conversation is counted by reason:
1. System messages are kept only at the start (``system_not_first`` otherwise).
2. Leading assistant turns are removed (``leading_assistant_removed``); FastChat skips a first
   turn that is not from the human.
3. The conversation is cut before the first empty user/assistant turn (``cut_at_empty_turn``).
4. Roles must alternate user/assistant after the system part (``not_alternating``, dropped).
5. A trailing user turn without an answer is removed (``trailing_user_removed``).
6. A conversation left without an assistant turn is dropped (``no_assistant``).
7. Conversations longer than ``max_tokens`` are split into pieces of whole user/assistant pairs
   (``split_pieces`` counts the extra pieces; a single pair over the limit stays whole and is
   counted as ``pair_over_limit``; truncation at training time then applies).
8. Exact duplicates by content id are dropped (``duplicate``), keeping the first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from sftmix.data.records import Conversation


def approx_tokens(text: str) -> int:
    """Token estimate used when no tokenizer is configured: 4 characters per token."""
    return (len(text) + 3) // 4


def _normalise(messages: list[dict], stats: Counter) -> list[dict] | None:
    system = []
    i = 0
    while i < len(messages) and messages[i]["role"] == "system":
        system.append(messages[i])
        i += 1
    body = messages[i:]
    if any(m["role"] == "system" for m in body):
        stats["system_not_first"] += 1
        return None
    if body and body[0]["role"] == "assistant":
        stats["leading_assistant_removed"] += 1
        while body and body[0]["role"] == "assistant":
            body = body[1:]
    for j, m in enumerate(body):
        if not m["content"].strip():
            stats["cut_at_empty_turn"] += 1
            body = body[: j - (j % 2)]  # keep whole pairs only
            break
    for j, m in enumerate(body):
        if m["role"] != ("user" if j % 2 == 0 else "assistant"):
            stats["not_alternating"] += 1
            return None
    if body and body[-1]["role"] == "user":
        stats["trailing_user_removed"] += 1
        body = body[:-1]
    if not body:
        stats["no_assistant"] += 1
        return None
    system = [s for s in system if s["content"].strip()]
    return system + body


def _split(messages: list[dict], max_tokens: int, count: Callable[[str], int], stats: Counter) -> list[list[dict]]:
    system = [m for m in messages if m["role"] == "system"]
    body = messages[len(system):]
    base = sum(count(m["content"]) for m in system)
    pieces, current, size = [], [], base
    for j in range(0, len(body), 2):
        pair = body[j: j + 2]
        n = sum(count(m["content"]) for m in pair)
        if current and size + n > max_tokens:
            pieces.append(system + current)
            current, size = [], base
        if base + n > max_tokens:
            stats["pair_over_limit"] += 1
        current += pair
        size += n
    if current:
        pieces.append(system + current)
    stats["split_pieces"] += len(pieces) - 1
    return pieces


def clean(
    convs: list[Conversation],
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] = approx_tokens,
    dedup: bool = True,
) -> tuple[list[Conversation], Counter]:
    """Clean conversations by the rules above; return (kept, counts by reason)."""
    stats: Counter = Counter()
    out: list[Conversation] = []
    seen: set[str] = set()
    for conv in convs:
        messages = _normalise(conv.messages, stats)
        if messages is None:
            continue
        pieces = [messages]
        if max_tokens and sum(count_tokens(m["content"]) for m in messages) > max_tokens:
            pieces = _split(messages, max_tokens, count_tokens, stats)
        for piece in pieces:
            new = Conversation(messages=piece, source=conv.source, ability=conv.ability, tags=list(conv.tags))
            if dedup and new.id in seen:
                stats["duplicate"] += 1
                continue
            seen.add(new.id)
            out.append(new)
    return out, stats
