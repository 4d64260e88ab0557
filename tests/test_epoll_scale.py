"""Readiness in O(ready) (DESIGN.md I10): tests/c/epoll_scale.c keeps
thousands of idle accelerated connections registered in one epoll set (both
ends, LT and EPOLLET|EPOLLRDHUP) next to a pipe and the listener, and drives
a few busy ones through level, EPOLLET, EPOLLONESHOT, EPOLLRDHUP, EPOLLOUT,
an echo with every byte checked, poll() and select() over the idle ones, and
the close of every idle server end.  Plain and under fastivc it prints the
same; under fastivc every connection was on the ring, and the library's
counters show that no epoll_wait looked at more than a handful of entries
while the idle ones sat there (the old code walked all of them each time)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from fastivc._paths import helper_path
from fastivc.run import build_env

NBUSY = 7  # the program's busy pairs
# 10,000 connections are 20,000 fds in one process; the hard RLIMIT_NOFILE
# may be lower, and raising it needs CAP_SYS_RESOURCE: as many as fit.
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
IDLE = min(10_000, (HARD - 256) // 2) if HARD != resource.RLIM_INFINITY else 10_000
ECHO_BYTES = 4_000_000


def _run(prog: str, env: dict, fabric: str | None = None) -> tuple[list[str], list[dict]]:
    """Run the program; while every connection is up (it prints "ready"),
    take `fastivc stat` of the fabric.  Returns its lines and the snapshot."""
    p = subprocess.Popen([prog, str(IDLE), str(ECHO_BYTES)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines, snaps = [], []
    try:
        while (ln := p.stdout.readline()) and ln.strip() != "ready":
            lines.append(ln.rstrip("\n"))
        assert ln, f"exited before it was ready: {lines} {p.stderr.read()[-2000:]}"
        if fabric:
            r = subprocess.run([sys.executable, "-m", "fastivc", "stat", "--fabric", fabric,
                                "--json"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            snaps.append(json.loads(r.stdout))
        out, err = p.communicate("go\n", timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{err[-3000:]}"
    return lines + out.splitlines(), snaps


@pytest.fixture(scope="module")
def runs(cbuild, tmp_path_factory):
    prog = str(cbuild("release") / "epoll_scale")
    fabric = f"/dev/shm/fastivc-pytest-{os.getpid()}-epoll-scale"
    # the default fabric has 256 slots: one with room for every connection,
    # small rings (idle connections carry nothing)
    r = subprocess.run([str(helper_path("fastivc-mkfabric")), fabric, str(IDLE + NBUSY + 64),
                        "4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        plain, _ = _run(prog, plain_env)
        fast, snaps = _run(prog, build_env(os.environ, fabric=fabric, event_loops=True), fabric)
    finally:
        os.unlink(fabric)
    return plain, fast, snaps[0]


def _stats(lines: list[str], phase: str) -> dict:
    ln = next(x for x in lines if x.startswith(f"stats {phase} "))
    return {k: int(v) for k, v in (f.split("=") for f in ln.split()[2:])}


def test_same_results_as_plain_tcp_with_thousands_of_idle_connections(runs):
    plain, fast, _ = runs
    ours = [x for x in fast if not x.startswith(("stats ", "library counters"))]
    assert ours == [x for x in plain if not x.startswith("library counters")]
    assert f"{IDLE} idle connections registered" in plain
    assert f"echo {ECHO_BYTES} bytes: intact, idle entries reported: 0" in plain
    assert f"poll: {IDLE} writable of {IDLE} idle clients" in plain
    assert (f"peers closed: {IDLE} of {IDLE} clients reported, {IDLE} with IN|RDHUP, 0 twice, "
            "0 others") in plain
    assert "ET: no new edge after EOF          n=0" in plain


def test_every_connection_was_on_the_ring(runs):
    _, _, snap = runs
    connected = [s for s in snap["slots"] if s["state"] == "connected"]
    assert len(connected) >= IDLE + NBUSY, (len(connected), IDLE)


def test_epoll_wait_looks_at_ready_entries_only(runs):
    """Regression (issue 10): every epoll_wait walked all registered entries;
    with the idle ones registered it must look at a bounded few, and never
    poll(2) a socket one by one (they are all on the ring)."""
    _, fast, _ = runs
    assert "library counters present" in fast
    busy = _stats(fast, "busy")
    assert busy["calls"] > 100  # the echo ran through epoll_wait
    assert busy["max_pass"] <= 8, busy  # independent of the idle entries
    assert busy["examined"] <= 8 * busy["passes"], busy
    assert busy["entry_polls"] == 0, busy
    end = _stats(fast, "end")
    # the closes made every client end ready: then a pass is as long as that
    assert end["max_pass"] >= min(IDLE, 4096) // 2, end


def test_entries_past_one_wake_record_wake_by_bits_not_doorbells(runs):
    """Regression (issue 10): a set held one wake record, 4,096 tokens, so
    its other entries were armed with the plain doorbell: a TCP segment for
    each ring move (wrk -c10000 against nginx: one per response).  The far
    phase writes to the last idle pairs (tokens past 4,096): no doorbell."""
    plain, fast, _ = runs
    assert "far: 64 of 64 idle clients reported, 0 twice" in plain
    busy, far = _stats(fast, "busy"), _stats(fast, "far")
    wbusy, wfar = _stats(fast, "wake-busy"), _stats(fast, "wake-far")
    if 2 * IDLE > 4096:
        assert wfar["records"] >= (2 * IDLE + 4095) // 4096, wfar
    assert far["kernel_events"] - busy["kernel_events"] <= 4, (busy, far)
    assert wfar["queued"] - wbusy["queued"] >= 60, (wbusy, wfar)


def test_a_waiter_done_with_a_socket_does_not_disarm_another(cbuild, shm_path, tmp_path):
    """Regression: poll() and epoll_wait() that timed out on a socket cleared
    its ring's waiting flag, which a thread asleep in epoll_wait on another
    set had set; the peer's write then rang no doorbell and the thread slept
    until its timeout (tests/c/two_waiters.c).  Now only the ringer clears."""
    prog = str(cbuild("release") / "two_waiters")
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([prog], capture_output=True, text=True, timeout=60, env=plain_env)
    assert plain.returncode == 0, plain.stderr
    log = tmp_path / "log"
    fast = subprocess.run([prog], capture_output=True, text=True, timeout=60,
                          env=build_env(os.environ, fabric=shm_path, log=f"debug:{log}",
                                        event_loops=True))
    assert fast.returncode == 0, fast.stderr
    assert fast.stdout.splitlines() == plain.stdout.splitlines()
    assert "the sleeping thread: n=1, woken by the write" in plain.stdout
    text = log.read_text()
    assert "adopted offer" in text and "switched to the ring" in text, text


@pytest.mark.parametrize("spin_us", [0, 50])
def test_bursts_over_many_connections_ring_one_doorbell_per_sleep(cbuild, shm_path, tmp_path,
                                                                   spin_us):
    """Issue 10: with 1,000 redis-benchmark clients every request rang a TCP
    doorbell (the server's set slept) and every response too: 58% of the
    CPU.  tests/c/wake_burst.c: a client writes a message on each of 400
    connections at once and a forked server echoes them, both in epoll;
    every byte checked, the same output as on plain TCP, every connection
    on the ring, and the wake records (layout.h) saved most doorbells: a
    set that is awake or already rung gets a bit, not a system call."""
    n, rounds = 400, 100
    prog = str(cbuild("release") / "wake_burst")
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([prog, str(n), str(rounds)], capture_output=True, text=True,
                           timeout=120, env=plain_env)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    log = tmp_path / "log"
    fast = subprocess.run([prog, str(n), str(rounds)], capture_output=True, text=True,
                          timeout=120, env=build_env(os.environ, fabric=shm_path, spin_us=spin_us,
                                                     log=f"debug:{log}", event_loops=True))
    assert fast.returncode == 0, fast.stdout + fast.stderr
    lines = fast.stdout.splitlines()
    assert [x for x in lines if not x.startswith("wake ")] == plain.stdout.splitlines()
    assert f"{rounds} rounds over {n} connections: intact" in lines
    text = log.read_text()
    assert text.count("switched to the ring") + text.count("adopted offer") >= 2 * n, text[-2000:]
    wake = {ln.split()[1]: {k: int(v) for k, v in (f.split("=") for f in ln.split()[2:])}
            for ln in lines if ln.startswith("wake ")}
    assert set(wake) == {"client", "server"}, lines
    msgs = n * rounds
    # each side slept while the other wrote a burst of n: most of the
    # burst's ring moves found the sleeping set already rung
    assert wake["client"]["coalesced"] >= msgs // 2, wake
    assert wake["server"]["queued"] >= msgs // 2, wake
    assert wake["server"]["records"] == 1, wake
