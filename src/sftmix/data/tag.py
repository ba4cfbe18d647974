"""Ability tagging: which conversations contain code or math.

The paper (§4.2) tagged ShareGPT with InsTag and removed conversations whose tags matched "code"
or "math" (86K -> 63K). Here a tagger is any object with ``name`` and
``tag(convs) -> list[list[str]]``. Two are built in:

- ``RuleTagger`` (default, offline, deterministic): code fences, code keywords and syntax; math
  vocabulary, arithmetic expressions and LaTeX.
- ``LLMTagger``: asks an OpenAI-compatible chat endpoint for InsTag-style open tags, then maps
  them to abilities with the paper's regex (a tag containing "code" -> code, "math" -> math).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sftmix.data.records import Conversation
from sftmix.errors import SftmixError

# Structural patterns: cheap, searched over every turn (answers carry the code and the math).
_CODE_STRUCT = [
    r"```",
    r"^\s*(def|class)\s+\w+\s*[\(:]",
    r"^\s*(import|from)\s+[\w\.]+(\s+import\s+\w+)?\s*$",
    r"#include\s*<",
    r"</?(div|html|body|script|span)\b",
]
_MATH_STRUCT = [
    r"<<[^<>\n]*=[^<>\n]*>>",
    r"####\s*-?\d",
    r"\\(frac|sqrt|sum|int|cdot|times)\b",
]
# Vocabulary patterns: searched over the lower-cased user turns only (InsTag also tags the
# query); running them over long answers costs seconds per 10k conversations for no gain.
_CODE_WORDS = [
    r"\b(public|private|static) (void|int|class|string)\b",
    r"console\.log\(|\bfunction \w+\s*\(|=> ?\{",
    r"\bselect\b[^\n]{0,80}\bfrom\b",
    r"\b(python|javascript|typescript|java|c\+\+|c#|golang|rust|sql|html|css|bash|regex|react|django|node\.?js)\b",
    r"\b(code|function|script|program|snippet|algorithm|compile|debug|refactor)\b",
]
_MATH_WORDS = [
    r"\d+\s*[-+*/×÷^]\s*\d+\s*=",
    r"\b(equation|integral|derivative|theorem|probability|polynomial|algebra|geometry|calculus|arithmetic|quadratic|logarithm|matrix|eigen\w*)\b",
    r"\b(solve|calculate|compute)\b[^\n]{0,30}\b(\d|x|equation|value|sum|product|area|percent)",
    r"\bmath(s|ematics|ematical)?\b",
]


def _join(patterns: list[str], flags: int = 0) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), flags)


_CODE_STRUCT_RE = _join(_CODE_STRUCT, re.MULTILINE)
_MATH_STRUCT_RE = _join(_MATH_STRUCT)
_CODE_WORDS_RE = _join(_CODE_WORDS)
_MATH_WORDS_RE = _join(_MATH_WORDS)


class RuleTagger:
    """Tags 'code' and 'math' by regular expressions (structure in all turns, words in queries)."""

    name = "rules"

    def tag_text(self, text: str, query: str | None = None) -> list[str]:
        """The tags (code, math) of one text; ``query``: the user's words, where keywords count."""
        query = (text if query is None else query).lower()
        tags = []
        if _CODE_STRUCT_RE.search(text) or _CODE_WORDS_RE.search(query):
            tags.append("code")
        if _MATH_STRUCT_RE.search(text) or _MATH_WORDS_RE.search(query):
            tags.append("math")
        return tags

    def tag(self, convs: Sequence[Conversation]) -> list[list[str]]:
        """The tags of each conversation."""
        return [self.tag_text(c.text(), c.text(("user",))) for c in convs]


INSTAG_PROMPT = (
    "You are a helpful assistant. Please identify tags of user intentions in the following user "
    "query and provide an explanation for each tag. Please respond in the JSON format "
    '{{"tag": str, "explanation": str}}.\nUser query: {query}'
)


def abilities_from_open_tags(tags: Sequence[str]) -> list[str]:
    """The paper's rule: an open tag mentioning "code" means code, "math" means math."""
    out = []
    if any(re.search("code|coding|program", t, re.I) for t in tags):
        out.append("code")
    if any(re.search("math", t, re.I) for t in tags):
        out.append("math")
    return out


def parse_instag_reply(text: str) -> list[str]:
    """Extract the ``tag`` values from an InsTag-style reply (a JSON list or JSON objects)."""
    tags: list[str] = []
    match = re.search(r"\[.*\]", text, re.S)
    if match:
        try:
            items = json.loads(match.group(0))
            for it in items if isinstance(items, list) else []:
                if isinstance(it, dict) and isinstance(it.get("tag"), str):
                    tags.append(it["tag"])
            if tags:
                return tags
        except json.JSONDecodeError:
            pass
    return re.findall(r'"tag"\s*:\s*"([^"]+)"', text)


class LLMTagger:
    """InsTag-style tagging through an OpenAI-compatible chat endpoint.

    Each conversation's first user turn is sent (as InsTag does); the open tags come back in
    ``raw_tags`` and the ability tags ("code", "math") are returned.
    """

    name = "llm"

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", workers: int = 4, timeout: float = 60.0):
        # imported here: openai is only needed when an OpenAI-compatible endpoint is called
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=3)
        self.model = model
        self.workers = workers
        self.raw_tags: dict[str, list[str]] = {}

    def _one(self, conv: Conversation) -> list[str]:
        query = next((m["content"] for m in conv.messages if m["role"] == "user"), "")
        try:
            reply = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": INSTAG_PROMPT.format(query=query[:4000])}],
                temperature=0,
                max_tokens=512,
            )
        except Exception as e:  # openai raises its own hierarchy; name the endpoint
            raise SftmixError(f"LLM tagger: request to {self.client.base_url} failed: {e}") from None
        tags = parse_instag_reply(reply.choices[0].message.content or "")
        self.raw_tags[conv.id] = tags
        return abilities_from_open_tags(tags)

    def tag(self, convs: Sequence[Conversation]) -> list[list[str]]:
        """The tags of each conversation, asked of the LLM in parallel."""
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._one, convs))


def apply_tags(convs: list[Conversation], tagger) -> None:
    """Add the tagger's tags to each conversation, in place (keeping existing tags)."""
    for conv, tags in zip(convs, tagger.tag(convs), strict=True):
        conv.tags = sorted(set(conv.tags) | set(tags))


def filter_tags(convs: list[Conversation], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Conversation]:
    """Keep conversations having all ``include`` tags and none of the ``exclude`` tags."""
    inc, exc = set(include), set(exclude)
    return [c for c in convs if inc <= set(c.tags) and not (exc & set(c.tags))]
