"""Sandbox benchmark: the 164 HumanEval canonical solutions through sftmix's sandbox.

Target on the 2-core dev machine: under 20 s, 164/164 passing, with the strongest isolation
available (bwrap here) and the proxy verdict (the dataset's check runs in the evaluator). Also
prints empty completions (must be 0/164) as a check that execution really happens, and how
many problems needed the in-process fallback harness (must be 0).

    python benchmarks/sandbox.py [--workers 4]
"""

import argparse
import time

from sftmix.eval import humaneval
from sftmix.eval.sandbox import canary, isolation

ap = argparse.ArgumentParser()
ap.add_argument("--workers", type=int, default=4)
args = ap.parse_args()
problems = humaneval.load_problems()
t = time.perf_counter()
kind = canary()
canary_s = time.perf_counter() - t
t = time.perf_counter()
m, _ = humaneval.score(problems, [[p["canonical_solution"]] for p in problems], workers=args.workers, progress=False)
wall = time.perf_counter() - t  # includes the one-off proxy check of each problem's canonical solution
t = time.perf_counter()
m2, _ = humaneval.score(problems, [[p["canonical_solution"] + "\n"] for p in problems], workers=args.workers, progress=False)
warm = time.perf_counter() - t
e, _ = humaneval.score(problems, [[""] for _ in problems], workers=args.workers, progress=False)
print(f"isolation: {isolation()} (canary {canary_s:.2f} s)")
print(f"canonical: pass@1 {m['pass@1']:.1f}% in {wall:.1f} s first time ({wall / 20:.2f} of the 20 s budget), "
      f"{warm:.1f} s once each problem's proxy check is cached; pass@1 {m2['pass@1']:.1f}%")
print(f"problems scored with the in-process fallback: {m['proxy_fallback_problems']} {m['proxy_fallback_task_ids']}")
print(f"empty: pass@1 {e['pass@1']:.1f}%")
