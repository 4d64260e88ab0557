#!/usr/bin/env python3
"""Summarises `make chaos` (build/chaos.json, one line per place): rounds,
hangs, worst and median detection time, per state."""

import json
import statistics
import sys
from collections import Counter


def main(path: str) -> int:
    runs = [json.loads(ln) for ln in open(path) if ln.strip()]
    rounds = [dict(r, where=run["where"]) for run in runs for r in run["rounds"]]
    if not rounds:
        print(f"{path}: no rounds", file=sys.stderr)
        return 1
    delays = [r["delay"] for r in rounds]
    hangs = sum(d == float("inf") for d in delays)
    places = ", ".join(f"{run['where']} seed {run['seed']}" for run in runs)
    print(f"{len(rounds)} kills ({places}):"
          f" {hangs} hangs, worst {max(delays) * 1000:.1f} ms,"
          f" median {statistics.median(delays) * 1000:.1f} ms")
    by = Counter((r["op"], r["wait"]) for r in rounds)
    for (op, wait), n in sorted(by.items()):
        ds = [r["delay"] for r in rounds if (r["op"], r["wait"]) == (op, wait)]
        print(f"  {op:7} victim waits {wait:6} {n:4} kills, worst {max(ds) * 1000:7.1f} ms")
    fallbacks = [r for r in rounds if r.get("fallback")]
    print(f"  left on TCP (not accelerated, killed as TCP): {len(fallbacks)}")
    errs = Counter(r["err"] for r in rounds)
    print("  survivor got: " + ", ".join(f"{e} {n}" for e, n in errs.most_common()))
    return 1 if hangs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
