"""What `fastivc demo` measures: the existing benchmarks, run plain and under
fastivc, reduced to one row per scenario.

Nothing is measured here that `fastivc bench` does not measure: the rows come
from `bench.tcp` (fastivc-tcpbench rr and stream) and `bench.servers`
(redis-server with redis-benchmark, nginx with wrk) and `bench.tiers` (the
multi-tier service, each tier in its own namespace), which place client and
server in two network namespaces joined by veth when run as root (prefix and
subnet from FIVC_BENCH_NS / FIVC_BENCH_SUBNET) and on loopback otherwise.
A scenario that cannot be measured (a program missing, a run that was not
accelerated) becomes a "missing" row with the reason; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from .. import __version__
from ..bench import servers, tcp, tiers
from ..bench.stats import machine_info, size_label

STREAM_SIZE = 65536

# Called with (runs done, runs in all, what runs now).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Settings:
    """How long each scenario runs.  redis-benchmark counts requests, not
    seconds (bench.servers turns seconds into -n); wrk takes whole seconds."""

    name: str
    repeats: int
    tcp_seconds: float
    redis_seconds: float
    nginx_seconds: float
    tiers_seconds: int


QUICK = Settings("quick", repeats=1, tcp_seconds=0.3, redis_seconds=0.2, nginx_seconds=1,
                 tiers_seconds=1)
DEFAULT = Settings("default", repeats=3, tcp_seconds=1.5, redis_seconds=1.5, nginx_seconds=2,
                   tiers_seconds=2)
TIERS_CONNECTIONS = 100


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    unit: str
    better: str  # "lower" or "higher"


SCENARIOS = (
    Scenario("rr_p50", "64 B round trip, p50 latency", "µs", "lower"),
    Scenario("stream", f"stream, {size_label(STREAM_SIZE)} writes", "GB/s", "higher"),
    Scenario("redis_get", "Redis GET (redis-benchmark, 50 clients)", "req/s", "higher"),
    Scenario("redis_set", "Redis SET (redis-benchmark, 50 clients)", "req/s", "higher"),
    Scenario("nginx", f"nginx (1 worker) + wrk -c10, {servers.PAGE_SIZE} B page", "req/s",
             "higher"),
    Scenario("tiers", f"multi-tier: wrk -c{TIERS_CONNECTIONS} > nginx > gunicorn > redis + "
             "PostgreSQL", "req/s", "higher"),
)
BY_KEY = {s.key: s for s in SCENARIOS}


@dataclass(frozen=True)
class Group:
    """One benchmark run that yields some of the rows: the bench function,
    and which of its rows (by their bench title) become which demo rows."""

    name: str
    what: str
    runs_per_repeat: int  # plain + fastivc runs per repeat, for progress
    measure: Callable[[Settings, bool, Progress], dict]
    rows: dict[str, str]  # demo key -> the bench row's "scenario"


GROUPS = (
    Group("tcp", "fastivc-tcpbench rr and stream", 4,
          lambda s, lb, p: tcp.run(("rr", "stream"), s.repeats, s.tcp_seconds, STREAM_SIZE,
                                   lb, p),
          {"rr_p50": tcp.METRICS["rr"][0][3],
           "stream": tcp.METRICS["stream"][0][3].format(size=size_label(STREAM_SIZE))}),
    Group("redis", "redis-server with redis-benchmark", 2,
          lambda s, lb, p: servers.run_redis(s.repeats, s.redis_seconds, lb, p),
          {"redis_get": "redis-benchmark GET", "redis_set": "redis-benchmark SET"}),
    Group("nginx", "nginx with wrk", 2,
          lambda s, lb, p: servers.run_nginx(s.repeats, s.nginx_seconds, 1, 10, lb, p),
          {"nginx": (f"nginx (1 worker) + wrk -c10, {servers.PAGE_SIZE} B file")}),
    # (bench tiers: each tier in its own namespace, upstream keepalive on)
    Group("tiers", "the multi-tier service (bench tiers)", 2,
          lambda s, lb, p: tiers.run(s.repeats, s.tiers_seconds, (TIERS_CONNECTIONS,), (True,),
                                     lb, progress=p),
          {"tiers": f"req/s, upstream keepalive on, wrk -c{TIERS_CONNECTIONS}"}),
)


def measured_row(sc: Scenario, bench_row: dict, notes: list[str]) -> dict:
    """A demo row from a bench row (bench.stats.compare): medians, spread and
    the speedup (ratio of medians; > 1 means fastivc is better)."""
    return {**asdict(sc), "status": "measured", "plain": bench_row["baseline"],
            "fastivc": bench_row["fastivc"], "speedup": bench_row["ratio"],
            "speedup_range": bench_row["ratio_range"], "notes": notes}


def missing_row(sc: Scenario, reason: str) -> dict:
    return {**asdict(sc), "status": "missing", "reason": reason}


@contextlib.contextmanager
def _namespaces_removed(loopback: bool) -> Iterator[None]:
    """The bench modules take their namespaces down themselves; this also
    covers an interrupt that lands between their creation and the bench's own
    try block."""
    try:
        yield
    finally:
        if not loopback and os.geteuid() == 0:
            tcp.bench_hosts().down()


def measure(settings: Settings = DEFAULT, loopback: bool = False,
            progress: Progress | None = None) -> dict:
    """Run every group plain and accelerated; return the demo's document.
    Ctrl-C or SIGTERM raises KeyboardInterrupt after the benches have
    stopped their servers and removed their fabrics and namespaces."""
    total = sum(g.runs_per_repeat for g in GROUPS) * settings.repeats
    done_before = 0
    rows: dict[str, dict] = {}
    benches: dict[str, dict] = {}
    placement = None
    started = time.monotonic()
    with servers._sigterm_as_interrupt(), _namespaces_removed(loopback):
        for g in GROUPS:
            def sub(done: int, _total: int, what: str, base: int = done_before) -> None:
                if progress:
                    progress(base + done, total, what)
            try:
                doc = g.measure(settings, loopback, sub)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                for key in g.rows:
                    rows[key] = missing_row(BY_KEY[key], f"{g.what}: {e}")
            else:
                placement = placement or doc["placement"]
                benches[g.name] = doc
                by_title = {r["scenario"]: r for r in doc["rows"]}
                for key, title in g.rows.items():
                    if title in by_title:
                        rows[key] = measured_row(BY_KEY[key], by_title[title],
                                                 list(doc.get("notes", ())))
                    else:
                        rows[key] = missing_row(BY_KEY[key], f"{g.what}: no row {title!r}")
            done_before += g.runs_per_repeat * settings.repeats
        if progress:
            progress(total, total, "done")
    if placement is None:  # nothing ran far enough to say where it ran
        placement = ("loopback" if loopback else "loopback (not root: no network namespaces)"
                     if os.geteuid() != 0 else "two network namespaces joined by veth")
    hosts = tcp.bench_hosts()
    return {
        "demo": settings.name,
        "placement": placement,
        "namespaces": ([hosts.client_ns, hosts.server_ns]
                       if placement.startswith("two network namespaces") else []),
        "subnet": f"10.{hosts.subnet}.0.0/24" if placement.startswith("two network") else None,
        "baseline": f"plain TCP ({placement})",
        "fastivc": "the same programs under fastivc run",
        "settings": asdict(settings),
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "versions": {"fastivc": __version__},
        "rows": [rows[sc.key] for sc in SCENARIOS],
        "benches": benches,
    }
