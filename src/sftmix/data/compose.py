"""Composing mixtures: amounts, seeded nested sampling, replay, and the manifest.

Amounts (one per part):
- ``fraction: f`` (0 < f <= 1) takes ``n = round_half_up(f * N)`` rows of a pool of ``N``.
- ``count: n`` takes ``n`` rows; more than ``N`` is an error unless ``allow_repeat`` (then the
  pool is cycled in its sampling order).
- ``k`` is the paper's normalised ratio (§3.4): ``specialised_used / general_used =
  k * specialised_all / general_all``. With ``relative_to: A`` the part takes
  ``n = round_half_up(k * (n_A / N_A) * N)``, where ``n_A / N_A`` is the fraction of pool A that
  part A uses; without ``relative_to`` the anchor is the whole pool, so ``n = round_half_up(k * N)``.
  In a ``replay`` part, ``k`` (or ``fraction``) applies to each part of the earlier mixture:
  ``n = round_half_up(k * n_part)`` (DMT stage 2 draws k of stage 1's parts).
- Rounding rule: ``round_half_up(x) = floor(x + 1/2)``, except that a positive amount never
  rounds to zero rows (it gives at least 1); ``k = 0`` gives 0 rows. On the paper's full sizes
  (GSM8K RFT 110,142; Code Alpaca 20,022; ShareGPT 86,060), 1/256 gives 430 / 78 / 336.

Sampling is nested: a pool's rows are ordered once by ``sha256(f"{seed}:{id}")`` and a part takes
a prefix of that order. So at one seed the 1/256 subset is inside 1/64, inside 1/16, and so on,
and the subset depends only on the seed and the rows' contents, never on file order or machine.
A mixture is the union of its parts, shuffled with a generator seeded by the seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftmix import __version__, layout
from sftmix.config import MixtureConfig, PartConfig
from sftmix.data.clean import approx_tokens
from sftmix.data.records import Conversation
from sftmix.data.sources import BUILTINS, Pool, load_pool, resolve_config
from sftmix.errors import SftmixError, unknown
from sftmix.io import atomic_write, read_jsonl, read_record, write_json
from sftmix.progress import track


def round_half_up(x: float) -> int:
    """The rounding rule above: floor(x + 1/2), at least 1 for positive x, 0 for x == 0."""
    if x <= 0:
        return 0
    return max(1, math.floor(x + 0.5))


def sampling_order(convs: list[Conversation], seed: int) -> list[Conversation]:
    """The pool in its seeded order; every amount takes a prefix of this list."""
    return sorted(convs, key=lambda c: hashlib.sha256(f"{seed}:{c.id}".encode()).hexdigest())


def take(order: list[Conversation], n: int, allow_repeat: bool, where: str) -> list[Conversation]:
    """The first ``n`` rows of a sampling order; with ``allow_repeat``, the order repeated to reach ``n``."""
    if n <= len(order):
        return order[:n]
    if not allow_repeat:
        raise SftmixError(f"{where}: asks for {n} rows but the pool has only {len(order)} (set allow_repeat: true to repeat rows)")
    if not order:
        raise SftmixError(f"{where}: the pool is empty")
    reps, rest = divmod(n, len(order))
    return order * reps + order[:rest]


class _Value(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ManifestPart(_Value):
    """One part of a composed mixture: which source (or earlier mixture, ``replay_of``) it drew
    from, how much was asked (``amount``) and taken (``count`` rows, their ``ids`` in sampling
    order), and the part's size in characters and approximate tokens."""

    source: str
    ability: str
    origin: dict | str | None = None  # where the source's rows came from (``Pool.origin``)
    pool_stats: dict | None = None  # the source pool's cleaning counts (a fresh part only)
    replay_of: str | None = None  # the earlier mixture a replayed part was drawn from
    amount: dict = {}
    pool_size: int = 0
    count: int
    ids: list[str]
    chars: int = 0
    approx_tokens: int = 0
    mean_chars: float = 0.0
    max_approx_tokens: int = 0


class Manifest(_Value):
    """A composed mixture's ``manifest.json``: what it was composed from and of, with the sha256
    of its rows in training order."""

    name: str
    seed: int = 0
    sftmix_version: str = ""
    config: dict = {}  # the mixture's config
    parts: list[ManifestPart]
    total: int = 0
    abilities: dict[str, int] = {}
    content_sha256: str = ""
    total_chars: int = 0
    total_approx_tokens: int = 0
    data_file: str | None = None  # set when written (data.jsonl or data.arrow)

    def dump(self) -> dict:
        """The manifest as JSON writes it (fields without a value left out)."""
        return self.model_dump(mode="json", exclude_none=True)


