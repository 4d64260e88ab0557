"""`fastivc demo`: its options and what it prints.  Measuring is in
measure.py, the table and chart in report.py."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .._paths import helper_path, lib_path

DESCRIPTION = """\
Show what fastivc does for two containers on one host. As root, client and
server run in two network namespaces joined by a veth pair (FIVC_BENCH_NS and
FIVC_BENCH_SUBNET set their prefix and subnet, default fivc-bench and
10.202.0.0/24); otherwise on loopback, and the output says so. The same
unmodified programs run plain and under fastivc run: fastivc-tcpbench (64 B
round trip p50 latency, streaming with 64 KiB writes), redis-server with
redis-benchmark (GET and SET requests/s) and nginx with wrk (requests/s).
It prints a table with the speedup per row, writes a PNG chart of the same rows
and, with --json, the numbers. A scenario that cannot run (e.g. redis-server
not installed) is shown as missing with the reason; the others still run.
Namespaces, servers and fabric files are removed at the end, also on Ctrl-C
or SIGTERM."""

EPILOG = """\
Exit codes: 0 at least one row was measured and the chart written; 1 nothing
could be measured or a file could not be written; 2 bad usage; 130 interrupted."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    dp = sub.add_parser("demo", help="plain TCP vs fastivc between two \"containers\": "
                        "latency, throughput, Redis and nginx, as a table and a PNG chart",
                        description=DESCRIPTION, epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    dp.add_argument("--quick", action="store_true",
                    help="one short run per scenario (about 10 s in all) instead of 3 "
                    "repeats (about a minute); numbers are noisier")
    dp.add_argument("--png", metavar="PATH", default="fastivc-demo.png",
                    help="where to write the chart (default ./fastivc-demo.png)")
    dp.add_argument("--json", metavar="PATH",
                    help="also write the numbers, the chart's series and each benchmark's "
                    "full results as JSON")
    dp.add_argument("--loopback", action="store_true",
                    help="client and server on loopback even as root")
    dp.add_argument("--quiet", action="store_true", help="no progress output")
    dp.set_defaults(func=lambda args: command(args, dp))


def _check_writable(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"{option} {path}: is a directory")
    if not os.path.isdir(d):
        parser.error(f"{option} {path}: directory {d} does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: directory {d} is not writable")


class _Progress:
    """A progress bar on stderr when it is a terminal; one line per bench otherwise."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.task, self.last = quiet, None, None, ""
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
            self.bar = Progress(TextColumn("{task.description:<36}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task("starting", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar:
            self.bar.update(self.task, completed=done, total=total, description=what)
        elif not self.quiet:
            bench = what.split(" ")[0]
            if bench != self.last and what != "done":
                print(f"fastivc demo: [{done}/{total}] {bench} ...", file=sys.stderr,
                      flush=True)
            self.last = bench


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console

    from . import measure, report

    _check_writable(parser, "--png", args.png)
    if args.json:
        _check_writable(parser, "--json", args.json)
    lib_path()  # FileNotFoundError with the path (exit 1) when the package is not built
    helper_path("fastivc-tcpbench")
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(width=110, highlight=False)
    settings = measure.QUICK if args.quick else measure.DEFAULT
    try:
        with _Progress(args.quiet) as progress:
            doc = measure.measure(settings, args.loopback, progress)
        return _report(args, doc, out, report)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; the benches have cleaned up
        print("\nfastivc demo: interrupted; servers, fabrics and namespaces removed",
              file=sys.stderr)
        return 130


def _report(args: argparse.Namespace, doc: dict, out, report) -> int:
    """Print the table, write the chart and --json; the exit code."""
    report.print_report(doc, out)
    measured = [r for r in doc["rows"] if r["status"] == "measured"]
    rc = 0 if measured else 1
    if not measured:
        print("fastivc demo: no scenario could be measured (see the reasons above)",
              file=sys.stderr)
    try:
        doc["chart"] = report.write_chart(doc, args.png)
        out.print(f"chart written to {os.path.abspath(args.png)}")
    except (OSError, ValueError) as e:
        print(f"fastivc demo: writing the chart {args.png} failed: {e}", file=sys.stderr)
        rc = 1
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=2)
            out.print(f"numbers written to {os.path.abspath(args.json)}")
        except OSError as e:
            print(f"fastivc demo: writing {args.json} failed: {e}", file=sys.stderr)
            rc = 1
    return rc
