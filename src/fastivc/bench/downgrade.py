"""`fastivc bench downgrade`: how long the way back to TCP takes (issue 12).

fastivc-tcpbench's --epoll server and a client with one busy connection and
N idle ones (`--idle N --pause`) run under the library, between two network
namespaces (or on loopback).  At the client's checkpoint (every connection
up, on a ring) fastivc-downgrade asks the client's process to go back
(`fastivc downgrade --pid`) and times, in C, from the ask to the moment the
last connection side of the process was let go: its own watcher thread
downgrades each connection and the server follows from its epoll wait.
Then the client runs its round trips on the same connection, now plain
TCP, and must finish them: the conversation goes on.

There is no baseline (plain TCP has nothing to go back from): the rows are
the latency's p50, p99, min and max over the rounds, per N.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Sequence

from .._paths import helper_path
from ..fabric import Fabric
from ..netns import in_ns
from ..run import build_env
from .scale import _plain_env, _readline, _stop
from .stats import fastivc_settings, machine_info, now, versions
from .tcp import place

Progress = Callable[[int, int, str], None]
DEFAULT_IDLE = (0, 100)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _once(idle: int, pl, port: int, fabric: str) -> tuple[dict, list[str]]:
    bench = str(helper_path("fastivc-tcpbench"))
    env = build_env(_plain_env(), fabric=fabric)
    srv_argv = [bench, "server", "--bind", pl.server_addr, "--port", str(port), "--mode", "rr",
                "--epoll"]
    cli_argv = [bench, "client", "--host", pl.server_addr, "--port", str(port), "--mode", "rr",
                "--seconds", "0.2", "--idle", str(idle), "--pause"]
    srv = subprocess.Popen(in_ns(pl.server_ns, srv_argv), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    cli = None
    try:
        if _readline(srv, bytearray(), 30, "fastivc-tcpbench server") != b"ready":
            raise RuntimeError("fastivc-tcpbench server did not say ready")
        cli = subprocess.Popen(in_ns(pl.client_ns, cli_argv), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        buf, what = bytearray(), shlex.join(cli_argv)
        limit = 60 + idle / 200
        json.loads(_readline(cli, buf, limit, what))  # {"checkpoint":"busy"}
        if idle:
            cli.stdin.write(b"\n")
            cli.stdin.flush()
            json.loads(_readline(cli, buf, limit, what))  # {"checkpoint":"idle",...}
        with Fabric(fabric) as fab:
            on = fab.connected_count(port)
        if on < idle + 1:
            raise RuntimeError(f"only {on} of {idle + 1} connections on rings before the ask")
        r = subprocess.run([str(helper_path("fastivc-downgrade")), fabric, "pid",
                            str(cli.pid), "10000"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"fastivc-downgrade: {r.stderr.strip()}")
        rep = json.loads(r.stdout)
        if len(rep["asked"]) != 1 or rep["sides_left"]:
            raise RuntimeError(f"the client did not go back to TCP: {rep}")
        cli.stdin.write(b"\n")
        cli.stdin.flush()
        after = json.loads(_readline(cli, buf, 60, what))  # the round trips, on TCP now
        with Fabric(fabric) as fab:
            left = fab.connected_count(port)
            counts = fab.downgrades()
    finally:
        _stop(srv, cli)
    if not after.get("samples"):
        raise RuntimeError(f"no round trip after the downgrade: {after}")
    res = {"idle": idle, "connections": idle + 1, "us": rep["us"],
           "sides": rep["sides_before"], "on_rings_after": left, "downgraded": counts,
           "after_p50_us": after.get("p50_us")}
    prefix = ["fastivc", "run", "--fabric", fabric, "--"]
    cmds = [shlex.join(in_ns(pl.server_ns, [*prefix, *srv_argv])),
            shlex.join(in_ns(pl.client_ns, [*prefix, *cli_argv])),
            f"fastivc downgrade --fabric {fabric} --pid CLIENT_PID"]
    return res, cmds


def run(rounds: int = 20, idle: Sequence[int] = DEFAULT_IDLE, loopback: bool = False,
        progress: Progress | None = None) -> dict:
    idle = sorted(set(idle))
    if rounds < 1 or not idle or idle[0] < 0:
        raise ValueError("rounds must be >= 1 and idle counts >= 0")
    started = now()
    hosts, pl = place(loopback)
    raw: list[dict] = []
    commands: list[str] = []
    total, done = rounds * len(idle), 0
    port = 25000 + os.getpid() % 2000
    try:
        for n in idle:
            for k in range(rounds):
                if progress:
                    progress(done, total, f"{n + 1} connections ({k + 1}/{rounds})")
                port += 1
                fabric = tempfile.mktemp(prefix="fastivc-bench-down-", dir="/dev/shm")
                try:
                    res, cmds = _once(n, pl, port, fabric)
                except RuntimeError as e:
                    raise RuntimeError(f"{n} idle, round {k + 1}: {e}") from e
                finally:
                    if os.path.exists(fabric):
                        os.unlink(fabric)
                res["round"] = k
                raw.append(res)
                if not commands:
                    commands = cmds
                done += 1
        if progress:
            progress(total, total, "done")
    finally:
        if hosts:
            hosts.down()
    rows = []
    for n in idle:
        us = [r["us"] for r in raw if r["idle"] == n]
        rows.append({"connections": n + 1, "rounds": len(us), "p50_us": _pct(us, 0.5),
                     "p99_us": _pct(us, 0.99), "min_us": min(us), "max_us": max(us)})
    return {"benchmark": "downgrade", "placement": pl.name, "started": started,
            "finished": now(), "rows": rows, "raw": raw, "commands": {"fastivc": commands},
            "machine": machine_info(), "versions": versions(),
            "fastivc_settings": fastivc_settings(_plain_env(), "fresh per round")}


def format_table(doc: dict) -> str:
    lines = [f"way back to TCP: from `fastivc downgrade --pid` to the process's last side let "
             f"go ({doc['placement']})",
             f"{'connections':>12} {'rounds':>7} {'p50 us':>10} {'p99 us':>10} {'min us':>10} "
             f"{'max us':>10}"]
    for r in doc["rows"]:
        lines.append(f"{r['connections']:>12} {r['rounds']:>7} {r['p50_us']:>10.0f} "
                     f"{r['p99_us']:>10.0f} {r['min_us']:>10.0f} {r['max_us']:>10.0f}")
    lines.append("each round: the client's round trips then go on over plain TCP and finish")
    return "\n".join(lines)
