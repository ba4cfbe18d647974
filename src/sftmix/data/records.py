"""The one record type every loader produces: ``Conversation``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sftmix.io import stable_hash

ROLES = ("system", "user", "assistant")


def content_id(messages: list[dict]) -> str:
    """Stable id of a conversation: a hash of its roles and texts (nothing else).

    Two rows with the same turns get the same id wherever they come from, which is what exact
    dedup and nested sampling key on.
    """
    return stable_hash([[m["role"], m["content"]] for m in messages], n=20)


@dataclass
class Conversation:
    """One SFT example. ``messages`` are dicts with ``role`` (system|user|assistant) and ``content``."""

    messages: list[dict]
    source: str
    ability: str
    tags: list[str] = field(default_factory=list)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = content_id(self.messages)

    def to_dict(self) -> dict:
        """The row as written to JSONL (id, source, ability, tags, messages)."""
        return {
            "id": self.id,
            "source": self.source,
            "ability": self.ability,
            "tags": list(self.tags),
            "messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
        }

    @classmethod
    def from_dict(cls, row: dict) -> Conversation:
        """A conversation from a row ``to_dict`` wrote."""
        return cls(
            messages=row["messages"],
            source=row["source"],
            ability=row["ability"],
            tags=list(row.get("tags", [])),
            id=row.get("id", ""),
        )

    def text(self, roles: tuple[str, ...] = ROLES) -> str:
        """The contents of the messages of these roles, one per line."""
        return "\n".join(m["content"] for m in self.messages if m["role"] in roles)

    @property
    def n_chars(self) -> int:
        """Characters over all messages."""
        return sum(len(m["content"]) for m in self.messages)
