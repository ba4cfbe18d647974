"""Held-out rows of a run, chosen once (``choose``) and kept in the run folder
(``heldout.json``, ``HeldoutRows``): training excludes them from its pools and measures them for
the forgetting curves; the final evaluation scores them. Within a run nothing chooses them a
second time (a checkpoint evaluated on its own, ``sftmix eval``, has its rows chosen by the same rule).

Held-out rows of a source: its ``test`` split when one exists (GSM8K, generated sources);
otherwise the *last* ``n`` rows of the pool's sampling order under ``heldout.seed`` (0 by
default, whatever the run's seed, so that every run and every replicate of a study is measured on
the same rows and runs can be compared pairwise). Training excludes those rows from its pools
(``sftmix.train.strategies``), and the overlap with the run's manifests is still reported
(``overlap_with_training``) rather than assumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sftmix.config import SourceConfig
from sftmix.data.compose import sampling_order
from sftmix.data.records import Conversation
from sftmix.data.sources import BUILTINS, load_pool
from sftmix.errors import SftmixError
from sftmix.io import read_json, write_json

HAS_TEST_SPLIT = ("gsm8k", "generated_math", "generated_code")
TEST_SPLIT, POOL_TAIL = "test split", "tail of the train pool's sampling order"
VERSION = 1


def has_test_split(name: str, cfg: SourceConfig | None) -> bool:
    """Whether a source's held-out rows come from its own test split (else from its pool's tail)."""
    cfg = cfg or SourceConfig()
    return (cfg.builtin or (name if name in BUILTINS else None)) in HAS_TEST_SPLIT


def heldout(name: str, n: int, seed: int, cfg: SourceConfig | None, data_dir: str | None, pool=None) -> tuple[list[Conversation], str]:
    """``n`` held-out conversations of a source and how they were chosen (``seed``: the held-out
    seed, not the run's). ``pool``: the source's already loaded train pool, if any."""
    cfg = cfg or SourceConfig()
    if has_test_split(name, cfg):
        # the test split is what the benchmark asks: decontaminating it against itself would leave nothing
        test_cfg = cfg.model_copy(update={"split": "test", "limit": None, "clean": cfg.clean.model_copy(update={"decontaminate": []})})
        test = load_pool(name, test_cfg, data_dir)
        return sampling_order(test.conversations, seed)[:n], TEST_SPLIT
    pool = pool or load_pool(name, cfg, data_dir)
    return sampling_order(pool.conversations, seed)[-n:], POOL_TAIL


@dataclass(frozen=True)
class HeldoutRows:
    """A run's held-out rows per source, how each set was chosen, the sources that could not be
    loaded (with why), and the settings that chose them (a file chosen under other settings is
    not reused)."""

    settings: dict
    sets: dict[str, list[Conversation]] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def rows(self, name: str) -> list[Conversation]:
        """The held-out rows of ``name``; the error that kept them out, raised, if there are none."""
        if name in self.errors:
            raise SftmixError(self.errors[name])
        return self.sets[name]

    def excluded(self, name: str) -> set[str]:
        """Ids training must leave out of ``name``'s pool: its held-out rows when they come from that pool."""
        return {c.id for c in self.sets.get(name, [])} if self.how.get(name) == POOL_TAIL else set()

    def to_json(self) -> dict:
        """The document ``heldout.json`` holds (``from_json`` reads it back)."""
        return {"version": VERSION, "settings": self.settings, "how": self.how, "errors": self.errors,
                "sets": {n: [c.to_dict() for c in v] for n, v in self.sets.items()}}

    @classmethod
    def from_json(cls, doc: dict, where: str) -> HeldoutRows:
        """Read back ``to_json``'s document; anything else is an error naming ``where``."""
        try:
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
            sets = {str(n): [Conversation.from_dict(r) for r in rows] for n, rows in doc["sets"].items()}
            how, errors, settings = dict(doc["how"]), dict(doc["errors"]), dict(doc["settings"])
            if set(how) != set(sets) or not set(how.values()) <= {TEST_SPLIT, POOL_TAIL}:
                raise ValueError("'how' must name each set's rule (test split or pool tail)")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise SftmixError(f"{where}: not a held-out rows file ({type(e).__name__}: {e}); delete it to choose them again") from None
        return cls(settings, sets, how, errors)


def settings_of(names: list[str], n: int, seed: int, sources: dict[str, SourceConfig], data_dir: str | None) -> dict:
    """What decides a run's held-out rows (``HeldoutRows.settings``)."""
    return {"sources": list(names), "samples": n, "seed": seed, "data_dir": data_dir or os.environ.get("SFTMIX_DATA_DIR"),
            "configs": {s: sources[s].model_dump(mode="json") for s in names if s in sources}}


def choose(names: list[str], n: int, seed: int, sources: dict[str, SourceConfig], data_dir: str | None,
           pool: Callable[[str], object] | None = None) -> HeldoutRows:
    """Choose the held-out rows of every source in ``names``. ``pool(name)``: the source's train
    pool when already loaded (its tail is the held-out set). A source that cannot be loaded is
    recorded in ``errors``: the forgetting curves go on without it, and evaluating it raises."""
    held = HeldoutRows(settings_of(names, n, seed, sources, data_dir))
    for name in names:
        try:
            loaded = None if has_test_split(name, sources.get(name)) or pool is None else pool(name)
            held.sets[name], held.how[name] = heldout(name, n, seed, sources.get(name), data_dir, pool=loaded)
        except SftmixError as e:
            held.errors[name] = str(e)
    return held


def read_or_choose(path: Path, names: list[str], n: int, seed: int, sources: dict[str, SourceConfig], data_dir: str | None,
                   pool: Callable[[str], object] | None = None) -> HeldoutRows:
    """The rows kept at ``path`` when they were chosen under these settings; else chosen now and
    written there (atomically), so that every later step of the run reads the same rows."""
    if path.exists():
        try:
            doc = read_json(path)
        except (OSError, ValueError) as e:
            raise SftmixError(f"{path}: not a held-out rows file ({type(e).__name__}: {e}); delete it to choose them again") from None
        kept = HeldoutRows.from_json(doc, str(path))
        if kept.settings == settings_of(names, n, seed, sources, data_dir):
            if not kept.errors:
                return kept
            # a source that could not be loaded is tried again (its data may be there now): training
            # excluded nothing of it, so rows chosen now are as unseen as the others
            again = choose(list(kept.errors), n, seed, sources, data_dir, pool)
            sets, how = {**kept.sets, **again.sets}, {**kept.how, **again.how}
            held = HeldoutRows(kept.settings, {k: sets[k] for k in names if k in sets}, {k: how[k] for k in names if k in how},
                               again.errors)
            write_json(path, held.to_json())
            return held
    held = choose(names, n, seed, sources, data_dir, pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, held.to_json())
    return held
