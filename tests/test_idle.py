"""Idle (issue 4): an accelerated connection held open and idle for 10 s,
both ends blocked in epoll_wait, uses under 2 % of one CPU in total; and it
still works afterwards.  Idle connections must sleep, not spin."""

from __future__ import annotations

import os
import time

import pytest
from netenv import peer
from test_upgrade import _ports, _slot_for

IDLE_S = 10.0
BUDGET = 0.02  # of IDLE_S, both processes together


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("io", ["epoll-lt", "epoll-et"])
def test_idle_connection_sleeps(shm_path, io):
    port = next(_ports)
    args = ("--mode", "idle", "--io", io, "--bytes", "100000")
    srv = peer("server", "127.0.0.1", port, shm_path, True, None, *args, event_loops=True)
    cli = None
    try:
        srv.line()
        cli = peer("client", "127.0.0.1", port, shm_path, True, None, *args, event_loops=True)
        c, s = cli.line(), srv.line()  # the exchange is done; both now wait
        assert c["intact"] and s["intact"], (c, s)
        (sl,) = _slot_for(shm_path, c["local"][1], port)
        assert sl.state == "connected"
        time.sleep(0.5)  # past any spin before sleeping
        t0 = time.monotonic()
        before = cpu_seconds(cli.p.pid) + cpu_seconds(srv.p.pid)
        time.sleep(IDLE_S)
        used = cpu_seconds(cli.p.pid) + cpu_seconds(srv.p.pid) - before
        wall = time.monotonic() - t0
        assert used < BUDGET * wall, f"{used:.3f} s of CPU in {wall:.1f} s idle"
        cli.p.stdin.close()  # wakes the client: bye, and the server answers
        assert cli.line()["idle_end"] == "eyb"
        assert srv.line()["idle_end"] == "bye"
        (sl,) = _slot_for(shm_path, c["local"][1], port)  # "eyb" went by the ring
        assert sl.server_to_client.produced == 100000 + 3
    finally:
        if cli:
            cli.finish()
        srv.finish()
