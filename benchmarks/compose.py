"""Compose benchmark: full ShareGPT (pip package) + GSM8K train + Code Alpaca, cleaned, tagged
and composed at the paper's five fractions. Prints wall time and peak RSS.

Target on the 2-core dev machine: under 30 s and under 3 GB.

    python benchmarks/compose.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from sftmix.config import DataConfig, MixtureConfig, PartConfig
from sftmix.data.compose import compose, manifest_hash
from sftmix.data.sources import load_pool

FRACTIONS = ["1", "1/4", "1/16", "1/64", "1/256"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    if not Path(args.data_dir, "gsm8k", "train.jsonl").exists():
        print(f"skip: no GSM8K under {args.data_dir}")
        return 0
    t0 = time.perf_counter()
    pools = {}
    for name in ("sharegpt", "gsm8k", "code_alpaca"):
        t = time.perf_counter()
        pools[name] = load_pool(name, DataConfig(mixtures=[MixtureConfig(parts=[PartConfig(source=name, fraction=1)])]).sources.get(name), args.data_dir)
        print(f"load+clean+tag {name:12s} {len(pools[name]):6d} rows  {time.perf_counter() - t:5.1f} s  stats={pools[name].stats['cleaning']}")
    t1 = time.perf_counter()
    for f in FRACTIONS:
        m = MixtureConfig(name=f"mixed_{f}", parts=[PartConfig(source=n, fraction=f) for n in pools])
        c = compose(m, pools, seed=0)
        print(f"fraction {f:>5s}: {c.manifest['total']:6d} rows, manifest {manifest_hash(c.manifest)[:12]}")
    wall = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"compose of 5 fractions: {time.perf_counter() - t1:.1f} s")
    print(f"TOTAL wall {wall:.1f} s (target < 30 s: ratio {wall / 30:.2f} of budget); peak RSS {rss_gb:.2f} GB (target < 3 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
