"""Chat templates and assistant-only label masks.

Two templates:
- ``vicuna``: Vicuna v1.1 exactly as FastChat renders it (``conversation.py``, ADD_COLON_TWO):
  ``{system} USER: {q1} ASSISTANT: {a1}{eos}USER: {q2} ASSISTANT: {a2}{eos}``; the generation
  prompt ends with ``ASSISTANT:`` (no trailing space). FastChat writes ``</s>`` (LLaMA's EOS);
  we write the tokenizer's own EOS string so every model ends its turns with its real EOS token.
- ``model``: the tokenizer's own chat template (``apply_chat_template``).

Masks follow FastChat's semantics: the loss covers each assistant message and the end-of-turn
token after it; system and user text, role tags and padding are masked (-100). The supervised
spans are found as *character* ranges in the rendered text and mapped to tokens with the fast
tokenizer's offsets, so the mask does not depend on how a tokenizer merges the text around a
boundary (FastChat's ``len(tok(part)) - 2`` arithmetic is LLaMA-specific). A token is supervised
when its character span overlaps a supervised range.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftmix.errors import SftmixError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
END_OF_TURN_STRINGS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>", "<|endoftext|>", "<|end|>")
IGNORE = -100


class MaskError(ValueError):
    """The supervised spans of a conversation could not be located in its rendering."""


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # supervised character ranges [start, end)


def render_vicuna(messages: list[dict], eos: str, add_generation_prompt: bool = False) -> Rendered:
    """Vicuna v1.1 rendering; spans cover each assistant message plus the EOS after it."""
    system = next((m["content"] for m in messages if m["role"] == "system"), VICUNA_SYSTEM)
    text = system + " "
    spans = []
    turns = [m for m in messages if m["role"] != "system"]
    for m in turns:
        if m["role"] == "user":
            text += "USER: " + m["content"] + " "
        else:
            text += "ASSISTANT: "
            start = len(text)
            text += m["content"] + eos
            spans.append((start, len(text)))
    if add_generation_prompt:
        text += "ASSISTANT:"
    return Rendered(text, spans)


def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja errors: the template cannot render these roles
        raise SftmixError(f"the chat template of {tokenizer.name_or_path!r} cannot render this conversation: {e}") from None


def render_model(messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> Rendered:
    """The tokenizer's chat template.

    Assistant message i is located after the rendering of ``messages[:i]`` with a generation
    prompt (when the template is prefix-consistent, as chat templates are), so that an answer
    that also occurs inside a user turn is never matched there.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise SftmixError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; use template: vicuna")
    text = _apply(tokenizer, messages, add_generation_prompt)
    spans = []
    pos = 0
    ends = tuple(s for s in (tokenizer.eos_token, *END_OF_TURN_STRINGS) if s)
    for idx, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _apply(tokenizer, messages[:idx], True)
        if text.startswith(prefix):
            pos = max(pos, len(prefix))
        content = m["content"]
        i = text.find(content, pos)
        if i < 0 and content.strip():
            content = content.strip()
            i = text.find(content, pos)
        if i < 0:
            raise MaskError("assistant message not found in the rendered template")
        end = i + len(content)
        for s in ends:  # supervise the end-of-turn token right after the answer
            if text.startswith(s, end):
                end += len(s)
                break
        spans.append((i, end))
        pos = end
    return Rendered(text, spans)


def render(messages: list[dict], template: str, tokenizer, add_generation_prompt: bool = False) -> Rendered:
    if template == "vicuna":
        return render_vicuna(messages, tokenizer.eos_token or "</s>", add_generation_prompt)
    if template == "model":
        return render_model(messages, tokenizer, add_generation_prompt)
    raise SftmixError(f"unknown template {template!r}; valid: model, vicuna")


def generation_prompt(messages: list[dict], template: str, tokenizer) -> str:
    """Prompt text for generating the next assistant turn (messages end with a user turn)."""
    return render(messages, template, tokenizer, add_generation_prompt=True).text


def tokenize_with_mask(messages: list[dict], template: str, tokenizer, max_length: int | None = None) -> dict:
    """Token ids and labels (-100 outside supervised spans) for one conversation.

    Returns ``input_ids``, ``labels``, ``truncated`` (bool). Truncation keeps the first
    ``max_length`` tokens. Raises ``MaskError`` when no supervised token remains.
    """
    r = render(messages, template, tokenizer)
    enc = tokenizer(r.text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    si = 0
    for t, (a, b) in enumerate(offsets):
        if a == b:  # added special tokens (BOS) carry empty offsets
            continue
        while si < len(r.spans) and r.spans[si][1] <= a:
            si += 1
        if si < len(r.spans) and a < r.spans[si][1] and b > r.spans[si][0]:
            labels[t] = ids[t]
    truncated = bool(max_length and len(ids) > max_length)
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels):
        raise MaskError("no supervised token" + (" left after truncation" if truncated else ""))
    return {"input_ids": ids, "labels": labels, "truncated": truncated}
