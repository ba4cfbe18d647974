"""``sftmix data``: show, tag and compose SFT data.

Each command imports its machinery inside its function, as every command group does: argument
errors and ``--help`` answer without loading pydantic, datasets or torch."""

from __future__ import annotations

import json
import os

from sftmix.cli.common import comma_list, output_dir, positive_int, table


def cmd_data_show(args) -> None:
    """``sftmix data show``: a source's size, stats and first rows."""
    # per command: see the module docstring
    from sftmix.config import SourceConfig, validate
    from sftmix.data.sources import load_pool

    cfg = validate(SourceConfig, {"split": args.split, "limit": args.limit, "tagger": "none" if args.no_tags else "rules",
                                  "skip_invalid": args.skip_invalid,
                                  "clean": {"decontaminate": args.decontaminate,
                                            **({"ngram": args.ngram} if args.ngram else {})}}, "sftmix data show")
    if args.path:
        cfg = cfg.model_copy(update={"path": args.path, "format": args.format, "ability": args.ability or "custom"})
    pool = load_pool(args.source, cfg, args.data_dir)
    s = pool.stats
    table(f"source {pool.name} ({pool.ability})", ["field", "value"], [
        ["origin", json.dumps(pool.origin)],
        ["raw rows", s["raw_rows"]],
        ["invalid skipped", f"{s['invalid_skipped']} {s['invalid_reasons'] or ''}"],
        ["cleaning", json.dumps(s["cleaning"])],
        ["tags", json.dumps(s["tags"])],
        ["conversations", s["final"]],
        *([["truncated file: recovered rows", s["truncated_file_recovered_rows"]]] if "truncated_file_recovered_rows" in s else []),
        *[[f"contaminated by {bench} ({cfg.clean.ngram}-grams)", f"{c['rows']} rows left out, hitting {c['items']} of its items"
           + "".join(f"\n  {e['row']}: {', '.join(e['items'])}" for e in c["examples"])]
          for bench, c in s.get("contamination", {}).items()],
    ])
    for conv in pool.conversations[: args.n]:
        print(json.dumps(conv.to_dict(), ensure_ascii=False, indent=1)[:2000])


def cmd_data_compose(args) -> None:
    """``sftmix data compose``: build the mixtures of a compose file and write them with manifests."""
    # per command: see the module docstring
    from sftmix.config import DataConfig, apply_overrides, read_yaml, validate
    from sftmix.data.compose import compose_all

    data = apply_overrides(read_yaml(args.config), args.overrides, args.config)
    cfg = validate(DataConfig, data, args.config)
    composed = compose_all(cfg, output_dir(args.output, "-o/--output"), progress=not args.quiet)
    rows = []
    for c in composed:
        for p in c.manifest.parts:
            rows.append([c.name, p.source + (f" (replay of {p.replay_of})" if p.replay_of else ""),
                         p.ability, p.pool_size, p.count, p.approx_tokens])
        rows.append([c.name, "= total", "", "", c.manifest.total, c.manifest.total_approx_tokens])
    table(f"composed into {args.output}", ["mixture", "part", "ability", "pool", "rows", "≈tokens"], rows)
    for c in composed:
        print(f"{c.name}: content sha256 {c.manifest.content_sha256}")
        for p in c.manifest.parts:
            held = (p.pool_stats or {}).get("contamination")
            if held:  # a replayed part's stats are its first mixture's (pool_stats is a fresh part's only)
                print(f"{c.name}: {p.source}: left out of its pool as contaminated: "
                      + "; ".join(f"{v['rows']} rows holding {v['items']} {bench} items" for bench, v in held.items()))


def cmd_data_tag(args) -> None:
    """``sftmix data tag``: tag a source's rows code/math with an LLM and save the tags."""
    # per command: see the module docstring
    from sftmix.config import SourceConfig
    from sftmix.data.sources import load_pool
    from sftmix.data.tag import LLMTagger

    tagger = None
    cfg = SourceConfig(limit=args.limit, tagger="rules")
    if args.llm_base_url:
        cfg = cfg.model_copy(update={"tagger": "llm"})
        tagger = LLMTagger(args.llm_base_url, args.llm_model, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    pool = load_pool(args.source, cfg, args.data_dir, tagger=tagger)
    n = len(pool)
    tags = pool.stats["tags"]
    without = sum(1 for c in pool.conversations if not ({"code", "math"} & set(c.tags)))
    table(f"tags of {args.source} ({'LLM ' + args.llm_model if tagger else 'rule'} tagger)", ["tag", "conversations", "share"],
          [[t, k, f"{k / n:.1%}"] for t, k in sorted(tags.items())] +
          [["without code or math", without, f"{without / n:.1%}" if n else "-"]])


def add_commands(sub) -> None:
    """Register ``sftmix data show | compose | tag``."""
    data = sub.add_parser("data", help="inspect, tag and compose SFT data").add_subparsers(dest="data_command", required=True)
    show = data.add_parser("show", help="load a source and show its statistics and first rows")
    show.add_argument("source", help="a built-in source name, or any name with --path")
    show.add_argument("--path", help="a data file for a user source")
    show.add_argument("--format", choices=["alpaca", "sharegpt", "messages", "gsm8k", "gsm8k_rft"])
    show.add_argument("--ability")
    show.add_argument("--split", default="train", choices=["train", "test"])
    show.add_argument("--data-dir")
    show.add_argument("--limit", type=positive_int)
    show.add_argument("-n", type=positive_int, default=2, help="rows to print")
    show.add_argument("--no-tags", action="store_true")
    show.add_argument("--skip-invalid", action="store_true")
    show.add_argument("--decontaminate", type=comma_list, default=[], metavar="gsm8k,humaneval,mtbench",
                      help="leave out rows that share --ngram consecutive words with these benchmarks' items, and count them")
    show.add_argument("--ngram", type=positive_int, help="words in a row that make a match (default: clean.ngram's, 13)")
    show.set_defaults(func=cmd_data_show)

    comp = data.add_parser("compose", help="compose the mixtures of a config into a directory")
    comp.add_argument("config")
    comp.add_argument("-o", "--output", required=True)
    comp.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides, e.g. data_dir=../shared/data")
    comp.add_argument("--quiet", action="store_true")
    comp.set_defaults(func=cmd_data_compose)

    tag = data.add_parser("tag", help="tag a source with the ability tagger and report counts")
    tag.add_argument("source")
    tag.add_argument("--data-dir")
    tag.add_argument("--limit", type=positive_int)
    tag.add_argument("--llm-base-url", help="OpenAI-compatible endpoint for InsTag-style tagging")
    tag.add_argument("--llm-model", default="instag")
    tag.set_defaults(func=cmd_data_tag)

