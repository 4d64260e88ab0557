"""`fastivc bench rr|stream|connect`: plain TCP and fastivc side by side.

Both runs use the same unmodified program (fastivc-tcpbench), as separate
client and server processes; the fastivc run starts both under
`fastivc run`.  As root, client and server sit in two network namespaces
joined by a veth pair ("two containers on one host"); otherwise on loopback.
Each repeat runs the baseline and then fastivc, so both see the same machine.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._paths import helper_path
from ..netns import NetnsError, TwoHosts, in_ns
from ..run import build_env
from .stats import compare, fastivc_settings, machine_info, now, size_label, versions

HELPER = "fastivc-tcpbench"
SCENARIOS = ("rr", "stream", "connect")


@dataclass
class Placement:
    name: str
    client_ns: str | None
    server_ns: str | None
    server_addr: str


def _sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(in_ns(ns, ["sysctl", "-q", "-w", f"{key}={value}"]), capture_output=True)


class _Server:
    def __init__(self, argv: list[str], env: dict, ns: str | None):
        self.p = subprocess.Popen(in_ns(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env, text=True)
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            err = self.p.stderr.read()
            self.stop()
            raise RuntimeError(f"{' '.join(argv)} did not start: {err.strip()}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def _one(scenario: str, size: int, seconds: float, fast: bool, pl: Placement, port: int,
         fabric: str) -> tuple[dict, list[str]]:
    helper = str(helper_path(HELPER))
    env = build_env(os.environ, fabric=fabric) if fast else {
        k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FASTIVC_")}
    srv_argv = [helper, "server", "--bind", pl.server_addr, "--port", str(port), "--mode",
                scenario, "--size", str(size)]
    cli_argv = [helper, "client", "--host", pl.server_addr, "--port", str(port), "--mode",
                scenario, "--size", str(size), "--seconds", str(seconds)]
    srv = _Server(srv_argv, env, pl.server_ns)
    try:
        p = subprocess.run(in_ns(pl.client_ns, cli_argv), capture_output=True, text=True, env=env,
                           timeout=60 + seconds * 4)
    finally:
        srv.stop()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cli_argv)} failed (exit {p.returncode}): {p.stderr.strip()}")
    prefix = ["fastivc", "run", "--fabric", fabric, "--"] if fast else []
    cmds = [shlex.join(in_ns(pl.server_ns, [*prefix, *srv_argv])),
            shlex.join(in_ns(pl.client_ns, [*prefix, *cli_argv]))]
    return json.loads(p.stdout), cmds


METRICS = {
    "rr": [("p50_us", "us", "lower", "64 B request/response p50"),
           ("p99_us", "us", "lower", "64 B request/response p99")],
    "stream": [("gbps", "GB/s", "higher", "stream, {size} writes")],
    "connect": [("rate", "conn/s", "higher", "connect+request+response+close")],
}


def bench_hosts() -> TwoHosts:
    """The benchmark's two namespaces: fivc-bench-a/b in 10.202.0.0/24, or the
    prefix and subnet in FIVC_BENCH_NS / FIVC_BENCH_SUBNET (so two checkouts can
    benchmark at once)."""
    return TwoHosts(os.environ.get("FIVC_BENCH_NS", "fivc-bench"),
                    int(os.environ.get("FIVC_BENCH_SUBNET", "202")))


def place(loopback: bool) -> tuple[TwoHosts | None, Placement]:
    """Two namespaces joined by veth when root (and not `loopback`), else
    loopback; the caller takes the hosts down."""
    hosts = None
    if not loopback and os.geteuid() == 0:
        try:
            hosts = bench_hosts().up()
        except NetnsError:
            bench_hosts().down()  # whatever up() made before it failed
            hosts = None
    if hosts:
        for ns in (hosts.client_ns, hosts.server_ns):
            _sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")
        return hosts, Placement("two network namespaces joined by veth", hosts.client_ns,
                                hosts.server_ns, hosts.addr(4, 2))
    name = "loopback (not root: no network namespaces)" if not loopback else "loopback"
    return None, Placement(name, None, None, "127.0.0.1")


def run(scenarios: tuple[str, ...] = SCENARIOS, repeats: int = 5, seconds: float = 1.0,
        stream_size: int = 65536, loopback: bool = False,
        progress: Callable[[int, int, str], None] | None = None, *,
        stream_sizes: tuple[int, ...] | None = None) -> dict:
    """Measure; `stream_sizes` (a size sweep, plain and fastivc per size)
    overrides `stream_size`.  Every raw result of "stream" carries its size."""
    if repeats < 1 or seconds <= 0:
        raise ValueError("repeats must be >= 1 and seconds > 0")
    sizes = tuple(stream_sizes) if stream_sizes else (stream_size,)
    started = now()
    hosts, pl = place(loopback)
    fabric = tempfile.mktemp(prefix="fastivc-bench-", dir="/dev/shm")
    raw: dict[str, dict[str, list]] = {s: {"plain": [], "fastivc": []} for s in scenarios}
    commands: dict[str, list[str]] = {"plain": [], "fastivc": []}
    seen: set[tuple[str, int, str]] = set()
    cases = [(sc, size) for sc in scenarios for size in (sizes if sc == "stream" else (64,))]
    total, done = len(cases) * repeats * 2, 0
    port = 21000 + os.getpid() % 2000
    try:
        for rep in range(repeats):
            for sc, size in cases:
                for mode in ("plain", "fastivc"):
                    if progress:
                        what = f"{sc} {size_label(size)}" if sc == "stream" else sc
                        progress(done, total, f"{what} {mode} ({rep + 1}/{repeats})")
                    port += 1
                    res, cmds = _one(sc, size, seconds, mode == "fastivc", pl, port, fabric)
                    raw[sc][mode].append(res)
                    if (sc, size, mode) not in seen:  # the first run of each case
                        seen.add((sc, size, mode))
                        commands[mode] += cmds
                    done += 1
                    time.sleep(0.05)
        if progress:
            progress(total, total, "done")
    finally:
        if hosts:
            hosts.down()
        try:
            os.unlink(fabric)
        except FileNotFoundError:
            pass
    rows = []
    for sc, size in cases:
        plain = [r for r in raw[sc]["plain"] if sc != "stream" or r["size"] == size]
        fast = [r for r in raw[sc]["fastivc"] if sc != "stream" or r["size"] == size]
        for field, unit, better, title in METRICS[sc]:
            row = compare(title.format(size=size_label(size)), unit, better,
                          [r[field] for r in plain], [r[field] for r in fast])
            if sc == "stream":
                row["size"] = size
            rows.append(row)
    return {
        "benchmark": "tcp",
        "placement": pl.name,
        "baseline": f"plain TCP ({pl.name})",
        "fastivc": "fastivc run, default settings",
        "scenarios": list(scenarios),
        "stream_sizes": list(sizes) if "stream" in scenarios else [],
        "repeats": repeats,
        "seconds_per_case": seconds,
        "date": started,
        "machine": machine_info(),
        "versions": versions(),
        "fastivc_settings": fastivc_settings(
            build_env(os.environ, fabric=fabric), "a fresh file under /dev/shm for this "
            "benchmark (removed afterwards): " + fabric),
        "commands": commands,
        "rows": rows,
        "raw": raw,
    }
