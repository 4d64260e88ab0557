#!/usr/bin/env python3
"""Render `fastivc bench ... --json FILE` results as the README's Results section.

    scripts/readme-results.py [--readme README.md] RESULT.json...

Replaces what lies between the markers `<!-- results:begin -->` and
`<!-- results:end -->` with one table per results file: the scenario rows
(median and min-max of baseline and fastivc, the ratio and its range), the
command that produced them, and the machine they ran on.  `make results`
runs the benchmarks and this script."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _num(v: float) -> str:
    if v >= 1000:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _cell(side: dict) -> str:
    return f"{_num(side['median'])} ({_num(side['min'])}–{_num(side['max'])})"


def render(doc: dict) -> str:
    m = doc.get("machine", {})
    cmd = doc.get("commands", {}).get("invocation", "fastivc bench")
    where = doc.get("placement", "")
    base = doc.get("baseline", "baseline").split(" (")[0]  # its placement is said above
    lines = [f"`{cmd}`" + (f" ({where})" if where else "") + ":", "",
             f"| scenario | unit | {base} | fastivc | ratio (range) |",
             "|---|---|---|---|---|"]
    for r in doc["rows"]:
        lo, hi = r.get("ratio_range", [r["ratio"], r["ratio"]])
        lines.append(f"| {r['scenario']} | {r['unit']} | {_cell(r['baseline'])} | "
                     f"{_cell(r['fastivc'])} | {r['ratio']:.1f}× ({lo:.1f}–{hi:.1f}) |")
    lines += ["", f"Machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, "
              f"{round(m.get('memory_bytes', 0) / 2**30)} GiB, {m.get('os', '?')}, "
              f"Linux {m.get('kernel', '?')}; {doc.get('date', '')}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", default="README.md", help="the file to update")
    ap.add_argument("results", nargs="+", help="JSON files written by fastivc bench --json")
    a = ap.parse_args(argv)
    readme = Path(a.readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{readme}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    body = []
    for f in a.results:
        try:
            body.append(render(json.loads(Path(f).read_text())))
        except (OSError, ValueError, KeyError) as e:
            print(f"{f}: not a fastivc bench results file ({e})", file=sys.stderr)
            return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n" + "\n".join(body) + END + tail)
    print(f"{readme}: results from {len(body)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
