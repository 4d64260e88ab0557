"""`fastivc bench ring`: the bare channel against TCP loopback.

Two processes per measurement (the C helper ``fastivc-ringbench`` forks a
server); each repeat runs every case for both transports back to back, so the
baseline and the channel see the same machine state.  Python only starts the
helper and does the statistics.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from .._paths import helper_path
from .stats import DEFAULT_SPIN_US, compare, machine_info, now, size_label, versions

STREAM_SIZES = (64, 1024, 16384, 65536, 1048576)
SPIN_FOREVER_US = 10_000_000  # "spinning": never sleeps within a measurement
HELPER = "fastivc-ringbench"


@dataclass(frozen=True)
class Case:
    key: str
    transport: str  # ring | tcp
    mode: str  # rr | stream
    size: int
    spin_us: int | None = None

    def argv(self, seconds: float, ring_kib: int | None) -> list[str]:
        a = [str(helper_path(HELPER)), "--transport", self.transport, "--mode", self.mode,
             "--size", str(self.size), "--seconds", str(seconds)]
        if self.spin_us is not None:
            a += ["--spin-us", str(self.spin_us)]
        if ring_kib and self.transport == "ring":
            a += ["--ring-kib", str(ring_kib)]
        return a


def cases(sizes: tuple[int, ...]) -> list[Case]:
    out = [
        Case("rr-tcp", "tcp", "rr", 64),
        Case("rr-ring-spin", "ring", "rr", 64, SPIN_FOREVER_US),
        Case("rr-ring-sleep", "ring", "rr", 64, 0),
    ]
    for s in sizes:
        out.append(Case(f"stream-tcp-{s}", "tcp", "stream", s))
        out.append(Case(f"stream-ring-{s}", "ring", "stream", s))
    return out


def run_case(case: Case, seconds: float, ring_kib: int | None) -> dict:
    argv = case.argv(seconds, ring_kib)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60 + seconds * 4)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)


def run(repeats: int = 5, seconds: float = 0.5, sizes: tuple[int, ...] = STREAM_SIZES,
        ring_kib: int | None = None,
        progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Measure; return the results document (see ``rows``)."""
    if repeats < 1 or seconds <= 0:
        raise ValueError("repeats must be >= 1 and seconds > 0")
    cs = cases(tuple(sizes))
    started = now()
    raw: dict[str, list[dict]] = {c.key: [] for c in cs}
    total, done = repeats * len(cs), 0
    for _ in range(repeats):
        for c in cs:
            if progress:
                progress(done, total, c.key)
            raw[c.key].append(run_case(c, seconds, ring_kib))
            done += 1
    if progress:
        progress(total, total, "done")

    rows = []

    def row(name: str, unit: str, base_key: str, fast_key: str, field: str, better: str) -> None:
        rows.append(compare(name, unit, better, [r[field] for r in raw[base_key]],
                            [r[field] for r in raw[fast_key]]))

    row("64 B round trip p50, spinning", "us", "rr-tcp", "rr-ring-spin", "p50_us", "lower")
    row("64 B round trip p99, spinning", "us", "rr-tcp", "rr-ring-spin", "p99_us", "lower")
    row("64 B round trip p50, sleeping", "us", "rr-tcp", "rr-ring-sleep", "p50_us", "lower")
    row("64 B round trip p99, sleeping", "us", "rr-tcp", "rr-ring-sleep", "p99_us", "lower")
    for s in sizes:
        row(f"stream, {size_label(s)} writes", "GB/s", f"stream-tcp-{s}", f"stream-ring-{s}",
            "gbps", "higher")
        rows[-1]["size"] = s
    ring_kib_used = raw["rr-ring-spin"][0].get("ring_kib")
    return {
        "benchmark": "ring",
        "baseline": "TCP loopback (127.0.0.1, TCP_NODELAY)",
        "fastivc": f"shared-memory channel, {ring_kib_used} KiB rings, futex doorbell",
        "stream_sizes": list(sizes),
        "repeats": repeats,
        "seconds_per_case": seconds,
        "date": started,
        "machine": machine_info(),
        "versions": versions(),
        "fastivc_settings": {
            "fabric": "a fresh file per run, /dev/shm/fastivc-bench.PID (removed afterwards)",
            "ring_kib": ring_kib_used,
            "spin_us": {"rr-ring-spin": SPIN_FOREVER_US, "rr-ring-sleep": 0,
                        "stream": DEFAULT_SPIN_US},
            "spin_adaptive": True,  # the channel's budget adapts per direction
        },
        "commands": {
            "plain": [shlex.join(c.argv(seconds, ring_kib)) for c in cs if c.transport == "tcp"],
            "fastivc": [shlex.join(c.argv(seconds, ring_kib)) for c in cs
                        if c.transport == "ring"],
        },
        "rows": rows,
        "raw": raw,
    }


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def format_table(doc: dict, baseline_title: str = "TCP loopback") -> str:
    """A plain-text table: medians with (min-max) and the ratio."""
    head = ("scenario", "unit", baseline_title, "fastivc", "ratio")
    lines = []
    for r in doc["rows"]:
        b, f = r["baseline"], r["fastivc"]
        lo, hi = r["ratio_range"]
        name = r["scenario"]
        if r.get("partial"):  # not every benchmark connection was accelerated
            name += (f" [partial: {r.get('accelerated_connections', '?')} of "
                     f"{r.get('connections', '?')} accelerated]")
        lines.append((
            name, r["unit"],
            f"{_fmt(b['median'])} ({_fmt(b['min'])}-{_fmt(b['max'])})",
            f"{_fmt(f['median'])} ({_fmt(f['min'])}-{_fmt(f['max'])})",
            f"{r['ratio']:.1f}x ({lo:.1f}-{hi:.1f})",
        ))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = [f"fastivc bench {doc['benchmark']}: {doc['fastivc']} vs {doc['baseline']}",
           f"{doc['repeats']} repeats x {doc['seconds_per_case']} s per case; "
           "median (min-max); ratio > 1 means fastivc is better",
           "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for x in lines:
        out.append("  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)))
    out.extend(f"note: {n}" for n in doc.get("notes", ()))
    return "\n".join(out)
