"""A report as data: sections of blocks, built once (``sftmix.analysis.report``) and rendered to
HTML (``to_html``) and to Markdown (``to_markdown``), so the two can never say different things.

Blocks: ``Text`` (a paragraph: plain, a highlighted line at the top, a note, or a labelled method
paragraph), ``Bullets``, ``Table`` (with best / second marks), ``Figures`` (PNG bytes by file
name) and ``Details`` (preformatted text behind a summary line).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;display:block;overflow-x:auto} "
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
         " td:first-child{text-align:left} .best{font-weight:bold} .second{text-decoration:underline} figure{display:inline-block;margin:8px}"
         " .note{background:#fff8e0;padding:8px;border-left:4px solid #e0b000} .top{background:#eef4ff;padding:8px;border-left:4px solid #4060c0}"
         " .findings li{margin:6px 0} .as,.holds{color:#0a6b0a} .the{color:#a00000} .not{color:#555} .method{font-size:90%;color:#333}")


@dataclass(frozen=True)
class Text:
    """A paragraph. ``kind``: ``""`` (plain), ``"top"`` (a headline line), ``"note"`` (a warning
    or remark) or ``"method"`` (led by ``label`` in bold)."""

    text: str
    kind: str = ""
    label: str = ""


@dataclass(frozen=True)
class Bullets:
    """A list; ``classes``: an HTML class per item (the verdict colours of findings)."""

    items: list[str]
    classes: list[str] | None = None


@dataclass(frozen=True)
class Table:
    """Cells as text; ``marks``: (row, column) -> ``"best"`` or ``"second"``."""

    header: list[str]
    rows: list[list[str]]
    marks: dict[tuple[int, int], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Figures:
    """PNG images by file name (embedded in HTML; linked, beside the report, in Markdown)."""

    images: dict[str, bytes]


@dataclass(frozen=True)
class Details:
    """Preformatted text behind a one-line summary (configs, provenance, a failed run's error)."""

    summary: str
    text: str


Block = Text | Bullets | Table | Figures | Details


@dataclass(frozen=True)
class Section:
    """A titled part of a report (the opening part has no title); empty blocks are left out."""

    title: str | None
    blocks: list[Block]


# ---------------------------------------------------------------- HTML

def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Text):
        label = f"<b>{e(b.label)}</b> " if b.label else ""
        return f"<p class='{b.kind}'>{label}{e(b.text)}</p>" if b.kind else f"<p>{label}{e(b.text)}</p>"
    if isinstance(b, Bullets):
        classes = b.classes or [""] * len(b.items)
        attr = " class='findings'" if b.classes else ""
        return f"<ul{attr}>" + "".join(f"<li class='{c}'>{e(x)}</li>" if c else f"<li>{e(x)}</li>"
                                       for x, c in zip(b.items, classes)) + "</ul>"
    if isinstance(b, Table):
        out = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr>"
        for i, r in enumerate(b.rows):
            out += "<tr>" + "".join(f"<td class='{b.marks.get((i, j), '')}'>{e(c)}</td>" for j, c in enumerate(r)) + "</tr>"
        return out + "</table>"
    if isinstance(b, Figures):
        return "".join(f"<figure><img alt='{e(n)}' src='data:image/png;base64,{base64.b64encode(d).decode()}'>"
                       f"<figcaption>{e(n)}</figcaption></figure>" for n, d in b.images.items())
    if isinstance(b, Details):
        return f"<details><summary>{e(b.summary)}</summary><pre>{e(b.text)}</pre></details>"
    raise TypeError(f"not a report block: {type(b).__name__}")


def _render(sections: list[Section], heading, block) -> str:
    """Every section in order: its heading (when titled), then its blocks."""
    return "".join((heading(s.title) if s.title else "") + "".join(block(b) for b in s.blocks) for s in sections)


def to_html(title: str, sections: list[Section]) -> str:
    """The report as one self-contained HTML page (figures embedded)."""
    body = f"<h1>{html.escape(title)}</h1>" + _render(sections, lambda t: f"<h2>{html.escape(t)}</h2>", _html_block)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"</head><body>{body}</body></html>")


# ---------------------------------------------------------------- Markdown

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    """A Markdown table; best marked in bold, second underlined."""
    lines = ["| " + " | ".join(_cell(h) for h in t.header) + " |", "|" + "---|" * len(t.header)]
    for i, r in enumerate(t.rows):
        cells = []
        for j, c in enumerate(r):
            m = t.marks.get((i, j))
            cells.append(f"**{_cell(c)}**" if m == "best" else f"<u>{_cell(c)}</u>" if m == "second" else _cell(c))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _md_block(b: Block) -> str:
    if isinstance(b, Text):
        if b.kind in ("top", "note"):
            return f"> {b.text}\n\n"
        return (f"**{b.label}** " if b.label else "") + b.text + "\n\n"
    if isinstance(b, Bullets):
        return "".join(f"- {x}\n" for x in b.items) + "\n"
    if isinstance(b, Table):
        return markdown_table(b) + "\n"
    if isinstance(b, Figures):
        return "".join(f"![{n}]({n})\n" for n in b.images) + "\n"
    if isinstance(b, Details):
        return f"<details><summary>{html.escape(b.summary)}</summary>\n\n```\n{b.text}\n```\n\n</details>\n\n"
    raise TypeError(f"not a report block: {type(b).__name__}")


def to_markdown(title: str, sections: list[Section]) -> str:
    """The report in Markdown (figures linked: they are written beside it)."""
    return f"# {title}\n\n" + _render(sections, lambda t: f"## {t}\n\n", _md_block)
