"""The soak (issue 13): tests/c/soak.c drives randomized traffic over many
connections (random sizes and calls, MSG_PEEK checked against the read
after it, MSG_WAITALL, shutdowns, fork with shared sides, connections
handed to child processes) and checks every byte and every length.

Under fastivc over loopback and between two namespaces, and once on plain
TCP (the program itself is right by the kernel).  Every connection must
have been on the fabric (the server asks the library when all are named).

FIVC_SOAK_GIB (default 1) sets the gibibytes per place, FIVC_SOAK_CONNS
(default 16) the connections; `make soak` runs the long mode (100 GiB in
all)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from netenv import ADDR, NS_CLIENT, NS_SERVER

from fastivc._paths import helper_path
from fastivc.netns import in_ns
from fastivc.run import build_env

GIB = float(os.environ.get("FIVC_SOAK_GIB", "1"))
CONNS = int(os.environ.get("FIVC_SOAK_CONNS", "16"))
WORKERS = 2
PORT = 27400 + os.getpid() % 500  # below the ephemeral range (test_scale.py)
# 4 GiB a minute is slow here; the long mode's 50 GiB per place gets an hour
TIMEOUT = 300 + GIB * 60


def _reports(out: str) -> list[dict]:
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


def _check(reports: list[dict], gib: float, conns: int, accelerated: bool,
           handoffs: bool = False) -> None:
    quota = int(gib * (1 << 30) / (2 * conns))
    server = [r for r in reports if r["role"] == "server"]
    clients = [r for r in reports if r["role"] != "server"]
    assert len(server) == 1 and clients, reports
    assert server[0]["checked"] == quota * conns, server
    assert sum(r["checked"] for r in clients) == quota * conns, clients
    assert all(r["corrupt"] == 0 and r["bad_lengths"] == 0 for r in reports), reports
    if handoffs:
        assert len(clients) > WORKERS, f"no connection was handed to a child: {clients}"
    if accelerated:
        # (the client forks right after its connects, before some are
        # adopted: those switch later, tests/test_fork_pre_switch.py)
        assert server[0]["on_fabric"] == conns, f"connections not on the fabric: {server}"
    else:
        assert server[0]["on_fabric"] == -1, server


def _soak(cbuild, fabric: str | None, where: str, gib: float, seed: int,
          handoffs: bool = False) -> list[dict]:
    prog = str(cbuild("release") / "soak")
    env = build_env(os.environ, fabric=fabric) if fabric else \
        {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["SOAK_HANDOFFS"] = "4" if handoffs else "0"
    if fabric:  # made first: two processes racing to create it may leave one
        # without a fabric for a second (it retries later), which is plain TCP
        r = subprocess.run([str(helper_path("fastivc-mkfabric")), fabric, "64"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    args = [str(gib), str(CONNS), str(WORKERS), str(seed)]
    if where == "loopback":
        r = subprocess.run([prog, "both", "127.0.0.1", str(PORT + seed % 50), *args],
                           capture_output=True, text=True, timeout=TIMEOUT, env=env)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
        return _reports(r.stdout)
    client_host, server_host = ADDR[4]
    port = str(PORT + 100 + seed % 50)
    srv = subprocess.Popen(in_ns(NS_SERVER, [prog, "server", server_host, port, *args]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # The client starts once the server listens: a connect() racing the
    # server's start may look for its listener entry just before listen()
    # publishes it and then reach the open port, and that connection is
    # (rightly) plain TCP, which the on-the-fabric count would not allow.
    for _ in range(200):
        ss = subprocess.run(in_ns(NS_SERVER, ["ss", "-Hltn", f"sport = :{port}"]),
                            capture_output=True, text=True, timeout=10)
        if ss.stdout.strip() or srv.poll() is not None:
            break
        time.sleep(0.05)
    try:
        cli = subprocess.run(in_ns(NS_CLIENT, [prog, "client", server_host, port, *args]),
                             capture_output=True, text=True, timeout=TIMEOUT, env=env)
        out, err = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert cli.returncode == 0, f"client exit {cli.returncode}\n{cli.stdout}\n{cli.stderr[-3000:]}"
    assert srv.returncode == 0, f"server exit {srv.returncode}\n{out}\n{err[-3000:]}"
    return _reports(cli.stdout) + _reports(out)


@pytest.mark.parametrize("where", ["loopback", "netns"])
def test_soak_every_byte_checked_on_the_ring(cbuild, shm_path, where, request):
    if where == "netns":
        request.getfixturevalue("netns")
    seed = int.from_bytes(os.urandom(4), "little")
    reports = _soak(cbuild, shm_path, where, GIB, seed)
    print(f"soak {where} seed {seed}: {GIB} GiB over {CONNS} connections, "
          f"{max(r['seconds'] for r in reports):.1f} s, 0 corrupt")
    _check(reports, GIB, CONNS, accelerated=True)


def test_soak_connections_handed_to_children_mid_stream_on_the_ring(cbuild, shm_path):
    """(Once, on 2026-12-03, a child read such a connection at a wrong
    offset; not seen again in about 270 runs since, at that commit and
    after: README, Reliability.)"""
    seed = int.from_bytes(os.urandom(4), "little")
    reports = _soak(cbuild, shm_path, "loopback", GIB, seed, handoffs=True)
    print(f"soak with hand-offs seed {seed}: 0 corrupt")
    _check(reports, GIB, CONNS, accelerated=True, handoffs=True)


def test_soak_on_plain_tcp(cbuild):
    _check(_soak(cbuild, None, "loopback", 0.25, 11, handoffs=True), 0.25, CONNS,
           accelerated=False, handoffs=True)