@dataclass
class Composed:
    """A composed mixture: its conversations (in training order) and its manifest."""

    name: str
    conversations: list[Conversation]
    manifest: Manifest


def _part_stats(convs: list[Conversation]) -> dict[str, int | float]:
    chars = [c.n_chars for c in convs]
    toks = [sum(approx_tokens(m["content"]) for m in c.messages) for c in convs]
    return {
        "chars": sum(chars),
        "approx_tokens": sum(toks),
        "mean_chars": round(sum(chars) / len(chars), 1) if chars else 0.0,
        "max_approx_tokens": max(toks) if toks else 0,
    }


def _jsonl_lines(convs: list[Conversation]) -> list[bytes]:
    return [(json.dumps(c.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8") for c in convs]


def _amount_doc(part: PartConfig) -> dict:
    return {k: v for k, v in part.model_dump().items() if v is not None and k not in ("source", "replay") and v is not False}


def compose(
    mixture: MixtureConfig,
    pools: dict[str, Pool],
    seed: int,
    earlier: dict[str, Composed] | None = None,
) -> Composed:
    """Compose one mixture from loaded pools (and earlier mixtures for replay parts)."""
    earlier = earlier or {}
    where = f"mixture {mixture.name!r}"
    orders = {name: sampling_order(pool.conversations, seed) for name, pool in pools.items()}
    counts: dict[str, int] = {}
    parts_out: list[ManifestPart] = []
    rows: list[Conversation] = []

    # A k-part with relative_to uses the count of an anchor part listed before it.
    def part_count(i: int, part: PartConfig) -> int:
        pool_n = len(pools[part.source].conversations)
        if part.fraction is not None:
            return round_half_up(part.fraction * pool_n)
        if part.count is not None:
            return part.count
        anchor_fraction = 1.0
        if part.relative_to is not None:
            if part.relative_to not in counts:
                raise SftmixError(f"{where}: parts[{i}].relative_to = {part.relative_to!r} is not a source part listed before it")
            anchor_n = len(pools[part.relative_to].conversations)
            anchor_fraction = counts[part.relative_to] / anchor_n if anchor_n else 0.0
        return round_half_up(part.k * anchor_fraction * pool_n)

    for i, part in enumerate(mixture.parts):
        pwhere = f"{where} parts[{i}]"
        if part.replay is not None:
            if part.replay not in earlier:
                raise SftmixError(f"{pwhere}: replay = {part.replay!r} is not an earlier mixture (have: {', '.join(earlier) or 'none'})")
            source_mix = earlier[part.replay]
            by_id = {c.id: c for c in source_mix.conversations}
            factor = part.k if part.k is not None else part.fraction
            for sub in source_mix.manifest.parts:
                want = part.count if part.count is not None else round_half_up(factor * sub.count)
                ids = list(dict.fromkeys(sub.ids))  # unique, in sampling order
                chosen = [by_id[x] for x in take(ids, want, part.allow_repeat, pwhere)]
                rows += chosen
                parts_out.append(ManifestPart(source=sub.source, ability=sub.ability, origin=sub.origin, replay_of=part.replay,
                                              amount=_amount_doc(part), pool_size=len(ids), count=len(chosen),
                                              ids=[c.id for c in chosen], **_part_stats(chosen)))
            continue
        if part.source not in pools:
            raise SftmixError(f"{pwhere}: source {part.source!r} is not loaded")
        n = part_count(i, part)
        chosen = take(orders[part.source], n, part.allow_repeat, f"{pwhere} ({part.source})")
        counts[part.source] = len(chosen)
        rows += chosen
        pool = pools[part.source]
        parts_out.append(ManifestPart(source=pool.name, ability=pool.ability, origin=pool.origin, pool_stats=pool.stats,
                                      amount=_amount_doc(part), pool_size=len(pool), count=len(chosen),
                                      ids=[c.id for c in chosen], **_part_stats(chosen)))

    if not rows:
        raise SftmixError(f"{where}: the mixture is empty (every part has 0 rows)")
    if mixture.shuffle:
        rows = list(rows)
        # Seeded by the run seed alone: equal mixtures get equal orders (multitask on one source == individual).
        random.Random(f"sftmix-shuffle-{seed}").shuffle(rows)
    content = hashlib.sha256(b"".join(_jsonl_lines(rows))).hexdigest()
    stats = _part_stats(rows)
    manifest = Manifest(name=mixture.name, seed=seed, sftmix_version=__version__, config=mixture.model_dump(mode="json"),
                        parts=parts_out, total=len(rows), abilities=_count_by(rows, "ability"), content_sha256=content,
                        total_chars=stats["chars"], total_approx_tokens=stats["approx_tokens"])
    return Composed(mixture.name, rows, manifest)


def _count_by(rows: list[Conversation], attr: str) -> dict:
    out: dict[str, int] = {}
    for c in rows:
        out[getattr(c, attr)] = out.get(getattr(c, attr), 0) + 1
    return dict(sorted(out.items()))


def manifest_hash(manifest: Manifest) -> str:
    """The sha256 of a manifest's canonical JSON."""
    return hashlib.sha256(json.dumps(manifest.dump(), sort_keys=True).encode()).hexdigest()


def write_composed(composed: Composed, out_dir: str | Path, fmt: str = "jsonl") -> Path:
    """Write ``data.jsonl`` (or ``data.arrow``) then ``manifest.json``, each atomically.

    The manifest is written last: a directory without a manifest is an unfinished compose.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "arrow":
        # imported here: pyarrow is only needed for Arrow/Parquet files
        import pyarrow as pa

        table = pa.Table.from_pylist([c.to_dict() for c in composed.conversations])
        with atomic_write(out / "data.arrow", "wb") as f:
            with pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
    else:
        with atomic_write(out / "data.jsonl", "wb") as f:
            f.writelines(_jsonl_lines(composed.conversations))
    # Recorded in the in-memory manifest too, so that a stage composed now and one read back
    # from disk after a restart carry the same manifest.
    composed.manifest.data_file = f"data.{fmt}"
    write_json(layout.manifest(out), composed.manifest.dump())
    return out


def read_composed(out_dir: str | Path) -> Composed:
    """Read a composed mixture written by ``write_composed``."""
    out = Path(out_dir)
    mpath = layout.manifest(out)
    if not mpath.exists():
        raise SftmixError(f"{out}: no manifest.json (not a composed mixture, or its compose was interrupted)")
    manifest = read_record(mpath, Manifest)
    data = out / (manifest.data_file or "data.jsonl")
    if data.suffix == ".arrow":
        # imported here: pyarrow is only needed for Arrow/Parquet files
        import pyarrow as pa

        with pa.memory_map(str(data)) as src:
            rows = pa.ipc.open_file(src).read_all().to_pylist()
    else:
        rows = read_jsonl(data)
    convs = [Conversation.from_dict(r) for r in rows]
    return Composed(manifest.name, convs, manifest)


def needed_sources(mixtures: list[MixtureConfig]) -> list[str]:
    """Source names the mixtures draw from directly, in first-use order."""
    return list(dict.fromkeys(p.source for m in mixtures for p in m.parts if p.source is not None))


def check_mixtures(mixtures: list[MixtureConfig], sources: dict, where: str = "mixtures") -> None:
    """Check a sequence of mixtures before any work: known sources, unique names, and replay
    parts that name an earlier mixture with an amount it can supply."""
    valid = set(sources) | set(BUILTINS)
    for n in needed_sources(mixtures):
        if n not in valid:
            raise unknown("source", n, valid)
        resolve_config(n, sources.get(n))
    seen: list[str] = []
    for mi, m in enumerate(mixtures):
        if m.name in seen:
            raise SftmixError(f"{where}[{mi}]: mixture name {m.name!r} is used twice; names must be unique")
        for pi, part in enumerate(m.parts):
            pwhere = f"{where}[{mi}] ({m.name!r}) parts[{pi}]"
            if part.replay is None:
                continue
            if part.replay not in seen:
                raise SftmixError(f"{pwhere}: replay = {part.replay!r} is not an earlier mixture (earlier: {', '.join(seen) or 'none'})")
            factor = part.k if part.k is not None else part.fraction
            if factor is not None and factor > 1 and not part.allow_repeat:
                raise SftmixError(f"{pwhere}: a replay draws k = {factor:g} of each part of {part.replay!r}, but at most "
                                  "all of it (k <= 1) exists; lower k or set allow_repeat: true")
        seen.append(m.name)


def compose_all(cfg, out_dir: str | Path | None = None, progress: bool = True) -> list[Composed]:
    """Load every needed pool once, compose the mixtures in order, write each to ``out_dir/NAME``."""
    check_mixtures(cfg.mixtures, cfg.sources)
    names = needed_sources(cfg.mixtures)
    pools = {}
    for n in track(names, "loading sources", enabled=progress):
        pools[n] = load_pool(n, cfg.sources.get(n), cfg.data_dir)
    done: dict[str, Composed] = {}
    out = []
    for m in cfg.mixtures:
        c = compose(m, pools, cfg.seed, done)
        done[m.name] = c
        out.append(c)
        if out_dir is not None:
            write_composed(c, Path(out_dir) / m.name, cfg.output_format)
    return out
