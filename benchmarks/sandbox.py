"""Sandbox benchmark: the 164 HumanEval canonical solutions through sftmix's sandbox.

Target on the 2-core dev machine: under 20 s, 164/164 passing. Also prints empty completions
(must be 0/164) as a check that execution really happens.

    python benchmarks/sandbox.py [--workers 4]
"""

import argparse
import time

from sftmix.eval import humaneval
from sftmix.eval.sandbox import namespaces_available

ap = argparse.ArgumentParser()
ap.add_argument("--workers", type=int, default=4)
args = ap.parse_args()
problems = humaneval.load_problems()
t = time.perf_counter()
m, _ = humaneval.score(problems, [[p["canonical_solution"]] for p in problems], workers=args.workers, progress=False)
wall = time.perf_counter() - t
e, _ = humaneval.score(problems, [[""] for _ in problems], workers=args.workers, progress=False)
print(f"isolated (namespaces): {namespaces_available()}")
print(f"canonical: pass@1 {m['pass@1']:.1f}% in {wall:.1f} s ({wall / 20:.2f} of the 20 s budget); empty: pass@1 {e['pass@1']:.1f}%")
